"""The normal form of a memory's text: what makes two memories exact duplicates.

Two memories in one scope are exact duplicates when their normal forms are
equal: Unicode NFKC, case folded, runs of whitespace made one space, and
surrounding whitespace and trailing sentence punctuation dropped. Every
replica computes it alike (it is stored as ``memories.norm_hash``).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_SPACE = re.compile(r"\s+")
_TRAILING = ".!?;:,\u2026\u3002\uff01\uff1f\uff1b\uff1a\uff0c "


def normalise(text: str) -> str:
    """The exact-duplicate key: NFKC, casefolded, whitespace collapsed, without surrounding
    whitespace and trailing sentence punctuation. Equal keys (in one scope) are one memory."""
    key = _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return key.rstrip(_TRAILING)


def norm_hash(text: str) -> str:
    """Short, stable hash of the normal form (the exact-duplicate index key)."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()[:32]
