"""Latency percentiles per operation, kept in bounded in-memory reservoirs."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, int(round(fraction * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


class PerformanceMonitor:
    """Thread-safe timing of named operations; the last ``samples`` latencies each."""

    def __init__(self, samples: int = 4096) -> None:
        self._samples = samples
        self._lat: dict[str, deque[float]] = {}
        self._count: dict[str, int] = {}
        self._lock = threading.Lock()

    def record(self, name: str, seconds: float) -> None:
        """Add one latency sample for ``name``."""
        with self._lock:
            ring = self._lat.get(name)
            if ring is None:
                ring = self._lat[name] = deque(maxlen=self._samples)
            ring.append(seconds * 1000.0)
            self._count[name] = self._count.get(name, 0) + 1

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        """Time the block, recording it even when it raises."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record(name, time.perf_counter() - start)

    def stats(self) -> dict[str, Any]:
        """Average and p50/p95/p99 per operation, in milliseconds."""
        with self._lock:
            snapshot = {name: sorted(ring) for name, ring in self._lat.items()}
            counts = dict(self._count)
        operations = {}
        all_values: list[float] = []
        for name, values in sorted(snapshot.items()):
            all_values.extend(values)
            operations[name] = {
                "count": counts[name],
                "avg_ms": round(sum(values) / len(values), 4) if values else 0.0,
                "p50_ms": round(percentile(values, 0.50), 4),
                "p95_ms": round(percentile(values, 0.95), 4),
                "p99_ms": round(percentile(values, 0.99), 4),
                "max_ms": round(values[-1], 4) if values else 0.0,
            }
        avg = sum(all_values) / len(all_values) if all_values else 0.0
        return {"avg_response_time_ms": round(avg, 4), "operations": operations}

    def reset(self) -> None:
        """Forget every sample."""
        with self._lock:
            self._lat.clear()
            self._count.clear()


def process_resources() -> dict[str, Any]:
    """This process's peak RSS, CPU time and open file descriptors."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        fds = len(os.listdir(f"/proc/{os.getpid()}/fd"))
    except OSError:
        fds = -1
    return {"max_rss_mb": round(usage.ru_maxrss / 1024, 1), "cpu_user_s": round(usage.ru_utime, 3),
            "cpu_system_s": round(usage.ru_stime, 3), "open_fds": fds, "pid": os.getpid()}
