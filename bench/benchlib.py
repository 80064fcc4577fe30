"""Measurement helpers shared by the benchmarks: percentiles, timing, machine facts, a server process."""

from __future__ import annotations

import gc
import os
import platform
import resource
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx
from corpus import Corpus

from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-fraction * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def summary(samples_ns: list[int], unit: str = "ms") -> dict[str, Any]:
    """Count, mean and p50/p90/p99/max of nanosecond samples, in ``unit`` (ms or us)."""
    scale = 1e6 if unit == "ms" else 1e3
    values = sorted(s / scale for s in samples_ns)
    if not values:
        return {"n": 0, "unit": unit}
    return {
        "n": len(values),
        "unit": unit,
        "mean": round(sum(values) / len(values), 4),
        "p50": round(percentile(values, 0.50), 4),
        "p90": round(percentile(values, 0.90), 4),
        "p99": round(percentile(values, 0.99), 4),
        "max": round(values[-1], 4),
    }


def timed(calls: Sequence[Callable[[], Any]]) -> tuple[list[int], list[int]]:
    """Run each call once; their durations in ns and the length of each result.

    Results are dropped at once: keeping thousands of returned records alive
    would make every garbage-collector pass slower and inflate later timings.
    """
    clock = time.perf_counter_ns
    durations: list[int] = []
    lengths: list[int] = []
    gc.collect()
    for call in calls:
        start = clock()
        result = call()
        durations.append(clock() - start)
        lengths.append(len(result) if hasattr(result, "__len__") else 1)
    return durations, lengths


def run_concurrently(work: Callable[[], Any], count: int) -> float:
    """Run ``work`` on ``count`` threads at once; the seconds until the last one finished."""
    import threading

    threads = [threading.Thread(target=work) for _ in range(count)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def machine() -> dict[str, Any]:
    """Where the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    memory_gb = None
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gb": memory_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        **package_versions(),
    }


def package_versions(names: Sequence[str] = ("wordllama", "usearch", "numpy")) -> dict[str, str]:
    """Installed versions of the packages the figures depend on (missing ones are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def load_average() -> list[float]:
    """1/5/15-minute load averages: other work on the machine shows up here."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def log(message: str) -> None:
    print(message, flush=True)


def config(store_dir: Path, embedder: str, **overrides: Any) -> MemoryConfig:
    """The benchmarks' store config: library defaults except the embedder (and ``overrides``)."""
    return MemoryConfig(base_path=store_dir, embedder=embedder, **overrides)


def ingest_batches(api: UnifiedMemoryAPI, corpus: Corpus, size: int, batch: int,
                   verb: str) -> tuple[list[dict[str, Any]], int]:
    """``remember()`` the corpus's first ``size`` memories, ``batch`` per ``batch_operations()``.

    Records are generated before each batch's clock starts. Returns the
    per-batch figures and the total nanoseconds spent inside batches.
    """
    per_batch: list[dict[str, Any]] = []
    total_ns = 0
    started = time.monotonic()
    for start in range(0, size, batch):
        records = [Corpus.remember_args(r) for r in corpus.memories(size, start, start + batch)]
        remember = api.remember
        begin = time.perf_counter_ns()
        with api.batch_operations():
            for record in records:
                remember(**record)
        elapsed = time.perf_counter_ns() - begin
        total_ns += elapsed
        per_batch.append({"rows_after": start + len(records), "count": len(records),
                          "seconds": round(elapsed / 1e9, 4), "per_s": round(len(records) / (elapsed / 1e9), 1)})
        done = start + len(records)
        if len(per_batch) % 20 == 0 or done == size:
            log(f"  {verb} {done:>9,} / {size:,}  last batch {per_batch[-1]['per_s']:>9,.0f}/s"
                f"  overall {done / (total_ns / 1e9):>9,.0f}/s  ({time.monotonic() - started:,.0f} s)")
    return per_batch, total_ns


# ---------------------------------------------------------------- a server subprocess
def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server_process(command: list[str], url: str, env: dict[str, str], output: IO[bytes] | int,
                   start_timeout_s: float = 60.0) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` until its ``url``/health answers 200, for the block; always stopped
    (terminate, then kill). ``output`` takes the server's stdout and stderr."""
    process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the server exited during start-up (exit code {process.returncode})")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start in time")
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
