"""Stage timing inside an operation: which part of a slow call took the time.

``with stage("embed"): ...`` adds the block's duration to the operation the
current thread is timing (``services.monitor`` opens one per facade call);
outside a timed operation it costs one thread-local read and times nothing.
Standard library only: the lower layers (store, oplog, search, replication)
mark their stages here without importing the monitor above them.
"""

from __future__ import annotations

import threading
from time import perf_counter
from types import TracebackType

PARSE = "parse"
EMBED = "embed"
TEXT_SEARCH = "text_search"
VECTOR_SEARCH = "vector_search"
FUSION = "fusion"
SQLITE_WRITE = "sqlite_write"
LOCK_WAIT = "lock_wait"
COMMIT = "commit"
SYNC_VERIFY = "sync_verify"
SYNC_APPLY = "sync_apply"
STAGES = (PARSE, EMBED, TEXT_SEARCH, VECTOR_SEARCH, FUSION, SQLITE_WRITE, LOCK_WAIT, COMMIT, SYNC_VERIFY,
          SYNC_APPLY)

current = threading.local()
"""``current.acc``: the running operation's {stage: seconds} on this thread, or absent/None."""


class stage:
    """Time the block into the current operation's stage ``name`` (nested stages both count)."""

    __slots__ = ("name", "_acc", "_start")

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        self._acc: dict[str, float] | None = getattr(current, "acc", None)
        if self._acc is not None:
            self._start = perf_counter()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        acc = self._acc
        if acc is not None:
            acc[self.name] = acc.get(self.name, 0.0) + perf_counter() - self._start
