"""Per-operation latency in constant memory: HDR histograms per minute, sliding windows, a day of trends.

Each operation keeps the histogram of the current minute, the last
``WINDOW_MINUTES`` minute histograms (the sliding windows: 1, 5 and 15
minutes, at one-minute granularity), one histogram of everything since the
process started, and one summary row per minute for a day. Recording is one
``record_value`` into the current minute's histogram; a minute's histogram is
folded into the total when the minute rolls over, so memory never grows with
the number of calls.

The histograms are ``hdrhistogram`` (HdrHistogram's Python port): values in
microseconds from 1 µs to one hour at two significant digits (1 % error),
32-bit counters - about 13 KB each.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from time import perf_counter
from types import TracebackType
from typing import Any

from hdrh.histogram import HdrHistogram

from ...errors import InvalidInput
from ...stages import current

log = logging.getLogger("neuralsync.monitor")

LOWEST_US = 1
HIGHEST_US = 3_600_000_000
DIGITS = 2
WORD = 4
WINDOW_MINUTES = 15
WINDOWS = (1, 5, 15)
TREND_MINUTES = 1440
RECENT_ALERTS = 100
SUSTAINED_MIN_SAMPLES = 20
WARN_EVERY_S = 60.0
CHECK_EVERY_S = 5.0
QUANTILES = (50.0, 95.0, 99.0)
# Upper bounds (seconds) of the cumulative buckets exported for Prometheus histograms.
BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

AlertCallback = Callable[[dict[str, Any]], None]


def new_histogram() -> HdrHistogram:
    """An empty histogram with the monitor's range and precision."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS, word_size=WORD)


def summary(hist: HdrHistogram, count: int | None = None, sum_s: float | None = None) -> dict[str, Any]:
    """count, avg, p50/p95/p99 and max of a histogram, in milliseconds."""
    n = hist.get_total_count() if count is None else count
    if not n:
        return {"count": 0, "avg_ms": 0.0, "p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    q = hist.get_percentile_to_value_dict(list(QUANTILES))
    avg = (sum_s * 1000.0 / n) if sum_s is not None else hist.get_mean_value() / 1000.0
    return {"count": n, "avg_ms": round(avg, 4), "p50_ms": q[50.0] / 1000.0, "p95_ms": q[95.0] / 1000.0,
            "p99_ms": q[99.0] / 1000.0, "max_ms": hist.get_max_value() / 1000.0}


def buckets(hist: HdrHistogram) -> list[list[Any]]:
    """Cumulative counts at the ``BUCKETS_S`` bounds, then ``"+Inf"``: ``[[le_seconds, count], ...]``."""
    counts = [0] * (len(BUCKETS_S) + 1)
    for item in hist.get_recorded_iterator():
        seconds = hist.get_lowest_equivalent_value(item.value_iterated_to) / 1_000_000
        counts[bisect_left(BUCKETS_S, seconds)] += item.count_added_in_this_iter_step
    out, running = [], 0
    for le, n in zip((*BUCKETS_S, "+Inf"), counts, strict=True):
        running += n
        out.append([le, running])
    return out


class OpStats:
    """One operation's figures (guarded by the monitor's lock)."""

    __slots__ = ("minute", "cur", "ring", "total", "count", "errors", "sum_s", "trend", "stages")

    def __init__(self, minute: int) -> None:
        self.minute = minute
        self.cur = new_histogram()
        self.ring: deque[tuple[int, HdrHistogram]] = deque(maxlen=WINDOW_MINUTES)
        self.total = new_histogram()
        self.count = 0
        self.errors = 0
        self.sum_s = 0.0
        self.trend: deque[tuple[int, dict[str, Any]]] = deque(maxlen=TREND_MINUTES)
        self.stages: dict[str, list[float]] = {}  # stage -> [count, seconds, max seconds]

    def roll(self, minute: int) -> None:
        """Close the current minute: into the total, the window ring and the trend."""
        if self.cur.get_total_count():
            self.total.add(self.cur)
            self.trend.append((self.minute * 60, summary(self.cur)))
            if len(self.ring) == WINDOW_MINUTES:
                _, recycled = self.ring[0]
                recycled.reset()
            else:
                recycled = new_histogram()
            self.ring.append((self.minute, self.cur))
            self.cur = recycled
        self.minute = minute

    def merged(self, since_minute: int | None = None) -> HdrHistogram:
        """Everything recorded (``since_minute``: only minutes at or after it) as one histogram."""
        out = new_histogram()
        if since_minute is None:
            out.add(self.total)
        else:
            for minute, hist in self.ring:
                if minute >= since_minute:
                    out.add(hist)
        if self.minute >= (since_minute or 0):
            out.add(self.cur)
        return out


class _Measure:
    """The context manager ``PerformanceMonitor.measure`` returns (a class: cheaper than a generator)."""

    __slots__ = ("monitor", "name", "start", "outer", "acc")

    def __init__(self, monitor: PerformanceMonitor, name: str) -> None:
        self.monitor = monitor
        self.name = name

    def __enter__(self) -> None:
        self.outer: dict[str, float] | None = getattr(current, "acc", None)
        self.acc: dict[str, float] = {}
        current.acc = self.acc
        self.start = perf_counter()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        end = perf_counter()
        acc = self.acc
        outer = current.acc = self.outer
        if acc and outer is not None:  # a nested operation's stages are its caller's too
            for key, seconds in acc.items():
                outer[key] = outer.get(key, 0.0) + seconds
        self.monitor.record(self.name, end - self.start, acc, exc_type is not None, end)


class PerformanceMonitor:
    """Thread-safe timing of named operations, their stages, and alerts over ``target_ms``."""

    def __init__(self, samples: int = 4096, target_ms: float = 5.0) -> None:
        self._samples = samples  # kept for callers; the histograms need no sample bound
        self._ops: dict[str, OpStats] = {}
        self._lock = threading.Lock()
        self._wall_offset = time.time() - perf_counter()
        self.started = time.time()
        self.target_ms = float(target_ms)
        self._callbacks: list[AlertCallback] = []
        self._alerts: deque[dict[str, Any]] = deque(maxlen=RECENT_ALERTS)
        self._alert_counts: dict[tuple[str, str], int] = {}
        self._warned: dict[str, float] = {}

    # ------------------------------------------------------------ recording
    def measure(self, name: str) -> _Measure:
        """Time the block (also when it raises) as operation ``name``; stages marked inside it with
        :class:`neuralsync.stages.stage` are attributed to it."""
        return _Measure(self, name)

    def record(self, name: str, seconds: float, stages: dict[str, float] | None = None,
               failed: bool = False, at: float | None = None) -> None:
        """Add one latency sample for ``name`` (``at``: its end, a ``perf_counter`` reading)."""
        minute = int(((perf_counter() if at is None else at) + self._wall_offset) // 60)
        micros = min(HIGHEST_US, max(LOWEST_US, int(seconds * 1_000_000)))
        with self._lock:
            op = self._ops.get(name)
            if op is None:
                op = self._ops[name] = OpStats(minute)
            elif op.minute != minute:
                op.roll(minute)
            op.cur.record_value(micros)
            op.count += 1
            op.sum_s += seconds
            if failed:
                op.errors += 1
            if stages:
                for key, spent in stages.items():
                    row = op.stages.get(key)
                    if row is None:
                        op.stages[key] = [1, spent, spent]
                    else:
                        row[0] += 1
                        row[1] += spent
                        if spent > row[2]:
                            row[2] = spent
        if seconds * 1000.0 > self.target_ms:
            self._alert(name, seconds, stages or {})

    # ------------------------------------------------------------ alerts
    def on_alert(self, callback: AlertCallback) -> Callable[[], None]:
        """Call ``callback(alert)`` for every operation slower than the target; returns an unsubscribe."""
        if not callable(callback):
            raise InvalidInput("callback", "must be callable")
        with self._lock:
            self._callbacks.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return remove

    def set_target(self, target_ms: object) -> None:
        """Change the alert threshold (milliseconds, positive)."""
        self.target_ms = check_target(target_ms)

    def _alert(self, name: str, seconds: float, stages: dict[str, float]) -> None:
        total_ms = seconds * 1000.0
        parts = {key: round(spent * 1000.0, 3) for key, spent in stages.items()}
        other = max(0.0, total_ms - sum(parts.values()))
        bottleneck = max(parts, key=lambda k: parts[k]) if parts else "other"
        if parts and other > parts[bottleneck]:
            bottleneck = "other"
        alert = {"operation": name, "ms": round(total_ms, 3), "target_ms": self.target_ms,
                 "bottleneck": bottleneck, "stages_ms": {**parts, "other": round(other, 3)}, "at": time.time()}
        with self._lock:
            self._alerts.append(alert)
            key = (name, bottleneck)
            self._alert_counts[key] = self._alert_counts.get(key, 0) + 1
            callbacks = list(self._callbacks)
        log.info("slow %s: %.1f ms (target %.1f ms), bottleneck %s %s", name, total_ms, self.target_ms,
                 bottleneck, alert["stages_ms"])
        self._warn_if_sustained(name, bottleneck)
        for callback in callbacks:
            try:
                callback(alert)
            except Exception:
                log.exception("alert callback %r failed", callback)

    def _warn_if_sustained(self, name: str, bottleneck: str) -> None:
        """A WARNING line (once a minute per operation) when this minute's p95 is over the target
        (checked at most every few seconds: a burst of slow calls costs one percentile read)."""
        now = time.monotonic()
        if now - self._warned.get(name, -WARN_EVERY_S) < WARN_EVERY_S:
            return
        with self._lock:
            op = self._ops.get(name)
            n = op.cur.get_total_count() if op is not None else 0
            p95 = 0.0
            if op is not None and n >= SUSTAINED_MIN_SAMPLES:
                p95 = op.cur.get_value_at_percentile(95.0) / 1000.0
        if p95 > self.target_ms:
            self._warned[name] = now
            log.warning("%s is slow: p95 %.1f ms over this minute (%d calls), target %.1f ms; bottleneck %s",
                        name, p95, n, self.target_ms, bottleneck)
        else:
            self._warned[name] = now - WARN_EVERY_S + CHECK_EVERY_S

    def alerts(self) -> list[dict[str, Any]]:
        """The most recent alerts, oldest first."""
        with self._lock:
            return list(self._alerts)

    # ------------------------------------------------------------ reading
    def _minute_now(self) -> int:
        return int(time.time() // 60)

    def window(self, name: str, minutes: int) -> dict[str, Any]:
        """Summary of ``name`` over the last ``minutes`` minutes (one-minute granularity)."""
        with self._lock:
            op = self._ops.get(name)
            if op is None:
                return summary(new_histogram())
            return summary(op.merged(self._minute_now() - minutes + 1))

    def histograms(self) -> dict[str, dict[str, Any]]:
        """Per operation: the lifetime and 5-minute histograms (copies), counts, sums and stages."""
        since5 = self._minute_now() - 4
        with self._lock:
            return {name: {"total": op.merged(), "window_5m": op.merged(since5), "count": op.count,
                           "errors": op.errors, "sum_s": op.sum_s,
                           "stages": {k: list(v) for k, v in op.stages.items()},
                           "trend": list(op.trend)[-60:]}
                    for name, op in self._ops.items()}

    def trend(self, name: str, minutes: int = TREND_MINUTES) -> list[dict[str, Any]]:
        """Per-minute summaries of ``name`` (up to a day), oldest first; the current minute last."""
        with self._lock:
            op = self._ops.get(name)
            if op is None:
                return []
            oldest = (self._minute_now() - TREND_MINUTES) * 60  # a day, however sparse the calls
            rows = [{"minute": at, **row} for at, row in list(op.trend)[-minutes:] if at > oldest]
            if op.cur.get_total_count():
                rows.append({"minute": op.minute * 60, **summary(op.cur)})
        return rows[-minutes:]

    def stats(self) -> dict[str, Any]:
        """Per operation: lifetime count/avg/p50/p95/p99/max (ms), errors, sliding windows, stages;
        plus the overall average, the alert counts and the target."""
        now_minute = self._minute_now()
        operations: dict[str, Any] = {}
        total_n, total_s = 0, 0.0
        with self._lock:
            for name, op in sorted(self._ops.items()):
                if op.minute != now_minute and op.cur.get_total_count():
                    op.roll(now_minute)
                lifetime = op.merged()
                row = summary(lifetime, op.count, op.sum_s)
                row["errors"] = op.errors
                row["sum_s"] = op.sum_s
                row["buckets"] = buckets(lifetime)
                row["windows"] = {f"{m}m": summary(op.merged(now_minute - m + 1)) for m in WINDOWS}
                row["stages"] = stage_rows(op.stages, op.sum_s)
                operations[name] = row
                total_n += op.count
                total_s += op.sum_s
            alert_counts = [{"operation": o, "bottleneck": b, "count": n}
                            for (o, b), n in sorted(self._alert_counts.items())]
        return {"avg_response_time_ms": round(total_s * 1000.0 / total_n, 4) if total_n else 0.0,
                "operations": operations, "alerts": alert_counts, "target_ms": self.target_ms,
                "since": self.started}

    def reset(self) -> None:
        """Forget every sample and alert."""
        with self._lock:
            self._ops.clear()
            self._alerts.clear()
            self._alert_counts.clear()


def stage_rows(stages: dict[str, list[float]], op_seconds: float) -> dict[str, dict[str, float]]:
    """Stage table: count, total, average and max (ms) and the share of the operation's time."""
    return {key: {"count": int(n), "total_ms": round(s * 1000.0, 3), "avg_ms": round(s * 1000.0 / n, 4),
                  "max_ms": round(mx * 1000.0, 3), "share": round(s / op_seconds, 4) if op_seconds else 0.0}
            for key, (n, s, mx) in sorted(stages.items())}


def check_target(target_ms: object, field: str = "target_response_time_ms") -> float:
    """A target latency: a positive, finite number of milliseconds (else :class:`InvalidInput` naming ``field``)."""
    if isinstance(target_ms, bool) or not isinstance(target_ms, (int, float)) or not 0 < target_ms < float("inf"):
        raise InvalidInput(field, f"must be a positive number of milliseconds, not {target_ms!r}")
    return float(target_ms)
