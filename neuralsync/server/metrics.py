"""``/metrics``: Prometheus exposition produced by ``prometheus_client`` from the facade's stats.

A fresh registry per scrape with one collector over ``get_system_stats()`` (no
global state, nothing counted twice): store gauges; this server's latency per
operation as a ``_seconds`` histogram (cumulative, from its HDR histograms),
recent quantiles as gauges, errors, stage time and alerts as counters, the
over-target gauge; the same latency histogram per tool across every process of
the store that published figures; and this process's CPU, memory and file
descriptors (the client's standard ``process_*`` metrics).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..unified_memory_api import UnifiedMemoryAPI

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUANTILE_KEYS = (("0.5", "p50_ms"), ("0.95", "p95_ms"), ("0.99", "p99_ms"))


class StatsCollector(Collector):
    """Metric families from one ``get_system_stats()`` call."""

    def __init__(self, stats: dict[str, Any]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        perf = stats["performance_stats"]
        yield GaugeMetricFamily("neuralsync_memories", "Live memories in the store.", value=stats["memories"])
        yield GaugeMetricFamily("neuralsync_ops", "Ops in the local log (highest sequence number).",
                                value=stats["ops"])
        yield GaugeMetricFamily("neuralsync_store_bytes", "Database and WAL size on disk.",
                                value=stats["storage"]["total_bytes"])
        target_s = float(perf["target_response_time_ms"]) / 1000.0
        yield GaugeMetricFamily("neuralsync_target_response_seconds",
                                "Target latency of an operation (alerts above it).", value=target_s)
        operations = perf["operations"]
        latency = HistogramMetricFamily("neuralsync_operation_latency_seconds",
                                        "Latency of this server's facade calls since it started.",
                                        labels=["operation"])
        recent = GaugeMetricFamily("neuralsync_operation_latency_recent_seconds",
                                   "Latency quantiles of this server's calls over the last 5 minutes.",
                                   labels=["operation", "quantile"])
        errors = CounterMetricFamily("neuralsync_operation_errors", "Calls that raised.", labels=["operation"])
        stages = CounterMetricFamily("neuralsync_operation_stage_seconds",
                                     "Time spent in each stage of an operation.", labels=["operation", "stage"])
        over = GaugeMetricFamily("neuralsync_operation_over_target",
                                 "1 when the operation's p95 over the last minute exceeds the target.",
                                 labels=["operation"])
        for name, op in operations.items():
            latency.add_metric([name], _buckets(op["buckets"]), sum_value=op["sum_s"])
            window = op["windows"]["5m"]
            for quantile, key in QUANTILE_KEYS:
                recent.add_metric([name, quantile], window[key] / 1000.0)
            errors.add_metric([name], op["errors"])
            for stage, row in op["stages"].items():
                stages.add_metric([name, stage], row["total_ms"] / 1000.0)
            last_minute = op["windows"]["1m"]
            over.add_metric([name], 1.0 if last_minute["count"] and last_minute["p95_ms"] > target_s * 1000 else 0.0)
        yield from (latency, recent, errors, stages, over)
        alerts = CounterMetricFamily("neuralsync_alerts", "Calls slower than the target, by bottleneck stage.",
                                     labels=["operation", "bottleneck"])
        for row in perf["alerts"]:
            alerts.add_metric([row["operation"], row["bottleneck"]], row["count"])
        yield alerts
        yield from _across(perf["across_processes"])


def _across(across: dict[str, Any]) -> Iterator[Metric]:
    processes = GaugeMetricFamily("neuralsync_processes", "Processes of this store that published figures.",
                                  labels=["tool", "state"])
    latency = HistogramMetricFamily("neuralsync_tool_operation_latency_seconds",
                                    "Latency of facade calls per tool, every process of the store together.",
                                    labels=["tool", "operation"])
    for tool, row in sorted(across["by_tool"].items()):
        processes.add_metric([tool, "live"], row["live"])
        processes.add_metric([tool, "ended"], row["processes"] - row["live"])
        for name, op in row["operations"].items():
            latency.add_metric([tool, name], _buckets(op["buckets"]), sum_value=op["sum_s"])
    yield processes
    yield latency


def _buckets(rows: list[list[Any]]) -> list[tuple[str, float]]:
    return [(le if isinstance(le, str) else repr(float(le)), float(count)) for le, count in rows]


def render(api: UnifiedMemoryAPI) -> bytes:
    """The exposition text of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(api.get_system_stats()))
    ProcessCollector(registry=registry)
    return generate_latest(registry)
