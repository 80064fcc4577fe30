"""JSON Lines export and import of memories, streamed.

One memory per line: ``Memory.to_dict()`` without the search ``score``. Both
directions stream in bounded batches, so a store or file larger than memory
moves through in constant space. Import is idempotent (a memory whose id is
already present, or was forgotten here, is skipped), so a failed or repeated
import is fixed by running it again.

This module holds no argument parsing and no SQL: it talks only to the facade
(``iter_memories``, ``import_memory``, ``batch_operations``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import IO, TYPE_CHECKING, Any, TypeVar

from ..errors import InvalidInput
from ..json_input import parse_json

if TYPE_CHECKING:  # the facade pulls in sqlite3 and nacl; keep this module light to import
    from ..model import Memory
    from ..unified_memory_api import UnifiedMemoryAPI

__all__ = ["ImportReport", "export_jsonl", "export_record", "export_to_file", "import_jsonl", "import_records"]

BATCH_SIZE = 500
MAX_LISTED_REJECTIONS = 100  # reasons kept for the report; the count is always exact
_BOM = "\ufeff"
T = TypeVar("T")


# ---------------------------------------------------------------- export
def export_record(memory: Memory) -> dict[str, Any]:
    """The exported form of a memory: everything but the query-dependent score."""
    record = memory.to_dict()
    record.pop("score", None)
    return record


def export_jsonl(api: UnifiedMemoryAPI, out: IO[bytes], progress: Callable[[int], None] | None = None) -> int:
    """Write every live memory as one JSON line (UTF-8); returns how many were written.

    Bytes, not text, so the file is UTF-8 whatever the locale of the terminal.
    """
    count = 0
    for memory in api.iter_memories():
        line = json.dumps(export_record(memory), ensure_ascii=False, separators=(",", ":"))
        out.write(line.encode("utf-8") + b"\n")
        count += 1
        if progress is not None:
            progress(count)
    out.flush()
    return count


def export_to_file(api: UnifiedMemoryAPI, path: str | os.PathLike[str],
                   progress: Callable[[int], None] | None = None) -> int:
    """Export to ``path`` through a temporary name, so a failed export never leaves a
    truncated file that looks complete (or clobbers the previous good one)."""
    partial = f"{os.fspath(path)}.partial"
    try:
        with open(partial, "wb") as out:
            count = export_jsonl(api, out, progress)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return count


# ---------------------------------------------------------------- import
@dataclass
class ImportReport:
    """What an import did: ``rejected`` counts every bad line, ``rejections`` lists the first few."""

    imported: int = 0
    skipped: int = 0
    rejected: int = 0
    lines: int = 0
    rejections: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no line was rejected."""
        return self.rejected == 0

    def reject(self, line_no: int, reason: str) -> None:
        """Count a bad line, keeping its reason while the list is short."""
        self.rejected += 1
        if len(self.rejections) < MAX_LISTED_REJECTIONS:
            self.rejections.append((line_no, reason))

    @property
    def summary(self) -> str:
        """One line for people."""
        return f"imported {self.imported}, skipped {self.skipped} (already present), rejected {self.rejected}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (rejections as ``{"line", "reason"}`` objects)."""
        return {"imported": self.imported, "skipped": self.skipped, "rejected": self.rejected,
                "lines": self.lines, "ok": self.ok,
                "rejections": [{"line": n, "reason": r} for n, r in self.rejections]}


def import_jsonl(api: UnifiedMemoryAPI, lines: Iterable[bytes | str], batch_size: int = BATCH_SIZE,
                 progress: Callable[[int], None] | None = None) -> ImportReport:
    """Import JSON lines, one transaction per ``batch_size`` lines.

    A bad line (broken JSON, bad UTF-8, a field that fails validation) is
    rejected with its line number and the import goes on; nothing of it is
    written, because the facade validates before writing. Counts are added
    only after a batch commits, so the report never claims what a failed
    commit rolled back. ``progress`` receives the number of bytes read so far.
    """
    consumed = 0

    def numbered() -> Iterator[tuple[int, bytes | str]]:
        nonlocal consumed
        for line_no, raw in enumerate(lines, start=1):
            consumed += len(raw)
            yield line_no, raw

    tick = (lambda _report: progress(consumed)) if progress is not None else None
    return _import_batches(api, numbered(), _import_line, batch_size, tick)


def import_records(api: UnifiedMemoryAPI, records: Iterable[tuple[int, dict[str, Any]]],
                   batch_size: int = BATCH_SIZE, progress: Callable[[int], None] | None = None) -> ImportReport:
    """Import already parsed records (position, record), e.g. from a NeuralSync2 home."""
    tick = (lambda report: progress(report.lines)) if progress is not None else None
    return _import_batches(api, records, _import_record, batch_size, tick)


def _import_batches(api: UnifiedMemoryAPI, items: Iterable[tuple[int, Any]],
                    handle: Callable[[UnifiedMemoryAPI, int, Any, ImportReport], str], batch_size: int,
                    tick: Callable[[ImportReport], None] | None) -> ImportReport:
    report = ImportReport()
    for chunk in _chunks(items, batch_size):
        imported = skipped = 0
        with api.batch_operations():
            for position, item in chunk:
                outcome = handle(api, position, item, report)
                imported += outcome == "imported"
                skipped += outcome == "skipped"
        report.imported += imported
        report.skipped += skipped
        report.lines = chunk[-1][0]
        if tick is not None:
            tick(report)
    return report


def _import_line(api: UnifiedMemoryAPI, line_no: int, raw: bytes | str, report: ImportReport) -> str:
    """Import one line; returns ``imported``, ``skipped``, ``blank`` or ``rejected``."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        report.reject(line_no, f"not valid UTF-8 (byte {exc.start + 1})")
        return "rejected"
    if line_no == 1:
        text = text.removeprefix(_BOM)  # editors on Windows like to add one
    if not text.strip():
        return "blank"
    try:
        record = parse_json(text, "record")
    except InvalidInput as exc:
        report.reject(line_no, f"invalid JSON: {exc}")
        return "rejected"
    return _import_record(api, line_no, record, report)


def _import_record(api: UnifiedMemoryAPI, position: int, record: Any, report: ImportReport) -> str:
    try:
        return "imported" if api.import_memory(record) else "skipped"
    except InvalidInput as exc:
        report.reject(position, str(exc))
        return "rejected"


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most ``size`` items, pulled lazily (bounded memory)."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
