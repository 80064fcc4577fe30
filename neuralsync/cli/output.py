"""How the CLI prints: aligned rows, memories, latency tables, JSON for scripts, sizes and dates."""

from __future__ import annotations

import json
import shutil
import textwrap
import time
from collections.abc import Sequence
from typing import Any

from ..model import Memory


def human_bytes(size: float) -> str:
    """``1536`` -> ``1.5 KB``: sizes people read at a glance."""
    for suffix in ("B", "KB", "MB", "GB"):
        if size < 1024 or suffix == "GB":
            break
        size /= 1024
    return f"{size:.0f} {suffix}" if suffix == "B" else f"{size:.1f} {suffix}"


def emit_json(value: Any) -> None:
    """Indented, UTF-8 JSON: stable for scripts (field order is the model's), readable in a pinch."""
    print(json.dumps(value, indent=2, ensure_ascii=False))


def short_json(value: object, width: int = 60) -> str:
    """A value as JSON on one short line (cut with '...')."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[:width - 3] + "..."


def show_memory(memory: Memory, as_json: bool) -> None:
    if as_json:
        emit_json(memory.to_dict())
        return
    accessed = f"{memory.access_count} times" + (f", last {when(memory.accessed_at, True)}"
                                                 if memory.accessed_at else "")
    rows([("id", memory.id), ("scope", memory.scope), ("kind", memory.kind),
           ("tags", ", ".join(memory.tags) or "-"), ("priority", f"{memory.priority:g}"),
           ("confidence", f"{memory.confidence:g}"), ("tool", memory.tool or "-"),
           ("source", memory.source or "-"), ("session", memory.session or "-"),
           ("metadata", json.dumps(memory.metadata, ensure_ascii=False) if memory.metadata else "-"),
           ("created", when(memory.created_at, True)), ("updated", when(memory.updated_at, True)),
           ("expires", when(memory.expires_at, True) if memory.expires_at else "never"),
           ("accessed", accessed)])
    print()
    print(textwrap.indent(memory.content, "  "))


def rows(pairs: Sequence[tuple[str, object]]) -> None:
    """Aligned ``label  value`` lines."""
    pad = max(len(label) for label, _ in pairs)
    for label, value in pairs:
        print(f"{label:<{pad}}  {value}")


def latency_table(operations: dict[str, dict[str, Any]], title: str = "operation") -> None:
    if not operations:
        return
    print(f"\n{title:<22}{'count':>7}{'avg ms':>10}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}  bottleneck")
    for name, s in operations.items():
        stages = s.get("stages") or {}
        slowest = max(stages, key=lambda k: stages[k]["total_ms"]) if stages else ""
        print(f"{name:<22}{s['count']:>7}{s['avg_ms']:>10.3f}{s['p50_ms']:>9.3f}"
              f"{s['p95_ms']:>9.3f}{s['p99_ms']:>9.3f}{s['max_ms']:>9.3f}  {slowest}")


def tool_tables(across: dict[str, Any]) -> None:
    """Latencies per tool, every process of the store together (what each published)."""
    for tool, row in sorted(across["by_tool"].items()):
        if row["operations"]:
            print(f"\n{tool}: {row['live']} live, {row['processes'] - row['live']} ended process(es)")
            latency_table(row["operations"])


def labels(memory: Memory) -> str:
    tags = " ".join(f"#{tag}" for tag in memory.tags)
    return " · ".join(part for part in (memory.scope, memory.kind, tags) if part)


def when(ms: int | None, seconds: bool = False) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M", time.localtime(ms / 1000))


def one_line(text: str, width: int) -> str:
    """Content squeezed onto one table row, so a list stays one memory per line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def width() -> int:
    """Terminal width, capped: very long lines are harder to read than wrapped ones."""
    return min(120, shutil.get_terminal_size((100, 24)).columns)
