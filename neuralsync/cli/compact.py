"""``neuralsync compact``: what the store holds that it need not (``--analyze``), the plan
(``--dry-run``), and compaction itself, with progress on the long steps."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput
from ..model import COMPACT_STRATEGIES
from .output import emit_json, human_bytes, rows

REWRITE_HINT_BYTES = 8 << 20  # below this, the full rewrite is not worth a line

if TYPE_CHECKING:
    from ..unified_memory_api import UnifiedMemoryAPI



def add_compact_command(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``compact`` on the CLI's subcommand factory."""
    cmd = add("compact", cmd_compact, "reclaim space: purge expired memories, merge duplicates, FTS merge, "
                                      "vector index rebuild, WAL checkpoint, incremental vacuum;"
                                      " a full rewrite only with --strategy rewrite")
    cmd.add_argument("--analyze", action="store_true", help="only measure what could be reclaimed")
    cmd.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    cmd.add_argument("--strategy", action="append", metavar="NAME",
                     help=f"only this one (repeatable): {', '.join(COMPACT_STRATEGIES)}")
    cmd.add_argument("--quota", type=int, metavar="BYTES",
                     help="archive the memories of least value until the live ones fit (archive_over_quota)")

    cmd = add("archive", cmd_archive, "take memories out of recall (they stay; see --list, unarchive)")
    cmd.add_argument("ids", nargs="*", metavar="ID")
    cmd.add_argument("--list", action="store_true", help="list archived memories")
    cmd.add_argument("--limit", type=int, default=50, help="with --list: at most this many (default: 50)")
    cmd = add("unarchive", cmd_unarchive, "bring an archived memory back into recall")
    cmd.add_argument("id")


def cmd_compact(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Analyze, plan or compact."""
    if args.analyze:
        report = api.compact_analyze()
        if args.json:
            emit_json(report)
            return 0
        rows([("database", human_bytes(report["db_bytes"])), ("WAL", human_bytes(report["wal_bytes"])),
              ("free pages", f"{report['free_pages']:,} ({report['fragmentation']:.1%})"),
              ("memories", f"{report['memories']:,} live, {report['expired']:,} expired, "
                           f"{report['tombstones']:,} deleted"),
              ("duplicates", f"{report['duplicates']:,} in {report['duplicate_clusters']:,} clusters"),
              ("FTS segments", str(report["fts_segments"])),
              ("vector index", f"{report['vector_index_lag']:,} rows behind, "
                               f"{report['vectors_removed_but_indexed']:,} removed but indexed"),
              ("op log", human_bytes(report["oplog_bytes"]))])
        print("reclaimable (estimated):")
        rows([(name, human_bytes(size)) for name, size in report["reclaimable_bytes"].items()])
        return 0
    strategies = args.strategy or None
    if args.dry_run:
        plan = api.compact(strategies, dry_run=True, quota_bytes=args.quota)
        if args.json:
            emit_json(plan)
        else:
            rows([(step["strategy"], human_bytes(step["reclaim_bytes"]) + _detail(step)) for step in plan["plan"]])
        return 0
    from .progress import Progress

    bars: dict[str, Progress] = {}

    def progress(step: str, done: int, total: int) -> None:
        bar = bars.get(step)
        if bar is None:
            bar = bars[step] = Progress(step.replace("_", " "), total)
        bar(done, total)

    try:
        report = api.compact(strategies, progress=progress, quota_bytes=args.quota)
    finally:
        for bar in bars.values():
            bar.close()
    if args.json:
        emit_json(report)
        return 0
    for step in report["steps"]:
        shown = {k: v for k, v in step.items() if k not in ("strategy", "ms")}
        print(f"- {step['strategy']}: {shown} ({step['ms']:.0f} ms)")
    change = report["reclaimed_bytes"]
    verb = f"reclaimed {human_bytes(change)}" if change >= 0 else f"grew by {human_bytes(-change)} (new ops)"
    print(f"{verb}: {human_bytes(report['before']['total_bytes'])} -> {human_bytes(report['after']['total_bytes'])}")
    for line in _left_lines(report["left"], report["after"]["total_bytes"], strategies):
        print(line)
    return 0


def _left_lines(left: dict[str, Any], total: int, strategies: list[str] | None) -> list[str]:
    """What this compaction left for later, and how to get it, in the user's terms."""
    lines = []
    if left["merges_in_undo_window"]:
        ends = time.strftime("%Y-%m-%d", time.localtime(left["undo_window_ends_at"] / 1000))
        lines.append(f"{left['merges_in_undo_window']:,} merged memories keep their ops for undo until {ends}"
                     " (merge_undo_days); a compaction after that returns their space")
    if "rewrite" not in (strategies or ()) and left["rewrite_bytes"] > max(REWRITE_HINT_BYTES, total // 10):
        lines.append(f"{human_bytes(left['rewrite_bytes'])} more is free inside the file: a full rewrite returns"
                     " it (neuralsync compact --strategy rewrite), holding the store while it runs (about a second"
                     " per 100 MB measured here), so run it when no agent is writing")
    return lines


def cmd_archive(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Archive memories, or list the archived ones."""
    if args.list:
        memories = api.archived(args.limit)
        if args.json:
            emit_json([m.to_dict() for m in memories])
        for memory in memories if not args.json else ():
            print(f"{memory.id}  {memory.scope}  {memory.content[:80]!r}")
        return 0
    if not args.ids:
        raise InvalidInput("ids", "name at least one memory to archive (or --list)")
    count = api.archive(args.ids)
    if args.json:
        emit_json({"archived": count})
    else:
        print(f"archived {count}")
    return 0


def cmd_unarchive(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Bring one memory back."""
    memory = api.unarchive(args.id)
    if args.json:
        emit_json(memory.to_dict())
    else:
        print(memory.id)
    return 0


def _detail(step: dict[str, Any]) -> str:
    if "memories" in step:
        return f" ({step['memories']:,} memories)"
    if "mode" in step:
        return f" ({step['mode']})"
    return ""
