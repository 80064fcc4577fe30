"""Many writers, one store: separate processes and threads sharing an API lose nothing and form one chain."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from neuralsync.oplog import codec as crdt
from neuralsync.services.doctor import run_doctor
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

PROCESSES = 4
PER_PROCESS = 500
TIMEOUT_S = 120

WRITER = textwrap.dedent("""
    import json, os, sys, time
    from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

    base, name, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    errors = []
    with UnifiedMemoryAPI(MemoryConfig(base_path=base)) as api:
        deadline = time.monotonic() + 60
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.001)
        for i in range(count):
            try:
                api.remember(f"writer {name} item {i}", scope=name, tags=[name])
            except Exception as exc:  # report every failure instead of stopping at the first
                errors.append(f"{i}: {type(exc).__name__}: {exc}")
    print(json.dumps({"errors": errors[:10], "failed": len(errors)}))
""")


def _assert_one_chain(api: UnifiedMemoryAPI) -> int:
    """Every op's preds is exactly the op before it (by local seq), and clocks only grow."""
    rows = api.storage.conn.execute("SELECT body, sig FROM ops ORDER BY seq").fetchall()
    ops = [crdt.parse_op(body, sig) for body, sig in rows]
    assert ops[0].preds == ()
    for previous, op in zip(ops, ops[1:], strict=False):
        assert op.preds == (previous.id,)
        assert op.hlc > previous.hlc
    heads = api.storage.conn.execute("SELECT id FROM heads").fetchall()
    assert heads == [(ops[-1].id,)]
    return len(ops)


@pytest.mark.slow
def test_four_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    base = tmp_path / "store"
    UnifiedMemoryAPI(MemoryConfig(base_path=str(base))).close()  # create schema and key up front
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(base), f"p{n}", str(PER_PROCESS), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in range(PROCESSES)]
    go.touch()
    reports = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT_S)
            assert proc.returncode == 0, err
            reports.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert [r["failed"] for r in reports] == [0] * PROCESSES, reports

    with UnifiedMemoryAPI(MemoryConfig(base_path=str(base))) as api:
        assert api.reads.counts()["memories"] == PROCESSES * PER_PROCESS
        for n in range(PROCESSES):
            contents = {m.content for m in api.range_recall(scope=f"p{n}")}
            assert contents == {f"writer p{n} item {i}" for i in range(PER_PROCESS)}
        assert _assert_one_chain(api) == PROCESSES * PER_PROCESS
        report = run_doctor(api.storage, quick=True)
        assert report.ok, report.to_dict()


def test_threads_sharing_one_api_lose_nothing(api: UnifiedMemoryAPI) -> None:
    threads, per_thread = 8, 60
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(n: int) -> None:
        try:
            start.wait(10)
            for i in range(per_thread):
                mid = api.remember(f"thread {n} item {i}", tags=[f"t{n}"])
                assert api.get(mid).content == f"thread {n} item {i}"
                if i % 10 == 0:
                    api.update(mid, priority=0.9)
                    api.recall("thread item", top_k=5)
        except BaseException as exc:  # noqa: BLE001 - surfaced in the main thread below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(TIMEOUT_S)
    assert not any(w.is_alive() for w in workers)
    assert errors == []
    assert api.reads.counts()["memories"] == threads * per_thread
    for n in range(threads):
        assert len(api.recall("", tags=[f"t{n}"], top_k=per_thread)) == per_thread
    _assert_one_chain(api)
    assert run_doctor(api.storage, quick=True).ok


def test_a_second_process_sees_writes_of_the_first(tmp_path: Path) -> None:
    base = tmp_path / "store"
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(base))) as reader:
        reader.remember("from the parent")
        script = ("import sys\nfrom neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI\n"
                  "with UnifiedMemoryAPI(MemoryConfig(base_path=sys.argv[1])) as api:\n"
                  "    print([m.content for m in api.recall('parent', mode='text')][0])\n"
                  "    api.remember('from the child')\n")
        done = subprocess.run([sys.executable, "-c", script, str(base)], capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=True)
        assert done.stdout.strip() == "from the parent"
        assert [m.content for m in reader.recall("child", mode="text")] == ["from the child"]
        assert [c.kind for c in reader.changes_since(1)] == ["create"]
