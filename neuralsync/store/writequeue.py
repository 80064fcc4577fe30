"""A write queue with group commit: one writer thread, one transaction per group of callers.

Pure mechanism: it knows transactions, not memories. Callers :meth:`WriteQueue.submit`
a unit (a callable taking the writer's connection) and wait for its own result.
The writer thread takes every unit waiting, opens one write transaction
(``BEGIN IMMEDIATE``), runs each unit in its own ``SAVEPOINT`` (a unit that
raises rolls back only its own part and gets its own error; the others go on)
and commits once: eight concurrent writers cost one commit, not eight, and
never fight over SQLite's write lock (whose busy handler sleeps).

- Latency: when the queue is idle a unit runs at once; units that arrive while
  a group runs form the next group (up to ``max_group`` units; more arriving
  during a group join it for at most ``window_s``). Nothing waits on a timer.
- The writer's connection is its own thread's (``Storage`` gives one per
  thread), so a unit's reads inside the transaction see its own writes.
- A unit that itself writes through ``Storage.write`` nests (savepoints), and
  code already inside a write transaction on its own thread must run inline,
  not submit (it would wait on a writer that waits on its lock): see
  :meth:`WriteQueue.owns_thread` and the facade's ``_write``.
- :meth:`exclusive` is the slot for a transaction that must run on the
  caller's own thread (a ``batch_operations`` block): the writer finishes its
  group, then waits, holding no lock, until the slot is released; a FIFO unit
  like any other.
- :meth:`close` drains: every unit submitted before it commits or gets its
  error; later submits raise :class:`~neuralsync.errors.StoreError`.
- Waiting is bounded like waiting on SQLite's lock: a unit (or a turn) the writer
  has not started within ``wait_s`` is withdrawn and its caller gets
  :class:`~neuralsync.errors.StoreBusy`; one already running is waited for.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import StoreBusy, StoreError
from .storage import Storage

log = logging.getLogger(__name__)

T = TypeVar("T")
Unit = Callable[[sqlite3.Connection], Any]

DEFAULT_MAX_GROUP = 64
DEFAULT_WINDOW_S = 0.002
DEFAULT_WAIT_S = 40.0
JOIN_TIMEOUT_S = 30.0


@dataclass
class _Job:
    unit: Unit
    future: Future[Any] = field(default_factory=Future)


@dataclass
class _Slot:
    """An exclusive turn: the writer sets ``granted`` and waits for ``released``."""

    granted: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    withdrawn: bool = False


_STOP = object()


class WriteQueue:
    """Group commit over one :class:`Storage` from a dedicated writer thread."""

    def __init__(self, storage: Storage, *, max_group: int = DEFAULT_MAX_GROUP,
                 window_s: float = DEFAULT_WINDOW_S, wait_s: float = DEFAULT_WAIT_S,
                 name: str = "neuralsync-writer") -> None:
        if max_group < 1 or window_s < 0 or wait_s <= 0:
            raise StoreError("a write queue needs max_group >= 1, window_s >= 0 and wait_s > 0")
        self.storage = storage
        self.max_group = max_group
        self.window_s = window_s
        self.wait_s = wait_s
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders submit against close
        self._closed = False
        self._held: deque[Any] = deque()  # taken from the inbox, not yet run (writer thread only)
        self._group: list[_Job] = []
        self.groups = 0  # committed groups and units: what group commit bought
        self.units = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ callers
    def submit(self, unit: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``unit(conn)`` in the writer's transaction; its result once committed, or its error."""
        future = self.submit_async(unit)
        try:
            return future.result(self.wait_s)
        except FutureTimeout:
            if future.cancel():  # not started: withdrawn, it will never run
                raise StoreBusy(f"the store's writer did not reach this write within {self.wait_s:.0f} s") from None
            return future.result()

    def submit_async(self, unit: Unit) -> Future[Any]:
        """Queue ``unit``; the future resolves after the commit of its group (or with its error)."""
        if self.owns_thread():
            raise StoreError("the writer thread cannot submit to its own queue: run the unit inline")
        job = _Job(unit)
        with self._lock:
            if self._closed:
                raise StoreError("the write queue is closed")
            self._inbox.put(job)
        return job.future

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the store's writer turn (in queue order) while the caller writes on its own thread."""
        slot = _Slot()
        with self._lock:
            if self._closed:
                raise StoreError("the write queue is closed")
            self._inbox.put(slot)
        if not slot.granted.wait(self.wait_s):
            with slot.lock:
                if not slot.granted.is_set():
                    slot.withdrawn = True
                    raise StoreBusy(f"the store's writer did not give this batch its turn within {self.wait_s:.0f} s")
        try:
            yield
        finally:
            slot.released.set()

    def owns_thread(self) -> bool:
        """True on the writer thread itself."""
        return threading.current_thread() is self._thread

    @property
    def running(self) -> bool:
        """True until :meth:`close`."""
        return not self._closed

    def close(self) -> None:
        """Stop accepting units, let the writer finish every unit already queued, join it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._inbox.put(_STOP)
        if not self.owns_thread():
            self._thread.join(JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("the writer thread did not stop within %.0f s", JOIN_TIMEOUT_S)

    # ------------------------------------------------------------ the writer
    def _next(self, block: bool) -> Any:
        """The next item: one held back from a full group first, else the inbox (None: empty)."""
        if self._held:
            return self._held.popleft()
        if block:
            return self._inbox.get()
        try:
            return self._inbox.get_nowait()
        except queue.Empty:
            return None

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - a writer bug must not leave callers waiting forever
            log.error("the write queue stopped: %s: %s", type(exc).__name__, exc)
            with self._lock:
                self._closed = True
            for job in self._group:
                _fail(job, StoreError(f"the write queue stopped: {exc}"))
            self._fail_leftovers()

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            item = self._next(block=True)
            group: list[_Job] = []
            self._group = group  # what a writer failure must still answer
            while item is not None:
                if item is _STOP:
                    stopping = True
                    break
                if isinstance(item, _Slot):
                    self._commit(group)
                    group.clear()
                    self._grant(item)
                else:
                    group.append(item)
                    if len(group) >= self.max_group:
                        break
                item = self._next(block=False)
            self._commit(group)
        self._fail_leftovers()

    @staticmethod
    def _grant(slot: _Slot) -> None:
        with slot.lock:
            if slot.withdrawn:
                return
            slot.granted.set()
        slot.released.wait()

    def _commit(self, group: list[_Job]) -> None:
        """Run ``group`` (and units arriving meanwhile, within the window) in one transaction."""
        if not group:
            return
        done: list[tuple[_Job, bool, Any]] = []
        try:
            with self.storage.write() as conn:
                deadline = time.monotonic() + self.window_s
                index = 0
                while index < len(group):
                    job = group[index]
                    index += 1
                    if job.future.set_running_or_notify_cancel():
                        done.append(self._run_unit(job, conn))
                    if index == len(group) and len(group) < self.max_group and time.monotonic() < deadline:
                        self._take_more(group)
        except BaseException as exc:  # noqa: BLE001 - BEGIN or COMMIT failed: every unit of the group fails
            for job in group:
                _fail(job, exc)
            return
        self.groups += 1
        self.units += len(done)
        for job, ok, value in done:
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)

    def _run_unit(self, job: _Job, conn: sqlite3.Connection) -> tuple[_Job, bool, Any]:
        try:
            with self.storage.write():  # the unit's own savepoint: its failure undoes only its part
                return job, True, job.unit(conn)
        except BaseException as exc:  # noqa: BLE001 - the unit's error goes to its own caller
            return job, False, exc

    def _take_more(self, group: list[_Job]) -> None:
        """Add units already waiting; a slot or the stop marker ends the group and is held for next."""
        while len(group) < self.max_group:
            item = self._next(block=False)
            if item is None:
                return
            if not isinstance(item, _Job):
                self._held.append(item)
                return
            group.append(item)

    def _fail_leftovers(self) -> None:
        while True:
            item = self._next(block=False)
            if item is None:
                return
            if isinstance(item, _Job):
                _fail(item, StoreError("the write queue is closed"))
            elif isinstance(item, _Slot):
                with item.lock:
                    item.granted.set()  # its owner writes alone now; nobody else will


def _fail(job: _Job, exc: BaseException) -> None:
    """Give ``job`` its error unless it already has an outcome (or was cancelled)."""
    if job.future.done():
        return
    if job.future.running() or job.future.set_running_or_notify_cancel():
        job.future.set_exception(exc)
