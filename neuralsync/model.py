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
# ``archived``: out of recall (and of the FTS and vector indexes) until restored; set by update ops only.
UPDATABLE_FIELDS: frozenset[str] = (frozenset(SCALAR_FIELDS) - {"created_at", "session"}) | {"archived"}
# The content limit of the protocol: every replica refuses an op whose content (or persona text) is
# longer, whoever wrote it. A store may set a lower limit for its own writes (``max_content_chars``),
# never a higher one: an op it could write, its peers would refuse.
MAX_CONTENT_CHARS = 100_000
# How a duplicate is merged into the memory it repeats (the merger; ``manual`` keeps both for a person).
MERGE_STRATEGIES: tuple[str, ...] = ("semantic_merge", "last_writer_wins", "content_merge", "manual")
# What the compactor can do, in the order it does it (purges before the rewrite). "rewrite" (a full VACUUM,
# which holds the write lock while it runs) only runs when asked by name.
COMPACT_STRATEGIES: tuple[str, ...] = ("purge_expired", "consolidate_duplicates", "archive_over_quota",
                                       "truncate_log", "prune_payloads", "fts_optimize", "vector_rebuild",
                                       "defragment", "checkpoint", "vacuum", "rewrite")


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
    pruned: bool = False  # a stored skeleton: the fields were pruned (the op id still verifies)
    graph: bytes | None = None  # format 3: the shared scope whose own hash graph holds the op


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


@dataclass(frozen=True, slots=True)
class Remembered:
    """What a ``remember`` did: the memory as stored, and whether it was merged into one it repeats.

    ``merged``: the new text was a duplicate, so ``memory`` is the memory it was merged into
    (``merge_id``: the merge op, hex, for ``neuralsync merges show/undo``; ``rule``: why).
    """

    memory: Memory
    merged: bool = False
    merge_id: str | None = None
    strategy: str | None = None
    rule: str | None = None
    candidate_of: str | None = None  # the ``manual`` strategy: kept, and paired with this memory

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the memory's fields, then what the merger did."""
        merger: dict[str, Any] = {"merged": self.merged}
        if self.merged:
            merger.update(merged_into=self.memory.id, merge_id=self.merge_id, strategy=self.strategy,
                          rule=self.rule)
        if self.candidate_of is not None:
            merger.update(duplicate_of=self.candidate_of, strategy="manual", rule=self.rule)
        return {**self.memory.to_dict(), **merger}
