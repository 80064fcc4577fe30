"""What the performance monitor costs an operation: ``measure()`` around an empty block vs the block alone.

Times ``N`` iterations of ``with monitor.measure(name): pass`` and of a loop
with an empty block, interleaved in rounds so machine noise falls on both, and
reports the difference per operation in nanoseconds (median over rounds; the
minimum too). Also times a ``stage()`` mark inside a measured block, and one
publication of the figures (per-process file) with 20 operations recorded.
Target (issue 15): under 5 µs per operation.

    python bench/bench_monitor.py                 # 200,000 iterations x 7 rounds, a few seconds
    python bench/bench_monitor.py --iterations 1000000 --rounds 9 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from neuralsync.services.monitor import PerformanceMonitor, SharedFigures
from neuralsync.stages import stage


def _empty(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        pass
    return time.perf_counter() - start


def _measured(monitor: PerformanceMonitor, n: int) -> float:
    measure = monitor.measure
    start = time.perf_counter()
    for _ in range(n):
        with measure("recall"):
            pass
    return time.perf_counter() - start


def _staged(monitor: PerformanceMonitor, n: int) -> float:
    measure = monitor.measure
    start = time.perf_counter()
    for _ in range(n):
        with measure("recall"), stage("text_search"):
            pass
    return time.perf_counter() - start


WRITE_STAGES = ("parse", "lock_wait", "sqlite_write", "commit")  # the marks a single remember makes


def _write_staged(monitor: PerformanceMonitor, n: int) -> float:
    measure = monitor.measure
    start = time.perf_counter()
    for _ in range(n):
        with measure("remember"):
            for name in WRITE_STAGES:
                with stage(name):
                    pass
    return time.perf_counter() - start


def run(iterations: int, rounds: int) -> dict[str, Any]:
    monitor = PerformanceMonitor(target_ms=1000.0)
    _measured(monitor, 10_000)  # warm up: the operation's histograms exist
    over, staged, write = [], [], []
    for _ in range(rounds):
        base = _empty(iterations)
        over.append((_measured(monitor, iterations) - base) / iterations * 1e9)
        staged.append((_staged(monitor, iterations) - base) / iterations * 1e9)
        write.append((_write_staged(monitor, iterations) - base) / iterations * 1e9)
    for i in range(20):
        monitor.record(f"op{i}", 0.001 * (i + 1))
    with tempfile.TemporaryDirectory() as tmp:
        figures = SharedFigures(Path(tmp), monitor, "bench", "bench")
        start = time.perf_counter()
        for _ in range(20):
            figures.publish()
        publish_ms = (time.perf_counter() - start) / 20 * 1000
        size = figures.path.stat().st_size
    return {"iterations": iterations, "rounds": rounds,
            "measure_ns_per_op": {"median": round(statistics.median(over)), "min": round(min(over))},
            "measure_with_stage_ns_per_op": {"median": round(statistics.median(staged)), "min": round(min(staged))},
            "write_with_its_stages_ns_per_op": {"median": round(statistics.median(write)), "min": round(min(write))},
            "publish_ms": round(publish_ms, 2), "published_bytes_20_ops": size,
            "target_ns": 5000, "met": statistics.median(over) < 5000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    result = run(args.iterations, args.rounds)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    m, s = result["measure_ns_per_op"], result["measure_with_stage_ns_per_op"]
    print(f"measure():           {m['median']} ns/op (min {m['min']})  target < 5000: "
          f"{'met' if result['met'] else 'NOT met'}")
    print(f"measure() + stage(): {s['median']} ns/op (min {s['min']})")
    w = result["write_with_its_stages_ns_per_op"]
    print(f"a write's measure() and its {len(WRITE_STAGES)} stages: {w['median']} ns/op (min {w['min']})")
    print(f"publish (20 ops):    {result['publish_ms']} ms, {result['published_bytes_20_ops']} bytes")


if __name__ == "__main__":
    main()
