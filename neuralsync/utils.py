"""Small helpers with no dependencies: wall-clock milliseconds and time-ordered ids."""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["now_ms", "new_id", "is_valid_id", "ID_PATTERN", "Periodic", "read_only_uri", "pid_alive"]

# Ids are UUIDv7-shaped hex strings without dashes: 48-bit ms timestamp, then
# randomness. Lexicographic order is creation order, which keeps the primary
# key B-tree append-mostly and lets `range_recall` fall back on the id.
_log = logging.getLogger(__name__)
ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")

_id_lock = threading.Lock()
_last_ms = 0
_seq = 0
# Ids need uniqueness, not secrecy: a generator seeded from the OS per process
# (and re-seeded in a forked child, which would otherwise repeat the parent's
# sequence) is ~10x cheaper than a system call per id.
_rng = random.Random(os.urandom(16))


def _reseed() -> None:
    global _rng
    _rng = random.Random(os.urandom(16))


os.register_at_fork(after_in_child=_reseed)


def now_ms() -> int:
    """Milliseconds since the Unix epoch (wall clock)."""
    return time.time_ns() // 1_000_000


def new_id(at_ms: int | None = None) -> str:
    """A 32-hex-char, time-ordered, globally unique id (UUIDv7 layout).

    Within one millisecond a 12-bit counter keeps ids from one process strictly
    increasing; 62 random bits keep ids from different processes apart.
    """
    global _last_ms, _seq
    ms = now_ms() if at_ms is None else at_ms
    with _id_lock:
        if ms <= _last_ms and at_ms is None:
            ms = _last_ms
            _seq += 1
            if _seq > 0xFFF:  # counter exhausted: borrow the next millisecond
                ms += 1
                _seq = 0
        else:
            _seq = 0
        _last_ms = max(_last_ms, ms)
        seq = _seq
    rand = _rng.getrandbits(62)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand
    return f"{value:032x}"


def derived_id(at_ms: int, key: bytes) -> str:
    """A deterministic id in the same time-ordered layout, for records that arrive
    without one (imports): the same content and time always give the same id."""
    import hashlib

    digest = int.from_bytes(hashlib.sha256(key).digest()[:10], "big")
    seq, rand = digest >> 68 & 0xFFF, digest & ((1 << 62) - 1)
    value = (at_ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand
    return f"{value:032x}"


def read_only_uri(path: str | os.PathLike[str]) -> str:
    """A ``file:`` URI opening an SQLite file read-only; percent-escaped, so '?', '#' or '%' in a path are safe."""
    return Path(path).resolve().as_uri() + "?mode=ro"


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def is_valid_id(value: object) -> bool:
    """True for a well-formed memory id (does not check existence)."""
    return isinstance(value, str) and ID_PATTERN.match(value) is not None


class Periodic:
    """Runs ``task`` every ``interval`` seconds on one daemon thread, from ``start`` until ``stop``;
    ``wake`` runs it at once (a write arrived and the work should not wait for the interval).

    Background work (heartbeats, statistics, index upkeep) must never take its
    process down: a failing run is logged and retried at the next interval.
    ``start`` is idempotent and does nothing once stopped.
    """

    def __init__(self, name: str, interval: float, task: Callable[[], object]) -> None:
        self.name = name
        self._interval = interval
        self._task = task
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the thread unless it runs already or was stopped."""
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def wake(self) -> None:
        """Run the task now rather than at the end of the interval (no effect before ``start``)."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop for good and wait (bounded) for a run in progress."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._task()
            except Exception:  # noqa: BLE001 - see the class docstring
                _log.warning("%s failed; retrying in %.0f s", self.name, self._interval, exc_info=True)
