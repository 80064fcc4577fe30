"""The op log's share of compaction: truncating and pruning the ops of memories gone for good.

Both wait for causal stability (every known peer holds the removal: ``stable_seq``) and, for merges, the
undo window. ``truncate`` and ``prune`` go through the whole log in the compactor's slices; ``idle_slice``
takes one window of it per idle minute, from a cursor, so a server left running reclaims the space without
anyone running ``compact``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ..oplog import codec, cuts
from ..oplog.clock import pack
from ..oplog.graph import below, graph_of, node
from ..oplog.log import OpLog
from ..replication.peers import PeerRegistry
from ..store.storage import Storage
from ..utils import now_ms

PRUNABLE_KINDS = ("create", "update", "tag_add", "tag_remove", "merge", "unmerge")
TRUNCATABLE_KINDS = (*PRUNABLE_KINDS, "delete")


def _sql_list(words: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{word}'" for word in words) + ")"


# The ops of removed memories whose removal is below the stable cut (``:stable``), in the personal graph:
# o, an op of the memory; t, its tombstone; d, the op that removed it. Pruning and truncation narrow it.
_REMOVED_BELOW_CUT = ("FROM ops o JOIN tombstones t ON t.record_id = o.record_id JOIN ops d ON d.id = t.op"
                      " WHERE o.seq <= :stable AND d.seq <= :stable AND o.graph IS NULL")
PRUNE_SLICE = 50  # op bodies replaced by their skeletons per write transaction
TRUNCATE_SLICE = 100  # ops truncated (one signed cut) per write transaction
# Ops of the log one idle slice looks through for ops to truncate or prune, from where the last one stopped:
# a read outside the write lock (~50 ms at 50k), so a server never walks a large log in one idle minute.
IDLE_SCAN_OPS = 50_000
STUB_BYTES = 40  # what a truncated op keeps in its body (the mark, a flag, usually one predecessor)

Progress = Callable[[str, int, int], None] | None


class LogTrimmer:
    """Truncation and pruning of one store's log, in the write slices its compactor gives it."""

    def __init__(self, storage: Storage, oplog: OpLog, merge_undo_ms: int,
                 write_slice: Callable[[], AbstractContextManager[sqlite3.Connection]]) -> None:
        self.storage = storage
        self.oplog = oplog
        self.merge_undo_ms = merge_undo_ms
        self._slice = write_slice
        # The last seq the idle slices looked at. In memory only: a restart starts over from the beginning
        # of the log, which costs one more pass and loses nothing.
        self._after = 0

    def idle_slice(self) -> dict[str, Any]:
        """Truncate, then prune, what one window of the log holds: the ops after the cursor, up to
        ``IDLE_SCAN_OPS`` of them (below the stable cut), at most one slice of each. A server left running
        thus reclaims the log space of removed memories without a user running ``compact``.

        The cursor wraps to the start of the log once it has reached the stable cut: a removal that becomes
        stable later (a peer acknowledges it) makes its memory's older ops, behind the cursor, removable."""
        conn = self.storage.conn
        removal = self.removal_args(conn)
        after = self._after if self._after < removal["stable"] else 0
        upto = min(removal["stable"], after + IDLE_SCAN_OPS)
        truncated = pruned = 0
        found = self.truncatable(conn, removal, after, upto, TRUNCATE_SLICE)
        if found:
            truncated = self.truncate_slice(found, removal)
        if len(found) == TRUNCATE_SLICE:
            upto = found[-1]  # the window's rest waits for the next call
        # Truncation took, in the window, every op pruning would but the graph's heads: pruning after it and
        # over the same window (never beyond what truncation has been through, where it would write skeletons
        # that truncation then replaces) has those left at most.
        found = self.prunable(conn, removal, after, upto, PRUNE_SLICE)
        if found:
            pruned = self.prune_slice(found, removal)[0]
        if len(found) == PRUNE_SLICE:
            upto = found[-1]
        self._after = upto
        return {"truncated": truncated, "pruned": pruned, "log_window": [after, upto]}

    def prune(self, progress: Progress) -> dict[str, Any]:
        """Replace the bodies of deleted memories' ops by their skeletons, once every known peer has the
        op that deleted them (causal stability: no write concurrent with the delete can come from a
        peer any more). The skeleton keeps the op's id, signature and predecessors: the log verifies,
        sync and the doctor work; merged memories wait for the undo window."""
        conn = self.storage.conn
        removal = self.removal_args(conn)
        candidates = self.prunable(conn, removal)
        total, pruned, kept_format1 = len(candidates), 0, 0
        for start in range(0, total, PRUNE_SLICE):
            done, kept = self.prune_slice(candidates[start:start + PRUNE_SLICE], removal)
            pruned, kept_format1 = pruned + done, kept_format1 + kept
            if progress is not None:
                progress("prune_payloads", min(start + PRUNE_SLICE, total), total)
        return {"pruned": pruned, "kept_format_1": kept_format1}

    def prune_slice(self, seqs: Sequence[int], removal: dict[str, int]) -> tuple[int, int]:
        """Prune the ops at ``seqs`` that are still prunable, in one write transaction: (pruned, format-1
        ops kept whole)."""
        pruned = kept_format1 = 0
        with self._slice() as conn:
            marks, at = _seq_marks(seqs)
            for seq, body in conn.execute(f"SELECT o.seq, o.body {self._PRUNABLE} AND o.seq IN ({marks})"
                                          " ORDER BY o.seq", {**removal, **at}).fetchall():
                skeleton = codec.skeleton_of(body)
                if skeleton is None:
                    kept_format1 += 1  # a format-1 op's id needs its whole body
                    continue
                conn.execute("UPDATE ops SET body = ? WHERE seq = ?", (skeleton, seq))
                pruned += 1
        return pruned, kept_format1

    def truncate(self, progress: Progress) -> dict[str, Any]:
        """Truncate the ops of memories gone for good: every op of a deleted, purged or merged memory, and
        the delete or merge that removed it, once every known peer holds that removal (the same causal
        stability and undo window as pruning). A truncated op keeps its row - id, author, clock, kind,
        record, its place in the graph - and, in its body, only its predecessors and whether it is its
        memory's tombstone: ~40 bytes instead of a skeleton's ~300 with its signature. Each slice is one
        cut signed by this replica (``oplog.cuts``), which the doctor verifies. A purge, which names many
        memories, stays whole; so do the graph's heads. Truncated ops are never sent: a replica new to
        the group must get them from one that kept them, as pruned ones."""
        conn = self.storage.conn
        removal = self.removal_args(conn)
        candidates = self.truncatable(conn, removal)
        total, truncated, signed = len(candidates), 0, 0
        for start in range(0, total, TRUNCATE_SLICE):
            done = self.truncate_slice(candidates[start:start + TRUNCATE_SLICE], removal)
            truncated, signed = truncated + done, signed + (done > 0)
            if progress is not None:
                progress("truncate_log", min(start + TRUNCATE_SLICE, total), total)
        return {"truncated": truncated, "cuts": signed}

    def truncate_slice(self, seqs: Sequence[int], removal: dict[str, int]) -> int:
        """Truncate the ops at ``seqs`` that are still truncatable, in one write transaction and one cut
        signed by this replica; returns how many."""
        with self._slice() as conn:
            marks, at = _seq_marks(seqs)
            rows: list[tuple[int, cuts.CutRow]] = []
            for seq, tombstone, oid, body, kind, record_id, hlc, author in conn.execute(
                    f"SELECT o.seq, o.id = t.op, o.id, o.body, o.kind, o.record_id, o.hlc, o.author"
                    f" {self._TRUNCATABLE} AND o.seq IN ({marks}) ORDER BY o.seq", {**removal, **at}).fetchall():
                stub = codec.stub_body(codec.decode(body)["preds"], bool(tombstone))
                rows.append((seq, (oid, stub, kind, record_id, hlc, author)))
            if rows:  # (a cut of nothing would only be a row for the doctor to check)
                cuts.record(conn, self.oplog.key, rows)
        return len(rows)

    # Every op of the memory, and the delete or merge that removed it (a purge, naming many, stays whole).
    _TRUNCATABLE = (f"{_REMOVED_BELOW_CUT} AND o.kind IN {_sql_list(TRUNCATABLE_KINDS)}"
                    f" AND NOT {codec.STUB_SQL.format(column='o.body')} AND o.id NOT IN (SELECT id FROM heads)"
                    " AND (d.kind = 'delete' OR (d.kind = 'merge' AND d.hlc < :undo_before)"
                    "      OR (d.kind = 'purge' AND o.id != t.op))")

    def truncatable(self, conn: sqlite3.Connection, removal: dict[str, int], after: int = 0,
                     upto: int | None = None, limit: int = -1) -> list[int]:
        return _window(conn, self._TRUNCATABLE, removal, after, upto, limit)

    def truncatable_bytes(self, conn: sqlite3.Connection, removal: dict[str, int]) -> int:
        (size,) = conn.execute(f"SELECT coalesce(sum(length(o.body) + length(o.sig)) - {STUB_BYTES} * count(*), 0)"
                               f" {self._TRUNCATABLE}", removal).fetchone()
        return max(0, int(size))

    def stable_seq(self, conn: sqlite3.Connection) -> int:
        """The largest local seq such that every op at or below it is held by every known peer (all of
        them, with no peers; none, while a peer has never synced)."""
        top = int(conn.execute("SELECT coalesce(max(seq), 0) FROM ops").fetchone()[0])
        stable = top
        for peer in PeerRegistry(self.storage, self.oplog.author).all():
            nodes = [found for found in (node(conn, head) for head in peer.last_sync)
                     if found is not None and graph_of(conn, found.seq) is None]  # the personal graph's cut
            if not nodes:
                return 0
            stable = min(stable, below(conn, nodes)[0])
        return stable

    # The op that deleted (or merged away) the memory stays whole: it is its tombstone.
    _PRUNABLE = (f"{_REMOVED_BELOW_CUT} AND o.id != t.op AND o.kind IN {_sql_list(PRUNABLE_KINDS)}"
                 f" AND NOT {codec.COMPACTED_SQL.format(column='o.body')}"
                 " AND (d.kind IN ('delete', 'purge') OR (d.kind = 'merge' AND d.hlc < :undo_before))")

    def removal_args(self, conn: sqlite3.Connection) -> dict[str, int]:
        """The parameters of the removed-ops queries: the stable cut, and the clock merges must be older
        than to be past the undo window (their merged memory may go)."""
        return {"stable": self.stable_seq(conn), "undo_before": pack(max(0, now_ms() - self.merge_undo_ms))}

    def prunable(self, conn: sqlite3.Connection, removal: dict[str, int], after: int = 0,
                  upto: int | None = None, limit: int = -1) -> list[int]:
        return _window(conn, self._PRUNABLE, removal, after, upto, limit)

    def prunable_bytes(self, conn: sqlite3.Connection, removal: dict[str, int]) -> int:
        (size,) = conn.execute(f"SELECT coalesce(sum(length(o.body)) - 180 * count(*), 0) {self._PRUNABLE}",
                               removal).fetchone()
        return max(0, int(size))


def _window(conn: sqlite3.Connection, removed: str, removal: dict[str, int], after: int, upto: int | None,
            limit: int) -> list[int]:
    """The seqs of the ops the removed-ops query ``removed`` selects in the window (after, upto] of the log
    (upto None: the stable cut), in log order, at most ``limit`` (-1: all). SQLite walks the ops primary
    key from ``after`` and stops at the limit (EXPLAIN QUERY PLAN: SEARCH o USING INTEGER PRIMARY KEY
    (rowid>? AND rowid<?), no sort), so a window costs what it reads, wherever it starts."""
    args = {**removal, "after": after, "upto": removal["stable"] if upto is None else upto, "limit": limit}
    return [seq for (seq,) in conn.execute(
        f"SELECT o.seq {removed} AND o.seq > :after AND o.seq <= :upto ORDER BY o.seq LIMIT :limit", args)]


def _seq_marks(seqs: Sequence[int]) -> tuple[str, dict[str, int]]:
    """Placeholders and parameters for ``o.seq IN (...)`` beside the removed-ops queries' named ones. A
    slice reads its ops in one statement, which checks them again under the write lock: another compactor
    (``neuralsync compact`` beside a server's idle slices) may have compacted them since they were found."""
    return ", ".join(f":seq{i}" for i in range(len(seqs))), {f"seq{i}": seq for i, seq in enumerate(seqs)}
