"""Write throughput: concurrent HTTP writes with and without the write queue, and bulk ingest rate.

(a) HTTP: starts the real server (``neuralsync.server.run.serve``) on a free 127.0.0.1 port as a
subprocess, twice on the same store: first with the write queue off (each request's write its
own transaction, as before issue 14), then on (group commit). Each time ``--clients`` threads,
each with its own keep-alive connection, send ``POST /v1/memories`` back to back (after a
warm-up) until ``--requests`` are done or ``--max-seconds`` pass. Reports requests/s and
p50/p99 latency of each run, and the ratio, from one run so the machine's load is alike.

(a') The same comparison without HTTP: ``--clients`` threads of one process calling the facade's
``remember_memory`` (what the server's worker threads do).

(b) Ingest: fills a store in-process to ``--size`` memories with ``batch_operations()`` of
``--batch`` remembers (the set-at-a-time path), and reports the rate of the last
``--measure`` memories, for each ``--embedders`` (``none``; ``minilm``, the default, queues
each memory for embedding, which the server's background thread does later: the time to embed
``--embed-sample`` of them is reported beside it).

    python bench/bench_writes.py                                   # HTTP 8 clients + ingest at 100k
    python bench/bench_writes.py --skip-ingest --requests 4000
    python bench/bench_writes.py --skip-http --size 1000000 --embedders none

Results go to ``bench/out/writes-<timestamp>.json``. Loopback only, bounded in time and count.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import free_port, machine, run_concurrently, server_process
from corpus import Corpus

from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

OUT = Path(__file__).resolve().parent / "out"
START_TIMEOUT_S = 120.0
WARMUP_PER_CLIENT = 20

SERVE = ("import sys\n"
         "from neuralsync.config import MemoryConfig\n"
         "from neuralsync.server.run import serve\n"
         "home, port, embedder, queue = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == 'on'\n"
         "config = MemoryConfig(base_path=home, embedder=embedder, durability=sys.argv[5])\n"
         "serve(config, '127.0.0.1', port, log_level='warning', write_queue=queue)\n")


@contextmanager
def running_server(store: Path, token: str, embedder: str, queue: bool,
                   durability: str = "normal") -> Iterator[tuple[str, int]]:
    """The real server in a subprocess for the block; always stopped."""
    port = free_port()
    command = [sys.executable, "-c", SERVE, str(store), str(port), embedder, "on" if queue else "off", durability]
    with server_process(command, f"http://127.0.0.1:{port}", {**os.environ, "NS_TOKEN": token},
                        subprocess.DEVNULL, START_TIMEOUT_S):
        yield "127.0.0.1", port


def bodies(count: int, seed: int) -> list[bytes]:
    out = []
    for record in Corpus(seed=seed).memories(count, start=0, stop=count):
        args = Corpus.remember_args(record)
        out.append(json.dumps({k: v for k, v in args.items() if k in
                               ("content", "scope", "tags", "kind", "priority", "confidence", "tool",
                                "metadata")}).encode())
    return out


def load(host: str, port: int, token: str, work: list[bytes], clients: int, max_seconds: float) -> dict[str, Any]:
    """Every body once, from ``clients`` threads each on its own keep-alive connection."""
    lock = threading.Lock()
    cursor = iter(work)
    latencies: list[float] = []
    errors = [0]
    deadline = time.monotonic() + max_seconds
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def client() -> None:
        mine: list[float] = []
        bad = 0
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            while time.monotonic() < deadline:
                with lock:
                    body = next(cursor, None)
                if body is None:
                    break
                start = time.perf_counter()
                conn.request("POST", "/v1/memories", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                mine.append(time.perf_counter() - start)
                bad += response.status != 201
        finally:
            conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    elapsed = run_concurrently(client, clients)
    ordered = sorted(latencies)

    def pct(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000, 2) if ordered else 0.0

    return {"requests": len(ordered), "errors": errors[0], "seconds": round(elapsed, 2),
            "req_per_s": round(len(ordered) / elapsed, 1) if elapsed else 0.0,
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": pct(1.0)}


def bench_http(args: argparse.Namespace, durability: str) -> dict[str, Any]:
    store = OUT / f"writes-http-store-{durability}"
    shutil.rmtree(store, ignore_errors=True)
    token = secrets.token_urlsafe(24)
    results: dict[str, Any] = {"clients": args.clients, "embedder": args.http_embedder, "durability": durability,
                               "runs": {}}
    for name, queue in (("queue_off", False), ("queue_on", True)):
        with running_server(store, token, args.http_embedder, queue, durability) as (host, port):
            load(host, port, token, bodies(WARMUP_PER_CLIENT * args.clients, args.seed + 1), args.clients, 30)
            work = bodies(args.requests, args.seed + (2 if queue else 3))
            results["runs"][name] = run = load(host, port, token, work, args.clients, args.max_seconds)
            run["server_remember"] = _server_remember(host, port, token)
        print(f"  {name:<10} {run['requests']:>6} req {run['errors']:>3} errors {run['req_per_s']:>8} req/s  "
              f"p50 {run['p50_ms']:>7} ms  p90 {run['p90_ms']:>7} ms  p99 {run['p99_ms']:>7} ms", file=sys.stderr)
    off, on = results["runs"]["queue_off"], results["runs"]["queue_on"]
    results["throughput_ratio"] = round(on["req_per_s"] / off["req_per_s"], 2) if off["req_per_s"] else None
    print(f"  throughput ratio (on / off): {results['throughput_ratio']}", file=sys.stderr)
    return results


def _server_remember(host: str, port: int, token: str) -> dict[str, Any]:
    """The facade's own remember latency inside the server (its monitor), to set beside the HTTP figure."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", "/v1/stats", headers={"Authorization": f"Bearer {token}"})
        stats = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    remember = stats["performance_stats"]["operations"].get("remember", {})
    return {k: remember.get(k) for k in ("count", "p50_ms", "p99_ms")}


def bench_threads(args: argparse.Namespace) -> dict[str, Any]:
    """The facade alone: ``--clients`` threads of one process calling remember_memory, queue off then on."""
    results: dict[str, Any] = {"threads": args.clients, "runs": {}}
    work = [Corpus.remember_args(r) for r in Corpus(seed=args.seed).memories(args.requests, start=0,
                                                                             stop=args.requests)]
    for name, queue in (("queue_off", False), ("queue_on", True)):
        store = OUT / "writes-threads-store"
        shutil.rmtree(store, ignore_errors=True)
        latencies: list[float] = []
        with UnifiedMemoryAPI(MemoryConfig(base_path=str(store), embedder="none"), tool="bench") as api:
            if queue:
                api.start_write_queue()

            def one(record: dict[str, Any], api: UnifiedMemoryAPI = api, latencies: list[float] = latencies) -> None:
                start = time.perf_counter()
                api.remember_memory(**record)
                latencies.append(time.perf_counter() - start)

            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(one, work))
            elapsed = time.perf_counter() - start
        ordered = sorted(latencies)
        results["runs"][name] = run = {
            "calls": len(ordered), "per_s": round(len(ordered) / elapsed, 1),
            "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 2)}
        print(f"  {name:<10} {run['per_s']:>8} calls/s  p50 {run['p50_ms']:>7} ms  p99 {run['p99_ms']:>7} ms",
              file=sys.stderr)
    off, on = results["runs"]["queue_off"], results["runs"]["queue_on"]
    results["throughput_ratio"] = round(on["per_s"] / off["per_s"], 2)
    print(f"  throughput ratio (on / off): {results['throughput_ratio']}", file=sys.stderr)
    return results


def bench_ingest(size: int, embedder: str, args: argparse.Namespace) -> dict[str, Any]:
    store = args.store or OUT / f"writes-ingest-{embedder}-{size}"
    if not args.keep:
        shutil.rmtree(store, ignore_errors=True)
    corpus = Corpus(seed=args.seed)
    rates: list[tuple[int, float]] = []
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(store), embedder=embedder), tool="bench") as api:
        have = api.counts()["memories"]
        target = size + args.measure if args.keep and have >= size else size
        measured_from = target - args.measure
        measured_s = 0.0
        for first in range(have, target, args.batch):
            stop = min(first + args.batch, target)
            work = [Corpus.remember_args(r) for r in corpus.memories(target, start=first, stop=stop)]
            start = time.perf_counter()
            with api.batch_operations():
                for record in work:
                    api.remember(**record)
            spent = time.perf_counter() - start
            rates.append((stop, round(len(work) / spent)))
            if first >= measured_from:
                measured_s += spent
            print(f"  {embedder}: {stop:,} / {target:,}  {len(work) / spent:,.0f}/s", file=sys.stderr, end="\r")
        print(file=sys.stderr)
        result: dict[str, Any] = {"embedder": embedder, "store_memories": api.counts()["memories"],
                                  "batch": args.batch, "measured": args.measure,
                                  "per_s_at_size": round(args.measure / measured_s) if measured_s else None,
                                  "per_s_whole_build": round(sum(b for b, _ in _spans(rates, have)) /
                                                             sum(b / r for b, r in _spans(rates, have))),
                                  "batches": rates[-20:]}
        if embedder != "none" and args.embed_sample:
            start = time.perf_counter()
            embedded = api.embed_pending() if args.embed_all else _embed_some(api, args.embed_sample)
            spent = time.perf_counter() - start
            result["embedded"] = embedded
            result["embed_per_s"] = round(embedded / spent, 1) if spent else None
    print(f"  {embedder}: {result['per_s_at_size']:,}/s over the last {args.measure:,} at "
          f"{result['store_memories']:,} memories", file=sys.stderr)
    return result


def _spans(rates: list[tuple[int, float]], have: int) -> list[tuple[int, float]]:
    """(memories, rate) of each batch, from the cumulative counts."""
    out, previous = [], have
    for stop, rate in rates:
        out.append((stop - previous, rate))
        previous = stop
    return out


def _embed_some(api: UnifiedMemoryAPI, count: int) -> int:
    """Embed ``count`` memories' texts with the store's embedder (the background thread's work)."""
    texts = [m.content for _, m in zip(range(count), api.iter_memories(), strict=False)]
    done = 0
    for first in range(0, len(texts), 64):
        api.embed_texts(texts[first:first + 64])
        done += len(texts[first:first + 64])
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4000, help="timed requests per HTTP run")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="time cap per HTTP run")
    parser.add_argument("--http-embedder", default="none", help="the server's embedder (default none: the write path)")
    parser.add_argument("--durability", nargs="+", default=["normal"], choices=("normal", "full"),
                        help="the server's durability setting(s) to run the HTTP comparison with")
    parser.add_argument("--size", type=int, default=100_000, help="store size for the ingest rate")
    parser.add_argument("--measure", type=int, default=20_000, help="memories timed at that size")
    parser.add_argument("--batch", type=int, default=5000, help="remembers per batch_operations()")
    parser.add_argument("--embedders", nargs="+", default=["none", "minilm"])
    parser.add_argument("--embed-sample", type=int, default=1000, help="memories embedded to time the model")
    parser.add_argument("--embed-all", action="store_true", help="embed the whole queue instead of a sample")
    parser.add_argument("--store", type=Path, help="ingest store directory (default: bench/out/...)")
    parser.add_argument("--keep", action="store_true", help="reuse the ingest store; time --measure more")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-threads", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if not args.skip_http:
        results["http"] = []
        for durability in args.durability:
            print(f"HTTP POST /v1/memories, {args.clients} clients, durability {durability}:", file=sys.stderr)
            results["http"].append(bench_http(args, durability))
    if not args.skip_threads:
        print(f"facade remember_memory from {args.clients} threads in one process:", file=sys.stderr)
        results["threads"] = bench_threads(args)
    if not args.skip_ingest:
        print(f"bulk ingest to {args.size:,} memories:", file=sys.stderr)
        results["ingest"] = [bench_ingest(args.size, embedder, args) for embedder in args.embedders]
    results["load_average"] = os.getloadavg()
    path = OUT / f"writes-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"results: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
