"""The hashing embedder: no dependency, deterministic, lower quality (shared words and fragments only)."""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Sequence

import numpy as np

from ...errors import InvalidInput
from .base import as_text_list, empty, l2_normalize

_WORD_RE = re.compile(r"\w+", re.UNICODE)
# Function words carry no topic and would dominate short texts' overlap.
_STOPWORDS = frozenset(
    "a an and are as at be but by do does did for from has have how i in is it its "
    "me my of on or our so that the their them then there these this to was we were "
    "what when where which who why will with you your".split()
)
_WORD_WEIGHT = 1.0
_TRIGRAM_WEIGHT = 0.35


@functools.lru_cache(maxsize=65_536)
def _bucket(feature: str, dims: int) -> tuple[int, float]:
    """Stable (across processes and Python versions) bucket and sign of a feature."""
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % dims, (1.0 if value >> 63 else -1.0)


def _hash_features(text: str) -> dict[str, int]:
    """Count word unigrams and char trigrams of ``#word#``.

    Trigrams let inflections share features (``test``/``tests``).
    """
    counts: dict[str, int] = {}
    for word in _WORD_RE.findall(text.lower()):
        if word in _STOPWORDS:
            continue
        counts["w:" + word] = counts.get("w:" + word, 0) + 1
        padded = f"#{word}#"
        for i in range(len(padded) - 2):
            key = "c:" + padded[i : i + 3]
            counts[key] = counts.get(key, 0) + 1
    return counts


class HashingEmbedder:
    """Dependency-free deterministic fallback (feature hashing). LOWER QUALITY.

    It only sees shared words and word fragments, never meaning: "car" and
    "automobile" are unrelated to it. Use it in tests and when no real embedder
    can be installed; expect noticeably worse recall than wordllama. Output is
    identical across processes, platforms and runs (blake2b, not ``hash()``).
    Thread-safe (pure function plus an ``lru_cache``).
    """

    VERSION = "v1"

    def __init__(self, dims: int = 256) -> None:
        if not isinstance(dims, int) or dims < 8:
            raise InvalidInput("dims", f"hashing dims must be an int >= 8, got {dims!r}")
        self.dims = dims
        self.name = f"hashing:{self.VERSION}:{dims}"

    def __repr__(self) -> str:
        return f"HashingEmbedder(dims={self.dims})"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` into ``(n, dims)`` float32 unit rows (zero if no words)."""
        items = as_text_list(texts)
        out = np.zeros((len(items), self.dims), dtype=np.float32)
        for row, text in enumerate(items):
            for feature, count in _hash_features(text).items():
                bucket, sign = _bucket(feature, self.dims)
                base = _WORD_WEIGHT if feature.startswith("w:") else _TRIGRAM_WEIGHT
                out[row, bucket] += sign * base * (1.0 + math.log(count))  # sublinear tf
        return l2_normalize(out) if items else empty(self.dims)
