"""Maintenance that makes reads faster: statistics, WAL checkpoint, FTS segment merges.

``optimize`` measures a small fixed probe (primary-key gets and text recalls
over words sampled from the store) before and after, so callers see whether it
helped rather than being told it did.
"""

from __future__ import annotations

import random
import sqlite3
import time
from typing import Any

from ..errors import NeuralSyncError
from ..search.text import quote
from ..store.storage import Storage

PROBE_GETS = 50
PROBE_SEARCHES = 10
FULL_FTS_OPTIMIZE_MAX_ROWS = 200_000
MERGE_PAGES = 2000


def optimize(storage: Storage, light: bool = False) -> dict[str, Any]:
    """Run maintenance; ``light`` does only the cheap steps (used automatically)."""
    conn = storage.conn
    probe = _probe_inputs(conn)
    before = _probe(conn, probe)
    actions: list[str] = []
    started = time.perf_counter()
    conn.execute("PRAGMA analysis_limit=1000")
    conn.execute("PRAGMA optimize=0x10002")  # analyse every table that needs it
    actions.append("PRAGMA optimize (ANALYZE where statistics were stale)")
    actions.append(_merge_fts(storage, light))
    if not light:
        busy, log_frames, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        actions.append(f"WAL checkpoint: {done}/{log_frames} frames" + (" (readers active)" if busy else ""))
    after = _probe(conn, probe)
    return {"actions": actions, "before_ms": before, "after_ms": after,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2)}


def _merge_fts(storage: Storage, light: bool) -> str:
    rows = storage.conn.execute("SELECT count(*) FROM memories").fetchone()[0]
    try:
        with storage.write() as conn:
            if not light and rows <= FULL_FTS_OPTIMIZE_MAX_ROWS:
                conn.execute("INSERT INTO memories_fts(memories_fts) VALUES ('optimize')")
                return "FTS index optimized into one segment"
            pages = MERGE_PAGES // (10 if light else 1)
            conn.execute("INSERT INTO memories_fts(memories_fts, rank) VALUES ('merge', ?)", (pages,))
            return f"FTS incremental merge ({pages} pages)"
    except NeuralSyncError as exc:
        return f"FTS merge skipped: {exc}"


def _probe_inputs(conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
    rng = random.Random(42)
    top = conn.execute("SELECT coalesce(max(rowid), 0) FROM memories").fetchone()[0]
    ids: list[str] = []
    words: list[str] = []
    for _ in range(PROBE_GETS if top else 0):
        row = conn.execute("SELECT id, content FROM memories WHERE rowid >= ? LIMIT 1",
                           (rng.randint(1, top),)).fetchone()
        if row:
            ids.append(row[0])
            tokens = [w for w in row[1].split() if w.isalpha() and len(w) > 3]
            if tokens and len(words) < PROBE_SEARCHES:
                words.append(rng.choice(tokens).lower())
    return ids, words


def _probe(conn: sqlite3.Connection, probe: tuple[list[str], list[str]]) -> float:
    """Mean milliseconds per probe query (0.0 on an empty store)."""
    ids, words = probe
    start = time.perf_counter()
    for record_id in ids:
        conn.execute("SELECT * FROM memories WHERE id = ?", (record_id,)).fetchone()
    for word in words:
        conn.execute("SELECT rowid FROM memories_fts WHERE memories_fts MATCH ? ORDER BY rank LIMIT 10",
                     (quote(word),)).fetchall()
    count = len(ids) + len(words)
    return round((time.perf_counter() - start) * 1000 / count, 4) if count else 0.0
