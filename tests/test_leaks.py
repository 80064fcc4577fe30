"""Resource leaks: opening and closing stores, and using them from short-lived threads, holds nothing open."""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path

from neuralsync.services.doctor import run_doctor
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _use(api: UnifiedMemoryAPI) -> None:
    mid = api.remember("leak probe", tags=["t"])
    api.get(mid)  # starts the access-statistics thread
    api.recall("probe")
    worker = threading.Thread(target=lambda: api.recall("probe"))  # a connection owned by another thread
    worker.start()
    worker.join(10)


def test_open_and_close_fifty_times_leaks_no_fds_or_threads(tmp_path: Path) -> None:
    config = MemoryConfig(base_path=str(tmp_path / "store"))
    with UnifiedMemoryAPI(config) as warm:  # first open creates files and imports modules
        _use(warm)
    gc.collect()
    fds, threads = _fds(), threading.active_count()
    for _ in range(50):
        api = UnifiedMemoryAPI(config)
        _use(api)
        api.close()
    gc.collect()
    assert _fds() == fds
    assert threading.active_count() == threads


def test_doctor_leaves_no_files_open(api: UnifiedMemoryAPI) -> None:
    api.remember("x")
    run_doctor(api.storage)
    gc.collect()
    fds = _fds()
    for _ in range(10):
        run_doctor(api.storage)
    gc.collect()
    assert _fds() == fds


def test_closing_twice_is_harmless(tmp_path: Path) -> None:
    api = UnifiedMemoryAPI(MemoryConfig(base_path=str(tmp_path)))
    api.close()
    api.close()


def test_short_lived_threads_do_not_accumulate_connections(api: UnifiedMemoryAPI) -> None:
    mid = api.remember("shared")
    _use(api)
    gc.collect()
    fds = _fds()
    for _ in range(30):
        worker = threading.Thread(target=lambda: api.get(mid))
        worker.start()
        worker.join(10)
    gc.collect()
    assert _fds() <= fds + 3  # a dead thread's connection must not stay open
