"""Apply ops to the derived tables: the single path for local writes, remote ops and rebuilds.

``apply_op`` inserts the op into the log, moves the heads and updates the
materialised tables (memories, tags, FTS, persona) inside the caller's
transaction. Each op is applied after its predecessors; the state it leaves
is a pure function of the set of ops applied, whatever their order:

- scalar fields: the causally later write wins; among concurrent writes the
  largest ``(effective clock, author, op id)`` (see ``graph``); the losing
  value is recorded in ``conflicts``;
- tags: an observed-remove set: a remove names the add ops it saw (each must
  be an ancestor and add that tag to that memory), so a concurrent add survives;
- delete: removes what it observed. A memory is gone when every write to it
  (create, update, tag add or remove) is an ancestor of some delete; a write
  the deletes had not seen keeps it, or brings it back whole (update-wins);
- persona: like a scalar field;
- creates of one id (the same import on two replicas, or a forgery): the first
  create, the smallest ``(effective clock, author, op id)``, sets the create-time
  fields; any other only adds its tags (``_recreate``).

Validity that needs the op's ancestors (``check_op``) is decided from the op
and its ancestors only, so every correct replica accepts or rejects alike.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any, NamedTuple

from ..errors import InvalidOp
from ..model import SCALAR_FIELDS, UPDATABLE_FIELDS, Op
from ..store.reads import TAG_SEP
from ..textnorm import norm_hash
from ..utils import now_ms
from . import codec, team
from .clock import hlc_ms
from .graph import Node, ancestors_among, below, effective_clock, floor_of, is_ancestor, node, pred_nodes

CREATE_DEFAULTS: dict[str, Any] = {"tool": None, "source": None, "session": None, "metadata": {},
                                   "expires_at": None}
MEMORY_WRITES = ("create", "update", "tag_add", "tag_remove", "unmerge")
REMOVALS = ("delete", "merge", "purge")  # ops that take a memory away (merge: into the one it repeats)
NEEDS_CREATE = frozenset({"update", "tag_add", "tag_remove", "delete", "unmerge"})
DELETED_FIELD = "_deleted"  # the conflicts row of a delete that met a write it had not seen


class Applied(NamedTuple):
    """How one op is being applied: its graph node and LWW clock, and whether it saw every stored op."""

    node: Node
    clock: bytes
    complete: bool
    audit: bool = True


def clock_of(op: Op, eff: int) -> bytes:
    """The total order used for last-writer-wins: effective clock, then author, then op id."""
    return eff.to_bytes(8, "big") + op.author + op.id


def content_hash(content: str) -> str:
    """Short, stable hash of the content (duplicate detection)."""
    return hashlib.sha256(content.encode("utf-8")).hexdigest()[:32]


def dump_metadata(value: dict[str, Any]) -> str:
    """Canonical JSON text of a metadata dict."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def check_op(conn: sqlite3.Connection, op: Op, preds: list[Node]) -> None:
    """Raise :class:`InvalidOp` unless ``op`` is valid given its (stored) ancestors."""
    _check_graph(conn, op, preds)
    if op.kind in team.TEAM_KINDS:
        return
    if op.kind == "merge":
        _check_merge(conn, op, preds)
        return
    if op.kind == "unmerge":
        _check_unmerge(conn, op, preds)
    if op.kind == "purge":
        _check_purge(conn, op, preds)
        return
    if op.kind not in NEEDS_CREATE:
        return
    # Every ancestry question about this op is answered by one walk of its ancestors.
    creates = [seq for (seq,) in conn.execute(
        "SELECT seq FROM ops WHERE record_id = ? AND kind = 'create' AND graph IS ?", (op.record_id, op.graph))]
    named = [conn.execute("SELECT seq, kind, record_id, body FROM ops WHERE id = ? AND graph IS ?",
                          (add, op.graph)).fetchone()
             for add in (op.fields.get("removes", ()) if op.kind == "tag_remove" else ())]
    ancestors = ancestors_among(conn, [*creates, *(row[0] for row in named if row is not None)], preds)
    if not ancestors.intersection(creates):
        raise InvalidOp(f"{op.kind} of a memory whose create is not among its ancestors")
    for row in named:
        if row is None or row[0] not in ancestors:
            raise InvalidOp("tag_remove names an add that is not among its ancestors")
        if row[2] != op.record_id or not _adds_tag(row[1], row[3], op.fields["tag"]):
            raise InvalidOp("tag_remove names an op that does not add this tag to this memory")


def _check_merge(conn: sqlite3.Connection, op: Op, preds: list[Node]) -> None:
    """A merge names memories it has seen: the survivor's create (and the merged one's, unless the
    merge absorbed a write that never became a memory of its own) are among its ancestors."""
    records = [op.fields["into"]] + ([] if op.fields["absorbed"] else [op.record_id])
    if not _creates_seen(conn, records, preds, op.graph):
        raise InvalidOp("merge of a memory whose create is not among its ancestors")


def _check_purge(conn: sqlite3.Connection, op: Op, preds: list[Node]) -> None:
    """A purge deletes memories it has seen: each one's create is among its ancestors."""
    if not _creates_seen(conn, op.fields["records"], preds, op.graph):
        raise InvalidOp("purge of a memory whose create is not among its ancestors")


def _creates_seen(conn: sqlite3.Connection, records: list[str], preds: list[Node], graph: bytes | None) -> bool:
    """True if every one of ``records`` has a create among the ancestors of ``preds`` (one graph walk)."""
    marks = ",".join("?" * len(records))
    creates = conn.execute(f"SELECT record_id, seq FROM ops WHERE kind = 'create' AND record_id IN ({marks})"
                           " AND graph IS ?", (*records, graph)).fetchall()
    seen = ancestors_among(conn, [seq for _, seq in creates], preds)
    return {record for record, seq in creates if seq in seen} == set(records)


def _check_unmerge(conn: sqlite3.Connection, op: Op, preds: list[Node]) -> None:
    """An unmerge undoes a merge of this memory that is among its ancestors."""
    row = conn.execute("SELECT seq, kind, record_id FROM ops WHERE id = ? AND graph IS ?",
                       (op.fields["merge"], op.graph)).fetchone()
    if row is None or row[1] != "merge" or row[2] != op.record_id or not ancestors_among(conn, [row[0]], preds):
        raise InvalidOp("unmerge names no merge of this memory among its ancestors")


def _check_graph(conn: sqlite3.Connection, op: Op, preds: list[Node]) -> None:
    """An op's predecessors are in its own graph; in a shared scope's graph, the root is its only op
    without predecessors, and every other op is judged by the membership among its ancestors."""
    if preds:
        marks = ",".join("?" * len(preds))
        if conn.execute(f"SELECT 1 FROM ops WHERE seq IN ({marks}) AND graph IS NOT ? LIMIT 1",
                        (*(p.seq for p in preds), op.graph)).fetchone() is not None:
            raise InvalidOp("a predecessor is in another graph (a shared scope's ops build on that scope only)")
    if op.graph is None:
        return
    if op.kind == "team_create":
        if preds:
            raise InvalidOp("a shared scope's root has no predecessors")
        return
    if not preds:
        raise InvalidOp("only a shared scope's root has no predecessors")
    membership = membership_at(conn, op.graph, preds)
    membership.check(op.kind, op.author, op.fields)
    if op.kind == "create":
        if op.record_id != team.record_id_for(op.graph, op.fields.get("id_salt")):
            raise InvalidOp("a shared scope's memory id is the hash of the scope and the create's id_salt")
        if op.fields["scope"] != team.scope_label(membership.name or ""):
            raise InvalidOp("a shared scope's memory is labelled with the scope's name")
    elif op.kind == "update" and "scope" in op.fields and op.fields["scope"] != team.scope_label(
            membership.name or ""):
        raise InvalidOp("a shared scope's memory stays in its scope")


def membership_at(conn: sqlite3.Connection, graph: bytes, preds: list[Node]) -> team.Membership:
    """The membership of a shared scope as of the ancestors of ``preds`` (one walk of the graph)."""
    rows = conn.execute("SELECT seq, eff, id, kind, author, body FROM ops WHERE graph = ? AND kind IN"
                        " ('team_create', 'team_member', 'team_device')", (graph,)).fetchall()
    seen = ancestors_among(conn, [row[0] for row in rows], preds)
    return team.Membership.fold(
        team.MembershipOp(eff, oid, kind, author, codec.decode(body)["fields"])
        for seq, eff, oid, kind, author, body in rows if seq in seen)


def _adds_tag(kind: str, body: bytes, tag: str) -> bool:
    if codec.is_stub(body):
        return False  # a truncated add adds nothing any more
    fields = codec.decode(body).get("fields") or {}  # nor does a pruned one
    if kind == "tag_add":
        return bool(fields.get("tag") == tag)
    return kind == "create" and tag in fields.get("tags", ())


def apply_op(conn: sqlite3.Connection, op: Op, preds: list[Node] | None = None, *, check: bool = True,
             all_heads: bool | None = None) -> Node | None:
    """Insert ``op`` into the log and materialise it; its node, or None if it was already applied.

    ``preds`` are the predecessors' nodes (looked up when not given; all must
    be stored). ``check`` runs :func:`check_op` first (a local op built on
    every head may skip it). ``all_heads`` says the op names every current
    head (computed when not given).
    """
    if preds is None:
        preds = pred_nodes(conn, op.preds)
        if preds is None:
            raise InvalidOp("a predecessor is not stored here")
    if check:
        if node(conn, op.id) is not None:
            return None
        if not op.pruned:  # a skeleton (from this store's own log: a rebuild) has no fields to check
            check_op(conn, op, preds)
    eff = effective_clock(op.hlc, preds)
    cursor = conn.execute(
        "INSERT OR IGNORE INTO ops(id, author, hlc, kind, record_id, body, sig, received_at, eff, graph)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (op.id, op.author, op.hlc, op.kind, op.record_id, op.body, op.sig, now_ms(), eff, op.graph),
    )
    if cursor.rowcount == 0:
        return None
    seq = int(cursor.lastrowid or 0)
    if op.preds:
        conn.executemany("DELETE FROM heads WHERE id = ?", [(p,) for p in op.preds])
    if all_heads is None:  # it saw every op of its graph (floors are per graph)
        all_heads = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM heads WHERE graph IS ?)",
                                 (op.graph,)).fetchone()[0] == 1
    conn.execute("INSERT INTO heads(id, graph) VALUES (?, ?)", (op.id, op.graph))
    floor = floor_of(preds, all_heads, seq)
    if floor is not None:
        conn.execute("UPDATE ops SET floor = ? WHERE seq = ?", (floor, seq))
        conn.executemany("INSERT OR IGNORE INTO op_preds(op, pred) VALUES (?, ?)", [(seq, p.seq) for p in preds])
    here = Node(seq, eff, seq if floor is None else floor)
    ctx = Applied(here, clock_of(op, eff), floor is None)
    if op.pruned:  # its fields were pruned: its memory is gone for good (compactor), only its place stays
        if codec.is_stub(op.body) and codec.stub_parts(op.body)[0]:  # a truncated op that was its tombstone
            conn.execute("INSERT OR IGNORE INTO tombstones(record_id, op) VALUES (?, ?)", (op.record_id, op.id))
        return here
    if op.kind in MEMORY_WRITES and conn.execute(
            "SELECT 1 FROM tombstones WHERE record_id = ?", (op.record_id,)).fetchone() is not None:
        _resurrect(conn, op, ctx)
        if op.kind == "unmerge":
            _unmerge(conn, op, ctx)
    else:
        _HANDLERS[op.kind](conn, op, ctx)
    return here


def record_pruned(conn: sqlite3.Connection, record_id: str) -> bool:
    """True if compaction kept only the skeletons of this memory's ops: nothing can rebuild it any more
    (``_resurrect`` skips skeletons), so restore and undo refuse."""
    return conn.execute(f"SELECT 1 FROM ops o WHERE o.record_id = ? AND {codec.COMPACTED_SQL.format(column='o.body')}"
                        " LIMIT 1", (record_id,)).fetchone() is not None


def _resurrect(conn: sqlite3.Connection, op: Op, ctx: Applied) -> None:
    """A write no delete had seen reached a deleted memory: rebuild it from all its writes."""
    gone = conn.execute("SELECT op FROM tombstones WHERE record_id = ?", (op.record_id,)).fetchone()[0]
    conn.execute("DELETE FROM tombstones WHERE record_id = ?", (op.record_id,))
    rows = conn.execute(
        "SELECT seq, eff, coalesce(floor, seq), body, sig FROM ops WHERE record_id = ?"
        " AND kind IN ('create', 'update', 'tag_add', 'tag_remove') ORDER BY seq", (op.record_id,)).fetchall()
    for seq, eff, floor, body, sig in rows:
        past = codec.parse_op(body, sig, verify=False, stored=True)
        if past.pruned:
            continue  # compacted (only after every known peer had its delete): its values are gone
        _HANDLERS[past.kind](conn, past, Applied(Node(seq, eff, floor), clock_of(past, eff), True, audit=False))
    if op.kind == "unmerge":
        return  # undoing a merge is asked for, not a conflict
    author = conn.execute("SELECT author FROM ops WHERE id = ?", (gone,)).fetchone()
    _record_conflict(conn, op.record_id, DELETED_FIELD, (op.id, op.author, "restored"),
                     (gone, author[0] if author else b"", "deleted"),
                     "update wins: a write the delete had not seen restores the memory")


# ------------------------------------------------------------------ handlers
def _create(conn: sqlite3.Connection, op: Op, ctx: Applied) -> None:
    if conn.execute("SELECT 1 FROM memories WHERE id = ?", (op.record_id,)).fetchone() is not None:
        _recreate(conn, op, ctx)
        return
    f = op.fields
    tags = sorted(set(f.get("tags", ())))
    content = f["content"]
    created = f.get("created_at", hlc_ms(op.hlc))
    cursor = conn.execute(
        "INSERT INTO memories(id, content, tags, scope, kind, tool, source, session, priority,"
        " confidence, metadata, created_at, updated_at, expires_at, content_hash, norm_hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (op.record_id, content, TAG_SEP.join(tags), f["scope"], f["kind"], f.get("tool"),
         f.get("source"), f.get("session"), f["priority"], f["confidence"],
         dump_metadata(f.get("metadata") or {}), created, _create_updated_ms(op),
         f.get("expires_at"), content_hash(content), norm_hash(content)),
    )
    mem = cursor.lastrowid
    if tags:
        conn.executemany("INSERT INTO tags(mem, tag, add_op) VALUES (?, ?, ?)",
                         [(mem, tag, op.id) for tag in tags])
    conn.execute("INSERT INTO memories_fts(rowid, content, tags, scope) VALUES (?, ?, ?, ?)",
                 (mem, content, TAG_SEP.join(tags), f["scope"]))


def apply_creates(conn: sqlite3.Connection, ops: list[Op], effs: list[int], heads: list[bytes]) -> list[Node] | None:
    """Set-at-a-time form of :func:`apply_op` for a chain of local creates of new memories.

    ``ops[0]`` names every current head (``heads``), each later op names only the op before it,
    ``effs`` are their effective clocks: what :meth:`OpLog.append` builds. The state left is
    the state ``apply_op(conn, op, [previous node], check=False, all_heads=True)`` leaves for
    each op in order, byte for byte (the same rows, seqs and rowids); only the statements are
    fewer. Returns the ops' nodes, or None, having written nothing, when some op falls outside
    that case (a record id stored, forgotten or repeated): then apply them one by one.
    """
    ids = [op.record_id for op in ops]
    if len(set(ids)) != len(ids) or any(op.kind != "create" for op in ops):
        return None
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start:start + _IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        if conn.execute(f"SELECT 1 FROM memories WHERE id IN ({marks}) UNION ALL"
                        f" SELECT 1 FROM tombstones WHERE record_id IN ({marks}) LIMIT 1",
                        (*chunk, *chunk)).fetchone() is not None:
            return None
    # AUTOINCREMENT: the next key is above both the largest ever used and the largest present.
    seq0, mem0 = (_next_key(conn, "ops", "seq"), _next_key(conn, "memories", "rowid"))
    received = now_ms()
    conn.executemany(
        "INSERT INTO ops(seq, id, author, hlc, kind, record_id, body, sig, received_at, eff)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(seq0 + i, op.id, op.author, op.hlc, op.kind, op.record_id, op.body, op.sig, received, eff)
         for i, (op, eff) in enumerate(zip(ops, effs, strict=True))])
    conn.executemany("DELETE FROM heads WHERE id = ?", [(h,) for h in heads])
    conn.execute("INSERT INTO heads(id) VALUES (?)", (ops[-1].id,))
    rows, tag_rows, fts_rows = [], [], []
    for i, op in enumerate(ops):
        f, mem = op.fields, mem0 + i
        tags = sorted(set(f.get("tags", ())))
        tag_text = TAG_SEP.join(tags)
        content = f["content"]
        rows.append((mem, op.record_id, content, tag_text, f["scope"], f["kind"], f.get("tool"), f.get("source"),
                     f.get("session"), f["priority"], f["confidence"], dump_metadata(f.get("metadata") or {}),
                     f.get("created_at", hlc_ms(op.hlc)), _create_updated_ms(op), f.get("expires_at"),
                     content_hash(content), norm_hash(content)))
        tag_rows += [(mem, tag, op.id) for tag in tags]
        fts_rows.append((mem, content, tag_text, f["scope"]))
    conn.executemany(
        "INSERT INTO memories(rowid, id, content, tags, scope, kind, tool, source, session, priority,"
        " confidence, metadata, created_at, updated_at, expires_at, content_hash, norm_hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.executemany("INSERT INTO tags(mem, tag, add_op) VALUES (?, ?, ?)", tag_rows)
    conn.executemany("INSERT INTO memories_fts(rowid, content, tags, scope) VALUES (?, ?, ?, ?)", fts_rows)
    return [Node(seq0 + i, eff, seq0 + i) for i, eff in enumerate(effs)]


_IN_CHUNK = 400


def _next_key(conn: sqlite3.Connection, table: str, column: str) -> int:
    """The key SQLite's AUTOINCREMENT would give the next row of ``table`` (a fixed table name)."""
    (used,) = conn.execute(f"SELECT coalesce(max({column}), 0) FROM {table}").fetchone()
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    return max(int(used), int(row[0]) if row else 0) + 1


def _recreate(conn: sqlite3.Connection, op: Op, ctx: Applied) -> None:
    """A create of an id that already has one (the same import on two replicas, or a forgery).

    The rule (issue 13): a memory's create-time fields are those of its
    *first* create, the smallest ``(effective clock, author, op id)``; a
    later create only adds its tags. Effective clocks grow along every causal
    path, so a create that saw the memory never comes first: whoever has read
    a memory cannot rewrite its provenance (``session``, ``created_at``) or
    any field its first create set. A minimum over the set of creates does
    not depend on arrival order, so replicas converge. Fields an update wrote
    keep the update's value (an update is later than some create, hence than
    the first). Disagreeing values are kept in ``conflicts``.
    """
    first = _first_create(conn, op.record_id, op.id)
    mine = (op, _create_values(op))
    theirs = (first[1], _create_values(first[1])) if first is not None else mine
    wins = first is None or ctx.clock < first[0]
    winner, loser = (mine, theirs) if wins else (theirs, mine)
    (clocks,) = conn.execute("SELECT clocks FROM memories WHERE id = ?", (op.record_id,)).fetchone()
    updated = set(json.loads(clocks)) if clocks else set()
    fields: dict[str, Any] = {}
    for name in SCALAR_FIELDS:
        if ctx.audit and _differs(winner[1][name], loser[1][name]):
            _record_conflict(conn, op.record_id, name, (winner[0].id, winner[0].author, winner[1][name]),
                             (loser[0].id, loser[0].author, loser[1][name]),
                             "creates of one id: the first (smallest clock, author, op id) sets the fields")
        if wins and name not in updated:
            fields[name] = mine[1][name]
    updated_ms = _create_updated_ms(op)
    _set_fields(conn, op.record_id, fields, updated_ms)
    for tag in op.fields.get("tags", ()):
        _add_tag(conn, op, tag, updated_ms)


def _create_values(op: Op) -> dict[str, Any]:
    """Every scalar field a create sets: defaults for those it omits, its clock's time for created_at."""
    values = {**CREATE_DEFAULTS, **{k: v for k, v in op.fields.items() if k in SCALAR_FIELDS},
              "created_at": op.fields.get("created_at", hlc_ms(op.hlc))}
    values["metadata"] = values["metadata"] or {}  # stored as '{}' either way
    return values


def _differs(a: Any, b: Any) -> bool:
    return dump_metadata({"v": a}) != dump_metadata({"v": b})


def _set_fields(conn: sqlite3.Connection, record_id: str, fields: dict[str, Any], updated_ms: int) -> None:
    """Write ``fields`` to the memory's row (keeping content hash and FTS in step); raise updated_at."""
    row = conn.execute("SELECT rowid, content, tags, scope, updated_at FROM memories WHERE id = ?",
                       (record_id,)).fetchone()
    mem, old_content, tag_text, old_scope, updated_at = row
    changes = {name: dump_metadata(value or {}) if name == "metadata" else value for name, value in fields.items()}
    archive = changes.pop("archived", None)
    if "content" in changes:
        changes["content_hash"] = content_hash(changes["content"])
        changes["norm_hash"] = norm_hash(changes["content"])
    changes["updated_at"] = max(updated_at, updated_ms)
    assignments = ", ".join(f"{name} = ?" for name in changes)
    conn.execute(f"UPDATE memories SET {assignments} WHERE rowid = ?", (*changes.values(), mem))
    new_content, new_scope = changes.get("content", old_content), changes.get("scope", old_scope)
    if archive is not None:
        # Archived: every read leaves it out (``reads.NOT_EXPIRED``); it keeps its FTS entry and vector
        # (an external-content FTS index must match its table), so unarchiving is one flag.
        conn.execute("UPDATE memories SET archived = ? WHERE rowid = ?", (int(bool(archive)), mem))
    if (new_content, new_scope) != (old_content, old_scope):
        _reindex(conn, mem, (old_content, tag_text, old_scope), (new_content, tag_text, new_scope))


def _create_updated_ms(op: Op) -> int:
    """What a create contributes to ``updated_at`` (a max over ops, so order does not matter)."""
    created = op.fields.get("created_at", hlc_ms(op.hlc))
    return max(created, op.fields.get("updated_at") or created)


def _update(conn: sqlite3.Connection, op: Op, ctx: Applied) -> None:
    _write_fields(conn, op, ctx, op.fields, UPDATABLE_FIELDS, hlc_ms(op.hlc))


def _write_fields(conn: sqlite3.Connection, op: Op, ctx: Applied, fields: dict[str, Any],
                  allowed: frozenset[str], updated_ms: int) -> None:
    """Last-writer-wins per field: ``op`` sets each allowed field whose current clock is older."""
    row = conn.execute("SELECT rowid, clocks FROM memories WHERE id = ?", (op.record_id,)).fetchone()
    if row is None:
        return
    mem, clocks_text = row
    clocks: dict[str, str] = json.loads(clocks_text) if clocks_text else {}
    first = _first_create(conn, op.record_id, op.id)
    base = first[0] if first is not None else b""
    changes: dict[str, Any] = {}
    for field, value in fields.items():
        if field not in allowed:
            continue  # unknown to this version: ignored alike on every replica
        current = bytes.fromhex(clocks[field]) if field in clocks else base
        wins = ctx.clock > current
        if ctx.audit and not ctx.complete and current and _concurrent(conn, current, ctx.node):
            _record_field_conflict(conn, op, ctx, mem, field, value, current, wins)
        if wins:
            changes[field] = value
            clocks[field] = ctx.clock.hex()
    conn.execute("UPDATE memories SET clocks = ? WHERE rowid = ?",
                 (json.dumps(clocks, sort_keys=True) if clocks else None, mem))
    _set_fields(conn, op.record_id, changes, updated_ms)


def _concurrent(conn: sqlite3.Connection, clock: bytes, here: Node) -> bool:
    """True if the op behind ``clock`` is not an ancestor of the op at ``here``."""
    holder = node(conn, clock[40:72])
    return holder is not None and not is_ancestor(conn, holder.seq, [here])


def _record_field_conflict(conn: sqlite3.Connection, op: Op, ctx: Applied, mem: int, field: str, value: Any,
                           current: bytes, wins: bool) -> None:
    (stored,) = conn.execute(f"SELECT {field} FROM memories WHERE rowid = ?", (mem,)).fetchone()
    if field == "metadata":
        stored = json.loads(stored)
    _record_concurrent(conn, op.record_id, field, (op.id, op.author, value), (current[40:72], current[8:40], stored),
                       wins)


def _record_concurrent(conn: sqlite3.Connection, record_id: str, field: str, mine: tuple[bytes, bytes, Any],
                       theirs: tuple[bytes, bytes, Any], wins: bool) -> None:
    """Record a write (``mine``: op id, author, value) that met a concurrent one already applied."""
    winner, loser = (mine, theirs) if wins else (theirs, mine)
    _record_conflict(conn, record_id, field, winner, loser, "concurrent writes: the larger (clock, author, op id) wins")


def _record_conflict(conn: sqlite3.Connection, record_id: str, field: str, winner: tuple[bytes, bytes, Any],
                     loser: tuple[bytes, bytes, Any], resolution: str) -> None:
    """Keep the losing side of a concurrent write (the merge audit trail; local, not replicated)."""
    conn.execute(
        "INSERT INTO conflicts(record_id, field, winner_op, loser_op, winner_value, loser_value, winner_author,"
        " loser_author, resolution, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (record_id, field, winner[0], loser[0], json.dumps(winner[2], ensure_ascii=False),
         json.dumps(loser[2], ensure_ascii=False), winner[1], loser[1], resolution, now_ms()))


def _first_create(conn: sqlite3.Connection, record_id: str, exclude: bytes) -> tuple[bytes, Op] | None:
    """(clock, op) of the memory's first create other than ``exclude``: the smallest (effective clock,
    author, op id), whose values every field no update has written holds."""
    row = conn.execute("SELECT eff, author, id, body, sig FROM ops WHERE record_id = ? AND kind = 'create'"
                       " AND id != ? ORDER BY eff, author, id LIMIT 1", (record_id, exclude)).fetchone()
    if row is None:
        return None
    first = codec.parse_op(row[3], row[4], verify=False, stored=True)
    if first.pruned:
        return None
    return int(row[0]).to_bytes(8, "big") + row[1] + row[2], first


def _tag_add(conn: sqlite3.Connection, op: Op, ctx: Applied) -> None:
    _add_tag(conn, op, op.fields["tag"], hlc_ms(op.hlc))


def _add_tag(conn: sqlite3.Connection, op: Op, tag: str, at_ms: int) -> None:
    row = _row(conn, op.record_id)
    if row is None:
        return
    conn.execute("INSERT OR IGNORE INTO tags(mem, tag, add_op) VALUES (?, ?, ?)", (row[0], tag, op.id))
    _refresh_tags(conn, row, at_ms)


def _tag_remove(conn: sqlite3.Connection, op: Op, ctx: Applied) -> None:
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


def _delete(conn: sqlite3.Connection, op: Op, ctx: Applied) -> None:
    _remove(conn, op, ctx, op.record_id)


def _purge(conn: sqlite3.Connection, op: Op, ctx: Applied) -> None:
    """Many deletes in one op (the compactor's purge of expired memories): each memory as a delete."""
    conn.executemany("INSERT OR IGNORE INTO op_records(record_id, seq) VALUES (?, ?)",
                     [(record, ctx.node.seq) for record in op.fields["records"]])
    for record in op.fields["records"]:
        _remove(conn, op, ctx, record)


def _remove(conn: sqlite3.Connection, op: Op, ctx: Applied, record_id: str) -> None:
    row = _row(conn, record_id)
    if row is not None and not ctx.complete:
        survivor = _unobserved_write(conn, record_id)
        if survivor is not None:
            what = "merged" if op.kind == "merge" else "deleted"
            _record_conflict(conn, record_id, DELETED_FIELD, (survivor[0], survivor[1], "kept"),
                             (op.id, op.author, what),
                             f"update wins: a concurrent write the {op.kind} had not seen keeps the memory")
            return
    conn.execute("INSERT OR IGNORE INTO tombstones(record_id, op) VALUES (?, ?)", (record_id, op.id))
    if row is None:
        return
    mem, content, tags, scope = row
    conn.execute("INSERT INTO memories_fts(memories_fts, rowid, content, tags, scope)"
                 " VALUES ('delete', ?, ?, ?, ?)", (mem, content, tags, scope))
    conn.execute("DELETE FROM tags WHERE mem = ?", (mem,))
    conn.execute("DELETE FROM access WHERE mem = ?", (mem,))
    conn.execute("DELETE FROM memories WHERE rowid = ?", (mem,))


def _unobserved_write(conn: sqlite3.Connection, record_id: str) -> tuple[bytes, bytes] | None:
    """(id, author) of a write to the memory that no delete of it has among its ancestors, if any."""
    ops = conn.execute("SELECT seq, eff, coalesce(floor, seq), kind, id, author FROM ops WHERE record_id = ?"
                       " UNION SELECT o.seq, o.eff, coalesce(o.floor, o.seq), o.kind, o.id, o.author FROM op_records r"
                       " JOIN ops o ON o.seq = r.seq WHERE r.record_id = ? ORDER BY 1",
                       (record_id, record_id)).fetchall()
    floor, extra = below(conn, [Node(seq, eff, floor) for seq, eff, floor, kind, _, _ in ops if kind in REMOVALS])
    for seq, _, _, kind, oid, author in ops:
        if kind in MEMORY_WRITES and seq > floor and seq not in extra:
            return oid, author
    return None


def _merge(conn: sqlite3.Connection, op: Op, ctx: Applied) -> None:
    """A duplicate merged into the memory it repeats: the merged memory goes the way a delete takes it
    (a write the merge had not seen keeps it); the survivor's new values travel in their own update and
    tag ops. The audit row (``merges``, local and derived) indexes it; both sides stay in the op."""
    f = op.fields
    merged = f["merged"]
    conn.execute(
        "INSERT OR IGNORE INTO merges(seq, op, author, at, into_id, merged_id, strategy, rule, absorbed, tool,"
        " source, session, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (ctx.node.seq, op.id, op.author, hlc_ms(op.hlc), f["into"], op.record_id, f["strategy"], f["rule"],
         int(f["absorbed"]), merged.get("tool"), merged.get("source"), merged.get("session"), ""))
    if not f["absorbed"]:
        _delete(conn, op, ctx)


def _unmerge(conn: sqlite3.Connection, op: Op, ctx: Applied) -> None:
    """A merge undone: the merged memory is back (``_resurrect`` rebuilt it from its own writes)."""
    conn.execute("UPDATE merges SET undone_by = coalesce(undone_by, ?) WHERE op = ?", (op.id, op.fields["merge"]))


def _persona(conn: sqlite3.Connection, op: Op, ctx: Applied) -> None:
    key = op.fields.get("key", "persona")
    row = conn.execute("SELECT clock, value FROM kv WHERE key = ?", (key,)).fetchone()
    wins = row is None or ctx.clock > row[0]
    if row is not None and ctx.audit and not ctx.complete and _concurrent(conn, row[0], ctx.node):
        _record_concurrent(conn, key, "text", (op.id, op.author, op.fields["text"]),
                           (row[0][40:72], row[0][8:40], row[1]), wins)
    if wins:
        conn.execute("INSERT OR REPLACE INTO kv(key, value, clock) VALUES (?, ?, ?)",
                     (key, op.fields["text"], ctx.clock))


# ------------------------------------------------------------------ helpers
def _row(conn: sqlite3.Connection, record_id: str) -> tuple[Any, ...] | None:
    return conn.execute("SELECT rowid, content, tags, scope FROM memories WHERE id = ?",
                        (record_id,)).fetchone()


def _reindex(conn: sqlite3.Connection, mem: int, old: tuple[str, str, str], new: tuple[str, str, str]) -> None:
    """Replace a row's FTS entry; external-content FTS needs the exact old values to delete."""
    conn.execute("INSERT INTO memories_fts(memories_fts, rowid, content, tags, scope)"
                 " VALUES ('delete', ?, ?, ?, ?)", (mem, *old))
    conn.execute("INSERT INTO memories_fts(rowid, content, tags, scope) VALUES (?, ?, ?, ?)", (mem, *new))


def _team_create(conn: sqlite3.Connection, op: Op, ctx: Applied) -> None:
    assert op.graph is not None
    conn.execute("INSERT OR IGNORE INTO teams(graph, name, creator, root) VALUES (?, ?, ?, ?)",
                 (op.graph, op.fields["name"], op.fields["user"], op.id))


def _membership(conn: sqlite3.Connection, op: Op, ctx: Applied) -> None:
    """Membership ops change no memory: rights are folded from the log (``membership_at``)."""


_HANDLERS = {
    "team_create": _team_create,
    "team_member": _membership,
    "team_device": _membership,
    "create": _create,
    "update": _update,
    "tag_add": _tag_add,
    "tag_remove": _tag_remove,
    "delete": _delete,
    "persona": _persona,
    "merge": _merge,
    "unmerge": _unmerge,
    "purge": _purge,
}
