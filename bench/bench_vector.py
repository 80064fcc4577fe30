"""Micro-benchmark: wordllama embedding + usearch ANN index at memory-store scale.

Not a test (pytest does not collect it). Run from the repository root:

    python bench/bench_vector.py --n 100000
    python bench/bench_vector.py --n 1000000 --random --dims 256

It embeds N synthetic short "memory" sentences with wordllama (or draws random
unit vectors with ``--random``), builds the index, saves it, re-opens it with
``view=True`` and reports embed throughput, build time, file size, open time,
top-k search latency p50/p99 at several ``ef`` values and recall@k against exact
numpy search. Queries are fresh draws from the same distribution (new sentences
or new random vectors), never copies of indexed rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuralsync.search.vector import AnnIndex

SUBJECTS = ["The user", "We", "The team", "Alice", "Bob", "The on-call engineer", "The reviewer", "Our CI"]
PREFS = ["prefers", "dislikes", "always uses", "never uses", "switched to", "is evaluating", "asked about"]
TOOLS = [
    "pytest",
    "ruff",
    "mypy",
    "poetry",
    "uv",
    "docker",
    "kubectl",
    "terraform",
    "vim",
    "VS Code",
    "tmux",
    "postgres",
    "sqlite",
    "redis",
    "kafka",
    "nginx",
    "git rebase",
    "GitHub Actions",
    "bazel",
    "make",
]
TASKS = [
    "running the test suite",
    "formatting code",
    "type checking",
    "deploying to staging",
    "local development",
    "debugging flaky tests",
    "database migrations",
    "release builds",
    "code review",
    "profiling hot paths",
]
COMPONENTS = [
    "auth service",
    "billing worker",
    "search index",
    "sync engine",
    "CLI",
    "web dashboard",
    "ingest pipeline",
    "cache layer",
    "scheduler",
    "API gateway",
    "mobile client",
    "export job",
]
SYMPTOMS = [
    "times out",
    "leaks memory",
    "returns stale data",
    "crashes on startup",
    "deadlocks under load",
    "drops messages",
    "logs secrets",
    "double-charges customers",
    "ignores the config file",
    "spins at 100% CPU",
]
CONDITIONS = [
    "the network is offline",
    "two writers race",
    "the disk is full",
    "the clock jumps back",
    "input is empty",
    "unicode is in the path",
    "the token expires",
    "the batch exceeds 1000 rows",
    "running on Windows",
]
DECISIONS = [
    "use SQLite as the source of truth",
    "pin numpy below 3",
    "rebuild the ANN index nightly",
    "store embeddings as float16",
    "drop Python 3.9 support",
    "sign every sync op",
    "retry with backoff",
]
DAYS = ["on Monday", "last week", "yesterday", "in the Q3 retro", "during the outage", "after the release"]


SUFFIXES = ["Ref #{}.", "Seen in build {}.", "See PR {}.", "Ticket OPS-{}.", "Port {} was involved.", "", "", ""]


def memory_sentence(rng: np.random.Generator) -> str:
    """One short, plausible memory note: a template plus a reference number (keeps texts distinct)."""
    suffix = SUFFIXES[int(rng.integers(len(SUFFIXES)))].format(int(rng.integers(1, 100_000)))
    return f"{_memory_body(rng)} {suffix}".strip()


def _memory_body(rng: np.random.Generator) -> str:
    pick = lambda items: items[int(rng.integers(len(items)))]  # noqa: E731
    kind = int(rng.integers(5))
    if kind == 0:
        return f"{pick(SUBJECTS)} {pick(PREFS)} {pick(TOOLS)} for {pick(TASKS)}."
    if kind == 1:
        return f"Bug: the {pick(COMPONENTS)} {pick(SYMPTOMS)} when {pick(CONDITIONS)}."
    if kind == 2:
        return f"Decided {pick(DAYS)} to {pick(DECISIONS)} for the {pick(COMPONENTS)}."
    if kind == 3:
        return f"{pick(SUBJECTS)} fixed the {pick(COMPONENTS)} that {pick(SYMPTOMS)} {pick(DAYS)}."
    return f"Note: {pick(TASKS)} needs {pick(TOOLS)} and {pick(TOOLS)}; see the {pick(COMPONENTS)} runbook."


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [memory_sentence(rng) for _ in range(n)]


def random_unit(n: int, dims: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dims)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_topk(data: np.ndarray, queries: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """Ground-truth row ids by brute-force cosine (rows are unit length)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        sims = queries[start : start + chunk] @ data.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[start : start + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def tie_aware_recall(data: np.ndarray, queries: np.ndarray, found: list[set[int]], truth: np.ndarray) -> float:
    """Recall that counts a hit as correct if it is as similar as the k-th true neighbour.

    Duplicate texts embed to identical vectors, so "which of the tied rows is
    the true neighbour" is arbitrary; strict key overlap under-reports recall.
    """
    good = 0
    for query, hits, rows in zip(queries, found, truth, strict=True):
        kth = float(data[rows[-1]] @ query)
        sims = data[sorted(hits)] @ query if hits else np.empty(0)
        good += int(np.sum(sims >= kth - 1e-5))
    return good / (len(queries) * truth.shape[1])


def percentiles_ms(samples: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples) * 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="vectors to index")
    parser.add_argument("--random", action="store_true", help="random unit vectors instead of wordllama")
    parser.add_argument("--dims", type=int, default=256, help="dims for --random")
    parser.add_argument("--dtype", default="f16", choices=["f32", "f16", "i8"])
    parser.add_argument("--connectivity", type=int, default=16)
    parser.add_argument("--expansion-add", type=int, default=128)
    parser.add_argument("--ef", type=int, nargs="+", default=[64, 256], help="expansion_search values")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="usearch threads for build (0 = all cores)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the index (default: temp dir)")
    parser.add_argument("--json", action="store_true", help="also print results as one JSON line")
    args = parser.parse_args(argv)

    results: dict[str, object] = {"n": args.n, "mode": "random" if args.random else "wordllama", "dtype": args.dtype}
    if args.random:
        data = random_unit(args.n, args.dims, args.seed)
        queries = random_unit(args.queries, args.dims, args.seed + 1)
        embedder_name = f"random:{args.dims}"
    else:
        from neuralsync.search.embed import WordLlamaEmbedder

        embedder = WordLlamaEmbedder()
        start = time.perf_counter()
        embedder.load()
        results["model_load_s"] = round(time.perf_counter() - start, 3)
        texts = sentences(args.n, args.seed)
        results["distinct_texts"] = len(set(texts))
        start = time.perf_counter()
        data = embedder.embed(texts)
        elapsed = time.perf_counter() - start
        results["embed_per_s"] = round(args.n / elapsed)
        one = sentences(200, args.seed + 7)
        lat = []
        for text in one:
            t0 = time.perf_counter()
            embedder.embed([text])
            lat.append(time.perf_counter() - t0)
        results["embed_one_p50_ms"], results["embed_one_p99_ms"] = (round(x, 3) for x in percentiles_ms(lat))
        queries = embedder.embed(sentences(args.queries, args.seed + 1))
        embedder_name = embedder.name
    keys = np.arange(1, args.n + 1, dtype=np.int64)

    start = time.perf_counter()
    index = AnnIndex.build(
        keys,
        data,
        embedder=embedder_name,
        dtype=args.dtype,
        connectivity=args.connectivity,
        expansion_add=args.expansion_add,
        threads=args.threads,
    )
    results["build_s"] = round(time.perf_counter() - start, 2)
    results["build_per_s"] = round(args.n / (time.perf_counter() - start))

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "vectors.ann"
        start = time.perf_counter()
        index.save(path, covered_seq=args.n)
        results["save_s"] = round(time.perf_counter() - start, 3)
        results["file_mb"] = round(os.path.getsize(path) / 1e6, 1)
        index.close()
        del index

        start = time.perf_counter()
        viewed, _meta = AnnIndex.open(path, view=True)
        results["open_view_ms"] = round((time.perf_counter() - start) * 1e3, 2)
        start = time.perf_counter()
        copy = viewed.writable_copy()
        results["writable_copy_s"] = round(time.perf_counter() - start, 3)
        copy.close()

        truth = exact_topk(data, queries, args.k)
        viewed.threads = 1
        for ef in args.ef:
            viewed.expansion_search = ef
            lat, found = [], []
            for query in queries:
                t0 = time.perf_counter()
                hits = viewed.search(query, args.k)
                lat.append(time.perf_counter() - t0)
                found.append({h.key - 1 for h in hits})
            p50, p99 = percentiles_ms(lat)
            strict = np.mean([len(f & set(t.tolist())) / args.k for f, t in zip(found, truth, strict=True)])
            results[f"ef{ef}_p50_ms"] = round(p50, 3)
            results[f"ef{ef}_p99_ms"] = round(p99, 3)
            results[f"ef{ef}_recall@{args.k}"] = round(float(strict), 4)
            results[f"ef{ef}_recall@{args.k}_ties"] = round(tie_aware_recall(data, queries, found, truth), 4)
        lat = []
        for query in queries[:100]:
            t0 = time.perf_counter()
            sims = data @ query
            np.argpartition(-sims, args.k - 1)[: args.k]
            lat.append(time.perf_counter() - t0)
        results["exact_numpy_p50_ms"] = round(percentiles_ms(lat)[0], 3)
        viewed.close()
    results["max_rss_mb"] = round(rss_mb())

    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
