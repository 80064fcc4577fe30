"""The store: one SQLite file, this replica's identity, the op log and its reads.

``Store.commit`` turns intents into signed ops (preds = current heads, clock
above theirs) and applies them in one write transaction through
``materialize.apply_op``. Reads return :class:`Memory` records; expired and
deleted memories are never returned.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from . import crdt
from .clock import HybridClock
from .config import MemoryConfig
from .errors import InvalidInput, InvalidOp
from .graph import Node, is_ancestor, node
from .identity import load_or_create_key
from .materialize import TAG_SEP, apply_op, backfill_graph, record_presence
from .model import Change, Memory, Op
from .op_fields import check_fields
from .schema import MIGRATIONS
from .storage import Storage
from .utils import now_ms

Intent = tuple[str, str, dict[str, Any]]  # (kind, record_id, fields)


@dataclass
class ApplyResult:
    """What :meth:`Store.apply_remote` did with a batch of ops (ids in hex)."""

    applied: list[str] = field(default_factory=list)
    duplicates: int = 0
    missing: list[str] = field(default_factory=list)
    needed: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


def read_changes(conn: sqlite3.Connection, seq: int, limit: int) -> list[Change]:
    """Ops applied after local sequence ``seq``, oldest first, at most ``limit``."""
    rows = conn.execute("SELECT seq, id, kind, record_id, hlc, author FROM ops WHERE seq > ? ORDER BY seq LIMIT ?",
                        (seq, limit)).fetchall()
    return [Change(r[0], r[1].hex(), r[2], r[3], r[4], r[5].hex()) for r in rows]


def _rejection(conn: sqlite3.Connection, oid: bytes) -> str | None:
    """Why this op was rejected here before, or None."""
    row = conn.execute("SELECT reason FROM rejected_ops WHERE id = ?", (oid,)).fetchone()
    return None if row is None else str(row[0])


def _current_heads(conn: sqlite3.Connection, kind: str, record_id: str, fields: dict[str, Any]
                   ) -> tuple[list[bytes], list[Node], bool]:
    """The heads a new local op builds on: all of them, or ``MAX_PREDS`` when a flood of concurrent
    ops left more - first heads that give the op what its validity needs among its ancestors (a
    create of its memory, the adds it removes), then the oldest."""
    # CROSS JOIN keeps the (tiny) heads table outermost: sorting in SQL would walk the whole log.
    rows = conn.execute("SELECT h.id, o.seq, o.eff, coalesce(o.floor, o.seq) FROM heads h"
                        " CROSS JOIN ops o ON o.id = h.id").fetchall()
    rows.sort(key=lambda r: r[1])
    if len(rows) <= crdt.MAX_PREDS:
        return [r[0] for r in rows], [Node(*r[1:]) for r in rows], True
    chosen: dict[bytes, tuple[Any, ...]] = {}
    by_seq = {r[1]: r for r in rows}
    for required in _required_ancestors(conn, kind, record_id, fields):
        covering = by_seq.get(required) or next(
            (r for r in rows if is_ancestor(conn, required, [Node(*r[1:])])), None)
        if covering is not None:
            chosen[covering[0]] = covering
    for row in rows:
        if len(chosen) >= crdt.MAX_PREDS:
            break
        chosen.setdefault(row[0], row)
    picked = sorted(chosen.values(), key=lambda r: r[1])[:crdt.MAX_PREDS]
    return [r[0] for r in picked], [Node(*r[1:]) for r in picked], False


# A remove names at most this many adds, so that its memory's create and the adds it names can be
# among its ancestors through at most MAX_PREDS heads even when concurrent ops left many more.
REMOVES_PER_OP = crdt.MAX_PREDS - 1


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

MEMORY_COLUMNS = ("m.id, m.content, m.scope, m.kind, m.tags, m.priority, m.confidence, m.tool, m.source,"
                  " m.session, m.metadata, m.created_at, m.updated_at, m.expires_at, m.content_hash")
NOT_EXPIRED = "(m.expires_at IS NULL OR m.expires_at > ?)"


_new_tuple = tuple.__new__


def row_to_memory(row: Sequence[Any], score: float | None = None) -> Memory:
    """Build a :class:`Memory` from a row selected with ``MEMORY_COLUMNS`` (a hot path)."""
    tags = tuple(row[4].split(TAG_SEP)) if row[4] else ()
    meta = row[10]
    return _new_tuple(Memory, (row[0], row[1], row[2], row[3], tags, row[5], row[6], row[7], row[8], row[9],
                               {} if meta == "{}" else json.loads(meta), row[11], row[12], row[13], row[14],
                               None, 0, score))


class Store:
    """Owns a store directory: database, key, clock. Thread-safe; one per process is enough."""

    def __init__(self, config: MemoryConfig) -> None:
        self.config = config
        self.storage = Storage(config)
        self.key = load_or_create_key(config.key_path)
        self.author = bytes(self.key.verify_key)
        self.site_id = self.author.hex()
        self.clock = HybridClock()
        self.schema_version = self.storage.migrate(MIGRATIONS)
        backfill_graph(self.storage)
        with self.storage.write() as conn:
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('created_at', ?)", (str(now_ms()),))

    def close(self) -> None:
        """Close every connection."""
        self.storage.close()

    # ------------------------------------------------------------ writes
    def commit(self, intents: Iterable[Intent]) -> list[Op]:
        """Sign and apply intents as ops, in order, in one transaction."""
        intents = _split_removes(intents)
        for kind, record_id, fields in intents:  # the rule peers apply, checked before anything is written
            try:
                check_fields(kind, record_id, fields)
            except InvalidOp as exc:
                raise InvalidInput("fields", str(exc)) from None
        ops: list[Op] = []
        with self.storage.write(savepoint=False) as conn:
            cache = self.storage.tx_cache
            for kind, record_id, fields in intents:
                cached = cache.get("heads")
                if cached is None:  # the first commit of this transaction reads them
                    ids, nodes, all_heads = _current_heads(conn, kind, record_id, fields)
                else:
                    ids, nodes, all_heads = cast(tuple[list[bytes], list[Node], bool], cached)
                hlc = self.clock.tick(max((n.eff for n in nodes), default=0))
                op = crdt.make_op(self.key, kind, record_id, fields, hlc, ids)
                # Built on every head, the op has every stored op as an ancestor:
                # the ancestry rules hold by construction.
                here = apply_op(conn, op, nodes, check=not all_heads, all_heads=all_heads)
                assert here is not None  # a fresh clock makes a fresh id
                ops.append(op)
                if all_heads:
                    cache["heads"] = ([op.id], [here], True)
                else:
                    cache.pop("heads", None)
        return ops

    def apply_remote(self, ops: Iterable[Op], source: str | None = None) -> ApplyResult:
        """Apply verified ops from elsewhere in one transaction, each after its predecessors.

        Ops already present count as duplicates. An op whose predecessors are
        neither stored nor in this batch waits (its id in ``missing``, the
        predecessors to ask for in ``needed``). An op that fails a validity
        rule (``check_op``), or descends from one that did, is rejected and
        remembered as rejected; every correct replica decides alike, because
        the rules look only at the op and its ancestors. ``source`` names the
        peer for the rejection log.
        """
        result = ApplyResult()
        batch: dict[bytes, Op] = {}
        for op in ops:
            batch.setdefault(op.id, op)
        with self.storage.write() as conn:
            self.storage.tx_cache.pop("heads", None)  # remote ops move the heads local commits build on
            waiting: dict[bytes, list[bytes]] = {}
            blockers: dict[bytes, int] = {}
            ready: list[bytes] = []
            needed: set[bytes] = set()
            for oid, op in batch.items():
                if node(conn, oid) is not None:
                    result.duplicates += 1
                    continue
                earlier = _rejection(conn, oid)
                if earlier is not None:
                    result.rejected.append((oid.hex(), earlier))
                    continue
                count = 0
                for pred in op.preds:
                    if node(conn, pred) is not None:
                        continue
                    if _rejection(conn, pred) is not None:
                        count = -1
                        break
                    if pred in batch:
                        waiting.setdefault(pred, []).append(oid)
                        count += 1
                    else:
                        needed.add(pred)
                        count += 1 << 32  # never released within this batch
                if count < 0:
                    self._reject(conn, op, "descends from a rejected op", source, result, waiting, blockers)
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
                    self._reject(conn, op, str(exc), source, result, waiting, blockers)
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

    def _reject(self, conn: sqlite3.Connection, op: Op, reason: str, source: str | None, result: ApplyResult,
                waiting: dict[bytes, list[bytes]], blockers: dict[bytes, int]) -> None:
        """Reject ``op`` and, transitively, the ops of this batch that descend from it."""
        stack = [(op.id, reason)]
        while stack:
            oid, why = stack.pop()
            blockers.pop(oid, None)
            conn.execute("INSERT OR IGNORE INTO rejected_ops(id, reason, peer, at) VALUES (?, ?, ?, ?)",
                         (oid, why, source, now_ms()))
            result.rejected.append((oid.hex(), why))
            stack.extend((child, "descends from a rejected op") for child in waiting.pop(oid, ()))

    def ops_since(self, seq: int, limit: int) -> list[tuple[int, Op]]:
        """Stored ops after local sequence ``seq`` with their sequence numbers (sync pull)."""
        rows = self.storage.conn.execute(
            "SELECT seq, body, sig FROM ops WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)).fetchall()
        return [(r[0], crdt.parse_op(r[1], r[2], verify=False)) for r in rows]

    # ------------------------------------------------------------ reads
    def get(self, record_id: str, include_expired: bool = False) -> Memory | None:
        """The live memory with this id, or None (absent, deleted or - unless asked - expired)."""
        row = self.storage.conn.execute(
            f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.id = ? AND {NOT_EXPIRED}",
            (record_id, -1 if include_expired else now_ms())).fetchone()
        return None if row is None else row_to_memory(row)

    def exists(self, record_id: str) -> bool:
        """True if a memory with this id is materialised (expired ones included)."""
        return self.storage.conn.execute("SELECT 1 FROM memories WHERE id = ?", (record_id,)).fetchone() is not None

    def known(self, record_id: str) -> bool:
        """True if this id was ever materialised here (live, expired or deleted)."""
        return any(record_presence(self.storage.conn, record_id))

    def tag_adds(self, record_id: str, tag: str) -> list[bytes]:
        """Ids of the ops whose add of ``tag`` on this record is still present."""
        return [r[0] for r in self.storage.conn.execute(
            "SELECT t.add_op FROM tags t JOIN memories m ON m.rowid = t.mem WHERE m.id = ? AND t.tag = ?",
            (record_id, tag))]

    def range(self, start: int | None, end: int | None, scope: str | None = None,
              limit: int | None = None, descending: bool = False) -> list[Memory]:
        """Live memories created in ``[start, end]``, in creation-time order."""
        where: list[str] = [NOT_EXPIRED]
        args: list[object] = [now_ms()]
        if start is not None:
            where.append("m.created_at >= ?")
            args.append(start)
        if end is not None:
            where.append("m.created_at <= ?")
            args.append(end)
        if scope is not None:
            where.append("m.scope = ?")
            args.append(scope)
        order = "DESC" if descending else "ASC"
        sql = (f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE {' AND '.join(where)}"
               f" ORDER BY m.created_at {order}, m.rowid {order}")
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self.storage.read() as conn:
            return [row_to_memory(r) for r in conn.execute(sql, args)]

    def iter_memories(self, batch: int = 1000) -> Iterator[Memory]:
        """Every live memory in id order, streamed in batches (export)."""
        last = ""
        while True:
            rows = self.storage.conn.execute(
                f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.id > ? AND {NOT_EXPIRED}"
                " ORDER BY m.id LIMIT ?", (last, now_ms(), batch)).fetchall()
            if not rows:
                return
            yield from (row_to_memory(r) for r in rows)
            last = rows[-1][0]

    def persona(self, key: str = "persona") -> tuple[str, int] | None:
        """The persona text and the hlc that set it, or None."""
        row = self.storage.conn.execute("SELECT value, clock FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], int.from_bytes(row[1][:8], "big"))

    def changes_since(self, seq: int, limit: int = 1000) -> list[Change]:
        """Ops applied locally after ``seq`` (the change feed), oldest first."""
        return read_changes(self.storage.conn, seq, limit)

    def counts(self) -> dict[str, int]:
        """Row counts of the main tables."""
        conn = self.storage.conn
        now = now_ms()
        total = conn.execute("SELECT count(*) FROM memories").fetchone()[0]
        expired = conn.execute("SELECT count(*) FROM memories WHERE expires_at IS NOT NULL AND expires_at <= ?",
                               (now,)).fetchone()[0]
        return {
            "memories": total - expired,
            "expired": expired,
            "deleted": conn.execute("SELECT count(*) FROM tombstones").fetchone()[0],
            "ops": conn.execute("SELECT coalesce(max(seq), 0) FROM ops").fetchone()[0],
            "scopes": conn.execute("SELECT count(DISTINCT scope) FROM memories m WHERE " + NOT_EXPIRED,
                                   (now,)).fetchone()[0],
            "tags": conn.execute("SELECT count(DISTINCT tag) FROM tags").fetchone()[0],
        }

    def scope_counts(self) -> dict[str, int]:
        """Memories per scope."""
        rows = self.storage.conn.execute(f"SELECT scope, count(*) FROM memories m WHERE {NOT_EXPIRED}"
                                         " GROUP BY scope ORDER BY 2 DESC", (now_ms(),))
        return {scope: n for scope, n in rows}

    def sizes(self) -> dict[str, int]:
        """Bytes on disk: database, WAL and total."""
        db = self.storage.path
        wal = db.with_name(db.name + "-wal")
        size = db.stat().st_size if db.exists() else 0
        wal_size = wal.stat().st_size if wal.exists() else 0
        return {"db_bytes": size, "wal_bytes": wal_size, "total_bytes": size + wal_size}

    def meta(self, conn: sqlite3.Connection | None = None) -> dict[str, str]:
        """The ``meta`` table as a dict."""
        return dict((conn or self.storage.conn).execute("SELECT key, value FROM meta"))
