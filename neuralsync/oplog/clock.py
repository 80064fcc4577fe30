"""Hybrid logical clock (Kulkarni et al., 2014), packed in one 63-bit integer.

``hlc = wall_ms << 16 | counter``. Comparing two values compares physical time
first and the logical counter second.

A remote clock moves this replica's clock only within ``max_skew_ms`` of its
own wall clock: one op stamped in the far future (or at the largest encodable
value) is applied like any other, but never drags the clocks of later local
ops, which stay near real time. Causal order does not depend on the stamped
clocks: it comes from the hash graph (see ``materialize.effective_clock``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..utils import now_ms

LOGICAL_BITS = 16
HLC_MAX = (1 << 63) - 1
DEFAULT_MAX_SKEW_MS = 5 * 60 * 1000


def hlc_ms(hlc: int) -> int:
    """The physical (wall-clock milliseconds) part of an HLC value."""
    return hlc >> LOGICAL_BITS


def pack(ms: int, counter: int = 0) -> int:
    """Pack a millisecond time and a logical counter into one HLC integer."""
    return (ms << LOGICAL_BITS) | counter


class HybridClock:
    """A thread-safe HLC for one replica; persistent state lives in the op log."""

    def __init__(self, wall: Callable[[], int] = now_ms, max_skew_ms: int = DEFAULT_MAX_SKEW_MS):
        self._wall = wall
        self._max_skew_ms = max_skew_ms
        self._last = 0
        self._lock = threading.Lock()

    def tick(self, after: int = 0) -> int:
        """A new clock value greater than the last one issued and, within the skew bound, than ``after``.

        ``after`` is the largest clock among the op's predecessors. An honest
        predecessor (within the skew) is passed, so causally later local ops
        normally carry larger clocks; an absurd one is not followed.
        """
        with self._lock:
            ceiling = pack(self._wall() + self._max_skew_ms)
            candidate = max(pack(self._wall()), self._last + 1, min(after + 1, ceiling))
            self._last = candidate
            return candidate

    def observe(self, remote: int) -> None:
        """Fold a clock seen on an op into local state, within the skew bound."""
        with self._lock:
            ceiling = pack(self._wall() + self._max_skew_ms)
            self._last = max(self._last, min(remote, ceiling))

    @property
    def max_skew_ms(self) -> int:
        """How far ahead of the wall clock a remote op may move this clock."""
        return self._max_skew_ms
