"""Apply ops to the derived tables: the single path for local writes, remote ops and rebuilds.

``apply_op`` inserts the op into the log, moves the heads and updates the
materialised tables (memories, tags, FTS, persona) inside the caller's
transaction. The state it produces depends only on the set of ops applied
(given that each op is applied after its predecessors):

- scalar fields: last-writer-wins per field by the clock ``(hlc, author, op id)``;
  an op's hlc always exceeds its predecessors', so causally later writes win;
- tags: observed-remove set; a remove names the add ops it saw;
- delete: removes the record and leaves a tombstone; later ops on it are no-ops.
  (Concurrent update-wins semantics arrive with replication, issue 5.)
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any

from .clock import hlc_ms
from .model import SCALAR_FIELDS, UPDATABLE_FIELDS, Op
from .utils import now_ms

TAG_SEP = "\x1f"
CREATE_DEFAULTS: dict[str, Any] = {"tool": None, "source": None, "session": None, "metadata": {},
                                   "expires_at": None}  # tags column separator; a word separator for the FTS tokenizer


def clock_of(op: Op) -> bytes:
    """The total order used for last-writer-wins: hlc, then author, then op id."""
    return op.hlc.to_bytes(8, "big") + op.author + op.id


def content_hash(content: str) -> str:
    """Short, stable hash of the content (duplicate detection)."""
    return hashlib.sha256(content.encode("utf-8")).hexdigest()[:32]


def dump_metadata(value: dict[str, Any]) -> str:
    """Canonical JSON text of a metadata dict."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def apply_op(conn: sqlite3.Connection, op: Op) -> bool:
    """Insert ``op`` into the log and materialise it. False if it was already applied."""
    cursor = conn.execute(
        "INSERT OR IGNORE INTO ops(id, author, hlc, kind, record_id, body, sig, received_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (op.id, op.author, op.hlc, op.kind, op.record_id, op.body, op.sig, now_ms()),
    )
    if cursor.rowcount == 0:
        return False
    if op.preds:
        conn.executemany("DELETE FROM heads WHERE id = ?", [(p,) for p in op.preds])
    conn.execute("INSERT INTO heads(id) VALUES (?)", (op.id,))
    _HANDLERS[op.kind](conn, op)
    return True


# ------------------------------------------------------------------ handlers
def record_presence(conn: sqlite3.Connection, record_id: str) -> tuple[bool, bool]:
    """(deleted here, materialised here) for a record id, in one query."""
    gone, exists = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM tombstones WHERE record_id = ?),"
        " EXISTS (SELECT 1 FROM memories WHERE id = ?)", (record_id, record_id)).fetchone()
    return bool(gone), bool(exists)


def _create(conn: sqlite3.Connection, op: Op) -> None:
    gone, exists = record_presence(conn, op.record_id)
    if gone:
        return
    if exists:
        # A second create for a known id (the same import on two replicas): it
        # writes every create-time field (defaults for those it omits) by
        # last-writer-wins, and its tags are adds, so the result is the same
        # whichever create arrived first.
        fields = {**CREATE_DEFAULTS, **{k: v for k, v in op.fields.items() if k in SCALAR_FIELDS}}
        _write_fields(conn, op, fields, frozenset(SCALAR_FIELDS), _create_updated_ms(op))
        for tag in op.fields.get("tags", ()):
            _add_tag(conn, op, tag)
        return
    f = op.fields
    tags = sorted(set(f.get("tags", ())))
    content = f["content"]
    created = f.get("created_at", hlc_ms(op.hlc))
    cursor = conn.execute(
        "INSERT INTO memories(id, content, tags, scope, kind, tool, source, session, priority,"
        " confidence, metadata, created_at, updated_at, expires_at, content_hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (op.record_id, content, TAG_SEP.join(tags), f["scope"], f["kind"], f.get("tool"),
         f.get("source"), f.get("session"), f["priority"], f["confidence"],
         dump_metadata(f.get("metadata") or {}), created, _create_updated_ms(op),
         f.get("expires_at"), content_hash(content)),
    )
    mem = cursor.lastrowid
    if tags:
        conn.executemany("INSERT INTO tags(mem, tag, add_op) VALUES (?, ?, ?)",
                         [(mem, tag, op.id) for tag in tags])
    conn.execute("INSERT INTO memories_fts(rowid, content, tags, scope) VALUES (?, ?, ?, ?)",
                 (mem, content, TAG_SEP.join(tags), f["scope"]))


def _create_updated_ms(op: Op) -> int:
    """What a create contributes to ``updated_at`` (a max over ops, so order does not matter)."""
    created = op.fields.get("created_at", hlc_ms(op.hlc))
    return max(created, op.fields.get("updated_at") or created)


def _update(conn: sqlite3.Connection, op: Op) -> None:
    _write_fields(conn, op, op.fields, UPDATABLE_FIELDS, hlc_ms(op.hlc))


def _write_fields(conn: sqlite3.Connection, op: Op, fields: dict[str, Any], allowed: frozenset[str],
                  updated_ms: int) -> None:
    """Last-writer-wins per field: ``op`` sets each allowed field whose current clock is older."""
    row = conn.execute("SELECT rowid, content, tags, scope, clocks, updated_at FROM memories WHERE id = ?",
                       (op.record_id,)).fetchone()
    if row is None:
        return  # deleted (tombstone) - nothing to update
    mem, old_content, tag_text, old_scope, clocks_text, updated_at = row
    clocks: dict[str, str] = json.loads(clocks_text) if clocks_text else {}
    base = _first_create_clock(conn, op.record_id, op.id)
    mine = clock_of(op)
    changes: dict[str, Any] = {}
    for field, value in fields.items():
        if field not in allowed:
            continue  # unknown to this version: ignored alike on every replica
        current = bytes.fromhex(clocks[field]) if field in clocks else base
        if mine > current:
            changes[field] = dump_metadata(value) if field == "metadata" else value
            clocks[field] = mine.hex()
    if "content" in changes:
        changes["content_hash"] = content_hash(changes["content"])
    changes["clocks"] = json.dumps(clocks, sort_keys=True) if clocks else None
    changes["updated_at"] = max(updated_at, updated_ms)
    assignments = ", ".join(f"{name} = ?" for name in changes)
    conn.execute(f"UPDATE memories SET {assignments} WHERE rowid = ?", (*changes.values(), mem))
    new_content, new_scope = changes.get("content", old_content), changes.get("scope", old_scope)
    if (new_content, new_scope) != (old_content, old_scope):
        _reindex(conn, mem, (old_content, tag_text, old_scope), (new_content, tag_text, new_scope))


def _first_create_clock(conn: sqlite3.Connection, record_id: str, exclude: bytes) -> bytes:
    """Clock of the create whose values the row was first built from: the base of every
    field no later op has written yet."""
    row = conn.execute("SELECT hlc, author, id FROM ops WHERE record_id = ? AND kind = 'create' AND id != ?"
                       " ORDER BY seq LIMIT 1", (record_id, exclude)).fetchone()
    if row is None:
        return b""
    return int(row[0]).to_bytes(8, "big") + row[1] + row[2]


def _tag_add(conn: sqlite3.Connection, op: Op) -> None:
    _add_tag(conn, op, op.fields["tag"])


def _add_tag(conn: sqlite3.Connection, op: Op, tag: str) -> None:
    row = _row(conn, op.record_id)
    if row is None:
        return
    conn.execute("INSERT OR IGNORE INTO tags(mem, tag, add_op) VALUES (?, ?, ?)", (row[0], tag, op.id))
    _refresh_tags(conn, row, hlc_ms(op.hlc))


def _tag_remove(conn: sqlite3.Connection, op: Op) -> None:
    row = _row(conn, op.record_id)
    if row is None:
        return
    conn.executemany("DELETE FROM tags WHERE mem = ? AND tag = ? AND add_op = ?",
                     [(row[0], op.fields["tag"], add) for add in op.fields.get("removes", ())])
    _refresh_tags(conn, row, hlc_ms(op.hlc))


def _refresh_tags(conn: sqlite3.Connection, row: tuple[Any, ...], at_ms: int) -> None:
    mem, content, old_tags, scope = row
    tags = [t for (t,) in conn.execute("SELECT DISTINCT tag FROM tags WHERE mem = ? ORDER BY tag", (mem,))]
    new_tags = TAG_SEP.join(tags)
    conn.execute("UPDATE memories SET tags = ?, updated_at = max(updated_at, ?) WHERE rowid = ?",
                 (new_tags, at_ms, mem))
    if new_tags != old_tags:
        _reindex(conn, mem, (content, old_tags, scope), (content, new_tags, scope))


def _delete(conn: sqlite3.Connection, op: Op) -> None:
    conn.execute("INSERT OR IGNORE INTO tombstones(record_id, op) VALUES (?, ?)", (op.record_id, op.id))
    row = _row(conn, op.record_id)
    if row is None:
        return
    mem, content, tags, scope = row
    conn.execute("INSERT INTO memories_fts(memories_fts, rowid, content, tags, scope)"
                 " VALUES ('delete', ?, ?, ?, ?)", (mem, content, tags, scope))
    conn.execute("DELETE FROM tags WHERE mem = ?", (mem,))
    conn.execute("DELETE FROM access WHERE mem = ?", (mem,))
    conn.execute("DELETE FROM memories WHERE rowid = ?", (mem,))


def _persona(conn: sqlite3.Connection, op: Op) -> None:
    key = op.fields.get("key", "persona")
    mine = clock_of(op)
    row = conn.execute("SELECT clock FROM kv WHERE key = ?", (key,)).fetchone()
    if row is None or mine > row[0]:
        conn.execute("INSERT OR REPLACE INTO kv(key, value, clock) VALUES (?, ?, ?)",
                     (key, op.fields["text"], mine))


# ------------------------------------------------------------------ helpers
def _row(conn: sqlite3.Connection, record_id: str) -> tuple[Any, ...] | None:
    return conn.execute("SELECT rowid, content, tags, scope FROM memories WHERE id = ?",
                        (record_id,)).fetchone()


def _reindex(conn: sqlite3.Connection, mem: int, old: tuple[str, str, str], new: tuple[str, str, str]) -> None:
    """Replace a row's FTS entry; external-content FTS needs the exact old values to delete."""
    conn.execute("INSERT INTO memories_fts(memories_fts, rowid, content, tags, scope)"
                 " VALUES ('delete', ?, ?, ?, ?)", (mem, *old))
    conn.execute("INSERT INTO memories_fts(rowid, content, tags, scope) VALUES (?, ?, ?, ?)", (mem, *new))


_HANDLERS = {
    "create": _create,
    "update": _update,
    "tag_add": _tag_add,
    "tag_remove": _tag_remove,
    "delete": _delete,
    "persona": _persona,
}
