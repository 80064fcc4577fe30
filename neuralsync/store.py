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
from typing import Any

from . import crdt
from .clock import HybridClock
from .config import MemoryConfig
from .errors import InvalidInput, InvalidOp
from .identity import load_or_create_key
from .materialize import TAG_SEP, apply_op, record_presence
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
    rejected: list[tuple[str, str]] = field(default_factory=list)


def read_changes(conn: sqlite3.Connection, seq: int, limit: int) -> list[Change]:
    """Ops applied after local sequence ``seq``, oldest first, at most ``limit``."""
    rows = conn.execute("SELECT seq, id, kind, record_id, hlc, author FROM ops WHERE seq > ? ORDER BY seq LIMIT ?",
                        (seq, limit)).fetchall()
    return [Change(r[0], r[1].hex(), r[2], r[3], r[4], r[5].hex()) for r in rows]


def _stored_hlc(conn: sqlite3.Connection, oid: bytes) -> int | None:
    row = conn.execute("SELECT hlc FROM ops WHERE id = ?", (oid,)).fetchone()
    return None if row is None else int(row[0])

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
        with self.storage.write() as conn:
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('created_at', ?)", (str(now_ms()),))

    def close(self) -> None:
        """Close every connection."""
        self.storage.close()

    # ------------------------------------------------------------ writes
    def commit(self, intents: Iterable[Intent]) -> list[Op]:
        """Sign and apply intents as ops, in order, in one transaction."""
        intents = list(intents)
        for kind, record_id, fields in intents:  # the rule peers apply, checked before anything is written
            try:
                check_fields(kind, record_id, fields)
            except InvalidOp as exc:
                raise InvalidInput("fields", str(exc)) from None
        ops: list[Op] = []
        with self.storage.write(savepoint=False) as conn:
            cache = self.storage.tx_cache
            heads = cache.get("heads")
            if heads is None:  # the first commit of this transaction reads them
                rows = conn.execute("SELECT h.id, o.hlc FROM heads h JOIN ops o ON o.id = h.id").fetchall()
                heads = ([head for head, _ in rows], max((hlc for _, hlc in rows), default=0))
            preds, after = heads  # type: ignore[misc]
            for kind, record_id, fields in intents:
                hlc = self.clock.tick(after)
                op = crdt.make_op(self.key, kind, record_id, fields, hlc, preds)
                apply_op(conn, op)
                ops.append(op)
                preds, after = [op.id], hlc
                cache["heads"] = (preds, after)
        return ops

    def apply_remote(self, ops: Iterable[Op]) -> ApplyResult:
        """Apply verified ops from elsewhere in one transaction, each after its predecessors.

        Ops already present count as duplicates. An op whose predecessors are
        neither stored nor in this batch is returned as ``missing`` (ask the
        sender for them). An op whose clock is not above its predecessors' is
        rejected: that rule depends only on the op and its ancestors, so every
        replica decides it alike.
        """
        result = ApplyResult()
        pending = {op.id: op for op in ops}
        with self.storage.write() as conn:
            self.storage.tx_cache.pop("heads", None)  # remote ops move the heads local commits build on
            for oid in [oid for oid in pending if _stored_hlc(conn, oid) is not None]:
                del pending[oid]
                result.duplicates += 1
            progress = True
            while pending and progress:
                progress = False
                for oid, op in list(pending.items()):
                    pred_hlcs = [_stored_hlc(conn, p) for p in op.preds]
                    if any(h is None for h in pred_hlcs):
                        continue
                    del pending[oid]
                    progress = True
                    if pred_hlcs and op.hlc <= max(h for h in pred_hlcs if h is not None):
                        result.rejected.append((oid.hex(), "clock not above its predecessors'"))
                        continue
                    apply_op(conn, op)
                    self.clock.observe(op.hlc)
                    result.applied.append(oid.hex())
            result.missing = sorted(oid.hex() for oid in pending)
        return result

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
        where, args = [NOT_EXPIRED], [now_ms()]
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
