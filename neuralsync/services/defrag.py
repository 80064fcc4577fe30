"""Defragmentation in slices: the space free inside pages, given back without a full rewrite.

Purges and merges delete rows; log truncation and payload pruning shrink them. Either leaves leaf pages
part empty, and since new rows always take larger keys (``ops.seq``, ``memories.rowid``, ``embeddings.seq``
grow), that space is never used again: only a full VACUUM - the write lock for seconds at 100k memories -
returned it. A B-tree packs rows inserted in key order, so rewriting a run of sparse leaf pages (read its
rows, delete them, insert them again with the same keys and values, in one write transaction of a few
milliseconds) moves them onto fewer, fuller pages; the pages it empties go to the free list, which the
``vacuum`` step returns to the file system. A lone sparse page between full ones gains too: inserting into
a full page makes SQLite balance it with its siblings, onto the fewest pages that hold their rows.

Nothing a reader sees changes: every row comes back byte for byte under its key, inside one transaction.
``memories`` has triggers that queue and drop vectors on insert and delete; they stand aside while the
``meta`` row :data:`GUARD_KEY` exists, which only the slice's own transaction ever holds (schema 12).

The plan is read in one snapshot (``dbstat``: each leaf page of a table in key order with its cells and
free bytes, walked beside the table's keys in order), outside the write lock. Each slice reads its rows
again under the lock, so a plan gone stale (rows written or removed since) costs a useless slice, never a
row.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

SPARSE_SHARE = 0.30  # a leaf page with more than this share of its bytes free is rewritten with its run
GUARD_KEY = "defragmenting"  # the meta row that sets the memories triggers aside (schema 12)
PACKED_FILL = 0.85  # how full rewritten pages come out (measured: ~0.85 on the op log at 100k)
KEYS_FETCH = 4096  # keys read per fetch while the plan walks a table (memory stays flat at 1M rows)


@dataclass(frozen=True)
class Table:
    """A rowid table defragmentation rewrites: its name, its integer key, rows per write transaction."""

    name: str
    key: str
    slice_rows: int
    guarded: bool = False  # has triggers that stand aside under GUARD_KEY


# Rows per slice keep a slice to a few milliseconds: at 100k, ~60 us a row for ops and its four indexes on an
# idle machine, more for memories' six; 64 op rows a slice held the lock 19 ms at p99 under load 1.5.
TABLES = (Table("ops", "seq", 32), Table("memories", "rowid", 16, guarded=True), Table("embeddings", "seq", 16))
BY_NAME = {table.name: table for table in TABLES}


@dataclass(frozen=True)
class Run:
    """Consecutive sparse leaf pages of one table: the keys from ``lo`` to ``hi`` (inclusive)."""

    table: str
    lo: int
    hi: int
    rows: int


def plan(conn: sqlite3.Connection, tables: tuple[Table, ...] = TABLES) -> list[Run]:
    """The runs of sparse leaf pages of ``tables``, in key order per table. ``conn`` must be in a read
    transaction (one snapshot: the pages and the keys must agree)."""
    runs: list[Run] = []
    for table in tables:
        runs.extend(_table_runs(conn, table))
    return runs


def free_bytes(conn: sqlite3.Connection, tables: tuple[Table, ...] = TABLES) -> int:
    """What packing the sparse leaf pages would give back, estimated from ``dbstat`` alone (0 without
    it): their free bytes, less the share a packed page keeps free."""
    names = ", ".join(f"'{table.name}'" for table in tables)
    try:
        row = conn.execute(
            f"SELECT coalesce(sum(unused - pgsize * (1 - {PACKED_FILL})), 0) FROM dbstat WHERE name IN ({names})"
            f" AND pagetype = 'leaf' AND unused > pgsize * {SPARSE_SHARE}").fetchone()
    except sqlite3.Error:  # dbstat is not compiled into this SQLite
        return 0
    return max(0, int(row[0]))


def rewrite(conn: sqlite3.Connection, queue: deque[Run]) -> int:
    """Rewrite rows of the runs at the front of ``queue`` (all of one table), up to the table's slice
    rows, in the caller's write transaction: small runs share a transaction, a long one is cut. Runs done
    leave the queue; a cut one stays with what is left of it. Returns the rows rewritten."""
    if not queue:
        return 0
    table = BY_NAME[queue[0].table]
    columns = _columns(conn, table.name)
    key = columns.index(table.key)
    listed = ", ".join(columns)
    select = (f"SELECT {listed} FROM {table.name} WHERE {table.key} >= ? AND {table.key} <= ?"
              f" ORDER BY {table.key} LIMIT ?")
    delete = f"DELETE FROM {table.name} WHERE {table.key} >= ? AND {table.key} <= ?"
    insert = f"INSERT INTO {table.name}({listed}) VALUES ({', '.join('?' * len(columns))})"
    done = 0
    if table.guarded:
        conn.execute("INSERT INTO meta(key, value) VALUES (?, '1')", (GUARD_KEY,))
    while queue and queue[0].table == table.name and done < table.slice_rows:
        run = queue.popleft()
        rows = conn.execute(select, (run.lo, run.hi, table.slice_rows - done)).fetchall()
        if not rows:
            continue
        last = int(rows[-1][key])
        conn.execute(delete, (run.lo, last))
        conn.executemany(insert, rows)
        done += len(rows)
        if last < run.hi:  # cut: the rest waits for the next transaction
            queue.appendleft(Run(run.table, last + 1, run.hi, max(0, run.rows - len(rows))))
    if table.guarded:
        conn.execute("DELETE FROM meta WHERE key = ?", (GUARD_KEY,))
    return done


def _table_runs(conn: sqlite3.Connection, table: Table) -> Iterator[Run]:
    try:
        pages = conn.execute("SELECT ncell, unused, pgsize FROM dbstat WHERE name = ? AND pagetype = 'leaf'"
                             " ORDER BY path", (table.name,))
    except sqlite3.Error:  # no dbstat: nothing is planned (a full rewrite still works)
        return
    keys = _stream(conn.execute(f"SELECT {table.key} FROM {table.name} ORDER BY {table.key}"))
    run: Run | None = None  # the run of sparse pages being walked
    for cells, unused, size in pages:
        held = list(islice(keys, cells))
        if len(held) < cells:  # the keys ran out before the pages: not one snapshot; plan no more
            return
        if cells and unused > size * SPARSE_SHARE:
            run = Run(table.name, run.lo if run else held[0], held[-1], (run.rows if run else 0) + cells)
            continue
        if run is not None:
            yield run
        run = None
    if run is not None:
        yield run


def _stream(cursor: sqlite3.Cursor) -> Iterator[int]:
    while batch := cursor.fetchmany(KEYS_FETCH):
        for (key,) in batch:
            yield key


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
