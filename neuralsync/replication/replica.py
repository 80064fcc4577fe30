"""One store's side of the sync protocol: what it holds, what to send, what to apply, what to log.

Received ops are delivered as one closed batch through :meth:`OpLog.apply_remote
<neuralsync.oplog.log.OpLog.apply_remote>` (each after its predecessors; ops
whose predecessors are still unknown wait in a bounded buffer). Every refusal
is logged with the peer and the reason, and counted. This is the one receive
path for signed ops: peer sync on ``/v1/sync`` ends here.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..errors import InvalidOp
from ..model import Op
from ..oplog import codec
from ..oplog.graph import Node, below_per_graph, graphs_here, node
from ..oplog.log import OpLog, rejection
from ..stages import SYNC_APPLY, SYNC_VERIFY, stage
from ..utils import now_ms
from .wire import (
    MAX_BLOOM_ENTRIES,
    MAX_HEADS,
    MAX_NEED,
    MAX_OPS_PER_MESSAGE,
    MAX_PENDING,
    MAX_PENDING_BYTES,
    OP_BYTE_BUDGET,
    Bloom,
    Budget,
)

log = logging.getLogger(__name__)

MAX_EVENTS = 1000  # rows kept in the sync_events log


@dataclass
class Outcome:
    """What one batch of received ops did (``refused``: op id in hex and reason, for each one refused)."""

    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    waiting: list[Op] = field(default_factory=list)
    needed: list[bytes] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)

    def refuse(self, oid: str, reason: str) -> None:
        """Count one refused op."""
        self.rejected += 1
        self.refused.append((oid, reason))


class Replica:
    """One store's side of the protocol: what to send, what to apply, what to log."""

    def __init__(self, oplog: OpLog) -> None:
        self.log = oplog
        self.storage = oplog.storage

    # -- what we hold
    def heads(self) -> list[bytes]:
        """Current heads (the newest ``MAX_HEADS`` if a flood of concurrent ops left more), sorted.

        Heads are hints: fewer of them only makes the other side send a few ops
        we hold; what it lacks is still found from its own heads."""
        return self.log.heads(MAX_HEADS)

    def known_nodes(self, conn: sqlite3.Connection, ids: Iterable[bytes]) -> list[Node]:
        """Nodes of the ids stored here (others are ignored)."""
        return [n for n in (node(conn, i) for i in ids) if n is not None]

    def ops_since(self, conn: sqlite3.Connection, base: Iterable[bytes]) -> tuple[list[bytes], int]:
        """Ids of stored ops that are not ancestors of ``base`` (the ones known to the other side), capped."""
        cuts = below_per_graph(conn, self.known_nodes(conn, base))
        ids: list[bytes] = []
        for graph in graphs_here(conn):
            floor, extra = cuts.get(graph, (0, set()))
            ids += [r[0] for r in conn.execute(f"SELECT id, seq FROM ops WHERE {_in_graph(graph)} AND seq > ?"
                                               " ORDER BY seq LIMIT ?",
                                               (*_graph_args(graph), floor, MAX_BLOOM_ENTRIES + len(extra) + 1))
                    if r[1] not in extra]
            if len(ids) > MAX_BLOOM_ENTRIES:
                break
        return ids[:MAX_BLOOM_ENTRIES], len(ids)

    def bloom_since(self, base: list[bytes]) -> Bloom | None:
        """A fresh-salted filter of the ops added since ``base`` (None when there are too many to filter)."""
        with self.storage.read() as conn:
            ids, total = self.ops_since(conn, base)
        if total > MAX_BLOOM_ENTRIES:
            return None
        return Bloom.of(ids, len(ids))

    def ops_for(self, known: Iterable[bytes], bloom: Bloom | None, need: Iterable[bytes]
                ) -> tuple[list[tuple[bytes, bytes]], bool, int]:
        """Ops the other side lacks, bounded: ours that are not ancestors of ``known`` and not in its
        filter, oldest first (so each arrives after its predecessors), then the ones it asked for that
        the scan did not send. Returns (ops, more to come, asked-for ids not held here)."""
        out: list[tuple[bytes, bytes]] = []
        room = Budget(MAX_OPS_PER_MESSAGE, OP_BYTE_BUDGET)
        sent: set[bytes] = set()
        unknown = 0
        skeletons = 0
        more = False
        with self.storage.read() as conn:
            cuts = below_per_graph(conn, self.known_nodes(conn, known))
            for _seq, oid, body, sig in _unknown_ops(conn, cuts):
                if codec.is_compacted(body):
                    skeletons += 1  # compacted: every known peer had it; a new one must get it elsewhere
                    continue
                if bloom is not None and oid in bloom and not sent.intersection(codec.decode(body)["preds"]):
                    continue  # it has this one (or a false positive: then it asks, or a predecessor is sent)
                if not room.take(len(body) + len(sig)):
                    more = True
                    break
                out.append((body, sig))
                sent.add(oid)
            for oid in need:
                row = conn.execute("SELECT seq, body, sig, graph FROM ops WHERE id = ?", (oid,)).fetchone()
                if row is None:
                    unknown += 1  # asked for something not held here: ignored, counted as junk
                    continue
                if codec.is_compacted(row[1]):
                    skeletons += 1
                    continue
                floor, extra = cuts.get(row[3], (0, set()))
                in_scan = row[0] > floor and row[0] not in extra and (bloom is None or oid not in bloom)
                if oid in sent or (more and in_scan):
                    continue  # sent now, or coming in order with the rest of the scan
                if not room.take(len(row[1]) + len(row[2])):
                    more = True
                    break
                out.append((row[1], row[2]))
                sent.add(oid)
        if skeletons:
            log.warning("%d ops the other side lacks were compacted here (their memories deleted and every known"
                        " peer had them); it must get them from a replica that keeps them", skeletons)
        return out, more, unknown

    # -- what we receive
    def receive(self, raw_ops: list[tuple[bytes, bytes]], waiting: list[Op], peer: str, oversized: int = 0
                ) -> Outcome:
        """Verify and deliver received ops (with those still waiting) as one closed batch."""
        outcome = Outcome(rejected=oversized)
        for _ in range(oversized):
            self.log_rejection(peer, "invalid op", f"op too large (over {codec.MAX_OP_BYTES} bytes)", "-")
        by_id: dict[bytes, Op] = {op.id: op for op in waiting}
        with stage(SYNC_VERIFY):
            for body, sig in raw_ops:
                oid = codec.op_id(body)
                if oid in by_id:
                    continue  # sent again while it waits: held once
                try:
                    by_id[oid] = codec.parse_op(body, sig)
                except InvalidOp as exc:
                    outcome.refuse(oid.hex(), str(exc))
                    self.log_rejection(peer, "invalid op", str(exc), oid.hex())
        ops = list(by_id.values())
        if not ops:
            return outcome
        with stage(SYNC_APPLY):
            result = self.log.apply_remote(ops, source=peer)
        outcome.applied = len(result.applied)
        outcome.duplicates = result.duplicates
        for refused, reason in result.rejected:
            outcome.refuse(refused, reason)
            self.log_rejection(peer, "rejected op", reason, refused)
        still = set(result.missing)
        waiting = [op for op in ops if op.id.hex() in still]
        outcome.waiting = _newest_within(waiting, MAX_PENDING, MAX_PENDING_BYTES)
        if len(outcome.waiting) < len(waiting):
            self.log_event(peer, "pending buffer full",
                           f"dropped {len(waiting) - len(outcome.waiting)} ops waiting for predecessors")
        outcome.needed = [bytes.fromhex(h) for h in result.needed][:MAX_NEED]
        return outcome

    def unknown(self, ids: Iterable[bytes], also_have: set[bytes]) -> list[bytes]:
        """Ids neither stored, nor waiting, nor rejected here (worth asking for)."""
        conn = self.storage.conn
        out = []
        for oid in ids:
            if oid in also_have or node(conn, oid) is not None:
                continue
            if rejection(conn, oid) is None:
                out.append(oid)
        return out

    # -- the log
    def log_rejection(self, peer: str, kind: str, reason: str, oid: str) -> None:
        """Log and count one refused op."""
        log.warning("sync: %s from peer %s refused: %s (op %s)", kind, peer, reason, oid[:16])
        self.log_event(peer, reason_key(reason), f"op {oid}: {reason}")

    def log_event(self, peer: str, reason: str, detail: str) -> None:
        """Append to the bounded sync log and count by (peer, reason)."""
        with self.storage.write() as conn:
            conn.execute("INSERT INTO sync_events(at, peer, kind, detail) VALUES (?, ?, ?, ?)",
                         (now_ms(), peer, reason, detail[:1000]))
            conn.execute("INSERT INTO sync_counts(peer, reason, n) VALUES (?, ?, 1)"
                         " ON CONFLICT(peer, reason) DO UPDATE SET n = n + 1", (peer, reason))
            conn.execute("DELETE FROM sync_events WHERE seq <= (SELECT max(seq) FROM sync_events) - ?",
                         (MAX_EVENTS,))


def _unknown_ops(conn: sqlite3.Connection, cuts: dict[bytes | None, tuple[int, set[int]]]
                 ) -> Iterator[tuple[int, bytes, bytes, bytes]]:
    """(seq, id, body, sig) of the ops beyond ``cuts`` (what the other side holds, per graph), graph by
    graph, oldest first in each: every op comes after its predecessors, which are in its own graph."""
    for graph in graphs_here(conn):
        floor, extra = cuts.get(graph, (0, set()))
        for row in conn.execute(f"SELECT seq, id, body, sig FROM ops WHERE {_in_graph(graph)} AND seq > ?"
                                " ORDER BY seq", (*_graph_args(graph), floor)):
            if row[0] not in extra:
                yield row


def _in_graph(graph: bytes | None) -> str:
    # "graph = ?" lets SQLite use the partial (graph, seq) index; the personal graph walks the seq key.
    return "graph IS NULL" if graph is None else "graph = ?"


def _graph_args(graph: bytes | None) -> tuple[bytes, ...]:
    return () if graph is None else (graph,)


def _newest_within(ops: list[Op], count: int, size: int) -> list[Op]:
    """The last ``ops`` that fit in ``count`` ops and ``size`` bytes, in their order."""
    kept: list[Op] = []
    for op in reversed(ops):
        size -= len(op.body) + len(op.sig)
        if len(kept) >= count or size < 0:
            break
        kept.append(op)
    return kept[::-1]


def reason_key(reason: str) -> str:
    """A short, stable counter name for a refusal reason."""
    lowered = reason.lower()
    for needle, key in (("signature", "bad signature"), ("too large", "oversized op"), ("preds", "bad preds"),
                        ("descends from a rejected", "descends from rejected"), ("tag_remove", "bad remove"),
                        ("create is not among", "no create in ancestry"), ("integer outside", "out-of-range value"),
                        ("hlc", "bad clock"), ("another graph", "cross-graph preds"),
                        ("shared scope", "shared-scope rule")):
        if needle in lowered:
            return key
    return "invalid op"


