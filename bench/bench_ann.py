"""Does the vector index keep its answers? Top-10 of ``semantic_search`` against exact search.

    python bench/bench_ann.py --memories 100000            # MiniLM (the default): ~13 CPU-minutes of embedding
    python bench/bench_ann.py --memories 20000 --embedder hashing --queries 100   # a quick look
    python bench/bench_ann.py --memories 100000 --breadth 192 384               # breadths side by side

Texts already embedded by an earlier run come from ``vector_cache.py`` (the same vectors; fill it
ahead with ``python bench/vector_cache.py --memories N``); ``--no-vector-cache`` embeds everything.

Builds (once, kept under ``<out>``) a store of generated developer memories with their vectors and
index file, then for each query compares the ids of

- the index alone (``AnnIndex.search``, top 10, as the file is searched),
- the product path (``semantic_search(top_k=10)``: the index's candidates, filtered and ranked exactly),

with the exact top 10 over every stored vector (numpy, float32). Agreement is the share of the
exact top 10 that a result holds (tie-aware: a row as similar as the tenth counts), averaged
over queries. Latency is the p50/p99 of
``semantic_search`` and of hybrid ``recall`` (top 10), the query embedding included, and of the
query embedding alone. Each ``--breadth`` (the index's ``expansion_search``) is tried in turn on the
same store. Results go to ``<out>/ann-<N>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from benchlib import load_average, log, machine, summary  # noqa: E402
from corpus import Corpus  # noqa: E402

from neuralsync.search.vector import AnnIndex  # noqa: E402
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI  # noqa: E402


def build(api: UnifiedMemoryAPI, size: int) -> None:
    corpus = Corpus()
    started = time.monotonic()
    for start in range(0, size, 5000):
        with api.batch_operations():
            for record in corpus.memories(size, start, min(size, start + 5000)):
                api.remember(**Corpus.remember_args(record))
        if (start // 5000) % 20 == 19:
            log(f"  stored {min(size, start + 5000):,}/{size:,}")
    api.embed_pending(progress=lambda done, total: log(f"  embedded {done:,}/{total:,}") if done % 20480 == 0
                      else None)
    log(f"stored and embedded {size:,} in {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    log(f"index: {api.rebuild_vector_index(full=True)} in {time.monotonic() - started:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memories", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--breadth", type=int, nargs="+", help="index expansion_search values to try")
    parser.add_argument("--no-vector-cache", action="store_true", help="embed every text, even cached ones")
    args = parser.parse_args()
    home = args.out / f"ann-store-{args.embedder.replace(':', '-')}-{args.memories}"
    built = home / "built"  # written once the store is complete: an interrupted build starts over
    if not built.exists() and home.exists():
        import shutil

        shutil.rmtree(home)
    with UnifiedMemoryAPI(MemoryConfig(base_path=home, embedder=args.embedder, embed_via_server=False)) as api:
        if not args.no_vector_cache:
            from vector_cache import install

            install(api)
        if not built.exists():
            build(api, args.memories)
            built.touch()
        semantic = api.semantic
        assert semantic is not None
        rows = api.storage.conn.execute("SELECT mem, vec FROM embeddings").fetchall()
        keys = np.array([mem for mem, _ in rows], dtype=np.int64)
        matrix = np.frombuffer(b"".join(blob for _, blob in rows), dtype="<f4").reshape(len(rows), -1)
        del rows
        index, meta = AnnIndex.open(semantic.path)
        queries = [q.text for q in Corpus().queries(args.queries, seed=11)]
        row_of = {int(k): i for i, k in enumerate(keys)}
        key_of = {mid: rowid for rowid, mid in api.storage.conn.execute("SELECT rowid, id FROM memories")}
        vectors, tenths, embed_times, exact_times = [], [], [], []
        for text in queries:
            start = time.perf_counter_ns()
            vector = semantic.embed([text])[0]
            embed_times.append(time.perf_counter_ns() - start)
            start = time.perf_counter_ns()
            sims = matrix @ vector
            # Tie-aware: generated memories repeat, and any of several equal rows is a right answer.
            tenths.append((sims, float(np.partition(sims, -10)[-10]) - 1e-5))
            exact_times.append(time.perf_counter_ns() - start)
            vectors.append(vector)
        settings = []
        for breadth in args.breadth or [semantic.search_breadth]:
            semantic.set_search_breadth(breadth)
            index.expansion_search = breadth
            index_agree, product_agree, times, hybrid = [], [], [], []
            for text, vector, (sims, tenth) in zip(queries, vectors, tenths, strict=True):
                index_agree.append(sum(sims[row_of[h.key]] >= tenth for h in index.search(vector, 10)) / 10)
                start = time.perf_counter_ns()
                found = api.semantic_search(text, top_k=10)
                times.append(time.perf_counter_ns() - start)
                product_agree.append(sum(sims[row_of[key_of[m.id]]] >= tenth for m in found) / 10)
                start = time.perf_counter_ns()
                api.recall(text, top_k=10, mode="hybrid")
                hybrid.append(time.perf_counter_ns() - start)
            settings.append({
                "breadth": breadth,
                "agreement_top10_index_alone": round(float(np.mean(index_agree)), 4),
                "agreement_top10_semantic_search": round(float(np.mean(product_agree)), 4),
                "semantic_search_latency": summary(times), "hybrid_recall_latency": summary(hybrid),
                "load": load_average()})
            log(json.dumps(settings[-1]))
        index.close()
    result: dict[str, Any] = {
        "machine": machine(), "load": load_average(), "memories": args.memories, "embedder": args.embedder,
        "queries": len(queries), "index": {"connectivity": meta.connectivity, "ef": meta.expansion_search},
        "query_embedding_latency": summary(embed_times), "exact_numpy_top10_latency": summary(exact_times),
        "settings": settings,
    }
    log(json.dumps(result, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"ann-{args.embedder.replace(':', '-')}-{args.memories}.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
