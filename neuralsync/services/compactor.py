"""The compactor: what a store holds that it need not, and reclaiming it in short slices.

``analyze`` measures (fragmentation, expired memories, tombstones, duplicate
clusters, FTS segments, WAL, vector-index lag and removed-but-indexed vectors,
op-log bytes) and estimates what each strategy would reclaim. ``compact`` runs
the strategies asked for (all the safe ones by default), each in slices whose
write transactions last a few milliseconds, so writers keep going.

What changes what a replica shows goes through ops (expired memories are
purged by ``delete`` ops, duplicates consolidated by the merger's ``merge``
ops); local space reclamation (FTS merge, vector index rebuild, WAL checkpoint,
vacuum) never does.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput
from ..model import COMPACT_STRATEGIES
from ..oplog import team
from ..oplog.log import OpLog
from ..store.storage import Storage
from ..utils import now_ms
from . import defrag
from .doctor import fts_levels
from .logtrim import LogTrimmer

if TYPE_CHECKING:
    from ..search.semantic import SemanticIndex
    from .merger import Merger

log = logging.getLogger(__name__)

STRATEGIES = COMPACT_STRATEGIES
ARCHIVE_SLICE = 100  # memories archived per write transaction
DAY_MS = 86_400_000
# A full VACUUM rewrites the file under the write lock (seconds at 100k memories): only when asked by name
# ("rewrite"). "vacuum" frees pages a slice at a time on a store set up for incremental vacuum (the default).
# Archiving changes what recall shows: only when asked (by name, or by giving compact a quota).
DEFAULT_STRATEGIES = tuple(s for s in STRATEGIES if s not in ("archive_over_quota", "rewrite"))
# Slices are sized so that one write transaction lasts a few milliseconds (writers wait no longer).
PURGE_SLICE = 25  # expired memories deleted per write transaction (one purge op: ~10 ms at 100)
MERGE_SLICE = 2  # duplicate clusters merged per write transaction
VACUUM_SLICE_PAGES = 64  # pages returned to the file system per incremental-vacuum transaction (~3 ms)
FTS_MERGE_PAGES = 100  # pages merged per FTS merge transaction
# After each slice the lock is left free for at least this long, and for as long as the slice held it: a
# writer in another process polls the lock (SQLite's busy handler sleeps 1, 2, 5, 10, 15, 20 ms...), and
# a gap shorter than its sleep is one it sleeps through.
SLICE_PAUSE_S = 0.01
SLICE_DUTY = 1.0
# Every this many slices the compactor copies the WAL into the database itself (PASSIVE: writers go on), so
# the WAL never reaches the autocheckpoint size and a writer's commit never pays for the compactor's pages.
CHECKPOINT_EVERY = 8
# An idle minute defragments this many slices of the cached plan; the plan (a dbstat walk of the op log,
# memories and vectors: ~0.2 s at 100k memories) is read again once it is done, at most this often, and only
# if the store was written since.
IDLE_DEFRAG_SLICES = 16
IDLE_DEFRAG_REPLAN_S = 900.0
VECTOR_BYTES = 4  # float32


class Compactor:
    """Analysis and compaction of one store."""

    def __init__(self, storage: Storage, oplog: OpLog, merger: Merger, semantic: SemanticIndex | None,
                 merge_undo_days: float = 30.0, quota_bytes: int = 0) -> None:
        self.quota_bytes = quota_bytes
        self.merge_undo_ms = int(merge_undo_days * 86_400_000)
        self.storage = storage
        self.oplog = oplog
        self.merger = merger
        self.semantic = semantic
        self._held_ms: list[float] = []  # how long each slice of the current step held the write lock
        self.trimmer = LogTrimmer(storage, oplog, self.merge_undo_ms, self._slice)
        # The idle slices' defragmentation plan: runs left, and when it was read (monotonic seconds).
        self._idle_runs: deque[defrag.Run] = deque()
        self._idle_planned = -IDLE_DEFRAG_REPLAN_S
        self._idle_plan_mark: tuple[int | None, ...] | None = None  # the log and vectors as the plan saw them

    # ------------------------------------------------------------ analysis
    def analyze(self) -> dict[str, Any]:
        """What the store holds and what each strategy would reclaim (bytes, estimated)."""
        conn = self.storage.conn
        now = now_ms()
        removal = self.trimmer.removal_args(conn)
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        auto_vacuum = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
        sizes = self.storage.sizes()
        tables = table_bytes(conn)
        unused = unused_bytes(conn)
        live, expired = conn.execute(
            "SELECT count(*) - count(CASE WHEN expires_at <= ? THEN 1 END), count(CASE WHEN expires_at <= ? THEN 1 END)"
            " FROM memories", (now, now)).fetchone()
        dup_clusters, dup_rows = conn.execute(
            "SELECT count(*), coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM memories"
            " WHERE norm_hash IS NOT NULL AND (expires_at IS NULL OR expires_at > ?)"
            " GROUP BY scope, norm_hash HAVING count(*) > 1)", (now,)).fetchone()
        rows = live + expired
        per_row = _per_row(tables, rows)
        dims = self._dims(conn)
        removed = conn.execute("SELECT count(*) FROM vector_removed").fetchone()[0]
        segments = conn.execute("SELECT count(DISTINCT segid) FROM memories_fts_idx").fetchone()[0]
        oplog_bytes = tables.get("ops") or conn.execute(
            "SELECT coalesce(sum(length(body) + length(sig)), 0) FROM ops").fetchone()[0]
        reclaim = {
            "purge_expired": int(expired * per_row),
            "consolidate_duplicates": int(dup_rows * per_row),
            "fts_optimize": int(tables.get("memories_fts_data", 0) * 0.25) if segments > 1 else 0,
            "truncate_log": self.trimmer.truncatable_bytes(conn, removal),
            "prune_payloads": self.trimmer.prunable_bytes(conn, removal),
            "archive_over_quota": self._over_quota(conn)[1],
            "vector_rebuild": int(removed * dims * VECTOR_BYTES * 1.5),
            "defragment": defrag.free_bytes(conn),
            "checkpoint": sizes["wal_bytes"],
            "vacuum": free * page_size if auto_vacuum == 2 else 0,
            "rewrite": free * page_size + unused,
        }
        return {
            "db_bytes": sizes["db_bytes"], "wal_bytes": sizes["wal_bytes"], "page_size": page_size,
            "pages": pages, "free_pages": free, "fragmentation": round(free / pages, 4) if pages else 0.0,
            "unused_bytes_in_pages": unused,
            "auto_vacuum": {0: "none", 1: "full", 2: "incremental"}.get(auto_vacuum, str(auto_vacuum)),
            "memories": live, "expired": expired,
            "tombstones": conn.execute("SELECT count(*) FROM tombstones").fetchone()[0],
            "duplicate_clusters": dup_clusters, "duplicates": dup_rows,
            "fts_segments": segments, "fts_levels": fts_levels(conn),
            "vector_index_lag": self.semantic.uncovered() if self.semantic is not None else 0,
            "vectors_removed_but_indexed": removed,
            "oplog_bytes": oplog_bytes, "table_bytes": tables,
            "reclaimable_bytes": reclaim,
            "stable_seq": removal["stable"],
        }

    def plan(self, strategies: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The steps ``compact`` would take, each with the bytes it is estimated to reclaim."""
        chosen = check_strategies(strategies)
        found = self.analyze()
        steps = []
        for name in chosen:
            step: dict[str, Any] = {"strategy": name, "reclaim_bytes": found["reclaimable_bytes"][name]}
            if name == "purge_expired":
                step["memories"] = found["expired"]
            elif name == "consolidate_duplicates":
                step["memories"] = found["duplicates"]
            elif name == "archive_over_quota":
                step["memories"], step["quota_bytes"] = self._over_quota(self.storage.conn)[0], self.quota_bytes
            elif name == "vacuum":
                step["mode"] = ("incremental" if found["auto_vacuum"] == "incremental"
                                else "none: the store is not set up for incremental vacuum (see 'rewrite')")
            elif name == "rewrite":
                step["mode"] = "full rewrite, holding the write lock while it runs"
            steps.append(step)
        return steps

    # ------------------------------------------------------------ compaction
    def compact(self, strategies: Sequence[str] | None = None, dry_run: bool = False,
                progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
        """Run ``strategies`` (default: every one) in slices; ``dry_run`` returns the plan only."""
        chosen = check_strategies(strategies)
        if dry_run:
            return {"dry_run": True, "plan": self.plan(chosen)}
        before = self.storage.sizes()
        started = time.perf_counter()
        done: list[dict[str, Any]] = []
        for name in chosen:
            step_started = time.perf_counter()
            self._held_ms = []
            result = getattr(self, "_" + name)(progress)
            held = sorted(self._held_ms)
            done.append({"strategy": name, **result, "ms": round((time.perf_counter() - step_started) * 1000, 1),
                         "slices": len(held), "p99_lock_ms": round(held[int(0.99 * (len(held) - 1))], 1) if held
                         else 0.0, "max_lock_ms": round(held[-1], 1) if held else 0.0})
        after = self.storage.sizes()
        return {"dry_run": False, "steps": done, "before": before, "after": after,
                "reclaimed_bytes": before["total_bytes"] - after["total_bytes"],
                "ms": round((time.perf_counter() - started) * 1000, 1), "left": self.left()}

    def left(self) -> dict[str, Any]:
        """What a compaction leaves for later, and why: the bytes only a full rewrite returns, and the
        merges still inside their undo window (their merged memories' ops stay whole until it ends)."""
        conn = self.storage.conn
        page_size, free = (conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_size", "freelist_count"))
        held, first = conn.execute("SELECT count(*), min(at) FROM merges WHERE undone_by IS NULL AND at > ?",
                                   (now_ms() - self.merge_undo_ms,)).fetchone()
        return {"rewrite_bytes": unused_bytes(conn) + free * page_size, "merges_in_undo_window": held,
                "undo_window_ends_at": first + self.merge_undo_ms if held else None}

    def idle_slice(self) -> dict[str, Any]:
        """One short round for a scheduler: a slice of each cheap strategy (no full rewrite)."""
        out: dict[str, Any] = {}
        self._held_ms = []
        out["purged"] = self._purge_slice()
        out.update(self.trimmer.idle_slice())
        with self.storage.write() as conn:
            conn.execute("INSERT INTO memories_fts(memories_fts, rank) VALUES ('merge', ?)", (FTS_MERGE_PAGES // 5,))
        out["defragmented_rows"] = self._idle_defragment()
        if self._incremental():
            with self.storage.write() as conn:
                out["pages_freed"] = free_pages(conn, VACUUM_SLICE_PAGES)
        out["checkpointed_frames"] = self.storage.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[2]
        return out

    def _idle_defragment(self) -> int:
        """A few slices of defragmentation from the cached plan, read again once done (not too often)."""
        if not self._idle_runs and time.monotonic() - self._idle_planned >= IDLE_DEFRAG_REPLAN_S:
            with self.storage.read() as conn:
                # Only writes fragment (new ops, cuts, vectors): an idle store is not walked again for nothing.
                mark = conn.execute("SELECT (SELECT max(seq) FROM ops), (SELECT max(n) FROM log_cuts),"
                                    " (SELECT max(seq) FROM embeddings)").fetchone()
                if mark != self._idle_plan_mark:
                    self._idle_runs = deque(defrag.plan(conn))
                    self._idle_plan_mark = mark
            self._idle_planned = time.monotonic()
        rows = 0
        for _ in range(IDLE_DEFRAG_SLICES):
            if not self._idle_runs:
                break
            with self._slice() as conn:
                rows += defrag.rewrite(conn, self._idle_runs)
        return rows

    # ------------------------------------------------------------ strategies
    def _purge_expired(self, progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
        total = self.storage.conn.execute("SELECT count(*) FROM memories WHERE expires_at <= ?",
                                          (now_ms(),)).fetchone()[0]
        purged = 0
        while True:
            n = self._purge_slice()
            purged += n
            if progress is not None:
                progress("purge_expired", purged, total)
            if n < PURGE_SLICE:
                return {"purged": purged}

    def _purge_slice(self) -> int:
        """Delete up to ``PURGE_SLICE`` expired memories, as ``delete`` ops every replica applies."""
        with self._slice() as conn:
            # A shared scope's memories are its members' to purge, in its own graph: not this compactor's.
            ids = sorted(r for (r,) in conn.execute("SELECT id FROM memories WHERE expires_at <= ?"
                                                    f" AND scope NOT LIKE '{team.SCOPE_PREFIX}%' LIMIT ?",
                                                    (now_ms(), PURGE_SLICE)))
            if ids:  # one op for the slice: ~40 bytes a memory in the log instead of a delete op each
                self.oplog.append(conn, [("purge", ids[0], {"records": ids})])
        return len(ids)

    def _truncate_log(self, progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
        return self.trimmer.truncate(progress)

    def _prune_payloads(self, progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
        return self.trimmer.prune(progress)

    def _consolidate_duplicates(self, progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
        # Exact duplicates among every live memory (a walk of the normal-form index); paraphrases are the
        # merger's background scan's (a vector search per memory), or `neuralsync merges scan --all`.
        done = self.merger.consolidate(self._slice, clusters_per_write=MERGE_SLICE)
        return {"merged": len(done)}

    def _fts_optimize(self, progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
        """Merge FTS segments a slice at a time until one merge changes nothing."""
        conn = self.storage.conn
        rounds = 0
        while rounds < 10_000:
            before = conn.total_changes
            with self._slice() as wconn:
                # The incremental merge FTS5's own automerge uses (positive: levels of 'usermerge' segments).
                # Never the negative one (towards a single segment): with rows arriving between rounds it
                # adds a level or two a round, and past 2000 levels FTS5 refuses the index as corrupt -
                # what left a 1M-row index unreadable here once (reproduced; see doctor.FTS_MAX_LEVELS).
                wconn.execute("INSERT INTO memories_fts(memories_fts, rank) VALUES ('merge', ?)", (FTS_MERGE_PAGES,))
            rounds += 1
            if conn.total_changes - before <= 1:
                break
        return {"merge_rounds": rounds, "levels": fts_levels(conn),
                "segments": conn.execute("SELECT count(DISTINCT segid) FROM memories_fts_idx").fetchone()[0]}

    def _vector_rebuild(self, progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
        if self.semantic is None:
            return {"skipped": "semantic search is off"}
        removed = self.storage.conn.execute("SELECT count(*) FROM vector_removed").fetchone()[0]
        return {**self.semantic.refresh_index(full=removed > 0), "removed_keys_dropped": removed}

    def _defragment(self, progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
        """Pack the runs of sparse leaf pages of the op log, memories and vectors, a slice at a time; the
        pages this empties go to the free list (``vacuum`` returns them to the file system)."""
        conn = self.storage.conn
        free_before = conn.execute("PRAGMA freelist_count").fetchone()[0]
        with self.storage.read() as rconn:
            runs = defrag.plan(rconn)
        queue, total, done = deque(runs), sum(run.rows for run in runs), 0
        per_table: dict[str, int] = {}
        while queue:
            table = queue[0].table
            with self._slice() as wconn:
                rows = defrag.rewrite(wconn, queue)
            done += rows
            per_table[table] = per_table.get(table, 0) + rows
            if progress is not None:
                progress("defragment", min(done, total), total)
        freed = conn.execute("PRAGMA freelist_count").fetchone()[0] - free_before
        return {"runs": len(runs), "rows_rewritten": per_table, "pages_emptied": max(0, int(freed))}

    def _checkpoint(self, progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
        return self._wal_checkpoint()

    def _wal_checkpoint(self) -> dict[str, Any]:
        """Copy the WAL into the database without blocking writers (PASSIVE), then empty the file: the
        TRUNCATE checkpoint blocks writers, but only for the frames written since the passive one."""
        conn = self.storage.conn
        busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        started = time.perf_counter()
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        self._held_ms.append((time.perf_counter() - started) * 1000)
        return {"frames": frames, "checkpointed": done, "readers_active": bool(busy)}

    def _vacuum(self, progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
        """Return free pages to the file system a slice at a time (a store with auto_vacuum=incremental, the
        default). Space free inside pages is what "defragment" packs, and a full rewrite ("rewrite") returns."""
        conn = self.storage.conn
        if not self._incremental():
            return {"mode": "skipped: the store is not set up for incremental vacuum; 'rewrite' converts it"}
        total = conn.execute("PRAGMA freelist_count").fetchone()[0]
        freed = 0
        while freed < total:  # bounded: a writer may free pages as we go, and they wait for the next run
            with self._slice() as wconn:
                done = free_pages(wconn, VACUUM_SLICE_PAGES)
            if not done:
                break
            freed += done
            if progress is not None:
                progress("vacuum", min(freed, total), total)
        return {"mode": "incremental", "pages_freed": freed, **self._wal_checkpoint()}

    def _rewrite(self, progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
        """One full VACUUM: returns the space free inside pages too and converts a store to incremental
        vacuum, but holds the write lock for its whole run (writers wait): only when asked, in an idle
        window."""
        conn = self.storage.conn
        started = time.perf_counter()
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("VACUUM")
        self._held_ms.append((time.perf_counter() - started) * 1000)
        return {"mode": "full rewrite", "lock_held_ms": round(self._held_ms[-1], 1), **self._wal_checkpoint()}

    def _archive_over_quota(self, progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
        """Over the quota, archive the memories of least value until the live ones fit: value is priority
        times confidence, raised by use (access count) and lowered by age since the last update or access.
        Archived memories leave recall (an op: every replica agrees) and come back with ``unarchive``."""
        count, _ = self._over_quota(self.storage.conn)
        archived = 0
        while archived < count:
            with self._slice() as conn:
                ids = [r for (r,) in conn.execute(
                    "SELECT m.id FROM memories m LEFT JOIN access a ON a.mem = m.rowid"
                    " WHERE m.archived = 0 AND (m.expires_at IS NULL OR m.expires_at > :now)"
                    " ORDER BY m.priority * m.confidence * (1 + min(coalesce(a.access_count, 0), 100) / 10.0)"
                    " / (1 + (:now - max(m.updated_at, coalesce(a.accessed_at, 0))) / :month), m.rowid LIMIT :n",
                    {"now": now_ms(), "month": 30 * DAY_MS, "n": min(ARCHIVE_SLICE, count - archived)})]
                if not ids:
                    break
                self.oplog.append(conn, [("update", record_id, {"archived": True}) for record_id in ids])
            archived += len(ids)
            if progress is not None:
                progress("archive_over_quota", archived, count)
        return {"archived": archived, "quota_bytes": self.quota_bytes}

    def _over_quota(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """(memories to archive, their bytes, estimated) for the live memories to fit ``quota_bytes``."""
        if not self.quota_bytes:
            return 0, 0
        total = self.storage.sizes()["total_bytes"]
        rows, live = conn.execute("SELECT count(*), count(CASE WHEN archived = 0 AND (expires_at IS NULL"
                                  " OR expires_at > ?) THEN 1 END) FROM memories", (now_ms(),)).fetchone()
        if not rows:
            return 0, 0
        per_memory = total / rows
        over = live * per_memory - self.quota_bytes
        if over <= 0:
            return 0, 0
        count = min(live, int(over // per_memory) + 1)
        return count, int(count * per_memory)

    # ------------------------------------------------------------ helpers
    @contextmanager
    def _slice(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction of compaction, then a pause, so that writers waiting for the lock
        (or, in this process, for the interpreter) go first."""
        with self.storage.write() as conn:
            started = time.perf_counter()  # from BEGIN IMMEDIATE's return: the lock is ours, to the commit
            yield conn
        held = time.perf_counter() - started
        self._held_ms.append(held * 1000)
        if len(self._held_ms) % CHECKPOINT_EVERY == 0:
            self.storage.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        time.sleep(max(SLICE_PAUSE_S, SLICE_DUTY * held))

    def _incremental(self) -> bool:
        return int(self.storage.conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2

    def _dims(self, conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT length(vec) FROM embeddings LIMIT 1").fetchone()
        return int(row[0]) // VECTOR_BYTES if row else 0


def free_pages(conn: sqlite3.Connection, pages: int) -> int:
    """Return up to ``pages`` free pages to the file system, in the caller's write transaction; the number
    returned. ``PRAGMA incremental_vacuum(N)`` frees one page per step of its statement, and Python's
    sqlite3 steps a statement that declares no result columns once, whatever ``fetchall`` asks: so one
    statement per page (~50 us each)."""
    left = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    for _ in range(min(left, pages)):
        conn.execute("PRAGMA incremental_vacuum(1)")
    return left - int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def check_strategies(strategies: Sequence[str] | None) -> tuple[str, ...]:
    """The strategies to run, in the order that reclaims most (purges before the rewrite)."""
    if strategies is None:
        return DEFAULT_STRATEGIES
    if isinstance(strategies, str) or not isinstance(strategies, (list, tuple)):
        raise InvalidInput("strategies", f"must be a list of: {', '.join(STRATEGIES)}")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise InvalidInput("strategies", f"unknown strategy {unknown[0]!r}; one of {', '.join(STRATEGIES)}")
    return tuple(s for s in STRATEGIES if s in strategies)


def table_bytes(conn: sqlite3.Connection) -> dict[str, int]:
    """Bytes per table and index (the ``dbstat`` table, when this SQLite has it; else empty)."""
    try:
        return {name: int(size) for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name")}
    except sqlite3.Error:
        return {}


def unused_bytes(conn: sqlite3.Connection) -> int:
    """Bytes free inside used pages (only a full rewrite returns them; 0 without ``dbstat``)."""
    try:
        return int(conn.execute("SELECT coalesce(sum(unused), 0) FROM dbstat").fetchone()[0])
    except sqlite3.Error:
        return 0


def _per_row(tables: dict[str, int], rows: int) -> float:
    """Bytes a memory costs outside its text: its row, indexes, FTS entry and vector, on average."""
    if not rows or not tables:
        return 0.0
    derived = sum(size for name, size in tables.items()
                  if name.startswith(("memories", "sqlite_autoindex_memories", "embeddings", "tags")))
    return derived / rows
