"""The facade's door onto the merger: merge, undo, the audit trail, scans for duplicates.

A mixin of :class:`~neuralsync.unified_memory_api.UnifiedMemoryAPI`, which owns the state it uses; each
method validates and delegates, as every facade method does.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .. import validation as v
from ..config import MemoryConfig
from ..errors import InvalidInput, NeuralSyncError, NotFound
from ..model import Memory
from ..services.merger import OFF, Merger, choose_strategy
from ..services.monitor import PerformanceMonitor
from ..store.reads import Reader
from ..store.storage import Storage

if TYPE_CHECKING:
    from ..search.semantic import SemanticIndex

log = logging.getLogger("neuralsync.unified_memory_api")

MERGING = ("semantic_merge", "last_writer_wins", "content_merge")  # the strategies that merge (manual keeps both)


class MergesDoor:
    """Merges asked for, undone and listed; duplicate scans (the facade's state, shared)."""

    config: MemoryConfig
    storage: Storage
    reads: Reader
    monitor: PerformanceMonitor
    merger: Merger
    semantic: SemanticIndex | None

    if TYPE_CHECKING:  # the facade's own
        def _after_commit(self, count: int) -> None: ...
        def _require(self, record_id: str) -> Memory: ...
        def embed_pending(self, limit: int | None = None) -> int: ...
        def conflicts(self, record_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]: ...

    def merge_memories(self, into_id: str, merged_id: str, strategy: str | None = None) -> dict[str, Any]:
        """Merge memory ``merged_id`` into ``into_id`` by ``strategy`` (default: the scope's, else the
        store's; ``manual`` is not a way to merge). Returns the merge as the audit trail shows it."""
        into, other = v.memory_id(into_id, "into_id"), v.memory_id(merged_id, "merged_id")
        if strategy is not None and strategy not in MERGING:
            raise InvalidInput("strategy", f"must be one of {', '.join(MERGING)} (manual keeps both)")
        if into == other:
            raise InvalidInput("merged_id", "is the memory it would be merged into")
        with self.monitor.measure("merge"), self.storage.write() as conn:
            survivor, merged = self.reads.get(into), self.reads.get(other)
            if survivor is None:
                raise NotFound(into)
            if merged is None:
                raise NotFound(other)
            chosen = choose_strategy(self.config, survivor.scope)
            chosen = strategy or (chosen if chosen not in (OFF, "manual") else "semantic_merge")
            done = self.merger.merge_pair(conn, survivor, merged, chosen, "asked for")
            result = self.merger.find_merge(conn, done.merge_id)
        self._after_commit(1)
        return result

    def undo_merge(self, merge_id: str) -> dict[str, Any]:
        """Undo a merge (by its id, or a unique prefix of 8+ hex characters): both memories back as they
        were, as ops every replica applies. Returns the merge as the audit trail now shows it."""
        with self.monitor.measure("undo_merge"), self.storage.write() as conn:
            result = self.merger.undo(conn, merge_id)
        self._after_commit(1)
        return result

    def merges(self, limit: int = 100, memory_id: str | None = None) -> list[dict[str, Any]]:
        """Merges, newest first: who merged what into what, when, by which rule, both values."""
        record = None if memory_id is None else v.memory_id(memory_id)
        return self.merger.list_merges(v.positive_int(limit, "limit", optional=False) or 100, record)

    def merge_info(self, merge_id: str) -> dict[str, Any]:
        """One merge from the audit trail (by id or a unique prefix of 8+ hex characters)."""
        return self.merger.find_merge(self.storage.conn, merge_id)

    def merge_candidates(self, limit: int = 100) -> list[dict[str, Any]]:
        """Duplicate pairs the ``manual`` strategy kept for a person to decide (merge or leave)."""
        return self.merger.candidates(v.positive_int(limit, "limit", optional=False) or 100)

    def provenance(self, memory_id: str) -> list[dict[str, Any]]:
        """Who wrote what a memory holds: each (tool, source) with its number of writes, first and last
        time, across every memory merged into it."""
        return self.merger.provenance(self._require(v.memory_id(memory_id)).id)

    def audit_trail(self, limit: int = 100) -> list[dict[str, Any]]:
        """Merges and sync conflicts in one list, newest first (``type`` says which)."""
        k = v.positive_int(limit, "limit", optional=False) or 100
        rows = self.merger.list_merges(k) + [{"type": "conflict", **c} for c in self.conflicts(None, k)]
        return sorted(rows, key=lambda r: -int(r.get("at") or 0))[:k]

    def scan_duplicates(self, near: bool = True, threshold: float | None = None,
                        everything: bool = False) -> dict[str, Any]:
        """Merge duplicates other paths brought (peers' ops) and, with ``near``, paraphrases among the
        memories embedded since the last scan (pending vectors are computed first). ``everything``:
        look at every memory again (those stored before the merger existed, or with ``merge="off"``)."""
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                      or not 0 < threshold <= 1):
            raise InvalidInput("threshold", "must be a number in (0, 1]")
        if everything:
            self.merger.rewind(self.storage.write)
        with self.monitor.measure("scan_duplicates"):
            exact = self.merger.scan_arrived(self.storage.write)
            near_done = []
            if near and self.semantic is not None:
                self.embed_pending()
                near_done = self.merger.scan_near(self.storage.write, threshold=threshold)
        if exact or near_done:
            self._after_commit(len(exact) + len(near_done))
        return {"exact": len(exact), "near": len(near_done),
                "merges": [d.merge_id for d in (*exact, *near_done)]}

    def _store_has_another_server(self) -> bool:
        """True when another live process serves this store: its background scans and compaction are that
        process's, so an MCP server beside it does not load the model and index to repeat them."""
        from ..discovery import read_server_info

        return read_server_info(self.config.home) is not None

    def _background_scan(self) -> None:
        if not self._store_has_another_server():
            self._scan_quietly(near=True)

    def _scan_quietly(self, near: bool) -> None:
        try:
            self.scan_duplicates(near=near)
        except NeuralSyncError as exc:  # a busy store: the next scan catches up
            log.debug("duplicate scan skipped: %s", exc)
