"""The op log of one store: this replica's identity and clock, local commits and remote ops.

Both ways into the log end in ``materialize.apply_op``, in the caller's (or
one) write transaction:

- :meth:`OpLog.append` turns intents into signed ops built on the current
  heads (clock above theirs) inside the caller's write transaction;
- :meth:`OpLog.apply_remote` delivers verified ops from elsewhere as one closed
  batch, each after its predecessors. An op that fails a validity rule is
  rejected and remembered (:func:`record_rejection`, the one record of refused
  ops); should a well-formed op still break the materialiser, the batch is
  retried op by op so one poisoned op cannot block every batch it travels in.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import nacl.signing

from ..config import MemoryConfig
from ..errors import InvalidInput, InvalidOp, StoreError
from ..model import Op
from ..stages import SQLITE_WRITE, stage
from ..store.schema import MIGRATIONS
from ..store.storage import Storage
from ..utils import now_ms
from . import codec, team
from .clock import HybridClock
from .fields import check_fields
from .graph import Node, backfill_graph, effective_clock, is_ancestor, node
from .identity import load_or_create_key
from .materialize import apply_creates, apply_op

log = logging.getLogger(__name__)

Intent = tuple[str, str, dict[str, Any]]  # (kind, record_id, fields)
# A materialiser bug shows as one of these; validity failures are InvalidOp.
STORING_ERRORS = (TypeError, ValueError, KeyError, AttributeError, OverflowError, RecursionError)


@dataclass
class ApplyResult:
    """What :meth:`OpLog.apply_remote` did with a batch of ops (ids in hex)."""

    applied: list[str] = field(default_factory=list)
    duplicates: int = 0
    missing: list[str] = field(default_factory=list)
    needed: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def add(self, other: ApplyResult) -> None:
        """Fold another batch's result into this one."""
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.missing += other.missing
        self.needed += [n for n in other.needed if n not in self.needed]
        self.rejected += other.rejected


def record_rejection(conn: sqlite3.Connection, oid: bytes, reason: str, peer: str | None) -> None:
    """Remember that op ``oid`` was refused (first reason kept): it and its descendants stay out."""
    conn.execute("INSERT OR IGNORE INTO rejected_ops(id, reason, peer, at) VALUES (?, ?, ?, ?)",
                 (oid, reason, peer, now_ms()))


def rejection(conn: sqlite3.Connection, oid: bytes) -> str | None:
    """Why this op was rejected here before, or None."""
    row = conn.execute("SELECT reason FROM rejected_ops WHERE id = ?", (oid,)).fetchone()
    return None if row is None else str(row[0])


class OpLog:
    """The signed, hash-linked log of one store. Thread-safe; one per process is enough."""

    def __init__(self, storage: Storage, key: nacl.signing.SigningKey, schema_version: int = 0) -> None:
        self.storage = storage
        self.schema_version = schema_version
        self.key = key
        self.author = bytes(key.verify_key)
        self.site_id = self.author.hex()
        self.clock = HybridClock()
        backfill_graph(storage)

    @classmethod
    def open(cls, config: MemoryConfig) -> OpLog:
        """Open (creating and migrating as needed) the store at ``config.home`` and its identity."""
        storage = Storage(config)
        try:
            version = storage.migrate(MIGRATIONS)
            with storage.write() as conn:
                conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('created_at', ?)", (str(now_ms()),))
            return cls(storage, load_or_create_key(config.key_path), version)
        except BaseException:
            storage.close()
            raise

    def close(self) -> None:
        """Close the store's connections (the log owns its storage when made by :meth:`open`)."""
        self.storage.close()

    # ------------------------------------------------------------ local writes
    def append(self, conn: sqlite3.Connection, intents: Iterable[Intent], *, checked: bool = False) -> list[Op]:
        """Sign ``intents`` as ops, in order, and apply them inside the caller's write transaction
        (``checked``: they passed :meth:`check` already). Runs of creates are written set-at-a-time.
        Each op goes to its memory's graph: a shared scope's (``team:<name>``) or the personal one."""
        if not self.storage.in_write:
            raise StoreError("OpLog.append needs an open write transaction (Storage.write)")
        intents = _split_removes(intents)
        if not checked:
            self.check(intents)
        with stage(SQLITE_WRITE):
            return self._append(conn, intents)

    def append_in_graph(self, conn: sqlite3.Connection, graph: bytes, intents: Iterable[Intent]) -> list[Op]:
        """Sign membership or memory ops in the shared scope ``graph``, each checked against the scope's
        rules as every member will check it (a refused one raises :class:`InvalidInput`, nothing written)."""
        if not self.storage.in_write:
            raise StoreError("OpLog.append_in_graph needs an open write transaction (Storage.write)")
        with stage(SQLITE_WRITE):
            return [self._append_one(conn, kind, record_id, fields, graph) for kind, record_id, fields in intents]

    def _append(self, conn: sqlite3.Connection, intents: list[Intent]) -> list[Op]:
        ops: list[Op] = []
        index = 0
        while index < len(intents):
            kind, record_id, fields = intents[index]
            graph = graph_of_intent(conn, kind, record_id, fields)
            run = _create_run(intents, index) if graph is None else 0
            if run >= BULK_MIN and self._append_creates(conn, intents[index:index + run], ops):
                index += run
                continue
            index += 1
            ops.append(self._append_one(conn, kind, record_id, fields, graph))
        return ops

    def _append_one(self, conn: sqlite3.Connection, kind: str, record_id: str, fields: dict[str, Any],
                    graph: bytes | None) -> Op:
        cache = self.storage.tx_cache
        key = "heads" if graph is None else "heads:" + graph.hex()
        cached = cache.get(key)
        if cached is None:  # the first commit of this transaction (in this graph) reads them
            ids, nodes, all_heads = _current_heads(conn, kind, record_id, fields, graph)
        else:
            ids, nodes, all_heads = cast(tuple[list[bytes], list[Node], bool], cached)
        hlc = self.clock.tick(max((n.eff for n in nodes), default=0))
        op = codec.make_op(self.key, kind, record_id, fields, hlc, ids, graph=graph)
        if graph is None:
            # Built on every head, the op has every stored op as an ancestor:
            # the ancestry rules hold by construction.
            here = apply_op(conn, op, nodes, check=not all_heads, all_heads=all_heads)
        else:  # a shared scope's rules (membership, ids, labels) are checked here as every member checks them
            try:
                codec.check_op_fields(kind, record_id, fields, op.author, graph)
                here = apply_op(conn, op, nodes, check=True, all_heads=all_heads)
            except InvalidOp as exc:
                raise InvalidInput("scope", f"refused by the shared scope's rules: {exc}") from None
        assert here is not None  # a fresh clock makes a fresh id
        if all_heads:
            cache[key] = ([op.id], [here], True)
        else:
            cache.pop(key, None)
        return op

    @staticmethod
    def check(intents: Iterable[Intent]) -> None:
        """Raise :class:`InvalidInput` unless every intent passes the rule peers apply to its op."""
        for kind, record_id, fields in intents:
            try:
                check_fields(kind, record_id, fields)
            except InvalidOp as exc:
                raise InvalidInput("fields", str(exc)) from None

    def _append_creates(self, conn: sqlite3.Connection, intents: list[Intent], ops: list[Op]) -> bool:
        """Sign a run of creates as a chain and apply it set-at-a-time (``materialize.apply_creates``):
        the same ops and state as one by one. False, having written nothing, when the heads are not
        all taken (a flood of concurrent heads) or some create is not of a new memory."""
        cache = self.storage.tx_cache
        cached = cache.get("heads")
        if cached is None:
            heads, nodes, all_heads = _current_heads(conn, *intents[0], None)
        else:
            heads, nodes, all_heads = cast(tuple[list[bytes], list[Node], bool], cached)
        if not all_heads:
            return False
        made: list[Op] = []
        effs: list[int] = []
        preds, top = heads, max((n.eff for n in nodes), default=0)
        for kind, record_id, fields in intents:
            hlc = self.clock.tick(top)
            op = codec.make_op(self.key, kind, record_id, fields, hlc, preds)
            top = effective_clock(hlc, nodes if not made else [Node(0, top, 0)])
            made.append(op)
            effs.append(top)
            preds = [op.id]
        placed = apply_creates(conn, made, effs, heads)
        if placed is None:
            return False
        ops += made
        cache["heads"] = ([made[-1].id], [placed[-1]], True)
        return True

    # ------------------------------------------------------------ remote ops
    def apply_remote(self, ops: Iterable[Op], source: str | None = None) -> ApplyResult:
        """Apply verified ops from elsewhere, each after its predecessors, as one closed batch.

        Ops already present count as duplicates. An op whose predecessors are
        neither stored nor in this batch waits (its id in ``missing``, the
        predecessors to ask for in ``needed``). An op that fails a validity
        rule (``check_op``), or descends from one that did, is rejected and
        remembered; every correct replica decides alike, because the rules look
        only at the op and its ancestors. ``source`` names the peer for the
        rejection record.
        """
        unique: dict[bytes, Op] = {}
        for op in ops:
            unique.setdefault(op.id, op)
        batch = list(unique.values())
        try:
            return self._apply_batch(batch, source)
        except STORING_ERRORS as exc:
            log.error("a batch of %d ops from %s could not be stored (%s: %s); applying op by op", len(batch),
                      source, type(exc).__name__, exc)
        merged = ApplyResult()
        for op in batch:
            try:
                merged.add(self._apply_batch([op], source))
            except STORING_ERRORS as exc:
                reason = f"cannot be stored ({type(exc).__name__})"
                with self.storage.write() as conn:
                    record_rejection(conn, op.id, reason, source)
                merged.rejected.append((op.id.hex(), reason))
        return merged

    def _apply_batch(self, ops: list[Op], source: str | None) -> ApplyResult:
        result = ApplyResult()
        batch = {op.id: op for op in ops}
        with self.storage.write() as conn:
            cache = self.storage.tx_cache  # remote ops move the heads local commits build on (every graph's)
            for key in [k for k in cache if k == "heads" or k.startswith("heads:")]:
                del cache[key]
            waiting: dict[bytes, list[bytes]] = {}
            blockers: dict[bytes, int] = {}
            ready: list[bytes] = []
            needed: set[bytes] = set()
            for oid, op in batch.items():
                if node(conn, oid) is not None:
                    result.duplicates += 1
                    continue
                earlier = rejection(conn, oid)
                if earlier is not None:
                    result.rejected.append((oid.hex(), earlier))
                    continue
                count = 0
                for pred in op.preds:
                    if node(conn, pred) is not None:
                        continue
                    if rejection(conn, pred) is not None:
                        count = -1
                        break
                    if pred in batch:
                        waiting.setdefault(pred, []).append(oid)
                        count += 1
                    else:
                        needed.add(pred)
                        count += 1 << 32  # never released within this batch
                if count < 0:
                    _reject(conn, op, "descends from a rejected op", source, result, waiting, blockers)
                elif count == 0:
                    ready.append(oid)
                else:
                    blockers[oid] = count
            while ready:
                oid = ready.pop()
                op = batch[oid]
                try:
                    apply_op(conn, op)
                except InvalidOp as exc:
                    _reject(conn, op, str(exc), source, result, waiting, blockers)
                    continue
                self.clock.observe(op.hlc)
                result.applied.append(oid.hex())
                for child in waiting.pop(oid, ()):
                    if child in blockers:
                        blockers[child] -= 1
                        if blockers[child] == 0:
                            del blockers[child]
                            ready.append(child)
            result.missing = sorted(oid.hex() for oid in blockers)
            result.needed = sorted(p.hex() for p in needed)
        return result

    # ------------------------------------------------------------ reads of the log
    def heads(self, limit: int) -> list[bytes]:
        """Current heads of every graph here (the newest ``limit`` if a flood of concurrent ops left more),
        sorted."""
        rows = self.storage.conn.execute(
            "SELECT h.id, o.seq FROM heads h CROSS JOIN ops o ON o.id = h.id").fetchall()
        if len(rows) > limit:
            rows = sorted(rows, key=lambda r: r[1])[-limit:]
        return sorted(r[0] for r in rows)

    def ops_since(self, seq: int, limit: int) -> list[tuple[int, Op]]:
        """Stored ops after local sequence ``seq`` with their sequence numbers."""
        rows = self.storage.conn.execute(
            "SELECT seq, body, sig FROM ops WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)).fetchall()
        return [(r[0], codec.parse_op(r[1], r[2], verify=False, stored=True)) for r in rows]


def _reject(conn: sqlite3.Connection, op: Op, reason: str, source: str | None, result: ApplyResult,
            waiting: dict[bytes, list[bytes]], blockers: dict[bytes, int]) -> None:
    """Reject ``op`` and, transitively, the ops of this batch that descend from it."""
    stack = [(op.id, reason)]
    while stack:
        oid, why = stack.pop()
        blockers.pop(oid, None)
        record_rejection(conn, oid, why, source)
        result.rejected.append((oid.hex(), why))
        stack.extend((child, "descends from a rejected op") for child in waiting.pop(oid, ()))


BULK_MIN = 2  # creates in a row from which append writes them set-at-a-time


def _create_run(intents: list[Intent], start: int) -> int:
    """How many intents from ``start`` on are creates."""
    end = start
    while end < len(intents) and intents[end][0] == "create":
        end += 1
    return end - start


def graph_of_intent(conn: sqlite3.Connection, kind: str, record_id: str, fields: dict[str, Any]) -> bytes | None:
    """The graph a local op goes to: a create labelled ``team:<name>`` to that shared scope's, a write to
    a memory to its create's, anything else to the personal graph."""
    if kind == "create":
        scope = fields.get("scope")
        if not isinstance(scope, str) or not scope.startswith(team.SCOPE_PREFIX):
            return None
        return team_graph(conn, scope[len(team.SCOPE_PREFIX):])
    if kind == "persona" or kind in team.TEAM_KINDS:
        return None
    row = conn.execute("SELECT graph FROM ops WHERE record_id = ? AND kind = 'create' LIMIT 1", (record_id,)).fetchone()
    return None if row is None else row[0]


def team_graph(conn: sqlite3.Connection, name: str) -> bytes:
    """The graph of the shared scope called ``name`` here; :class:`InvalidInput` unless exactly one."""
    rows = conn.execute("SELECT graph FROM teams WHERE name = ?", (name,)).fetchall()
    if len(rows) != 1:
        raise InvalidInput("scope", f"no shared scope called {name!r} here (neuralsync team list)" if not rows
                           else f"{len(rows)} shared scopes are called {name!r}: name one by its id")
    return bytes(rows[0][0])


def _current_heads(conn: sqlite3.Connection, kind: str, record_id: str, fields: dict[str, Any],
                   graph: bytes | None) -> tuple[list[bytes], list[Node], bool]:
    """The heads (of ``graph``) a new local op builds on: all of them, or ``MAX_PREDS`` when a flood of
    concurrent ops left more - first heads that give the op what its validity needs among its ancestors
    (a create of its memory, the adds it removes), then the oldest."""
    # CROSS JOIN keeps the (tiny) heads table outermost: sorting in SQL would walk the whole log.
    rows = conn.execute("SELECT h.id, o.seq, o.eff, coalesce(o.floor, o.seq) FROM heads h"
                        " CROSS JOIN ops o ON o.id = h.id WHERE h.graph IS ?", (graph,)).fetchall()
    rows.sort(key=lambda r: r[1])
    if len(rows) <= codec.MAX_PREDS:
        return [r[0] for r in rows], [Node(*r[1:]) for r in rows], True
    chosen: dict[bytes, tuple[Any, ...]] = {}
    by_seq = {r[1]: r for r in rows}
    for required in _required_ancestors(conn, kind, record_id, fields):
        covering = by_seq.get(required) or next(
            (r for r in rows if is_ancestor(conn, required, [Node(*r[1:])])), None)
        if covering is not None:
            chosen[covering[0]] = covering
    for row in rows:
        if len(chosen) >= codec.MAX_PREDS:
            break
        chosen.setdefault(row[0], row)
    picked = sorted(chosen.values(), key=lambda r: r[1])[:codec.MAX_PREDS]
    return [r[0] for r in picked], [Node(*r[1:]) for r in picked], False


# A remove names at most this many adds, so that its memory's create and the adds it names can be
# among its ancestors through at most MAX_PREDS heads even when concurrent ops left many more.
REMOVES_PER_OP = codec.MAX_PREDS - 1


def _split_removes(intents: Iterable[Intent]) -> list[Intent]:
    """Intents with every large tag remove split into removes of at most ``REMOVES_PER_OP`` adds."""
    out: list[Intent] = []
    for kind, record_id, fields in intents:
        removes = fields.get("removes", ()) if kind == "tag_remove" else ()
        if len(removes) <= REMOVES_PER_OP:
            out.append((kind, record_id, fields))
            continue
        out += [(kind, record_id, {**fields, "removes": list(removes[i:i + REMOVES_PER_OP])})
                for i in range(0, len(removes), REMOVES_PER_OP)]
    return out


def _required_ancestors(conn: sqlite3.Connection, kind: str, record_id: str, fields: dict[str, Any]) -> list[int]:
    """Local seqs of the ops a new op needs among its ancestors (see ``materialize.check_op``)."""
    if kind in ("create", "persona"):
        return []
    create = conn.execute("SELECT seq FROM ops WHERE record_id = ? AND kind = 'create' ORDER BY seq LIMIT 1",
                          (record_id,)).fetchone()
    seqs = [create[0]] if create else []
    for add in fields.get("removes", ()) if kind == "tag_remove" else ():
        found = conn.execute("SELECT seq FROM ops WHERE id = ?", (add,)).fetchone()
        if found:
            seqs.append(found[0])
    return seqs
