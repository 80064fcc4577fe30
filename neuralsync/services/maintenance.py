"""Maintenance that makes reads faster: statistics, WAL checkpoint, FTS segment merges, and tuning.

``optimize`` measures a small fixed probe (primary-key gets and text recalls
over words sampled from the store) before and after, so callers see whether it
helped rather than being told it did. ``tune`` first reads what the monitor
measured - which operations are over the target and which stage takes their
time - and adds what that calls for (page cache, vector search breadth).
"""

from __future__ import annotations

import random
import sqlite3
import time
from typing import Any

from ..errors import NeuralSyncError
from ..search.semantic import SemanticIndex
from ..search.text import quote
from ..stages import COMMIT, EMBED, TEXT_SEARCH, VECTOR_SEARCH
from ..store.storage import Storage

PROBE_GETS = 50
MAX_CACHE_KIB = 1024 * 1024  # the page cache grows up to 1 GiB per connection
MIN_BREADTH = 32
READ_STAGES = (TEXT_SEARCH, "fusion", "parse")
# Operations that are maintenance themselves: their latency says nothing about the store's.
NOT_MEASURED = frozenset({"optimize_performance", "rebuild_vector_index", "scan_duplicates", "sync", "serve_sync",
                          "batch_operations"})
PROBE_SEARCHES = 10
FULL_FTS_OPTIMIZE_MAX_ROWS = 200_000
MERGE_PAGES = 2000


def optimize(storage: Storage, light: bool = False) -> dict[str, Any]:
    """Run maintenance; ``light`` does only the cheap steps, unmeasured (``before_ms`` and ``after_ms`` are
    None): it runs automatically inside a write call, every ``AUTO_OPTIMIZE_EVERY`` ops of a process, where
    nobody reads the figures and the probe (two rounds of 50 gets and 10 ranked text searches) took ~2 s of
    that call at 1M memories."""
    conn = storage.conn
    probe = None if light else _probe_inputs(conn)
    before = None if probe is None else _probe(conn, probe)
    actions: list[str] = []
    started = time.perf_counter()
    conn.execute("PRAGMA analysis_limit=1000")
    conn.execute("PRAGMA optimize=0x10002")  # analyse every table that needs it
    actions.append("PRAGMA optimize (ANALYZE where statistics were stale)")
    actions.append(_merge_fts(storage, light))
    if not light:
        busy, log_frames, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        actions.append(f"WAL checkpoint: {done}/{log_frames} frames" + (" (readers active)" if busy else ""))
    after = None if probe is None else _probe(conn, probe)
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


def tune(storage: Storage, semantic: SemanticIndex | None, stats: dict[str, Any], target_ms: float) -> dict[str, Any]:
    """Maintenance plus the changes the measurements call for; reports what was measured, what was done and
    why, and the probe latency (and each changed setting) before and after."""
    slow, stages = _diagnose(stats, target_ms)
    bottleneck = max(stages, key=lambda k: stages[k]) if stages else None
    report = optimize(storage, light=False)
    changes: dict[str, dict[str, Any]] = {}
    if bottleneck in READ_STAGES or (bottleneck is None and report["after_ms"] > target_ms):
        before = storage.cache_size_kib
        after = min(MAX_CACHE_KIB, before * 2)
        if after > before:
            storage.set_cache_size(after)
            changes["cache_size_kib"] = {"before": before, "after": after}
            report["actions"].append(f"page cache {before} -> {after} KiB (reads are the slow stage)")
    if bottleneck == VECTOR_SEARCH and semantic is not None:
        before = semantic.search_breadth
        after = max(MIN_BREADTH, before // 2)
        if after < before:
            semantic.set_search_breadth(after)
            changes["vector_search_breadth"] = {"before": before, "after": after}
            report["actions"].append(f"vector search breadth {before} -> {after} (vector search is the slow stage;"
                                     " fewer candidates explored per query)")
    if bottleneck == EMBED:
        report["actions"].append("not changed: embedding is the slow stage - a faster embedder (embedder ="
                                 " 'wordllama') or a running server to embed through would help")
    if bottleneck == COMMIT and storage.config.durability == "full":
        report["actions"].append("not changed: commits are the slow stage; durability 'full' fsyncs every commit")
    report.update(target_ms=float(target_ms), met=report["after_ms"] <= target_ms, changes=changes,
                  measured={"slow_operations": slow, "stages_ms": stages, "bottleneck": bottleneck})
    return report


def _diagnose(stats: dict[str, Any], target_ms: float) -> tuple[dict[str, float], dict[str, float]]:
    """Operations whose p95 (last 15 minutes, else since start) is over the target, and the time of their
    stages (ms, summed over those operations)."""
    slow: dict[str, float] = {}
    stages: dict[str, float] = {}
    for name, row in stats.get("operations", {}).items():
        if name in NOT_MEASURED:
            continue
        recent = row.get("windows", {}).get("15m", {})
        p95 = recent["p95_ms"] if recent.get("count") else row["p95_ms"]
        if p95 > target_ms:
            slow[name] = p95
            for stage, st in row.get("stages", {}).items():
                stages[stage] = round(stages.get(stage, 0.0) + st["total_ms"], 3)
    return slow, stages
