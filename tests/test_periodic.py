"""Background work shared by heartbeats, access statistics and vector upkeep."""

from __future__ import annotations

import threading
import time

from neuralsync.utils import Periodic


def test_runs_repeatedly_survives_a_failing_run_and_stops_for_good() -> None:
    runs: list[float] = []

    def task() -> None:
        runs.append(time.monotonic())
        if len(runs) == 2:
            raise RuntimeError("one bad run")

    periodic = Periodic("test-periodic", 0.02, task)
    periodic.start()
    periodic.start()  # idempotent: still one thread
    assert sum(t.name == "test-periodic" for t in threading.enumerate()) == 1
    deadline = time.monotonic() + 5
    while len(runs) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(runs) >= 4  # the failing second run did not end the loop
    periodic.stop()
    stopped_at = len(runs)
    periodic.start()  # no restart after stop
    time.sleep(0.1)
    assert len(runs) == stopped_at
    assert not any(t.name == "test-periodic" for t in threading.enumerate())
