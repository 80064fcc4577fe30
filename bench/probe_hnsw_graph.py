"""Do other HNSW settings keep the labelled answers among 100k distractors? (issue 11)

The eval's held-out queries (scope ignored) against the first 100k corpus memories plus the
308 labelled ones, embedded with MiniLM (through ``vector_cache.py``: fill it first). For each
graph setting (connectivity, expansion_add, labelled rows inserted last or shuffled in) and each
search (expansion_search, pool asked for), the pool is ranked exactly as ``semantic_search``
does; prints R@5 of the labelled answers and top-10 agreement with exact search::

    python bench/probe_hnsw_graph.py          # three builds of ~1-2 min each on one thread
    python bench/probe_hnsw_graph.py 2        # only the third setting
"""
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import eval_quality as eq  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402,F401 - before usearch (see search/vector/fileformat.py)
import vector_cache as vc  # noqa: E402
from corpus import Corpus  # noqa: E402
from usearch.index import Index  # noqa: E402

from neuralsync.search.embed import get_embedder  # noqa: E402

CONFIGS = [(32, 128, "last"), (32, 128, "shuffled"), (64, 256, "last")]
SEARCHES = [(192, 120), (192, 240), (384, 120), (384, 240)]


def main(argv: list[str]) -> int:
    emb = vc.CachedEmbedder(get_embedder("minilm"))
    dist = emb.embed([r["content"] for r in Corpus(seed=7).memories(100_000)])
    full = eq.load_eval_set(eq.EVAL_SET_V2)
    held = eq.half_of(full, "heldout").queries
    labelled = emb.embed([m["content"] for m in full.memories])
    queries = emb.embed([q.text for q in held])
    vectors = np.vstack([dist, labelled]).astype(np.float32)
    key_of = {m["label"]: len(dist) + i for i, m in enumerate(full.memories)}
    sims = queries @ vectors.T
    exact_top = np.argsort(-sims, axis=1)[:, :10]

    def recall5(tops: list[np.ndarray]) -> float:
        found = []
        for q, top in zip(held, tops, strict=True):
            keys = {key_of[a] for a in q.answers}
            found.append(len(keys & {int(t) for t in top[:5]}) / len(keys))
        return float(np.mean(found))

    print(f"exact R@5 (scope ignored) {recall5(list(exact_top)):.3f}", flush=True)
    for connectivity, expansion_add, order in [CONFIGS[int(a)] for a in argv] or CONFIGS:
        keys = np.arange(len(vectors), dtype=np.int64)
        if order == "shuffled":
            keys = keys[np.random.default_rng(1).permutation(len(keys))]
        index = Index(ndim=vectors.shape[1], metric="cos", dtype="f16", connectivity=connectivity,
                      expansion_add=expansion_add)
        started = time.time()
        index.add(keys, vectors[keys], threads=1)
        build = time.time() - started
        for breadth, pool in SEARCHES:
            index.expansion_search = breadth
            tops, agree = [], []
            for i in range(len(queries)):
                found = np.asarray(index.search(queries[i], pool).keys, dtype=np.int64)
                top = found[np.argsort(-(vectors[found] @ queries[i]))][:10]
                tops.append(top)
                agree.append(float(np.mean(sims[i, top] >= sims[i, exact_top[i, 9]] - 1e-5)))
            print(f"M={connectivity} ef_add={expansion_add} labelled {order}, build {build:.0f} s |"
                  f" ef={breadth} pool={pool}: R@5 {recall5(tops):.3f}, agreement {np.mean(agree):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
