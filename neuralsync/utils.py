"""Small helpers with no dependencies: wall-clock milliseconds and time-ordered ids."""

from __future__ import annotations

import os
import random
import re
import threading
import time

__all__ = ["now_ms", "new_id", "is_valid_id", "ID_PATTERN"]

# Ids are UUIDv7-shaped hex strings without dashes: 48-bit ms timestamp, then
# randomness. Lexicographic order is creation order, which keeps the primary
# key B-tree append-mostly and lets `range_recall` fall back on the id.
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


def is_valid_id(value: object) -> bool:
    """True for a well-formed memory id (does not check existence)."""
    return isinstance(value, str) and ID_PATTERN.match(value) is not None
