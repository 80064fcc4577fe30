"""Hybrid logical clock (Kulkarni et al., 2014), packed in one 63-bit integer.

``hlc = wall_ms << 16 | counter``. Comparing two values compares physical time
first and the logical counter second. A local op's clock is always greater than
every predecessor's (validity rule in ``crdt``), so causally later ops carry
larger clocks. A remote clock far in the future cannot drag this replica's own
clock: ``HybridClock.observe`` only moves the local state within ``max_skew_ms``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .errors import IntegrityError
from .utils import now_ms

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
        """A new clock value greater than the last one issued and than ``after``.

        ``after`` is the largest clock among the op's predecessors. It bounds the
        op's clock from below but moves the local state only within the skew
        bound, so one absurd remote timestamp cannot drag future local ops.
        """
        with self._lock:
            candidate = max(pack(self._wall()), self._last + 1, after + 1)
            if candidate > HLC_MAX:
                # Only an op that already carries the largest clock can cause this;
                # the replication rules of the sync issue must keep such ops harmless.
                raise IntegrityError("hybrid logical clock exhausted: a predecessor op carries the maximum clock")
            self._remember(candidate)
            return candidate

    def observe(self, remote: int) -> None:
        """Fold a clock seen on an op into local state, within the skew bound."""
        with self._lock:
            self._remember(remote)

    def _remember(self, value: int) -> None:
        ceiling = pack(self._wall() + self._max_skew_ms)
        self._last = max(self._last, min(value, ceiling))
