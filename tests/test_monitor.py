"""Issue 15, the performance monitor: HDR histograms with windows and trends, stage timing naming the
bottleneck, alerts (log line, callback, SSE event, gauge), figures shared across processes, tuning."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from neuralsync.errors import InvalidInput
from neuralsync.services.monitor import PerformanceMonitor
from neuralsync.services.monitor.core import WINDOW_MINUTES
from neuralsync.stages import stage
from neuralsync.unified_memory_api import UnifiedMemoryAPI

REPO = Path(__file__).resolve().parents[1]
SLOW_S = 0.03


def _slow_text_search(api: UnifiedMemoryAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the text search stage of every recall take ``SLOW_S`` more."""
    plan = api.recaller._plan

    def slow_plan(*args: Any, **kwargs: Any) -> Any:
        time.sleep(SLOW_S)
        return plan(*args, **kwargs)

    monkeypatch.setattr(api.recaller, "_plan", slow_plan)


@pytest.fixture
def quick(make_api: Any) -> UnifiedMemoryAPI:
    api: UnifiedMemoryAPI = make_api(embedder="none", target_response_time_ms=10.0, monitor_publish_s=0)
    return api


# ---------------------------------------------------------------- histograms
def test_percentiles_windows_and_counts_from_hdr_histograms() -> None:
    monitor = PerformanceMonitor(target_ms=1e6)
    for i in range(1, 1001):
        monitor.record("op", i / 1_000_000 * 100)  # 0.1 .. 100 ms, uniform
    row = monitor.stats()["operations"]["op"]
    assert row["count"] == 1000 and row["errors"] == 0
    assert row["p50_ms"] == pytest.approx(50, rel=0.02)
    assert row["p95_ms"] == pytest.approx(95, rel=0.02)
    assert row["p99_ms"] == pytest.approx(99, rel=0.02)
    assert row["max_ms"] == pytest.approx(100, rel=0.02)
    assert row["avg_ms"] == pytest.approx(50.05, rel=0.001)  # from the exact sum
    assert set(row["windows"]) == {"1m", "5m", "15m"} and row["windows"]["1m"]["count"] == 1000
    assert row["buckets"][-1] == ["+Inf", 1000]


def test_memory_is_constant_and_minutes_roll_into_windows_and_trends() -> None:
    monitor = PerformanceMonitor(target_ms=1e6)
    now = time.perf_counter()
    for minute in range(40, 0, -1):  # forty minutes of calls, oldest first
        for _ in range(50):
            monitor.record("op", 0.002, at=now - minute * 60)
    monitor.record("op", 0.004, at=now)
    op = monitor._ops["op"]
    assert len(op.ring) == WINDOW_MINUTES  # never more histograms than the window needs
    row = monitor.stats()["operations"]["op"]
    assert row["count"] == 2001
    assert row["windows"]["1m"]["count"] == 1
    assert 1 + 4 * 50 <= row["windows"]["5m"]["count"] <= 1 + 5 * 50
    trend = monitor.trend("op")
    assert len(trend) == 41 and trend[0]["count"] == 50 and trend[-1]["count"] == 1
    assert trend[0]["minute"] < trend[-1]["minute"]


def test_a_block_that_raises_is_timed_and_counted_as_an_error(quick: UnifiedMemoryAPI) -> None:
    with pytest.raises(KeyError), quick.performance_profiling("failing"):
        raise KeyError("x")
    row = quick.get_system_stats()["performance_stats"]["operations"]["failing"]
    assert row["count"] == 1 and row["errors"] == 1


# ---------------------------------------------------------------- stages, bottleneck, alerts
def test_an_injected_slow_stage_is_named_the_bottleneck_and_raises_alerts(
        quick: UnifiedMemoryAPI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    quick.remember("the staging cluster is rebuilt every Monday")
    _slow_text_search(quick, monkeypatch)
    received: list[dict[str, Any]] = []
    quick.on_performance_alert(received.append)
    with caplog.at_level(logging.INFO, logger="neuralsync.monitor"):
        assert quick.recall("staging cluster")
    [alert] = [a for a in received if a["operation"] == "recall"]
    assert alert["bottleneck"] == "text_search"
    assert alert["ms"] > 10.0 and alert["target_ms"] == 10.0
    assert alert["stages_ms"]["text_search"] >= SLOW_S * 1000 * 0.9
    assert any("slow recall" in r.message and "text_search" in r.message for r in caplog.records)
    perf = quick.get_system_stats()["performance_stats"]
    stages = perf["operations"]["recall"]["stages"]
    assert {"parse", "text_search", "fusion"} <= set(stages) and stages["text_search"]["share"] > 0.5
    assert {"operation": "recall", "bottleneck": "text_search", "count": 1} in perf["alerts"]
    assert quick.performance_alerts()[-1]["bottleneck"] == "text_search"


def test_a_write_kept_waiting_by_another_connection_names_the_wait_as_its_bottleneck(
        quick: UnifiedMemoryAPI) -> None:
    # Another process's write transaction (a compaction slice, a second agent) holds the lock for 100 ms.
    quick.remember("the first write opens the store")
    received: list[dict[str, Any]] = []
    quick.on_performance_alert(received.append)
    other = sqlite3.connect(quick.storage.path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        threading.Timer(0.1, lambda: other.execute("COMMIT")).start()
        quick.remember("this write waits for the lock")
    finally:
        time.sleep(0.15)
        other.close()
    [alert] = [a for a in received if a["operation"] == "remember"]
    assert alert["bottleneck"] == "lock_wait" and alert["stages_ms"]["lock_wait"] >= 90


def test_the_metrics_gauge_and_counters_show_the_alert(quick: UnifiedMemoryAPI,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from neuralsync.server.metrics import render

    quick.remember("alpha beta")
    _slow_text_search(quick, monkeypatch)
    quick.recall("alpha")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(render(quick).decode()) for s in family.samples}
    assert samples[("neuralsync_operation_over_target", (("operation", "recall"),))] == 1.0
    assert samples[("neuralsync_alerts_total", (("bottleneck", "text_search"), ("operation", "recall")))] == 1.0
    assert samples[("neuralsync_operation_stage_seconds_total",
                    (("operation", "recall"), ("stage", "text_search")))] >= SLOW_S * 0.9


def test_stage_marks_outside_an_operation_cost_nothing_and_nest_into_the_caller() -> None:
    with stage("embed"):
        pass  # no operation on this thread: nothing recorded, nothing raised
    monitor = PerformanceMonitor(target_ms=1e6)
    with monitor.measure("outer"):
        with monitor.measure("inner"), stage("embed"):
            time.sleep(0.002)
    ops = monitor.stats()["operations"]
    assert ops["inner"]["stages"]["embed"]["total_ms"] >= 2
    assert ops["outer"]["stages"]["embed"]["total_ms"] >= 2


def test_a_failing_alert_callback_never_fails_the_operation(quick: UnifiedMemoryAPI) -> None:
    def broken(alert: dict[str, Any]) -> None:
        raise RuntimeError("callback bug")

    unsubscribe = quick.on_performance_alert(broken)
    with quick.performance_profiling("slow"):
        time.sleep(0.02)
    unsubscribe()
    assert quick.get_system_stats()["performance_stats"]["operations"]["slow"]["count"] == 1


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("target", [0, -1, float("nan"), float("inf"), "fast", True, None])
def test_a_bad_target_is_refused_by_name_and_changes_nothing(quick: UnifiedMemoryAPI, target: object) -> None:
    before = (quick.monitor.target_ms, quick.storage.cache_size_kib, quick.get_system_stats()["ops"])
    if target is None:  # None means "the configured target": valid
        quick.optimize_performance(None)
        return
    with pytest.raises(InvalidInput) as caught:
        quick.optimize_performance(target_response_time_ms=target)  # type: ignore[arg-type]
    assert caught.value.field == "target_response_time_ms"
    assert "target_response_time_ms" in str(caught.value)
    assert (quick.monitor.target_ms, quick.storage.cache_size_kib, quick.get_system_stats()["ops"]) == before
    assert "optimize_performance" not in quick.get_system_stats()["performance_stats"]["operations"]


def test_a_non_callable_alert_callback_is_refused(quick: UnifiedMemoryAPI) -> None:
    with pytest.raises(InvalidInput) as caught:
        quick.on_performance_alert("not a function")  # type: ignore[arg-type]
    assert caught.value.field == "callback"


# ---------------------------------------------------------------- optimize acts on what was measured
def test_optimize_performance_acts_on_the_measured_bottleneck(quick: UnifiedMemoryAPI,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(30):
        quick.remember(f"probe note number {i} about deployments")
    _slow_text_search(quick, monkeypatch)
    for _ in range(3):
        quick.recall("deployments")
    cache_before = quick.storage.cache_size_kib
    report = quick.optimize_performance(target_response_time_ms=10)
    assert report["measured"]["bottleneck"] == "text_search"
    assert report["measured"]["slow_operations"]["recall"] > 10
    assert report["changes"]["cache_size_kib"] == {"before": cache_before, "after": cache_before * 2}
    assert quick.storage.cache_size_kib == cache_before * 2
    assert any("page cache" in a for a in report["actions"]) and any("FTS" in a for a in report["actions"])
    assert report["before_ms"] >= 0 and report["after_ms"] >= 0 and report["target_ms"] == 10.0
    assert quick.monitor.target_ms == 10.0


def test_optimize_performance_with_nothing_slow_changes_no_setting(quick: UnifiedMemoryAPI) -> None:
    quick.remember("one")
    quick.recall("one")
    report = quick.optimize_performance(target_response_time_ms=60_000)
    assert report["changes"] == {} and report["measured"]["slow_operations"] == {} and report["met"]


# ---------------------------------------------------------------- across processes
def test_figures_are_published_at_close_not_per_operation(make_api: Any, tmp_path: Path) -> None:
    store = tmp_path / "shared"
    writer = make_api(store, embedder="none", tool="tool-a", monitor_publish_s=0)
    for i in range(20):
        writer.remember(f"note {i}")
    assert not (store / "monitor").exists()  # nothing written per operation
    writer.close()
    reader = make_api(store, embedder="none", tool="tool-b", monitor_publish_s=0)
    reader.get_system_stats()
    across = reader.get_system_stats()["performance_stats"]["across_processes"]
    assert across["by_tool"]["tool-a"]["operations"]["remember"]["count"] == 20
    assert across["by_tool"]["tool-a"]["live"] == 0
    mine = [p for p in across["processes"] if p["this_process"]]
    assert mine and mine[0]["tool"] == "tool-b"
    assert across["operations"]["remember"]["count"] == 20


def test_a_long_running_process_publishes_periodically(make_api: Any, tmp_path: Path) -> None:
    store = tmp_path / "shared"
    server = make_api(store, embedder="none", tool="tool-s", monitor_publish_s=0.1, dedupe=False)
    server.start_background_maintenance()
    server.remember("from the long-running one")
    other = make_api(store, embedder="none", tool="tool-c", monitor_publish_s=0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        by_tool = other.get_system_stats()["performance_stats"]["across_processes"]["by_tool"]
        if "remember" in by_tool.get("tool-s", {}).get("operations", {}):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the long-running process never published")
    assert by_tool["tool-s"]["live"] == 1


def test_damaged_or_foreign_files_in_the_directory_are_skipped(make_api: Any, tmp_path: Path) -> None:
    store = tmp_path / "shared"
    api = make_api(store, embedder="none", monitor_publish_s=0)
    (store / "monitor").mkdir()
    (store / "monitor" / "junk.json").write_text("{not json")
    (store / "monitor" / "old.json").write_text(json.dumps({"format": 1, "published_at": 0, "pid": 1}))
    api.remember("x")
    across = api.get_system_stats()["performance_stats"]["across_processes"]
    assert [p["this_process"] for p in across["processes"]] == [True]
    assert not (store / "monitor" / "old.json").exists()  # older than a day: removed


@pytest.mark.slow
def test_latencies_of_a_running_server_appear_in_the_cli_stats_of_another_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    from _live import live_server

    monkeypatch.setenv("NEURALSYNC_MONITOR_PUBLISH_S", "0.2")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NS_")}
    cli = [sys.executable, "-m", "neuralsync.cli", "--home", str(tmp_path)]
    subprocess.run([*cli, "remember", "written by a one-shot CLI command"], env=env, capture_output=True,
                   timeout=60, check=True)
    with live_server(tmp_path) as server:
        for i in range(5):
            httpx.post(f"{server.url}/v1/memories", json={"content": f"server note {i}"}, headers=server.auth,
                       timeout=10).raise_for_status()
        httpx.post(f"{server.url}/v1/recall", json={"query": "server note"}, headers=server.auth,
                   timeout=30).raise_for_status()
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run([*cli, "--json", "stats"], env=env, capture_output=True, text=True, timeout=60,
                                  check=True)
            across = json.loads(done.stdout)["performance_stats"]["across_processes"]
            served = across["by_tool"].get("http-server", {}).get("operations", {})
            if served.get("remember", {}).get("count", 0) >= 5 and "recall" in served:
                break
            assert time.monotonic() < deadline, f"the server's latencies never appeared: {across['by_tool']}"
            time.sleep(0.2)
        [proc] = [p for p in across["processes"] if p["tool"] == "http-server"]
        assert proc["live"] and proc["pid"] == server.process.pid and proc["resources"]["rss_mb"] > 0
        assert proc["operations"]["remember"]["p99_ms"] > 0
        assert served["recall"]["stages"]  # the server's stages travel too
        cli_runs = across["by_tool"]["(no tool)"]
        assert cli_runs["operations"]["remember"]["count"] >= 1  # the earlier one-shot command
        text = subprocess.run([*cli, "stats"], env=env, capture_output=True, text=True, timeout=60,
                              check=True).stdout
        assert "http-server: 1 live" in text


def test_the_trend_of_an_operation_through_the_facade(quick: UnifiedMemoryAPI) -> None:
    quick.remember("a")
    [row] = quick.performance_trend("remember")
    assert row["count"] == 1 and row["minute"] % 60 == 0
    with pytest.raises(InvalidInput) as caught:
        quick.performance_trend("remember", minutes=0)
    assert caught.value.field == "minutes"
