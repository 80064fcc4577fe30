"""Reads of the materialised state: memories, persona, counts and the change feed's rows.

Every read returns :class:`~neuralsync.model.Memory` records built from one
column list (``MEMORY_COLUMNS``); expired memories are never returned unless
asked for, and deleted ones are gone from ``memories`` altogether.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any

from ..model import Change, Memory
from ..utils import now_ms
from .storage import Storage

TAG_SEP = "\x1f"  # the tags column's separator; a word separator for the FTS tokenizer
MEMORY_COLUMNS = ("m.id, m.content, m.scope, m.kind, m.tags, m.priority, m.confidence, m.tool, m.source,"
                  " m.session, m.metadata, m.created_at, m.updated_at, m.expires_at, m.content_hash")
# What every read shows: not expired, not archived (an archived memory comes back by unarchive only).
NOT_EXPIRED = "(m.expires_at IS NULL OR m.expires_at > ?) AND m.archived = 0"
RANGE_CHUNK = 5000  # rows turned into records at a time by Reader.range

_new_tuple = tuple.__new__
_COLUMNS = tuple(itemgetter(i) for i in range(15))  # one per column of MEMORY_COLUMNS


def row_to_memory(row: Sequence[Any], score: float | None = None) -> Memory:
    """Build a :class:`Memory` from a row selected with ``MEMORY_COLUMNS`` (a hot path)."""
    tags = tuple(row[4].split(TAG_SEP)) if row[4] else ()
    meta = row[10]
    return _new_tuple(Memory, (row[0], row[1], row[2], row[3], tags, row[5], row[6], row[7], row[8], row[9],
                               {} if meta == "{}" else json.loads(meta), row[11], row[12], row[13], row[14],
                               None, 0, score))


def rows_to_memories(rows: Sequence[Sequence[Any]]) -> list[Memory]:
    """:class:`Memory` records of rows selected with ``MEMORY_COLUMNS`` (columns after those are ignored),
    equal to ``[row_to_memory(r) for r in rows]``.

    Built a column at a time, the hot path of ``range_recall``: each column is read from the rows by
    ``map`` over an ``itemgetter`` and the records are assembled by ``zip``, all in C, with no Python
    code run per row (nor an iterator or a transposed tuple per row, which would only give the
    garbage collector more to do: a ``Memory`` is a tuple subclass, which it never untracks). Each
    distinct tags text is split once (the tuples are immutable, so records may share them) and the
    metadata texts are decoded by one JSON parse (:func:`decode_metadata`).
    """
    if not rows:
        return []
    (ids, contents, scopes, kinds, tags_texts, priorities, confidences, tools, sources, sessions, metadata,
     created, updated, expires, hashes) = (map(column, rows) for column in _COLUMNS)
    tags = list(tags_texts)
    split = {text: tuple(text.split(TAG_SEP)) if text else () for text in set(tags)}
    return list(map(_new_tuple, repeat(Memory), zip(
        ids, contents, scopes, kinds, map(split.__getitem__, tags), priorities, confidences, tools, sources,
        sessions, decode_metadata(list(metadata)), created, updated, expires, hashes,
        repeat(None), repeat(0), repeat(None))))


def decode_metadata(texts: Sequence[str]) -> list[Any]:
    """``[json.loads(t) for t in texts]`` with one parse of the texts joined as a JSON array.

    Each text is a JSON object written by ``dump_metadata``, and valid JSON texts joined by commas
    parse to exactly their values. A damaged text (not one object) almost always changes the count
    or the type of the values, and then the texts are decoded one by one, raising as before; only
    deliberately matched damage in several rows could join into objects, and whoever can write the
    file can as well write valid metadata, so nothing is trusted here that the row is not.
    """
    try:
        values = json.loads("[" + ",".join(texts) + "]")
    except ValueError:
        values = None
    if values is None or len(values) != len(texts) or set(map(type, values)) != {dict}:
        return [json.loads(text) for text in texts]
    return values


def read_changes(conn: sqlite3.Connection, seq: int, limit: int) -> list[Change]:
    """Ops applied after local sequence ``seq``, oldest first, at most ``limit``."""
    rows = conn.execute("SELECT seq, id, kind, record_id, hlc, author FROM ops WHERE seq > ? ORDER BY seq LIMIT ?",
                        (seq, limit)).fetchall()
    return [Change(r[0], r[1].hex(), r[2], r[3], r[4], r[5].hex()) for r in rows]


def record_presence(conn: sqlite3.Connection, record_id: str) -> tuple[bool, bool]:
    """(deleted here, materialised here) for a record id, in one query."""
    gone, exists = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM tombstones WHERE record_id = ?),"
        " EXISTS (SELECT 1 FROM memories WHERE id = ?)", (record_id, record_id)).fetchone()
    return bool(gone), bool(exists)


def range_query(start: int | None, end: int | None, scope: str | None, limit: int | None, descending: bool,
                now: int) -> tuple[str, list[object]]:
    """The SQL and arguments of :meth:`Reader.range`.

    The order (``created_at``, then rowid) is the order of ``memories_created``, or of
    ``memories_scope_created`` when a scope is given, so SQLite walks one index in either direction
    and stops at ``limit`` without sorting (``tests/test_range_reads.py`` checks the plans).
    """
    where: list[str] = [NOT_EXPIRED]
    args: list[object] = [now]
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
    return sql, args


class Reader:
    """Reads of one store; every method uses the calling thread's connection."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def get(self, record_id: str, include_expired: bool = False, with_access: bool = False) -> Memory | None:
        """The live memory with this id, or None (absent, deleted or - unless asked - expired).
        ``with_access``: with its access statistics (``accessed_at``, ``access_count``) as recorded so far;
        other reads leave them out (None, 0), which keeps them one table."""
        if not with_access:
            row = self.storage.conn.execute(
                f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.id = ? AND {NOT_EXPIRED}",
                (record_id, -1 if include_expired else now_ms())).fetchone()
            return None if row is None else row_to_memory(row)
        row = self.storage.conn.execute(
            f"SELECT {MEMORY_COLUMNS}, a.accessed_at, coalesce(a.access_count, 0) FROM memories m"
            f" LEFT JOIN access a ON a.mem = m.rowid WHERE m.id = ? AND {NOT_EXPIRED}",
            (record_id, -1 if include_expired else now_ms())).fetchone()
        return None if row is None else row_to_memory(row)._replace(accessed_at=row[15], access_count=row[16])

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
        """Live memories created in ``[start, end]``, in creation-time order (ties by rowid)."""
        sql, args = range_query(start, end, scope, limit, descending, now_ms())
        with self.storage.read() as conn:
            cursor = conn.execute(sql, args)
            found = rows_to_memories(cursor.fetchmany(RANGE_CHUNK))
            # A long range is built a chunk at a time, so its rows are never all held beside its records.
            while len(found) % RANGE_CHUNK == 0 and (rows := cursor.fetchmany(RANGE_CHUNK)):
                found += rows_to_memories(rows)
        return found

    def iter_memories(self, batch: int = 1000) -> Iterator[Memory]:
        """Every live memory in id order, streamed in batches (export)."""
        last = ""
        while True:
            rows = self.storage.conn.execute(
                f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.id > ? AND {NOT_EXPIRED}"
                " ORDER BY m.id LIMIT ?", (last, now_ms(), batch)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield from rows_to_memories(rows)

    def archived(self, limit: int) -> list[Memory]:
        """Archived memories (not expired), last updated first."""
        rows = self.storage.conn.execute(
            f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.archived = 1 AND (m.expires_at IS NULL"
            " OR m.expires_at > ?) ORDER BY m.updated_at DESC, m.rowid DESC LIMIT ?", (now_ms(), limit)).fetchall()
        return rows_to_memories(rows)

    def recently_updated(self, where: str, args: Sequence[object], limit: int) -> list[Memory]:
        """Memories passing ``where`` (SQL on ``memories m``, e.g. ``Filters.sql``), last updated first."""
        with self.storage.read() as conn:
            rows = conn.execute(f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE {where}"
                                " ORDER BY m.updated_at DESC, m.rowid DESC LIMIT ?", (*args, limit)).fetchall()
        return rows_to_memories(rows)

    def latest_seqs(self, record_ids: Sequence[str]) -> dict[str, int]:
        """The local sequence number of the newest op on each record (absent: no op here)."""
        if not record_ids:
            return {}
        marks = ",".join("?" * len(record_ids))
        rows = self.storage.conn.execute(
            f"SELECT record_id, max(seq) FROM ops WHERE record_id IN ({marks}) GROUP BY record_id",
            tuple(record_ids)).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def persona(self, key: str = "persona") -> tuple[str, int] | None:
        """The persona text and the hlc that set it, or None."""
        row = self.storage.conn.execute("SELECT value, clock FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], int.from_bytes(row[1][:8], "big"))

    def changes_since(self, seq: int, limit: int = 1000) -> list[Change]:
        """Ops applied locally after ``seq`` (the change feed), oldest first."""
        return read_changes(self.storage.conn, seq, limit)

    def last_seq(self) -> int:
        """The newest local sequence number (0 for an empty store)."""
        return int(self.storage.conn.execute("SELECT coalesce(max(seq), 0) FROM ops").fetchone()[0])

    def counts(self) -> dict[str, int]:
        """Row counts of the main tables."""
        conn = self.storage.conn
        now = now_ms()
        total = conn.execute("SELECT count(*) FROM memories").fetchone()[0]
        expired = conn.execute("SELECT count(*) FROM memories WHERE expires_at IS NOT NULL AND expires_at <= ?",
                               (now,)).fetchone()[0]
        archived = conn.execute("SELECT count(*) FROM memories WHERE archived = 1 AND (expires_at IS NULL"
                                " OR expires_at > ?)", (now,)).fetchone()[0]
        return {
            "memories": total - expired - archived,
            "expired": expired,
            "archived": archived,
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

    def meta(self, conn: sqlite3.Connection | None = None) -> dict[str, str]:
        """The ``meta`` table as a dict."""
        return dict((conn or self.storage.conn).execute("SELECT key, value FROM meta"))
