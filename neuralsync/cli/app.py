"""``neuralsync`` command line: a thin adapter over ``UnifiedMemoryAPI``.

Each command parses its arguments, makes one call into the facade and prints
the result, readable by default or as stable JSON with ``--json``. Errors of
the package become one line on stderr and an exit code (2 bad input, 3 not
found, 4 store busy, 1 anything else, 130 interrupted). The facade is imported
inside the handlers, never at module import, so ``neuralsync --help`` starts
without loading sqlite3 or nacl.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .. import __version__
from ..errors import InvalidInput, NeuralSyncError, NotFound, StoreBusy
from ..json_input import parse_json
from .compact import add_compact_command
from .merges import STRATEGY_HELP, add_merge_commands, report_remembered
from .migrate import add_migrate_command
from .output import emit_json, human_bytes, labels, one_line, rows, show_memory, tool_tables, when, width
from .relay import add_relay_commands
from .services import add_service_commands
from .settings import add_settings_commands
from .sync import add_sync_commands
from .team import add_team_commands

if TYPE_CHECKING:
    from ..model import Memory
    from ..unified_memory_api import UnifiedMemoryAPI

PROG = "neuralsync"
Handler = Callable[["UnifiedMemoryAPI", argparse.Namespace], int]
_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
RECALL_MODES = ("hybrid", "text", "semantic")
TIME_HELP = "ISO-8601 time, epoch milliseconds, or an age such as 30m, 12h, 7d, 2w"


# ================================================================ parser
class _Parser(argparse.ArgumentParser):
    """argparse with usage errors in the same one-line form as every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree. ``--home``/``--json`` are accepted before or after the command."""
    common = _Parser(add_help=False)
    # SUPPRESS: an option absent after the command must not overwrite one given before it.
    common.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser = _Parser(
        prog=PROG, description="Persistent memory shared by AI command-line tools.",
        epilog="Exit codes: 0 ok, 1 error, 2 bad input, 3 not found, 4 store busy, 130 interrupted.")
    parser.add_argument("--home", help="store directory (default: $NEURALSYNC_HOME, else ~/.neuralsync2/memory)")
    parser.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Handler | None, text: str, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, parents=[common], help=text, description=text, aliases=list(aliases))
        cmd.set_defaults(handler=handler)
        return cmd

    _add_write_commands(add)
    _add_read_commands(add)
    _add_admin_commands(add)
    add_service_commands(add)
    add_sync_commands(add)
    add_merge_commands(add)
    add_compact_command(add)
    add_settings_commands(add, build_parser)
    add_relay_commands(add)
    add_team_commands(add)
    return parser


def _add_write_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    cmd = add("remember", cmd_remember, "store a memory and print its id")
    cmd.add_argument("text", nargs="+", metavar="TEXT", help="the content ('-' reads it from stdin)")
    cmd.add_argument("--scope", default="global")
    cmd.add_argument("--kind", default="fact", help="fact, preference, decision, ... (default: fact)")
    _tag_option(cmd)
    cmd.add_argument("--priority", type=float, default=0.5, help="0..1 (default: 0.5)")
    cmd.add_argument("--confidence", type=float, default=0.8, help="0..1 (default: 0.8)")
    cmd.add_argument("--tool")
    cmd.add_argument("--source")
    cmd.add_argument("--ttl-ms", type=int, help="forget automatically after this many milliseconds")
    cmd.add_argument("--metadata", help="a JSON object")
    cmd.add_argument("--merge", metavar="STRATEGY", help="if it repeats a memory of the scope: " + STRATEGY_HELP
                     + " (default: the store's)")

    cmd = add("update", cmd_update, "change fields of a memory")
    cmd.add_argument("id")
    cmd.add_argument("--content")
    for name in ("--scope", "--kind", "--tool", "--source", "--metadata"):
        cmd.add_argument(name)
    cmd.add_argument("--priority", type=float)
    cmd.add_argument("--confidence", type=float)
    cmd.add_argument("--ttl-ms", type=int)
    _tag_option(cmd, "replaces the whole tag set; --tag '' clears it")

    cmd = add("forget", cmd_forget, "delete a memory", aliases=["delete"])
    cmd.add_argument("id")


def _add_read_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    cmd = add("recall", cmd_recall, "search memories (best matches first)")
    cmd.add_argument("query", nargs="*", help="words to search for (empty: most relevant recent memories)")
    cmd.add_argument("-k", "--top-k", type=int, default=10, help="how many results (default: 10)")
    cmd.add_argument("--scope")
    _tag_option(cmd, "match any of these tags (see --all-tags)")
    cmd.add_argument("--all-tags", action="store_true", help="require every --tag")
    cmd.add_argument("--kind", action="append", help="repeatable")
    cmd.add_argument("--since", help=TIME_HELP)
    cmd.add_argument("--until", help=TIME_HELP)
    cmd.add_argument("--mode", choices=RECALL_MODES, default="hybrid",
                     help="hybrid: words and meaning, fused (default); text: words only (BM25); "
                          "semantic: meaning only (embeddings)")
    cmd.add_argument("--local", action="store_true",
                     help="search the store in this process even when a server runs on it")
    cmd.set_defaults(standalone=recall_standalone)

    cmd = add("get", cmd_get, "show one memory")
    cmd.add_argument("id")

    cmd = add("list", cmd_list, "memories by creation time, newest first")
    cmd.add_argument("--since", help=TIME_HELP)
    cmd.add_argument("--until", help=TIME_HELP)
    cmd.add_argument("--scope")
    cmd.add_argument("--limit", type=int, default=50, help="at most this many (default: 50)")
    cmd.add_argument("--oldest-first", action="store_true")


def _add_admin_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    add("stats", cmd_stats, "counts, sizes and latencies")
    cmd = add("doctor", cmd_doctor, "check integrity: SQLite, FTS, op hashes and signatures, rebuild")
    cmd.add_argument("--quick", action="store_true", help="PRAGMA quick_check instead of a full integrity check")
    cmd.add_argument("--repair", action="store_true",
                     help="first rebuild the full-text index from the memories table (derived data: what"
                          " recall shows stays the same), then check")
    cmd = add("export", cmd_export, "write every memory as JSON Lines")
    cmd.add_argument("file", nargs="?", default="-", metavar="FILE", help="output file (default: stdout)")
    cmd = add("import", cmd_import, "read memories from JSON Lines or a NeuralSync2 home"
                                    " (safe to repeat: known ids are skipped)")
    cmd.add_argument("file", metavar="PATH", help="a JSONL file, '-' for stdin, or a NeuralSync2 home"
                                                 " (directory with memory.db and oplog.jsonl) or its memory.db")
    add_migrate_command(add, cmd_migrate)
    add("optimize", cmd_optimize, "run maintenance and show its effect")


def _tag_option(cmd: argparse.ArgumentParser, text: str = "repeatable, or comma-separated") -> None:
    cmd.add_argument("--tag", action="append", metavar="TAG", help=text)


# ================================================================ entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (never raises for expected errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`neuralsync export | head`): stop quietly, and keep
        # the interpreter from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except NeuralSyncError as exc:
        return _fail(str(exc), _exit_code(exc))
    except OSError as exc:  # e.g. an unreadable import file or an unwritable --home
        return _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), 1)


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "standalone", None):  # servers open the store themselves; recall may not open it at all
        return int(args.standalone(args))
    from ..unified_memory_api import MemoryConfig, UnifiedMemoryAPI

    with UnifiedMemoryAPI(MemoryConfig.from_env(args.home)) as api:
        handler: Handler = args.handler
        return handler(api, args)


def _exit_code(exc: NeuralSyncError) -> int:
    """Scripts branch on these: retry on 4, treat 3 as an answer, fix the call on 2."""
    codes = ((InvalidInput, 2), (NotFound, 3), (StoreBusy, 4))
    return next((code for kind, code in codes if isinstance(exc, kind)), 1)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


# ================================================================ commands
def cmd_remember(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Store a memory; prints the id (``--json``: the stored memory)."""
    content = sys.stdin.read().rstrip("\n") if args.text == ["-"] else " ".join(args.text)
    outcome = api.remember_outcome(content, scope=args.scope, priority=args.priority, tags=_tags(args.tag) or None,
                                   kind=args.kind, tool=args.tool, metadata=_metadata(args.metadata),
                                   ttl_ms=args.ttl_ms, confidence=args.confidence, source=args.source,
                                   merge=args.merge)
    report_remembered(outcome, args.json)
    return 0


def cmd_update(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Change the given fields only; ``--tag`` replaces the tag set."""
    fields: dict[str, Any] = {name: getattr(args, name) for name in
                              ("content", "scope", "priority", "confidence", "kind", "tool", "source", "ttl_ms")
                              if getattr(args, name) is not None}
    if args.metadata is not None:
        fields["metadata"] = _metadata(args.metadata)
    if args.tag is not None:
        fields["tags"] = _tags(args.tag)
    show_memory(api.update(args.id, **fields), args.json)
    return 0


def cmd_forget(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Delete a memory (NotFound, exit 3, if there is none)."""
    api.forget(args.id)
    if args.json:
        emit_json({"id": args.id, "forgotten": True})
    else:
        print(f"forgot {args.id}")
    return 0


def cmd_get(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Show one memory in full."""
    show_memory(api.get(args.id), args.json)
    return 0


def recall_standalone(args: argparse.Namespace) -> int:
    """Recall through the store's running server when there is one (nothing to load), else locally."""
    from ..config import MemoryConfig
    from .remote import recall_via_server

    config = MemoryConfig.from_env(args.home)
    request = _recall_request(args)
    hits = None if args.local else recall_via_server(config.home, request)
    if hits is None:
        from dataclasses import replace

        from ..unified_memory_api import UnifiedMemoryAPI

        # The server was just asked (or --local): the facade searches here, without asking again.
        with UnifiedMemoryAPI(replace(config, recall_via_server=False)) as api:
            api.warm_up(request["mode"])  # the model loads beside the index and the text search
            hits = api.recall(**request)
    return _show_hits(hits, args.json)


def cmd_recall(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Search the store in this process; readable output is one block per hit, best first."""
    return _show_hits(api.recall(**_recall_request(args)), args.json)


def _recall_request(args: argparse.Namespace) -> dict[str, Any]:
    return {"query": " ".join(args.query), "scope": args.scope, "top_k": args.top_k,
            "tags": _tags(args.tag) or None, "kinds": args.kind, "since": _time(args.since, "--since"),
            "until": _time(args.until, "--until"), "tag_match": "all" if args.all_tags else "any",
            "mode": args.mode}


def _show_hits(hits: list[Memory], as_json: bool) -> int:
    if as_json:
        emit_json([m.to_dict() for m in hits])
        return 0
    if not hits:
        print("no memories found", file=sys.stderr)
    cols = width()
    for rank, memory in enumerate(hits, start=1):
        print(f"{rank:>2}. {memory.id}  score {memory.score or 0:.3f}")
        print(f"    {labels(memory)} · {when(memory.created_at)}")
        for line in textwrap.wrap(" ".join(memory.content.split()), cols - 4, max_lines=4, placeholder=" …"):
            print(f"    {line}")
    return 0


def cmd_list(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Memories in a time window: newest first unless ``--oldest-first``."""
    since, until = _time(args.since, "--since"), _time(args.until, "--until")
    memories = api.range_recall(since, until, args.scope, args.limit, newest_first=not args.oldest_first)
    if args.json:
        emit_json([m.to_dict() for m in memories])
        return 0
    cols = width()
    for m in memories:
        head = f"{when(m.created_at)}  {m.id}  {m.scope}/{m.kind}  "
        print(head + one_line(m.content, max(20, cols - len(head))))
    print(f"{len(memories)} memor{'y' if len(memories) == 1 else 'ies'}", file=sys.stderr)
    return 0


def cmd_stats(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Counts and sizes of the store; latencies per tool of every process on the store (servers, MCP
    servers, CLI commands), as each published them."""
    stats = api.get_system_stats()
    if args.json:
        emit_json(stats)
        return 0
    storage = stats["storage"]
    per_memory = storage["bytes_per_memory"]
    across = stats["performance_stats"]["across_processes"]
    scopes = ", ".join(f"{name} {n}" for name, n in list(stats["scopes_detail"].items())[:8])
    rows([
        ("store", storage["path"]),
        ("memories", f"{stats['memories']} ({stats['expired']} expired, {stats['deleted']} deleted)"),
        ("ops", stats["ops"]),
        ("scopes", f"{stats['scopes']}" + (f"  ({scopes})" if scopes else "")),
        ("tags", stats["tags"]),
        ("size", f"{human_bytes(storage['total_bytes'])} (db {human_bytes(storage['db_bytes'])},"
                 f" wal {human_bytes(storage['wal_bytes'])})"),
        ("per memory", "-" if per_memory is None else human_bytes(per_memory)),
        ("schema", f"v{stats['schema_version']}  site {stats['site_id'][:16]}"),
        ("sync", _sync_line(stats["sync"])),
        ("processes", ", ".join(f"{tool} {row['live']} live/{row['processes']}"
                                for tool, row in sorted(across["by_tool"].items())) or "-"),
        # Servers publish every few seconds; other processes when they close.
        *([] if across["operations"] else [("latencies", "none published yet")]),
    ])
    tool_tables(across)
    return 0


def _sync_line(sync: dict[str, Any]) -> str:
    refused = {f"{peer}: {reason}": n for peer, reasons in sync["refusals"].items() for reason, n in reasons.items()}
    line = f"{sync['peers']} peers, {sync['conflicts']} conflicts merged, {sync['rejected_ops']} ops refused"
    return line + (f"  ({', '.join(f'{k} x{n}' for k, n in refused.items())})" if refused else "")


def cmd_doctor(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Full check; exit 0 only when every check passed."""
    from .progress import Progress

    repaired: dict[str, Any] | None = None
    if args.repair:
        repaired = api.repair_fts()
        if not args.json:
            print(f"full-text index: was {repaired['found']}; rebuilt in {repaired['ms'] / 1000:.1f} s"
                  + (f" (shadow tables reset: {', '.join(repaired['shadow_tables_reset'])})"
                     if repaired["shadow_tables_reset"] else ""))
    with Progress("checking ops", unit="ops") as bar:
        report = api.doctor(progress=bar, quick=args.quick)
    if args.json:
        emit_json({**report.to_dict(), **({"repair": repaired} if repaired is not None else {})})
        return 0 if report.ok else 1
    match = "rebuild matches" if report.digest == report.rebuilt_digest else "REBUILD DIFFERS"
    rows([("integrity", report.integrity), ("fts", report.fts),
           ("ops checked", f"{report.ops_checked} ({len(report.bad_ops)} bad)"),
           ("truncated ops", "vouched for by signed cuts" if not report.cuts else "PROBLEMS"),
           ("memories", report.memories), ("state digest", f"{report.digest[:16]}  ({match})"),
           ("result", "OK" if report.ok else "PROBLEMS FOUND")])
    for problem in report.bad_ops + report.cuts + report.differences:
        print(f"  - {problem}")
    return 0 if report.ok else 1


def cmd_export(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Stream every memory to FILE or stdout (stdout carries nothing but the data)."""
    from .progress import Progress
    from .transfer import export_jsonl, export_to_file

    with Progress("exporting", total=api.counts()["memories"], unit="memories") as bar:
        if args.file == "-":
            sys.stdout.flush()
            export_jsonl(api, sys.stdout.buffer, bar)
            return 0
        count = export_to_file(api, args.file, bar)
    if args.json:
        emit_json({"exported": count, "file": args.file})
    else:
        print(f"exported {count} memories to {args.file}")
    return 0


def cmd_import(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Import JSON Lines; exit 1 if any line was rejected (the good lines are kept)."""
    from ..integrations.neuralsync2 import locate
    from .progress import Progress
    from .transfer import import_jsonl

    home = None if args.file == "-" else locate(args.file)
    persona = None
    if home is not None:
        from .migrate import import_neuralsync2, print_token_hint

        report, persona = import_neuralsync2(api, home)
        print_token_hint()
    elif args.file == "-":
        report = import_jsonl(api, getattr(sys.stdin, "buffer", sys.stdin))
    else:
        with open(args.file, "rb") as source, \
                Progress("importing", os.fstat(source.fileno()).st_size, unit="B") as bar:
            report = import_jsonl(api, source, progress=bar)
    for line_no, reason in report.rejections:
        print(f"{PROG}: line {line_no}: {reason}", file=sys.stderr)
    if report.rejected > len(report.rejections):
        print(f"{PROG}: ... and {report.rejected - len(report.rejections)} more rejected lines", file=sys.stderr)
    if args.json:
        emit_json({**report.to_dict(), **({"persona": persona} if persona else {})})
    else:
        print(report.summary + (f"; persona {persona}" if persona else ""))
    if not report.ok:
        print(f"{PROG}: error: {report.rejected} line(s) rejected; {report.summary}", file=sys.stderr)
    return 0 if report.ok else 1


def cmd_migrate(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Import a NeuralSync2 home and give its clients the token (see :mod:`.migrate`)."""
    from .migrate import cmd_migrate as migrate

    return migrate(api, args)


def cmd_optimize(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Run maintenance; prints what was done and probe latency before and after."""
    report = api.optimize_performance()
    if args.json:
        emit_json(report)
        return 0
    for action in report["actions"]:
        print(f"- {action}")
    met = "met" if report["met"] else "missed"
    rows([("probe before", f"{report['before_ms']:.4f} ms"), ("probe after", f"{report['after_ms']:.4f} ms"),
           ("target", f"{report['target_ms']:g} ms ({met})"), ("took", f"{report['duration_ms']:.1f} ms")])
    return 0


# ================================================================ input helpers
def _tags(values: list[str] | None) -> list[str]:
    """Repeatable ``--tag`` values, each possibly comma-separated."""
    return [part.strip() for value in values or () for part in value.split(",") if part.strip()]


def _metadata(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    value = parse_json(text, "metadata", one_field=True)
    if not isinstance(value, dict):
        raise InvalidInput("metadata", f"must be a JSON object, not {type(value).__name__}")
    return value


def _time(text: str | None, option: str) -> int | None:
    """Epoch ms from ``--since``/``--until``: digits are epoch ms, ``7d`` an age, else ISO-8601."""
    if text is None:
        return None
    from ..validation import timestamp  # light module (no sqlite); keeps one ISO parser

    text = text.strip()
    if text.isdigit():
        return timestamp(int(text), option)
    relative = _RELATIVE.match(text)
    if relative:
        return int(time.time() * 1000) - int(relative[1]) * _UNIT_MS[relative[2]]
    return timestamp(text, option)

