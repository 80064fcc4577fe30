"""Benchmark of the core store: ingest, get, recall, range_recall, single writes, size on disk.

Builds one store per size under ``--out`` from the seeded corpus in
``corpus.py`` and prints a table per size (and a JSON file with every figure).

    python bench/bench_core.py --quick                       # 10,000 rows, smoke run
    python bench/bench_core.py --sizes 100000 1000000 --out bench/out/
    python bench/bench_core.py --sizes 1000000 --keep        # reuse a built store

What is measured (all through the public ``UnifiedMemoryAPI``):

- ingest: ``remember()`` calls inside ``batch_operations()``, ``--batch`` per
  transaction; memories/s overall and per batch (generation of the records
  happens before each batch's clock starts);
- get: ``get(id)`` of uniformly random existing ids;
- recall: ``recall(query, top_k=10)`` over a seeded query mix (see
  ``Corpus.queries``), per query class and overall;
- range_recall: ``range_recall(start, end, limit=1000)`` over windows that hold
  1,000 memories, at random positions in the store;
- remember: single ``remember()`` calls, each its own durable transaction, with
  ``durability="normal"`` (the default) and with ``durability="full"``;
- bytes on disk per memory: database + WAL after a ``wal_checkpoint(TRUNCATE)``.

Reads run in a fresh ``UnifiedMemoryAPI`` (as a new process would), after
warm-up calls; the OS page cache is warm from the build (or from earlier runs).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import config, ingest_batches, load_average, log, machine, peak_rss_mb, summary, timed
from corpus import QUERY_CLASSES, Corpus, Query

from neuralsync import UnifiedMemoryAPI

BENCH_VERSION = 1
TARGETS = {
    "get_p50_us": 50.0,
    "recall_p50_ms": 5.0,
    "recall_p99_ms": 20.0,
    "range_p50_ms": 3.0,
    "remember_p50_ms": 1.0,
    "ingest_per_s": 10_000.0,
}


# ---------------------------------------------------------------- build
def build(store_dir: Path, size: int, corpus: Corpus, batch: int, embedder: str) -> dict[str, Any]:
    """Ingest ``size`` memories in batches; returns the ingest figures."""
    if store_dir.exists():
        shutil.rmtree(store_dir)
    with UnifiedMemoryAPI(config(store_dir, embedder)) as api:
        per_batch, total_ns = ingest_batches(api, corpus, size, batch, "built")
        api.storage.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        storage = api.get_system_stats()["storage"]
    tail = per_batch[-max(1, len(per_batch) // 10):]
    head = per_batch[:max(1, len(per_batch) // 10)]
    return {
        "rows": size,
        "batch": batch,
        "seconds": round(total_ns / 1e9, 2),
        "per_s": round(size / (total_ns / 1e9), 1),
        "first_10pct_per_s": round(sum(b["count"] for b in head) / sum(b["seconds"] for b in head), 1),
        "last_10pct_per_s": round(sum(b["count"] for b in tail) / sum(b["seconds"] for b in tail), 1),
        "batches": per_batch,
        "load_after_build": load_average(),
        "storage_after_build": storage,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "peak_rss_mb": peak_rss_mb(),
    }


# ---------------------------------------------------------------- measurements
def sample_rows(api: UnifiedMemoryAPI, count: int, rng: random.Random) -> list[tuple[int, str, int]]:
    """``count`` random live rows as (rowid, id, created_at)."""
    conn = api.storage.conn
    top = conn.execute("SELECT max(rowid) FROM memories").fetchone()[0] or 0
    rows: list[tuple[int, str, int]] = []
    while len(rows) < count and top:
        row = conn.execute("SELECT rowid, id, created_at FROM memories WHERE rowid >= ? ORDER BY rowid LIMIT 1",
                           (rng.randint(1, top),)).fetchone()
        if row:
            rows.append(row)
    return rows


def measure_get(api: UnifiedMemoryAPI, ids: list[str], warmup: int) -> dict[str, Any]:
    for memory_id in ids[:warmup]:
        api.get(memory_id)
    durations, _ = timed([lambda i=i: api.get(i) for i in ids])  # type: ignore[misc]
    return summary(durations, "us")


def measure_recall(api: UnifiedMemoryAPI, queries: list[Query], warmup: list[Query]) -> dict[str, Any]:
    def call(q: Query) -> Callable[[], object]:
        return lambda: api.recall(q.text, scope=q.scope, tags=list(q.tags) or None, top_k=10)

    for q in warmup:
        call(q)()
    durations, hits = timed([call(q) for q in queries])
    out: dict[str, Any] = {"overall": summary(durations)}
    out["overall"]["with_results_pct"] = round(100 * sum(h > 0 for h in hits) / max(1, len(hits)), 1)
    for cls in QUERY_CLASSES:
        picked = [i for i, q in enumerate(queries) if q.cls == cls]
        out[cls] = summary([durations[i] for i in picked])
        out[cls]["with_results_pct"] = round(100 * sum(hits[i] > 0 for i in picked) / max(1, len(picked)), 1)
    slowest = sorted(range(len(queries)), key=lambda i: -durations[i])[:10]
    out["slowest"] = [{**asdict(queries[i]), "ms": round(durations[i] / 1e6, 3), "results": hits[i]}
                      for i in slowest]
    return out


def measure_range(api: UnifiedMemoryAPI, rng: random.Random, count: int, items: int) -> dict[str, Any]:
    """``range_recall`` over windows [created_at of row r, created_at of row r + items - 1], limit ``items``."""
    conn = api.storage.conn
    top = conn.execute("SELECT max(rowid) FROM memories").fetchone()[0] or 0
    windows: list[tuple[int, int]] = []
    while len(windows) < count and top > items:
        first = rng.randint(1, top - items)
        start, end = conn.execute(
            "SELECT min(created_at), max(created_at) FROM"
            " (SELECT created_at FROM memories WHERE rowid >= ? ORDER BY rowid LIMIT ?)",
            (first, items)).fetchone()
        windows.append((start, end))
    for start, end in windows[:20]:
        api.range_recall(start, end, limit=items)
    durations, lengths = timed([lambda s=s, e=e: api.range_recall(s, e, limit=items)  # type: ignore[misc]
                                for s, e in windows])
    out = summary(durations)
    lengths.sort()
    out["items_min"], out["items_median"] = (lengths[0], lengths[len(lengths) // 2]) if lengths else (0, 0)
    return out


def measure_remember(store_dir: Path, corpus: Corpus, embedder: str, durability: str, count: int,
                     first: int) -> dict[str, Any]:
    """Single ``remember`` calls (one transaction each) with the given durability."""
    records = [Corpus.remember_args(r) for r in corpus.memories(first + count + 20, first)]
    with UnifiedMemoryAPI(config(store_dir, embedder, durability=durability)) as api:
        for record in records[:20]:
            api.remember(**record)
        durations, _ = timed([lambda r=r: api.remember(**r) for r in records[20:]])  # type: ignore[misc]
    return summary(durations)


def storage_now(store_dir: Path, embedder: str) -> dict[str, Any]:
    with UnifiedMemoryAPI(config(store_dir, embedder, enable_auto_optimization=False)) as api:
        api.storage.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        stats = api.get_system_stats()
    return {"memories": stats["memories"], **stats["storage"]}


def run_size(size: int, args: argparse.Namespace, corpus: Corpus) -> dict[str, Any]:
    suffix = "" if args.embedder == "none" else "-" + "".join(ch if ch.isalnum() else "_" for ch in args.embedder)
    store_dir = Path(args.out) / f"store-{size}{suffix}"
    marker = store_dir / "build.json"
    ingest: dict[str, Any] | None = None
    reused = False
    if args.keep and marker.exists():
        saved = json.loads(marker.read_text())
        if (saved.get("rows") == size and saved.get("seed") == args.seed and saved.get("bench") == BENCH_VERSION
                and saved.get("embedder") == args.embedder):
            ingest, reused = saved["ingest"], True
            log(f"size {size:,}: reusing the store built at {ingest['built_at']}")
    if ingest is None:
        log(f"size {size:,}: building in batches of {args.batch:,} ...")
        ingest = build(store_dir, size, corpus, args.batch, args.embedder)
        marker.write_text(json.dumps({"rows": size, "seed": args.seed, "bench": BENCH_VERSION,
                                      "embedder": args.embedder, "ingest": ingest}))

    rng = random.Random(f"bench-{args.seed}-{size}")
    result: dict[str, Any] = {"size": size, "embedder": args.embedder, "store": str(store_dir),
                              "reused_store": reused, "ingest": ingest,
                              "load_before_reads": load_average()}
    gc.collect()
    with UnifiedMemoryAPI(config(store_dir, args.embedder)) as api:
        if args.optimize:
            log("  optimize_performance() ...")
            result["optimize"] = api.optimize_performance()
        stats = api.get_system_stats()
        result["rows_at_measure"] = stats["memories"]
        result["scopes"] = stats["scopes_detail"]
        result["distinct_tags"] = stats["tags"]
        log(f"  get x{args.gets:,} ...")
        rows = sample_rows(api, args.gets, rng)
        result["get"] = measure_get(api, [r[1] for r in rows], warmup=200)
        log(f"  recall x{args.queries:,} ...")
        result["recall"] = measure_recall(api, corpus.queries(args.queries, seed=1),
                                          corpus.queries(args.warmup_queries, seed=2))
        log(f"  range_recall x{args.ranges:,} ...")
        result["range_recall"] = measure_range(api, rng, args.ranges, 1000)
    # Single writes land after the reads: they add 2 x (remembers + 20) rows to the store.
    first = size + 1_000_000 * (1 + int(time.time()) % 1000)  # fresh record indexes on every run
    log(f"  remember x{args.remembers:,} (durability normal, then full) ...")
    result["remember_normal"] = measure_remember(store_dir, corpus, args.embedder, "normal", args.remembers, first)
    result["remember_full"] = measure_remember(store_dir, corpus, args.embedder, "full", args.remembers,
                                               first + 10_000)
    result["storage"] = storage_now(store_dir, args.embedder)
    result["peak_rss_mb"] = peak_rss_mb()
    result["load_after"] = load_average()
    return result


# ---------------------------------------------------------------- report
def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def render(result: dict[str, Any]) -> str:
    """A plain-text table for one size."""
    ing, get, rec, rng_, rn, rf = (result["ingest"], result["get"], result["recall"], result["range_recall"],
                                   result["remember_normal"], result["remember_full"])
    lines = [
        f"== {result['size']:,} memories, embedder {result['embedder']!r}  (rows now {result['rows_at_measure']:,};"
        f" store {'reused' if result['reused_store'] else 'built this run'})",
        f"{'operation':<34}{'n':>6}{'p50':>11}{'p90':>11}{'p99':>11}{'max':>11}  target",
    ]

    def row(name: str, s: dict[str, Any], target: str = "") -> None:
        unit = "us" if s["unit"] == "us" else "ms"
        cells = "".join(f"{s[k]:>8.3f} {unit}" if unit == "ms" else f"{s[k]:>8.1f} {unit}"
                        for k in ("p50", "p90", "p99", "max"))
        lines.append(f"{name:<34}{s['n']:>6}{cells}  {target}")

    row("get by id", get, f"p50 <= 50 us: {verdict(get['p50'] <= TARGETS['get_p50_us'])}")
    o = rec["overall"]
    row("recall top-10, all queries", o,
        f"p50 <= 5 ms: {verdict(o['p50'] <= TARGETS['recall_p50_ms'])}; "
        f"p99 <= 20 ms: {verdict(o['p99'] <= TARGETS['recall_p99_ms'])}")
    for cls in QUERY_CLASSES:
        if rec[cls]["n"]:
            row(f"  {cls} ({rec[cls]['with_results_pct']:.0f}% with results)", rec[cls])
    row("range_recall 1,000 items", rng_, f"p50 <= 3 ms: {verdict(rng_['p50'] <= TARGETS['range_p50_ms'])}")
    row("remember, durability=normal", rn, f"p50 <= 1 ms: {verdict(rn['p50'] <= TARGETS['remember_p50_ms'])}")
    row("remember, durability=full", rf, f"p50 <= 1 ms: {verdict(rf['p50'] <= TARGETS['remember_p50_ms'])}")
    lines.append(f"{'ingest in batch_operations()':<34}overall {ing['per_s']:,.0f}/s"
                 f" (first 10% {ing['first_10pct_per_s']:,.0f}/s, last 10% {ing['last_10pct_per_s']:,.0f}/s,"
                 f" batches of {ing['batch']:,}, {ing['seconds']:,.1f} s)"
                 f"  >= 10,000/s: {verdict(ing['per_s'] >= TARGETS['ingest_per_s'])}")
    built = ing["storage_after_build"]
    lines.append(f"{'bytes on disk per memory':<34}{built['bytes_per_memory']:,.0f} B after build"
                 f" (db {built['db_bytes'] / 2**20:,.1f} MiB + wal {built['wal_bytes'] / 2**20:,.1f} MiB);"
                 f" {result['storage']['bytes_per_memory']:,.0f} B now")
    lines.append(f"{'peak RSS':<34}{result['peak_rss_mb']:,.0f} MiB")
    loads = [("after build", ing.get("load_after_build")), ("before reads", result.get("load_before_reads")),
             ("at end", result.get("load_after"))]
    lines.append(f"{'load average (1 min)':<34}" + ", ".join(f"{name} {value[0]:.2f}" for name, value in loads if value)
                 + f"  (on {os.cpu_count()} CPUs)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000], help="store sizes to build")
    parser.add_argument("--quick", action="store_true", help="one store of 10,000 rows (smoke run)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"), help="stores and results")
    parser.add_argument("--keep", action="store_true", help="reuse a store built earlier with the same size/seed")
    parser.add_argument("--queries", type=int, default=2000, help="timed recall queries per size")
    parser.add_argument("--warmup-queries", type=int, default=200, help="untimed recall queries first")
    parser.add_argument("--gets", type=int, default=5000, help="timed get calls per size")
    parser.add_argument("--ranges", type=int, default=300, help="timed range_recall calls per size")
    parser.add_argument("--remembers", type=int, default=500, help="timed single remember calls per durability")
    parser.add_argument("--batch", type=int, default=5000, help="memories per batch_operations() while building")
    parser.add_argument("--seed", type=int, default=7, help="corpus seed")
    parser.add_argument("--embedder", default="none",
                        help="MemoryConfig.embedder; 'none' (default) measures the core store with text recall")
    parser.add_argument("--optimize", action="store_true", help="run optimize_performance() before the reads")
    args = parser.parse_args(argv)
    sizes = [10_000] if args.quick else args.sizes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(seed=args.seed)
    report: dict[str, Any] = {
        "bench": "core", "version": BENCH_VERSION,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "seed": args.seed, "targets": TARGETS,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "runs": [],
    }
    m = report["machine"]
    log(f"machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['memory_gb']} GiB; Python {m['python']};"
        f" SQLite {m['sqlite']}; {m['platform']}")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"core-{stamp}.json"
    for size in sizes:
        report["runs"].append(run_size(size, args, corpus))
        path.write_text(json.dumps(report, indent=1))
        log("")
        log(render(report["runs"][-1]))
        log("")
    log(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
