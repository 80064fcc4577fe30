"""CLI commands of the merger: ``merges [list|show|undo|merge|pending|scan]`` and ``remember --merge``.

Handlers take the open facade and the parsed arguments, like :mod:`.app`'s.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..model import MERGE_STRATEGIES
from .output import emit_json, short_json, when

if TYPE_CHECKING:
    from ..unified_memory_api import UnifiedMemoryAPI

STRATEGY_HELP = f"one of {', '.join(MERGE_STRATEGIES)}, or off"


def add_merge_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``merges`` on the CLI's subcommand factory."""
    cmd = add("merges", cmd_merges_list, "duplicates merged (and sync conflicts): list, show, undo, merge, "
                                         "pending, scan")
    cmd.add_argument("--limit", type=int, default=50, help="at most this many (default: 50)")
    cmd.add_argument("--id", dest="memory_id", help="only merges into or of this memory")
    cmd.add_argument("--conflicts", action="store_true", help="sync conflicts too, in one list")
    actions = cmd.add_subparsers(dest="merge_action", metavar="ACTION")
    sub = actions.add_parser("list", help="merges, newest first (the default)")
    sub.add_argument("--limit", type=int, default=50, help="at most this many (default: 50)")
    sub.add_argument("--id", dest="memory_id", help="only merges into or of this memory")
    sub.add_argument("--conflicts", action="store_true", help="sync conflicts too, in one list")
    sub.set_defaults(handler=cmd_merges_list)
    sub = actions.add_parser("show", help="one merge: who, when, both values, the rule, the op ids")
    sub.add_argument("merge_id", help="the merge's id (or a unique prefix of 8+ characters)")
    sub.set_defaults(handler=cmd_merges_show)
    sub = actions.add_parser("undo", help="undo a merge: both memories back as they were (on every replica)")
    sub.add_argument("merge_id", help="the merge's id (or a unique prefix of 8+ characters)")
    sub.set_defaults(handler=cmd_merges_undo)
    sub = actions.add_parser("merge", help="merge one memory into another (e.g. a pending pair)")
    sub.add_argument("into", help="the memory to keep")
    sub.add_argument("merged", help="the memory merged into it")
    sub.add_argument("--strategy", help="semantic_merge (default), last_writer_wins or content_merge")
    sub.set_defaults(handler=cmd_merges_merge)
    sub = actions.add_parser("pending", help="pairs the manual strategy kept for you to decide")
    sub.add_argument("--limit", type=int, default=50, help="at most this many (default: 50)")
    sub.set_defaults(handler=cmd_merges_pending)
    sub = actions.add_parser("scan", help="find and merge duplicates now (peers' writes; paraphrases)")
    sub.add_argument("--no-near", action="store_true", help="exact duplicates only (no embedding)")
    sub.add_argument("--threshold", type=float, help="cosine similarity for paraphrases (default: the store's)")
    sub.add_argument("--all", dest="everything", action="store_true",
                     help="every memory again (those stored before the merger, or with --merge off)")
    sub.set_defaults(handler=cmd_merges_scan)
    for parser in actions.choices.values():
        parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def cmd_merges_list(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Merges (and with ``--conflicts`` sync conflicts), newest first."""
    rows = api.audit_trail(args.limit) if args.conflicts else api.merges(args.limit, args.memory_id)
    return _listing(rows, args.json, "no merges recorded", _line)


def _line(row: dict[str, Any]) -> str:
    if row["type"] == "conflict":
        return (f"conflict {row['record_id']} {row['field']}: kept {short_json(row['winner_value'])},"
                f" lost {short_json(row['loser_value'])} - {row['resolution']}")
    return (f"{row['merge_id'][:12]}  {when(row['at'], True)}  {row['merged'][:12]} -> {row['into'][:12]}"
            f"  {row['strategy']}  [{row['state']}]  {row['rule']}  ({short_json(row['merged_value']['content'])})")


def cmd_merges_show(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """One merge in full."""
    row = api.merge_info(args.merge_id)
    if args.json:
        emit_json(row)
        return 0
    for key in ("merge_id", "state", "at", "by", "into", "merged", "strategy", "rule", "tool", "source",
                "session", "undone_by"):
        value = when(row[key], True) if key == "at" else row[key]
        print(f"{key:>16}  {value if value is not None else '-'}")
    print(f"{'merged value':>16}  {json.dumps(row['merged_value'], ensure_ascii=False)}")
    print(f"{'survivor before':>16}  {json.dumps(row['survivor_before'], ensure_ascii=False)}")
    return 0


def cmd_merges_undo(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Undo one merge."""
    row = api.undo_merge(args.merge_id)
    if args.json:
        emit_json(row)
    else:
        print(f"undone: {row['merged']} is back beside {row['into']}")
    return 0


def cmd_merges_merge(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Merge two memories by hand."""
    row = api.merge_memories(args.into, args.merged, args.strategy)
    if args.json:
        emit_json(row)
    else:
        print(f"merged {row['merged']} into {row['into']} ({row['strategy']}); undo: neuralsync merges undo "
              f"{row['merge_id'][:16]}")
    return 0


def cmd_merges_pending(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Pairs kept by the manual strategy."""
    return _listing(api.merge_candidates(args.limit), args.json, "no pairs waiting",
                    lambda row: f"{row['a']} {row['b']}  {row['rule']}  (merge: neuralsync merges merge {row['a']}"
                                f" {row['b']})")


def _listing(rows: list[dict[str, Any]], as_json: bool, empty: str, line: Callable[[dict[str, Any]], str]) -> int:
    """Rows as JSON, or a line each (``empty`` on stderr when there are none)."""
    if as_json:
        emit_json(rows)
        return 0
    if not rows:
        print(empty, file=sys.stderr)
    for row in rows:
        print(line(row))
    return 0


def cmd_merges_scan(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Find and merge duplicates now."""
    result = api.scan_duplicates(near=not args.no_near, threshold=args.threshold, everything=args.everything)
    if args.json:
        emit_json(result)
    else:
        print(f"{result['exact']} exact and {result['near']} near duplicates merged")
    return 0


def report_remembered(outcome: Any, as_json: bool) -> None:
    """What ``remember`` prints: the id (of the memory merged into, if it merged), and a note on stderr."""
    if as_json:
        emit_json(outcome.to_dict())
        return
    print(outcome.memory.id)
    if outcome.merged:
        print(f"merged into an existing memory ({outcome.rule}; {outcome.strategy}); undo: neuralsync merges undo "
              f"{outcome.merge_id[:16]}", file=sys.stderr)
    elif outcome.candidate_of:
        print(f"kept; it repeats {outcome.candidate_of} (manual strategy: see neuralsync merges pending)",
              file=sys.stderr)


