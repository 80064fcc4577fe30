"""Crash safety: a process SIGKILLed inside a batch leaves none of the batch; after commit, all of it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from neuralsync.services.doctor import run_doctor
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

BATCH = 2000
BEFORE = 5
TIMEOUT_S = 60

# Writes BEFORE memories, then a batch of BATCH. After `pause_at` writes inside the batch
# (or after the commit when pause_at is -1) it says "ready" and blocks until killed.
CHILD = textwrap.dedent("""
    import sys
    from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

    base, pause_at, batch, before = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

    def pause():
        print("ready", flush=True)
        sys.stdin.readline()  # never answered: the parent kills us here
        sys.exit(3)

    api = UnifiedMemoryAPI(MemoryConfig(base_path=base))
    for i in range(before):
        api.remember(f"committed before the batch {i}")
    with api.batch_operations():
        for i in range(batch):
            api.remember(f"batchonly item {i}", tags=["batch"])
            if i + 1 == pause_at:
                pause()
    if pause_at == -1:
        pause()
""")


def _run_and_kill(base: Path, pause_at: int) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(base), str(pause_at), str(BATCH), str(BEFORE)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded: the child either prints or exits (EOF)
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(TIMEOUT_S)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT_S)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _reopen_counts(base: Path) -> tuple[int, int, int]:
    """(memories before the batch, batch memories, ops) after reopening; doctor must pass."""
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(base))) as api:
        report = run_doctor(api.storage, quick=True)
        assert report.ok, report.to_dict()
        contents = [m.content for m in api.range_recall()]
        batch = sum(c.startswith("batchonly item") for c in contents)
        assert len(api.recall("batchonly", top_k=10, mode="text")) == min(batch, 10)
        return len(contents) - batch, batch, api.reads.counts()["ops"]


@pytest.mark.slow
@pytest.mark.parametrize("pause_at", [1, 700, BATCH])
def test_kill_inside_a_batch_leaves_none_of_it(tmp_path: Path, pause_at: int) -> None:
    base = tmp_path / "store"
    _run_and_kill(base, pause_at)
    assert _reopen_counts(base) == (BEFORE, 0, BEFORE)


@pytest.mark.slow
def test_kill_after_the_batch_committed_keeps_all_of_it(tmp_path: Path) -> None:
    base = tmp_path / "store"
    _run_and_kill(base, -1)
    assert _reopen_counts(base) == (BEFORE, BATCH, BEFORE + BATCH)


@pytest.mark.slow
def test_store_stays_writable_after_repeated_kills(tmp_path: Path) -> None:
    base = tmp_path / "store"
    for pause_at in (3, 1500):
        _run_and_kill(base, pause_at)
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(base))) as api:
        api.remember("after the crashes")
        # The second run's "committed before the batch i" repeat the first run's: merged into them.
        assert api.reads.counts()["memories"] == BEFORE + 1
        assert len(api.merges()) == BEFORE
        assert run_doctor(api.storage, quick=True).ok
