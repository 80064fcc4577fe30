"""Benchmark of semantic search: ingest with embeddings, HNSW build, query latency, ANN recall, size.

Builds one store per size under ``--out`` from the seeded corpus in
``corpus.py`` (or reuses it with ``--keep``) and prints a table per size; every
run also writes ``<out>/semantic-<timestamp>.json``.

    python bench/bench_semantic.py                        # 100,000 memories (< 10 min)
    python bench/bench_semantic.py --sizes 1000000        # 1M: long; run it on an idle machine
    python bench/bench_semantic.py --keep                 # reuse the built store and index

What is measured (through the public ``UnifiedMemoryAPI`` unless noted):

- ingest: ``remember()`` calls inside ``batch_operations()`` of ``--batch``
  memories; each batch embeds its memories in one call at its end, so the
  rate includes embedding and writing the vectors;
- index build: ``rebuild_vector_index(full=True)`` (reads every stored vector
  and writes the HNSW file atomically);
- index open: in a fresh API, mapping the HNSW file (the embedder is loaded
  first and timed on its own);
- ``semantic_search(q, top_k=10)`` and ``recall(q, top_k=10, mode="hybrid")``
  over the corpus's seeded query mix, after warm-up;
- ANN recall@10 against exact search: exact top-10 by numpy over every stored
  vector (read from the ``embeddings`` table) for ``--recall-queries``
  queries, compared with the HNSW file's own top-10 and with what
  ``semantic_search`` returns. "tie-aware" counts a returned memory as correct
  when it is as similar as the exact 10th neighbour (the corpus has duplicate
  texts, hence identical vectors, and which of them is "the" neighbour is
  arbitrary);
- single ``remember()`` (its own transaction, embedding included), on a
  scratch copy of the store so the kept store does not grow;
- bytes on disk per memory: database + WAL (after a checkpoint) + HNSW file.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from benchlib import config, ingest_batches, load_average, log, machine, peak_rss_mb, summary, timed  # noqa: E402
from corpus import Corpus  # noqa: E402

from neuralsync import UnifiedMemoryAPI  # noqa: E402

BENCH_VERSION = 1
META_FILE = "bench-semantic.json"
TARGETS = {
    "semantic_p50_ms": 1.0,
    "semantic_p99_ms": 5.0,
    "hybrid_p50_ms": 5.0,
    "remember_p50_ms": 1.5,
    "ann_recall_at_10": 0.95,
}


def index_path(api: UnifiedMemoryAPI) -> Path:
    semantic = api.semantic
    assert semantic is not None, "semantic search is disabled in this store"
    return Path(semantic.path)


# ---------------------------------------------------------------- build
def build(store_dir: Path, size: int, corpus: Corpus, batch: int, embedder: str) -> dict[str, Any]:
    """Ingest ``size`` memories in ``batch``-sized transactions, embeddings included."""
    if store_dir.exists():
        shutil.rmtree(store_dir)
    with UnifiedMemoryAPI(config(store_dir, embedder)) as api:
        assert api.semantic is not None
        api.semantic.embed(["warm up the embedder"])  # model load is not ingest work
        per_batch, total_ns = ingest_batches(api, corpus, size, batch, "ingested")
        pending = api.semantic.pending()
        late_ns = time.perf_counter_ns()
        late = api.embed_pending()
        late_s = (time.perf_counter_ns() - late_ns) / 1e9
        conn = api.storage.conn
        vectors = int(conn.execute("SELECT count(*) FROM embeddings").fetchone()[0])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return {"rows": size, "batch": batch, "seconds": round(total_ns / 1e9, 2),
            "per_s_with_embeddings": round(size / (total_ns / 1e9), 1),
            "pending_after_ingest": pending, "embedded_later": late, "embedded_later_seconds": round(late_s, 2),
            "vectors": vectors, "batches": per_batch, "load_after_build": load_average(),
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def build_index(store_dir: Path, embedder: str) -> dict[str, Any]:
    with UnifiedMemoryAPI(config(store_dir, embedder)) as api:
        assert api.semantic is not None
        api.semantic.embed(["warm up the embedder"])
        begin = time.perf_counter()
        report = api.rebuild_vector_index(full=True)
        seconds = time.perf_counter() - begin
        path = index_path(api)
    return {"seconds": round(seconds, 2), "report": report, "file_bytes": path.stat().st_size,
            "load_after": load_average()}


# ---------------------------------------------------------------- measurements
def open_timings(store_dir: Path, embedder: str) -> tuple[UnifiedMemoryAPI, dict[str, Any]]:
    """A fresh API (as a new process would open it): API, embedder load, index open, first query."""
    t0 = time.perf_counter()
    api = UnifiedMemoryAPI(config(store_dir, embedder))
    t1 = time.perf_counter()
    semantic = api.semantic
    assert semantic is not None
    semantic.embed(["load the embedder"])
    t2 = time.perf_counter()
    opened = semantic._current_ann() is not None  # maps the HNSW file
    t3 = time.perf_counter()
    api.semantic_search("first query after open", top_k=10)
    t4 = time.perf_counter()
    return api, {"api_open_ms": round((t1 - t0) * 1e3, 2), "embedder_load_ms": round((t2 - t1) * 1e3, 2),
                 "index_open_ms": round((t3 - t2) * 1e3, 2), "index_opened": opened,
                 "first_query_ms": round((t4 - t3) * 1e3, 2)}


def measure_search(api: UnifiedMemoryAPI, texts: list[str], mode: str, warmup: int = 50) -> dict[str, Any]:
    if mode == "semantic":
        def call(q: str) -> Callable[[], object]:
            return lambda: api.semantic_search(q, top_k=10)
    else:
        def call(q: str) -> Callable[[], object]:
            return lambda: api.recall(q, top_k=10, mode=mode)
    timed([call(q) for q in texts[:warmup]])
    durations, lengths = timed([call(q) for q in texts])
    out = summary(durations)
    out["mean_results"] = round(sum(lengths) / max(1, len(lengths)), 2)
    return out


def load_vectors(api: UnifiedMemoryAPI, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Every stored vector as (rowid keys, float32 matrix), streamed from the embeddings table."""
    conn = api.storage.conn
    n = int(conn.execute("SELECT count(*) FROM embeddings").fetchone()[0])
    keys = np.empty(n, dtype=np.int64)
    matrix = np.empty((n, dims), dtype=np.float32)
    i = 0
    for mem, blob in conn.execute("SELECT mem, vec FROM embeddings"):
        if i >= n:
            break
        keys[i] = mem
        matrix[i] = np.frombuffer(blob, dtype="<f4", count=dims)
        i += 1
    return keys[:i], matrix[:i]


def measure_ann_recall(api: UnifiedMemoryAPI, texts: list[str], k: int = 10) -> dict[str, Any]:
    """recall@k of the HNSW file and of ``semantic_search`` against exact numpy search."""
    semantic = api.semantic
    assert semantic is not None
    dims = semantic.embedder.dims
    began = time.perf_counter()
    keys, matrix = load_vectors(api, dims)
    load_s = time.perf_counter() - began
    order = np.argsort(keys)
    sorted_keys = keys[order]
    rowid_of = dict(api.storage.conn.execute("SELECT id, rowid FROM memories").fetchall())
    queries = semantic.embed(texts)
    ann = semantic._current_ann()
    strict_ann, tie_ann, strict_api, tie_api = [], [], [], []
    exact_ns: list[int] = []
    for text, q in zip(texts, queries, strict=True):
        start = time.perf_counter_ns()
        sims = matrix @ q
        top = np.argpartition(-sims, k - 1)[:k]
        exact_ns.append(time.perf_counter_ns() - start)
        truth = set(keys[top].tolist())
        kth = float(np.min(sims[top]))
        got_api = [rowid_of[m.id] for m in api.semantic_search(text, top_k=k)]
        results = {"api": got_api}
        if ann is not None:
            results["ann"] = [h.key for h in ann.search(q, k)]
        for name, got in results.items():
            strict = len(truth.intersection(got)) / k
            # Tie-aware: a hit is right if it is as similar as the exact k-th neighbour (f16 index: 1e-3).
            got_sims = sims[order[np.searchsorted(sorted_keys, np.asarray(got, dtype=np.int64))]]
            tie = min(k, int(np.sum(got_sims >= kth - 2e-3))) / k
            (strict_ann if name == "ann" else strict_api).append(strict)
            (tie_ann if name == "ann" else tie_api).append(tie)

    def mean(values: list[float]) -> float | None:
        return round(float(np.mean(values)), 4) if values else None

    return {"queries": len(texts), "k": k, "vectors": len(keys), "load_vectors_seconds": round(load_s, 2),
            "ann_strict": mean(strict_ann), "ann_tie_aware": mean(tie_ann),
            "semantic_search_strict": mean(strict_api), "semantic_search_tie_aware": mean(tie_api),
            "exact_numpy_ms": summary(exact_ns)}


def measure_remember(store_dir: Path, corpus: Corpus, embedder: str, count: int, size: int) -> dict[str, Any]:
    """Single remember() calls (own transaction, embedding included) on a scratch copy of the store."""
    scratch = store_dir.parent / f"{store_dir.name}-scratch"
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(store_dir, scratch)
    try:
        with UnifiedMemoryAPI(config(scratch, embedder)) as api:
            assert api.semantic is not None
            api.semantic.embed(["warm up"])
            records = [Corpus.remember_args(r) for r in corpus.memories(size + count + 50, size, size + count + 50)]
            timed([lambda r=r: api.remember(**r) for r in records[:50]])
            durations, _ = timed([lambda r=r: api.remember(**r) for r in records[50:]])
            pending = api.semantic.pending()
        out = summary(durations)
        out["left_pending"] = pending
        return out
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def disk_usage(store_dir: Path, embedder: str) -> dict[str, Any]:
    with UnifiedMemoryAPI(config(store_dir, embedder)) as api:
        conn = api.storage.conn
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        rows = int(conn.execute("SELECT count(*) FROM memories").fetchone()[0])
        embeddings_bytes = None
        try:
            embeddings_bytes = int(conn.execute(
                "SELECT sum(pgsize) FROM dbstat WHERE name IN ('embeddings', 'sqlite_autoindex_embeddings_1')"
            ).fetchone()[0] or 0)
        except sqlite3.Error:
            pass
        path = index_path(api)
    files = {p.name: p.stat().st_size for p in store_dir.iterdir() if p.is_file()}
    db = sum(v for name, v in files.items() if name.startswith("memory.db"))
    hnsw = files.get(path.name, 0)
    total = sum(files.values())
    return {"memories": rows, "files": files, "db_bytes": db, "embeddings_table_bytes": embeddings_bytes,
            "hnsw_bytes": hnsw, "total_bytes": total,
            "bytes_per_memory": round(total / rows, 1) if rows else None,
            "db_bytes_per_memory": round(db / rows, 1) if rows else None,
            "hnsw_bytes_per_memory": round(hnsw / rows, 1) if rows else None}


# ---------------------------------------------------------------- one size
def run_size(size: int, args: argparse.Namespace, corpus: Corpus) -> dict[str, Any]:
    store_dir = Path(args.out) / f"semantic-store-{size}"
    meta_path = store_dir / META_FILE
    want = {"size": size, "seed": args.seed, "embedder": args.embedder, "bench_version": BENCH_VERSION,
            "batch": args.batch}
    meta: dict[str, Any] = {}
    if args.keep and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in want} != want:
            log(f"[{size:,}] kept store does not match {want}; rebuilding")
            meta = {}
    result: dict[str, Any] = {"size": size, "load_before": load_average()}
    if meta.get("ingest"):
        log(f"[{size:,}] reusing {store_dir}")
        result["ingest"] = {**meta["ingest"], "reused": True}
    else:
        log(f"[{size:,}] ingesting into {store_dir} (batches of {args.batch:,}, embeddings on write)")
        result["ingest"] = build(store_dir, size, corpus, args.batch, args.embedder)
        meta = {**want, "ingest": result["ingest"]}
        meta_path.write_text(json.dumps(meta, indent=1))
    if meta.get("index") and not args.rebuild_index and (store_dir / meta["index"]["file"]).exists():
        result["index_build"] = {**meta["index"], "reused": True}
    else:
        log(f"[{size:,}] building the vector index")
        built = build_index(store_dir, args.embedder)
        result["index_build"] = {**built, "file": "vectors.usearch"}
        meta["index"] = result["index_build"]
        meta_path.write_text(json.dumps(meta, indent=1))
    log(f"[{size:,}] index built in {result['index_build']['seconds']} s; measuring")

    rng = random.Random(f"semantic-{args.seed}")
    texts = [q.text for q in corpus.queries(args.queries + 100, seed=rng.randint(0, 10**6))]
    api, result["open"] = open_timings(store_dir, args.embedder)
    try:
        result["semantic_search"] = measure_search(api, texts[100:], "semantic")
        log(f"[{size:,}] semantic_search p50 {result['semantic_search']['p50']} ms"
            f" p99 {result['semantic_search']['p99']} ms")
        result["hybrid_recall"] = measure_search(api, texts[100:100 + args.hybrid_queries], "hybrid")
        result["text_recall"] = measure_search(api, texts[100:100 + args.hybrid_queries], "text")
        log(f"[{size:,}] hybrid recall p50 {result['hybrid_recall']['p50']} ms;"
            f" text recall p50 {result['text_recall']['p50']} ms")
        recall_texts = [q.text for q in corpus.queries(args.recall_queries, seed=99)]
        result["ann_recall"] = measure_ann_recall(api, recall_texts)
        log(f"[{size:,}] ANN recall@10 {result['ann_recall']}")
    finally:
        api.close()
    result["remember"] = measure_remember(store_dir, corpus, args.embedder, args.remembers, size)
    result["disk"] = disk_usage(store_dir, args.embedder)
    result["load_after"] = load_average()
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def verdict(value: float | None, target: float, higher_is_better: bool = False) -> str:
    if value is None:
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "ok" if ok else "MISSED"


def render(r: dict[str, Any]) -> str:
    ing, idx, op = r["ingest"], r["index_build"], r["open"]
    sem, hyb, txt, rem = r["semantic_search"], r["hybrid_recall"], r["text_recall"], r["remember"]
    ann, disk = r["ann_recall"], r["disk"]
    rows = [
        ("ingest with embeddings", f"{ing['per_s_with_embeddings']:,.0f} memories/s ({ing['seconds']} s)", ""),
        ("index build (full)", f"{idx['seconds']} s, file {idx['file_bytes'] / 1e6:.1f} MB", ""),
        ("index open (mmap)", f"{op['index_open_ms']} ms (embedder load {op['embedder_load_ms']} ms,"
                              f" first query {op['first_query_ms']} ms)", ""),
        ("semantic_search top-10 p50", f"{sem['p50']} ms", verdict(sem["p50"], TARGETS["semantic_p50_ms"])),
        ("semantic_search top-10 p99", f"{sem['p99']} ms", verdict(sem["p99"], TARGETS["semantic_p99_ms"])),
        ("hybrid recall top-10 p50/p99", f"{hyb['p50']} / {hyb['p99']} ms",
         verdict(hyb["p50"], TARGETS["hybrid_p50_ms"])),
        ("text recall top-10 p50/p99", f"{txt['p50']} / {txt['p99']} ms", ""),
        ("remember (own txn) p50/p99", f"{rem['p50']} / {rem['p99']} ms",
         verdict(rem["p50"], TARGETS["remember_p50_ms"])),
        ("ANN recall@10 strict / tie-aware", f"{ann['ann_strict']} / {ann['ann_tie_aware']}",
         verdict(ann["ann_tie_aware"], TARGETS["ann_recall_at_10"], True)),
        ("semantic_search recall@10 strict / tie-aware",
         f"{ann['semantic_search_strict']} / {ann['semantic_search_tie_aware']}",
         verdict(ann["semantic_search_tie_aware"], TARGETS["ann_recall_at_10"], True)),
        ("exact numpy top-10 p50", f"{ann['exact_numpy_ms']['p50']} ms", ""),
        ("bytes on disk per memory", f"{disk['bytes_per_memory']} (db {disk['db_bytes_per_memory']},"
                                     f" hnsw {disk['hnsw_bytes_per_memory']})", ""),
    ]
    width = max(len(name) for name, _, _ in rows)
    lines = [f"\n== {r['size']:,} memories (load before {r['load_before']}, after {r['load_after']}) =="]
    lines += [f"{name:<{width}}  {value:<48} {mark}" for name, value, mark in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--out", default=str(HERE / "out"))
    parser.add_argument("--embedder", default="wordllama")
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--queries", type=int, default=1_000, help="timed semantic_search calls")
    parser.add_argument("--hybrid-queries", type=int, default=500, help="timed hybrid/text recall calls")
    parser.add_argument("--recall-queries", type=int, default=200, help="queries for ANN vs exact recall")
    parser.add_argument("--remembers", type=int, default=300, help="timed single remember() calls")
    parser.add_argument("--keep", action="store_true", help="reuse a store (and index) built with the same settings")
    parser.add_argument("--rebuild-index", action="store_true", help="with --keep: rebuild the index anyway")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    corpus = Corpus(seed=args.seed)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    report: dict[str, Any] = {"bench": "semantic", "version": BENCH_VERSION, "machine": machine(),
                              "args": vars(args), "targets": TARGETS, "results": []}
    out_file = Path(args.out) / f"semantic-{stamp}.json"
    for size in args.sizes:
        result = run_size(size, args, corpus)
        report["results"].append(result)
        out_file.write_text(json.dumps(report, indent=1))
        log(render(result))
    log(f"\nwrote {out_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
