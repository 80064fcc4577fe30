"""Access statistics, recorded off the hot path in batches.

Reads only append ids to an in-memory buffer; a background thread (started on
first use) writes them every ``interval`` seconds in one short transaction, and
``close`` flushes what is left. If another process holds the write lock, the
buffer is kept for the next round: statistics are best-effort, memories are not.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from itertools import repeat

from ..errors import NeuralSyncError
from ..model import Memory
from ..utils import Periodic, now_ms
from .storage import Storage

log = logging.getLogger(__name__)


class AccessRecorder:
    """Buffers (memory id -> hits) and flushes them to the ``access`` table."""

    def __init__(self, storage: Storage, interval: float = 1.0) -> None:
        self._storage = storage
        self._pending: Counter[str] = Counter()
        self._last: dict[str, int] = {}  # when each pending id was last returned
        self._lock = threading.Lock()
        self._flusher = Periodic("neuralsync-access", interval, self.flush)

    def with_pending(self, memory: Memory) -> Memory:
        """``memory`` (read with its statistics) plus the hits this process has not written yet."""
        with self._lock:
            hits = self._pending.get(memory.id, 0)
            at = self._last.get(memory.id)
        if not hits:
            return memory
        return memory._replace(access_count=memory.access_count + hits,
                               accessed_at=max(at or 0, memory.accessed_at or 0) or None)

    def record(self, ids: list[str]) -> None:
        """Note that these memories were returned to a caller."""
        if not ids:
            return
        at = now_ms()
        with self._lock:
            self._pending.update(ids)
            self._last.update(zip(ids, repeat(at)))
        self._flusher.start()

    def flush(self) -> None:
        """Write buffered hits now (best-effort)."""
        with self._lock:
            batch, self._pending = self._pending, Counter()
            last, self._last = self._last, {}
        if not batch:
            return
        at = now_ms()
        try:
            with self._storage.write() as conn:
                conn.executemany(
                    "INSERT INTO access(mem, accessed_at, access_count)"
                    " SELECT rowid, ?, ? FROM memories WHERE id = ?"
                    " ON CONFLICT(mem) DO UPDATE SET accessed_at = excluded.accessed_at,"
                    " access_count = access_count + excluded.access_count",
                    [(last.get(mid, at), hits, mid) for mid, hits in batch.items()])
        except NeuralSyncError as exc:
            log.debug("access statistics deferred: %s", exc)
            with self._lock:
                self._pending.update(batch)
                self._last = {**last, **self._last}

    def close(self) -> None:
        """Stop the thread and flush the remainder."""
        self._flusher.stop()
        self.flush()
