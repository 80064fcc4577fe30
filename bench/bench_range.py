"""Benchmark of range reads: ``range_recall`` of 1,000 rows against a plain SQLite fetch of the same rows.

Builds (or reuses) a store of ``--size`` memories from the seeded corpus in
``corpus.py`` under ``--out``, then, in one run, alternates over the same
random windows:

- ``api.range_recall(start, end, limit=1000)`` through the public facade
  (validation, the read snapshot, ``Memory`` records);
- a plain stdlib ``sqlite3`` connection on the same file running
  ``SELECT * FROM memories WHERE created_at BETWEEN ? AND ? ORDER BY created_at
  LIMIT 1000`` and ``fetchall()`` (full rows as tuples: the floor any reader of
  this table pays).

A third timing, for reference, is the range query of ``range_recall`` with its
records built one row at a time by ``row_to_memory`` (how ``range_recall``
built them before issue 14). The order of the three rotates from window to
window, so none always reads right after another warmed the cache. Prints
p50/p95/p99 and the ratio of ``range_recall`` to the plain fetch (per window
and of the percentiles) and writes a JSON file under ``--out``.

    python bench/bench_range.py                        # 100,000 rows (built once, then reused)
    python bench/bench_range.py --size 1000000         # 1M rows (about 2 GB, a few minutes to build)
    python bench/bench_range.py --rebuild              # build the store again
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import sqlite3
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import config, ingest_batches, load_average, log, machine, peak_rss_mb, percentile
from corpus import Corpus

from neuralsync import UnifiedMemoryAPI
from neuralsync.store.reads import range_query, row_to_memory
from neuralsync.utils import now_ms

BENCH_VERSION = 1
ITEMS = 1000
PLAIN_SQL = "SELECT * FROM memories WHERE created_at BETWEEN ? AND ? ORDER BY created_at LIMIT ?"
TARGETS = {"ratio_p50": 1.5, "range_p99_ms": 10.0}


def build(store_dir: Path, size: int, corpus: Corpus, batch: int) -> dict[str, Any]:
    """Ingest ``size`` memories, ``batch`` per ``batch_operations()``; the ingest figures."""
    if store_dir.exists():
        shutil.rmtree(store_dir)
    with UnifiedMemoryAPI(config(store_dir, "none")) as api:
        _, total_ns = ingest_batches(api, corpus, size, batch, "built")
        api.storage.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return {"rows": size, "batch": batch, "seconds": round(total_ns / 1e9, 2),
            "per_s": round(size / (total_ns / 1e9), 1),
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def store(args: argparse.Namespace) -> tuple[Path, dict[str, Any], bool]:
    """The store for ``--size`` (reused when built with the same size, seed and bench version)."""
    store_dir = Path(args.out) / f"range-store-{args.size}"
    marker = store_dir / "build.json"
    if not args.rebuild and marker.exists():
        saved = json.loads(marker.read_text())
        if saved.get("rows") == args.size and saved.get("seed") == args.seed and saved.get("bench") == BENCH_VERSION:
            log(f"size {args.size:,}: reusing the store built at {saved['ingest']['built_at']}")
            return store_dir, saved["ingest"], True
    log(f"size {args.size:,}: building in batches of {args.batch:,} ...")
    ingest = build(store_dir, args.size, Corpus(seed=args.seed), args.batch)
    marker.write_text(json.dumps({"rows": args.size, "seed": args.seed, "bench": BENCH_VERSION, "ingest": ingest}))
    return store_dir, ingest, False


def windows(conn: sqlite3.Connection, count: int, rng: random.Random) -> list[tuple[int, int]]:
    """``count`` windows [created_at of row r, created_at of row r + 999] at random rows r."""
    top = conn.execute("SELECT max(rowid) FROM memories").fetchone()[0] or 0
    out: list[tuple[int, int]] = []
    while len(out) < count and top > ITEMS:
        first = rng.randint(1, top - ITEMS)
        start, end = conn.execute("SELECT min(created_at), max(created_at) FROM"
                                  " (SELECT created_at FROM memories WHERE rowid >= ? ORDER BY rowid LIMIT ?)",
                                  (first, ITEMS)).fetchone()
        out.append((start, end))
    return out


def stats(samples_ns: list[int]) -> dict[str, float]:
    values = sorted(s / 1e6 for s in samples_ns)
    return {"n": len(values), "mean": round(sum(values) / len(values), 4),
            **{f"p{int(q * 100)}": round(percentile(values, q), 4) for q in (0.50, 0.95, 0.99)},
            "max": round(values[-1], 4)}


def measure(store_dir: Path, count: int, warmup: int, rng: random.Random) -> dict[str, Any]:
    """Alternate ``range_recall`` and the plain fetch over the same windows; the timings of both."""
    clock = time.perf_counter_ns
    plain = sqlite3.connect(config(store_dir, "none").db_path)
    try:
        spans = windows(plain, count + warmup, rng)
        with UnifiedMemoryAPI(config(store_dir, "none")) as api:
            def ours(start: int, end: int) -> int:
                return len(api.range_recall(start, end, limit=ITEMS))

            def theirs(start: int, end: int) -> int:
                return len(plain.execute(PLAIN_SQL, (start, end, ITEMS)).fetchall())

            def rowwise(start: int, end: int) -> int:
                rows = api.storage.conn.execute(*range_query(start, end, None, ITEMS, False, now_ms())).fetchall()
                return len([row_to_memory(r) for r in rows])

            calls = [ours, theirs, rowwise]
            for start, end in spans[:warmup]:
                for call in calls:
                    call(start, end)
            samples: list[list[int]] = [[], [], []]
            lengths: list[tuple[int, int]] = []
            gc.collect()
            for i, (start, end) in enumerate(spans[warmup:]):
                got = [0, 0, 0]
                for j in (i % 3, (i + 1) % 3, (i + 2) % 3):
                    begin = clock()
                    got[j] = calls[j](start, end)
                    samples[j].append(clock() - begin)
                lengths.append((got[0], got[1]))
            api_ns, plain_ns, rowwise_ns = samples
    finally:
        plain.close()
    ratios = sorted(a / p for a, p in zip(api_ns, plain_ns, strict=True))
    ours_s, plain_s = stats(api_ns), stats(plain_ns)
    return {
        "range_recall": ours_s,
        "plain_sqlite": plain_s,
        "rowwise_records": stats(rowwise_ns),
        "ratio": {"of_p50": round(ours_s["p50"] / plain_s["p50"], 3),
                  "of_p95": round(ours_s["p95"] / plain_s["p95"], 3),
                  "of_p99": round(ours_s["p99"] / plain_s["p99"], 3),
                  "of_means": round(ours_s["mean"] / plain_s["mean"], 3),
                  "per_window_p50": round(percentile(ratios, 0.5), 3)},
        "items_min": min(a for a, _ in lengths),
        "items_equal": all(a == b for a, b in lengths),
    }


def render(result: dict[str, Any]) -> str:
    ours, plain, ratio = result["range_recall"], result["plain_sqlite"], result["ratio"]
    lines = [f"== {result['size']:,} memories ({'reused' if result['reused_store'] else 'built this run'});"
             f" {ours['n']} windows of {ITEMS:,} rows (fewest returned: {result['items_min']:,};"
             f" same row counts: {result['items_equal']})",
             f"{'':<28}{'mean':>10}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}  (ms)"]
    for name, s in (("range_recall", ours), ("plain sqlite3 fetchall", plain),
                    ("(row-by-row records)", result["rowwise_records"])):
        lines.append(f"{name:<28}" + "".join(f"{s[k]:>10.3f}" for k in ("mean", "p50", "p95", "p99", "max")))
    lines.append(f"{'ratio':<28}{ratio['of_means']:>10.2f}{ratio['of_p50']:>10.2f}{ratio['of_p95']:>10.2f}"
                 f"{ratio['of_p99']:>10.2f}{'':>10}  (per-window median {ratio['per_window_p50']:.2f})")
    ok_ratio = ratio["of_p50"] <= TARGETS["ratio_p50"]
    ok_p99 = ours["p99"] <= TARGETS["range_p99_ms"]
    lines.append(f"targets: ratio of p50 <= {TARGETS['ratio_p50']}: {'met' if ok_ratio else 'MISSED'};"
                 f" range_recall p99 <= {TARGETS['range_p99_ms']} ms: {'met' if ok_p99 else 'MISSED'}")
    lines.append(f"load average: before {result['load_before']}, after {result['load_after']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000, help="memories in the store (e.g. 1000000)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"), help="stores and results")
    parser.add_argument("--rebuild", action="store_true", help="build the store even if a matching one exists")
    parser.add_argument("--windows", type=int, default=1000, help="timed windows (each read both ways)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed windows first")
    parser.add_argument("--batch", type=int, default=20_000, help="memories per batch_operations() while building")
    parser.add_argument("--seed", type=int, default=7, help="corpus seed")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    m = machine()
    log(f"machine: {m['cpu']}, {m['cpu_count']} CPUs; Python {m['python']}; SQLite {m['sqlite']}")
    store_dir, ingest, reused = store(args)
    result: dict[str, Any] = {"size": args.size, "reused_store": reused, "ingest": ingest,
                              "load_before": load_average()}
    result.update(measure(store_dir, args.windows, args.warmup, random.Random(f"range-{args.seed}-{args.size}")))
    result["load_after"] = load_average()
    result["peak_rss_mb"] = peak_rss_mb()
    report = {"bench": "range", "version": BENCH_VERSION, "machine": m, "targets": TARGETS, "sql": PLAIN_SQL,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "settings": {k: v for k, v in vars(args).items() if k != "out"}, "result": result}
    path = out / f"range-{args.size}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1))
    log("")
    log(render(result))
    log(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
