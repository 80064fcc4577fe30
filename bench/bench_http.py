"""HTTP recall latency and throughput against a real server process on loopback.

Builds (or reuses, ``--store``) a store of ``--memories`` seeded corpus rows,
starts ``python -m neuralsync.server.run`` on a free 127.0.0.1 port, then
sends ``--requests`` recalls per route (``/v1/recall`` and NeuralSync2's
``/recall``) from ``--clients`` concurrent threads, each with its own
keep-alive connection. Prints p50/p95/p99 and requests per second per route,
and the server's own facade latency for comparison. Bounded: at most
``--requests`` per route and ``--max-seconds`` per route, loopback only.

    python bench/bench_http.py                            # 100,000 memories, 8 clients
    python bench/bench_http.py --memories 10000 --requests 500
    python bench/bench_http.py --store bench/out/http-store-100000 --json

Client threads share the machine with the server (2 cores here), so the
figures include client-side cost; they are an upper bound on server latency.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import free_port, run_concurrently, server_process
from corpus import Corpus

from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

BATCH = 5000
WARMUP = 100
START_TIMEOUT_S = 60.0


def build_store(path: Path, count: int, seed: int) -> float:
    """Fill the store up to ``count`` memories (reused when already that big); returns build seconds."""
    start = time.perf_counter()
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(path)), tool="bench") as api:
        have = api.get_system_stats()["memories"]
        corpus = Corpus(seed=seed)
        for first in range(have, count, BATCH):
            with api.batch_operations():
                for record in corpus.memories(count, start=first, stop=first + BATCH):
                    api.remember(**Corpus.remember_args(record))
            print(f"  built {min(first + BATCH, count):,} / {count:,}", file=sys.stderr, end="\r")
        # The ANN index file is a derived cache: without it every semantic query is exact.
        api.rebuild_vector_index()
    print(file=sys.stderr)
    return time.perf_counter() - start


@contextmanager
def running_server(store: Path, token: str) -> Iterator[str]:
    """A server subprocess for the duration of the block; always stopped."""
    url = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "neuralsync.server.run", "--home", str(store), "--host", "127.0.0.1",
               "--port", url.rsplit(":", 1)[1], "--log-level", "warning"]
    with server_process(command, url, {**os.environ, "NS_TOKEN": token}, subprocess.DEVNULL, START_TIMEOUT_S):
        yield url


def bodies(route: str, count: int, seed: int, text_only: bool = False) -> list[dict[str, Any]]:
    """Request bodies from the corpus's query mix (the NeuralSync2 route has no tag filter)."""
    out = []
    for q in Corpus(seed=seed).queries(count):
        if route == "/v1/recall":
            out.append({"query": q.text, "scope": q.scope, "tags": list(q.tags) or None, "top_k": 10,
                        "mode": "text" if text_only else "hybrid"})
        else:
            out.append({"query": q.text, "scope": q.scope or "any", "top_k": 8, "use_embedding": not text_only})
    return out


def run_load(url: str, token: str, route: str, work: list[dict[str, Any]], clients: int,
             max_seconds: float) -> dict[str, Any]:
    """Send every body once from ``clients`` threads; latency per request, throughput overall."""
    jobs: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    for body in work:
        jobs.put(body)
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        mine: list[float] = []
        bad = 0
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            while time.monotonic() < deadline:
                try:
                    body = jobs.get_nowait()
                except queue.Empty:
                    break
                start = time.perf_counter()
                response = http.post(route, json=body)
                mine.append(time.perf_counter() - start)
                bad += response.status_code != 200
        with lock:
            latencies.extend(mine)
            errors.append(bad)

    elapsed = run_concurrently(client, clients)
    return summarise(route, latencies, sum(errors), elapsed)


def summarise(route: str, latencies: list[float], errors: int, elapsed: float) -> dict[str, Any]:
    ordered = sorted(latencies)

    def pct(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000, 2) if ordered else 0.0

    return {"route": route, "requests": len(ordered), "errors": errors, "seconds": round(elapsed, 2),
            "req_per_s": round(len(ordered) / elapsed, 1) if elapsed else 0.0,
            "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99), "max_ms": pct(1.0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memories", type=int, default=100_000)
    parser.add_argument("--store", type=Path, help="store directory to reuse or build (default: bench/out/...)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per route")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="time cap per route")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--text-only", action="store_true", help="BM25 recall only (default: hybrid)")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args(argv)

    store = args.store or Path(__file__).resolve().parent / "out" / f"http-store-{args.memories}"
    build_s = build_store(store, args.memories, args.seed)
    token = secrets.token_urlsafe(24)
    results: dict[str, Any] = {"memories": args.memories, "clients": args.clients, "build_s": round(build_s, 1),
                               "mode": "text" if args.text_only else "hybrid",
                               "cpu_count": os.cpu_count(), "routes": []}
    with running_server(store, token) as url:
        for route in ("/v1/recall", "/recall"):
            warmup = bodies(route, WARMUP, args.seed + 1, args.text_only)
            run_load(url, token, route, warmup, args.clients, args.max_seconds)
            work = bodies(route, args.requests, args.seed + 2, args.text_only)
            results["routes"].append(run_load(url, token, route, work, args.clients, args.max_seconds))
        stats = httpx.get(f"{url}/v1/stats", headers={"Authorization": f"Bearer {token}"}).json()
    recall = stats["performance_stats"]["operations"].get("recall", {})
    results["server_recall"] = {k: recall.get(k) for k in ("count", "p50_ms", "p95_ms", "p99_ms")}
    print_table(results)
    if args.json:
        print(json.dumps(results))
    return 0


def print_table(results: dict[str, Any]) -> None:
    print(f"{results['memories']:,} memories, {results['mode']} recall, {results['clients']} concurrent clients, "
          f"{results['cpu_count']} CPUs (store built in {results['build_s']} s; 0 = reused)")
    print(f"{'route':<12}{'requests':>9}{'errors':>7}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for r in results["routes"]:
        print(f"{r['route']:<12}{r['requests']:>9}{r['errors']:>7}{r['req_per_s']:>9}{r['p50_ms']:>9}"
              f"{r['p95_ms']:>9}{r['p99_ms']:>9}{r['max_ms']:>9}")
    s = results["server_recall"]
    print(f"facade recall inside the server: n={s['count']} p50={s['p50_ms']} ms p95={s['p95_ms']} ms "
          f"p99={s['p99_ms']} ms")


if __name__ == "__main__":
    sys.exit(main())
