"""Records passed between layers: immutable, with no behaviour (frozen, slotted dataclasses;
``Memory`` is a NamedTuple for read speed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

# Scalar fields a create/update op may set; the materialised columns of a memory.
SCALAR_FIELDS: tuple[str, ...] = (
    "content",
    "scope",
    "kind",
    "tool",
    "source",
    "session",
    "priority",
    "confidence",
    "metadata",
    "expires_at",
    "created_at",
)
UPDATABLE_FIELDS: frozenset[str] = frozenset(SCALAR_FIELDS) - {"created_at", "session"}
# The content limit of the protocol: every replica refuses an op whose content (or persona text) is
# longer, whoever wrote it. A store may set a lower limit for its own writes (``max_content_chars``),
# never a higher one: an op it could write, its peers would refuse.
MAX_CONTENT_CHARS = 100_000


class Memory(NamedTuple):
    """One remembered item as a reader sees it. Immutable.

    A NamedTuple rather than the frozen dataclass used elsewhere: reads build
    up to thousands of these per call (``range_recall`` of 1,000 rows), and a
    tuple is about six times cheaper to construct. Use ``_replace`` to derive.
    """

    id: str
    content: str
    scope: str
    kind: str
    tags: tuple[str, ...]
    priority: float
    confidence: float
    tool: str | None
    source: str | None
    session: str | None
    metadata: dict[str, Any]
    created_at: int
    updated_at: int
    expires_at: int | None
    content_hash: str
    accessed_at: int | None = None
    access_count: int = 0
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tags as a list)."""
        d = self._asdict()
        d["tags"] = list(self.tags)
        return d


@dataclass(frozen=True, slots=True)
class Op:
    """One signed entry of the op log. ``id`` is the hash of the canonical body."""

    id: bytes
    kind: str
    record_id: str
    fields: dict[str, Any]
    hlc: int
    author: bytes
    preds: tuple[bytes, ...]
    sig: bytes
    body: bytes = field(repr=False, default=b"")


@dataclass(frozen=True, slots=True)
class Change:
    """One applied op as the local change feed reports it."""

    seq: int
    op_id: str
    kind: str
    record_id: str
    hlc: int
    author: str


@dataclass(frozen=True, slots=True)
class LoggedOp:
    """An op of the local log as an export sees it: its local position, its wall-clock time (epoch
    ms, from its clock) and the memory it concerns as it is now (None: persona op, or forgotten)."""

    seq: int
    op: Op
    at: int
    memory: Memory | None
