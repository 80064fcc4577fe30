"""The merger: duplicates found on every write path, merged by strategy as ops, undone as ops.

- **Exact duplicates** (the same normal form, ``textnorm``, in one scope) are
  found by one index probe inside the writing transaction: a ``remember`` (or an
  import) that repeats a live memory does not make a second one; its write is
  *absorbed* by a ``merge`` op into the memory it repeats, which takes the
  strategy's values.
- **Duplicates other paths bring** (ops from peers) are found by a scan of the
  creates that arrived (a cursor over the log); **near duplicates** (paraphrases:
  embedding similarity at or above a threshold and no lexical conflict, see
  ``search.similarity``) by a scan of the vectors computed since the last scan.
  Both merge the later memory into the earlier one: the survivor is the memory
  whose first create is smallest by ``(effective clock, author, op id)``, the
  same on every replica, so replicas that merge the same pair concurrently agree.
- A merge is a group of signed ops in one transaction: an ``update`` and
  ``tag_add`` ops on the survivor (its new values, last-writer-wins like any
  write) and a ``merge`` op that takes the merged memory away (like a delete)
  and keeps its fields and the survivor's previous values. ``undo`` is ops too:
  the survivor's previous values written back (where the merge's values still
  stand), its added tags removed, and an ``unmerge`` op that brings the merged
  memory back whole.
- Strategies: ``semantic_merge`` (the more specific text, union of tags, the max
  of priority and confidence, the longer life), ``last_writer_wins`` (the later
  write's values), ``content_merge`` (the union of distinct lines and sentences),
  ``manual`` (keep both; the pair waits in ``merge_candidates`` for a person).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import MemoryConfig
from ..errors import InvalidInput, NotFound
from ..model import MERGE_STRATEGIES, Memory
from ..oplog import codec
from ..oplog.log import Intent, OpLog
from ..oplog.materialize import record_pruned
from ..search.filters import Filters
from ..search.similarity import content_union, more_specific, near_duplicate
from ..store.reads import MEMORY_COLUMNS, NOT_EXPIRED, Reader, row_to_memory
from ..textnorm import norm_hash
from ..utils import now_ms
from .teams import may_write

if TYPE_CHECKING:
    import numpy as np

    from ..search.semantic import SemanticIndex

log = logging.getLogger(__name__)

OFF = "off"
PROVENANCE_FIELDS = ("tool", "source", "session", "created_at")
SNAPSHOT_FIELDS = ("content", "scope", "kind", "tool", "source", "session", "priority", "confidence", "metadata",
                   "expires_at", "created_at")
# What the survivor may take from the memory merged into it (provenance fields stay the survivor's; the
# merged memory's are kept in the merge op and shown as the survivor's provenance).
VALUE_FIELDS = ("content", "kind", "priority", "confidence", "metadata", "expires_at")
SCAN_BATCH = 256
NEIGHBOURS = 6
EXACT_RULE = "exact duplicate (same normalised text in the scope)"


@dataclass(frozen=True, slots=True)
class MergeDone:
    """A merge just written: the merge op (hex), the memory kept, the strategy and why."""

    merge_id: str
    survivor: str
    merged: str
    strategy: str
    rule: str


def choose_strategy(config: MemoryConfig, scope: str, requested: object = None) -> str:
    """The strategy for a write to ``scope``: the call's, else the scope's, else the store's (``off``: none)."""
    if requested is not None:
        if requested not in (*MERGE_STRATEGIES, OFF):
            raise InvalidInput("merge", f"must be one of {', '.join((*MERGE_STRATEGIES, OFF))}")
        return str(requested)
    if not config.dedupe:
        return OFF
    return config.scope_merge_strategies.get(scope, config.merge_strategy)


def plan(survivor: Memory, incoming: dict[str, Any], strategy: str, max_chars: int) -> tuple[dict[str, Any], list[str]]:
    """(fields to update on the survivor, tags to add to it) when ``incoming`` (a later write's fields,
    ``SNAPSHOT_FIELDS`` + ``tags``) is merged into ``survivor``; only values that change are listed."""
    mine = {name: getattr(survivor, name) for name in VALUE_FIELDS}
    if strategy == "last_writer_wins":
        wanted = {name: incoming[name] for name in VALUE_FIELDS if name in incoming}
        wanted["metadata"] = incoming.get("metadata") or mine["metadata"]
    else:
        if strategy == "content_merge":
            text = content_union(survivor.content, incoming["content"])
            wanted_text = text if len(text) <= max_chars else more_specific(survivor.content, incoming["content"])
        else:
            wanted_text = more_specific(survivor.content, incoming["content"])
        if norm_hash(wanted_text) == norm_hash(survivor.content):
            wanted_text = survivor.content  # an exact duplicate keeps the survivor's spelling
        expiries = [mine["expires_at"], incoming.get("expires_at")]
        wanted = {
            "content": wanted_text,
            "priority": max(mine["priority"], incoming["priority"]),
            "confidence": max(mine["confidence"], incoming["confidence"]),
            "metadata": {**(incoming.get("metadata") or {}), **mine["metadata"]},
            "expires_at": None if None in expiries else max(e for e in expiries if e is not None),
        }
    changes = {name: value for name, value in wanted.items() if value != mine[name]}
    new_tags = sorted(set(incoming.get("tags") or ()) - set(survivor.tags))
    return changes, new_tags


def snapshot(memory: Memory) -> dict[str, Any]:
    """A memory's fields as a merge op keeps them (enough to bring it back as it was)."""
    values = {name: getattr(memory, name) for name in SNAPSHOT_FIELDS}
    return {**values, "tags": list(memory.tags)}


class Merger:
    """Finds duplicates and writes merges, undos and the pairs left for a person, for one store."""

    def __init__(self, oplog: OpLog, reads: Reader, config: MemoryConfig, semantic: SemanticIndex | None) -> None:
        self.oplog = oplog
        self.reads = reads
        self.config = config
        self.semantic = semantic
        self._seen = 0  # ops up to here hold no create from elsewhere (this process looked)

    # ------------------------------------------------------------ finding
    def find_exact(self, conn: sqlite3.Connection, scope: str, key: str) -> Memory | None:
        """The live memory of ``scope`` whose text's normal form hashes to ``key`` (``textnorm.norm_hash``;
        the earliest created, if several)."""
        cluster = self._cluster(conn, scope, key)
        return cluster[0] if cluster else None

    @staticmethod
    def _cluster(conn: sqlite3.Connection, scope: str, key: str) -> list[Memory]:
        """The live memories of ``scope`` whose normal form hashes to ``key``, earliest created first (the
        order that picks a survivor on every replica)."""
        rows = conn.execute(f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.scope = ? AND m.norm_hash = ?"
                            f" AND {NOT_EXPIRED}", (scope, key, now_ms())).fetchall()
        return sorted((row_to_memory(row) for row in rows), key=lambda m: first_create(conn, m.id))

    @staticmethod
    def absorbed(conn: sqlite3.Connection, record_id: str) -> bool:
        """True if a write of this id was merged into another memory (an import of it again is the same
        write: nothing to do)."""
        return conn.execute("SELECT 1 FROM merges WHERE merged_id = ?",
                            (record_id,)).fetchone() is not None

    # ------------------------------------------------------------ writing
    def absorb(self, conn: sqlite3.Connection, survivor: Memory, record_id: str, fields: dict[str, Any],
               strategy: str, rule: str = EXACT_RULE) -> MergeDone:
        """Merge a write that was about to create ``record_id`` into ``survivor`` (no memory of its own)."""
        return self._merge(conn, survivor, record_id, {**fields, "tags": list(fields.get("tags") or ())},
                           strategy, rule, absorbed=True)

    def merge_pair(self, conn: sqlite3.Connection, survivor: Memory, merged: Memory, strategy: str,
                   rule: str) -> MergeDone:
        """Merge the live memory ``merged`` into ``survivor`` (its text stays in its own ops, where undo
        finds it: the merge op keeps the rest of its fields)."""
        return self._merge(conn, survivor, merged.id, snapshot(merged), strategy, rule, absorbed=False)

    def _merge(self, conn: sqlite3.Connection, survivor: Memory, record_id: str, incoming: dict[str, Any],
               strategy: str, rule: str, absorbed: bool) -> MergeDone:
        changes, new_tags = plan(survivor, incoming, strategy, self.config.max_content_chars)
        intents: list[Intent] = [("update", survivor.id, changes)] if changes else []
        intents += [("tag_add", survivor.id, {"tag": tag}) for tag in new_tags]
        ops = self.oplog.append(conn, intents)
        merged = {name: incoming.get(name) for name in SNAPSHOT_FIELDS if name in incoming}
        merged["tags"] = list(incoming.get("tags") or ())
        merged["metadata"] = merged.get("metadata") or {}
        if not absorbed:  # its values stay in its own ops (undo replays them): the merge keeps its provenance
            merged = {name: merged.get(name) for name in PROVENANCE_FIELDS}
        fields = {"into": survivor.id, "strategy": strategy, "rule": rule[:512], "absorbed": absorbed,
                  "merged": merged, "before": {name: getattr(survivor, name) for name in changes},
                  "update_op": ops[0].id if changes else None,
                  "tag_ops": [op.id for op in ops[1 if changes else 0:]]}
        (op,) = self.oplog.append(conn, [("merge", record_id, fields)])
        return MergeDone(op.id.hex(), survivor.id, record_id, strategy, rule)

    def pair_for_person(self, conn: sqlite3.Connection, a: str, b: str, rule: str) -> None:
        """The ``manual`` strategy: keep both, and list the pair for someone to decide."""
        first, second = sorted((a, b))
        conn.execute("INSERT OR IGNORE INTO merge_candidates(a, b, rule, at) VALUES (?, ?, ?, ?)",
                     (first, second, rule[:512], now_ms()))

    def undo(self, conn: sqlite3.Connection, merge_id: str) -> dict[str, Any]:
        """Undo a merge: the survivor's previous values back where the merge's still stand, its added
        tags removed, the merged memory back as it was. Returns the audit row."""
        row = self.find_merge(conn, merge_id)
        if row["undone_by"] is not None:
            raise InvalidInput("merge_id", f"merge {row['merge_id']} was already undone")
        op_row = conn.execute("SELECT body, sig FROM ops WHERE id = ?", (bytes.fromhex(row["merge_id"]),)).fetchone()
        merge_op = codec.parse_op(op_row[0], op_row[1], verify=False, stored=True)
        if merge_op.pruned:
            raise InvalidInput("merge_id", f"merge {row['merge_id']} was compacted (older than the undo window)")
        f = merge_op.fields
        into, merged_id = f["into"], merge_op.record_id
        if record_pruned(conn, merged_id):
            raise InvalidInput("merge_id", f"merge {row['merge_id']} was compacted (older than the undo window):"
                                           " the merged memory's old values are gone")
        intents: list[Intent] = []
        current = conn.execute("SELECT rowid, clocks FROM memories WHERE id = ?", (into,)).fetchone()
        if current is not None:
            clocks: dict[str, str] = json.loads(current[1]) if current[1] else {}
            update_op = f.get("update_op")
            restore = {name: value for name, value in f.get("before", {}).items()
                       if update_op is not None and clocks.get(name, "").endswith(update_op.hex())}
            if restore:
                intents.append(("update", into, restore))
            for tag_op in f.get("tag_ops", ()):
                tag = conn.execute("SELECT tag FROM tags WHERE mem = ? AND add_op = ?", (current[0], tag_op)).fetchone()
                if tag is not None:
                    intents.append(("tag_remove", into, {"tag": tag[0], "removes": [tag_op]}))
        created = conn.execute("SELECT 1 FROM ops WHERE record_id = ? AND kind = 'create'", (merged_id,)).fetchone()
        if f["absorbed"] and created is None:
            fields = {k: v for k, v in f["merged"].items() if v is not None or k in ("tool", "source")}
            intents.append(("create", merged_id, fields))
        intents.append(("unmerge", merged_id, {"merge": merge_op.id}))
        self.oplog.append(conn, intents)
        return self.find_merge(conn, row["merge_id"])

    # ------------------------------------------------------------ scans (other paths' duplicates)
    def rewind(self, write: Callable[[], Any], near: bool = True) -> None:
        """Make the next scans look at every memory, this replica's own writes included (``near``:
        the paraphrase scan too, a vector search per memory)."""
        with write() as conn:
            for key in ("merge_scan_seq", "near_scan_seq") if near else ("merge_scan_seq",):
                self._set_meta(conn, key, 0)
            self._seen = 0
            self._set_meta(conn, "merge_scan_own", 1)

    def scan_arrived(self, write: Callable[[], Any], limit: int = SCAN_BATCH) -> list[MergeDone]:
        """Merge exact duplicates among creates that came from elsewhere (peers) since the last scan
        (after :meth:`rewind`: among every create).

        ``write`` opens a write transaction (the facade's). Writes made here were checked when made.
        """
        done: list[MergeDone] = []
        if not self._arrivals_waiting():
            return done  # the common case after a sync that brought no creates: no write lock taken
        while True:
            with write() as conn:
                start = int(self._meta(conn, "merge_scan_seq") or 0)
                skip = b"" if self._meta(conn, "merge_scan_own") == "1" else self.oplog.author
                rows = conn.execute("SELECT seq, record_id FROM ops WHERE seq > ? AND kind = 'create' AND author != ?"
                                    " ORDER BY seq LIMIT ?", (start, skip, limit)).fetchall()
                if not rows:
                    conn.execute("DELETE FROM meta WHERE key = 'merge_scan_own'")
                if not rows:
                    return done
                for _, record_id in rows:
                    done += self._merge_group(conn, record_id)
                self._set_meta(conn, "merge_scan_seq", rows[-1][0])

    def _arrivals_waiting(self) -> bool:
        """True if a create from elsewhere arrived after the scan cursor (read-only; what this process
        found empty is not read again)."""
        conn = self.reads.storage.conn
        top = conn.execute("SELECT coalesce(max(seq), 0) FROM ops").fetchone()[0]
        start = max(int(self._meta(conn, "merge_scan_seq") or 0), self._seen)
        skip = b"" if self._meta(conn, "merge_scan_own") == "1" else self.oplog.author
        waiting = conn.execute("SELECT 1 FROM ops WHERE seq > ? AND seq <= ? AND kind = 'create' AND author != ?"
                               " LIMIT 1", (start, top, skip)).fetchone() is not None
        if not waiting:
            self._seen = top
        return waiting

    def consolidate(self, write: Callable[[], Any], clusters_per_write: int = 8) -> list[MergeDone]:
        """Merge every cluster of exact duplicates among the live memories (a walk of the normal-form
        index, not of the log), a few clusters per write transaction."""
        now = now_ms()
        keys = self.reads.storage.conn.execute(
            "SELECT m.scope, m.norm_hash FROM memories m WHERE m.norm_hash IS NOT NULL"
            f" AND {NOT_EXPIRED} GROUP BY m.scope, m.norm_hash HAVING count(*) > 1", (now,)).fetchall()
        done: list[MergeDone] = []
        for start in range(0, len(keys), clusters_per_write):
            with write() as conn:
                for scope, key in keys[start:start + clusters_per_write]:
                    done += self._merge_cluster(conn, scope, key)
        return done

    def _merge_group(self, conn: sqlite3.Connection, record_id: str) -> list[MergeDone]:
        memory = self.reads.get(record_id)
        if memory is None:
            return []
        return self._merge_cluster(conn, memory.scope, norm_hash(memory.content))

    def _merge_cluster(self, conn: sqlite3.Connection, scope: str, key: str) -> list[MergeDone]:
        """Merge the live memories of ``scope`` whose normal form hashes to ``key`` into the earliest."""
        strategy = choose_strategy(self.config, scope)
        if strategy == OFF or not may_write(conn, scope, self.oplog.author):
            return []
        group = self._cluster(conn, scope, key)
        if len(group) < 2:
            return []
        done: list[MergeDone] = []
        survivor = group[0]
        for other in group[1:]:
            if self._undone(conn, survivor.id, other.id):
                continue
            if strategy == "manual":
                self.pair_for_person(conn, survivor.id, other.id, EXACT_RULE)
                continue
            done.append(self.merge_pair(conn, survivor, other, strategy, EXACT_RULE))
            survivor = self.reads.get(survivor.id) or survivor
        return done

    def scan_near(self, write: Callable[[], Any], limit: int = SCAN_BATCH,
                  threshold: float | None = None) -> list[MergeDone]:
        """Merge near duplicates among memories embedded since the last scan (any writer's)."""
        if self.semantic is None:
            return []
        import numpy as np  # only a scan over vectors needs it: a plain write never loads it

        cut = self.config.near_duplicate_threshold if threshold is None else threshold
        done: list[MergeDone] = []
        conn = self.reads.storage.conn
        while True:
            start = int(self._meta(conn, "near_scan_seq") or 0)
            rows = conn.execute("SELECT e.seq, m.id, e.vec FROM embeddings e JOIN memories m ON m.rowid = e.mem"
                                " WHERE e.seq > ? ORDER BY e.seq LIMIT ?", (start, limit)).fetchall()
            if not rows:
                return done
            for _, record_id, vec in rows:
                found = self._near_pair(record_id, np.frombuffer(vec, dtype="<f4"), cut)
                if found is None:
                    continue
                with write() as wconn:
                    done += self._merge_near(wconn, record_id, *found)
            with write() as wconn:
                self._set_meta(wconn, "near_scan_seq", max(rows[-1][0], int(self._meta(wconn, "near_scan_seq") or 0)))

    def _near_pair(self, record_id: str, vector: np.ndarray, cut: float) -> tuple[str, str] | None:
        """(the other memory's id, the rule) of this memory's nearest duplicate in its scope, if any."""
        memory = self.reads.get(record_id)
        if memory is None or choose_strategy(self.config, memory.scope) == OFF:
            return None
        assert self.semantic is not None
        hits = self.semantic.search_vector(vector, NEIGHBOURS, Filters(scope=memory.scope), now_ms())
        for other, score in hits:
            if other.id == memory.id or score is None:
                continue
            if score < cut:
                break
            decision = near_duplicate(memory.content, other.content, float(score), cut)
            if decision.duplicate:
                return other.id, f"near duplicate ({decision.reason})"
        return None

    def _merge_near(self, conn: sqlite3.Connection, a: str, b: str, rule: str) -> list[MergeDone]:
        first, second = self.reads.get(a), self.reads.get(b)
        if first is None or second is None:
            return []  # one went meanwhile
        survivor, other = sorted((first, second), key=lambda m: first_create(conn, m.id))
        strategy = choose_strategy(self.config, survivor.scope)
        if strategy == OFF or not may_write(conn, survivor.scope, self.oplog.author) or self._undone(
                conn, survivor.id, other.id):
            return []
        if strategy == "manual":
            self.pair_for_person(conn, survivor.id, other.id, rule)
            return []
        return [self.merge_pair(conn, survivor, other, strategy, rule)]

    # ------------------------------------------------------------ the audit trail
    def find_merge(self, conn: sqlite3.Connection, merge_id: object) -> dict[str, Any]:
        """One merge by its op id (hex, or a unique prefix of at least 8 characters)."""
        if not isinstance(merge_id, str) or not 8 <= len(merge_id) <= 64 or any(
                c not in "0123456789abcdef" for c in merge_id.lower()):
            raise InvalidInput("merge_id", "must be a merge's op id (hex; a unique prefix of 8 or more)")
        prefix = merge_id.lower()
        rows = conn.execute(f"SELECT {AUDIT_COLUMNS} FROM merges WHERE hex(op) LIKE ? LIMIT 2",
                            (prefix.upper() + "%",)).fetchall()
        if not rows:
            raise NotFound(merge_id)
        if len(rows) > 1:
            raise InvalidInput("merge_id", f"prefix {merge_id!r} names more than one merge")
        return audit_row(conn, rows[0])

    def list_merges(self, limit: int, memory_id: str | None = None) -> list[dict[str, Any]]:
        """Merges, newest first (those into or of ``memory_id`` only, if given)."""
        conn = self.reads.storage.conn
        where, args = ("WHERE into_id = ? OR merged_id = ?", [memory_id, memory_id]) if memory_id else ("", [])
        rows = conn.execute(f"SELECT {AUDIT_COLUMNS} FROM merges {where} ORDER BY seq DESC LIMIT ?",
                            (*args, limit)).fetchall()
        return [audit_row(conn, row) for row in rows]

    def candidates(self, limit: int) -> list[dict[str, Any]]:
        """Pairs the ``manual`` strategy kept for a person, newest first (those still both live)."""
        conn = self.reads.storage.conn
        rows = conn.execute("SELECT c.a, c.b, c.rule, c.at FROM merge_candidates c"
                            " WHERE EXISTS (SELECT 1 FROM memories WHERE id = c.a)"
                            " AND EXISTS (SELECT 1 FROM memories WHERE id = c.b) ORDER BY c.at DESC LIMIT ?",
                            (limit,)).fetchall()
        return [{"a": a, "b": b, "rule": rule, "at": at} for a, b, rule, at in rows]

    def provenance(self, memory_id: str) -> list[dict[str, Any]]:
        """Who wrote what this memory holds: its own create, then every memory merged into it (through
        chains of merges), oldest first, with how many writes each (tool, source) made."""
        conn = self.reads.storage.conn
        rows = conn.execute(
            "WITH RECURSIVE chain(id) AS (SELECT ? UNION SELECT merged_id FROM merges JOIN chain"
            " ON merges.into_id = chain.id WHERE merges.undone_by IS NULL)"
            " SELECT m.tool, m.source, count(*), min(m.at), max(m.at) FROM merges m JOIN chain c"
            " ON m.into_id = c.id WHERE m.undone_by IS NULL GROUP BY m.tool, m.source", (memory_id,)).fetchall()
        own = conn.execute("SELECT tool, source, created_at FROM memories WHERE id = ?", (memory_id,)).fetchone()
        out: dict[tuple[Any, Any], dict[str, Any]] = {}
        if own is not None:
            out[(own[0], own[1])] = {"tool": own[0], "source": own[1], "writes": 1, "first": own[2], "last": own[2]}
        for tool, source, count, first, last in rows:
            entry = out.setdefault((tool, source), {"tool": tool, "source": source, "writes": 0,
                                                    "first": first, "last": last})
            entry["writes"] += count
            entry["first"], entry["last"] = min(entry["first"], first), max(entry["last"], last)
        return sorted(out.values(), key=lambda e: e["first"])

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _undone(conn: sqlite3.Connection, a: str, b: str) -> bool:
        """True if a merge of this pair (either way) was undone: a person said they differ."""
        return conn.execute("SELECT 1 FROM merges WHERE undone_by IS NOT NULL AND ((into_id = ? AND merged_id = ?)"
                            " OR (into_id = ? AND merged_id = ?))", (a, b, b, a)).fetchone() is not None

    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _set_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, str(value)))


AUDIT_COLUMNS = "op, author, at, into_id, merged_id, strategy, rule, absorbed, tool, source, session, body, undone_by"


def audit_row(conn: sqlite3.Connection, row: tuple[Any, ...]) -> dict[str, Any]:
    """One merge as the audit trail shows it: who, when, both values, the rule, the op ids, its state."""
    op, author, at, into, merged, strategy, rule, absorbed, tool, source, session, _, undone_by = row
    stored = conn.execute("SELECT body, sig FROM ops WHERE id = ?", (op,)).fetchone()
    fields = codec.parse_op(stored[0], stored[1], verify=False, stored=True).fields if stored else {}
    values = {"merged": dict(fields.get("merged", {})), "before": fields.get("before", {})}
    if not absorbed:  # the merged memory's text is in its own ops (until compaction prunes them)
        values["merged"]["content"] = _merged_text(conn, merged)
    live = conn.execute("SELECT EXISTS (SELECT 1 FROM memories WHERE id = ?)", (merged,)).fetchone()[0]
    return {"type": "merge", "merge_id": op.hex(), "by": author.hex(), "at": at, "into": into, "merged": merged,
            "strategy": strategy, "rule": rule, "absorbed": bool(absorbed), "tool": tool, "source": source,
            "session": session, "merged_value": values["merged"], "survivor_before": values["before"],
            "undone_by": undone_by.hex() if undone_by else None,
            "state": "undone" if undone_by else ("kept: a concurrent write it had not seen" if live and not absorbed
                                                 else "merged")}


def _merged_text(conn: sqlite3.Connection, record_id: str) -> str | None:
    """The merged memory's text as its last write left it (None once compaction pruned its ops)."""
    for body, sig in conn.execute("SELECT body, sig FROM ops WHERE record_id = ? AND kind IN ('create', 'update')"
                                  " ORDER BY eff DESC, author DESC, id DESC", (record_id,)):
        op = codec.parse_op(body, sig, verify=False, stored=True)
        if "content" in op.fields:
            return str(op.fields["content"])
    return None


def first_create(conn: sqlite3.Connection, record_id: str) -> tuple[int, bytes, bytes]:
    """The order that picks a survivor: the memory's first create by (effective clock, author, op id)."""
    row = conn.execute("SELECT eff, author, id FROM ops WHERE record_id = ? AND kind = 'create'"
                       " ORDER BY eff, author, id LIMIT 1", (record_id,)).fetchone()
    return (int(row[0]), bytes(row[1]), bytes(row[2])) if row is not None else (1 << 62, b"", b"")


__all__ = ["Merger", "MergeDone", "choose_strategy", "plan", "snapshot", "first_create", "audit_row"]
