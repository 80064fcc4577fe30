"""The write queue (group commit): isolation of callers within a group, results to the right caller,
draining on close, nesting, and the facade and server writing through it."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import MakeApi
from starlette.testclient import TestClient

from neuralsync.config import MemoryConfig
from neuralsync.errors import NotFound, StoreBusy, StoreError
from neuralsync.server import create_app
from neuralsync.store.storage import Storage
from neuralsync.store.writequeue import WriteQueue
from neuralsync.unified_memory_api import UnifiedMemoryAPI

WAIT_S = 10.0


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    store = Storage(MemoryConfig(base_path=str(tmp_path)))
    with store.write() as conn:
        conn.execute("CREATE TABLE t(v INTEGER PRIMARY KEY)")
    yield store
    store.close()


@pytest.fixture
def wq(storage: Storage) -> Iterator[WriteQueue]:
    queue = WriteQueue(storage)
    yield queue
    queue.close()


def _values(storage: Storage) -> list[int]:
    return [row[0] for row in storage.conn.execute("SELECT v FROM t ORDER BY v")]


def _insert(value: int) -> object:
    def unit(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t VALUES (?)", (value,))
        return value * 10
    return unit


def _hold(wq: WriteQueue) -> tuple[threading.Event, Future[object]]:
    """Occupy the writer until the returned event is set, so later units pile up into one group."""
    entered, release = threading.Event(), threading.Event()

    def blocker(_conn: sqlite3.Connection) -> None:
        entered.set()
        assert release.wait(WAIT_S)

    future = wq.submit_async(blocker)
    assert entered.wait(WAIT_S)
    return release, future


def test_a_failing_caller_in_a_group_does_not_take_the_others_down(storage: Storage, wq: WriteQueue) -> None:
    release, first = _hold(wq)

    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (2)")
        raise ValueError("this caller's own error")

    futures = [wq.submit_async(_insert(1)), wq.submit_async(bad), wq.submit_async(_insert(3))]  # type: ignore[arg-type]
    groups_before = wq.groups
    release.set()
    first.result(WAIT_S)
    assert futures[0].result(WAIT_S) == 10
    with pytest.raises(ValueError, match="own error"):
        futures[1].result(WAIT_S)
    assert futures[2].result(WAIT_S) == 30
    assert _values(storage) == [1, 3]  # the failed caller's insert is rolled back alone
    assert wq.groups - groups_before <= 2  # the three waiting units committed together


def test_a_sql_error_in_one_unit_is_that_callers_typed_error(storage: Storage, wq: WriteQueue) -> None:
    release, _ = _hold(wq)
    dup = [wq.submit_async(_insert(5)), wq.submit_async(_insert(5))]  # type: ignore[arg-type]
    release.set()
    assert dup[0].result(WAIT_S) == 50
    with pytest.raises(StoreError):
        dup[1].result(WAIT_S)
    assert _values(storage) == [5]


def test_a_caught_failure_inside_a_unit_undoes_only_that_unit(storage: Storage, wq: WriteQueue) -> None:
    def swallows(conn: sqlite3.Connection) -> None:
        try:
            with storage.write(savepoint=False) as joined:
                joined.execute("INSERT INTO t VALUES (7)")
                raise RuntimeError
        except RuntimeError:
            pass

    release, _ = _hold(wq)
    futures = [wq.submit_async(swallows), wq.submit_async(_insert(8))]  # type: ignore[arg-type]
    release.set()
    with pytest.raises(StoreError, match="rolled back"):
        futures[0].result(WAIT_S)
    assert futures[1].result(WAIT_S) == 80
    assert _values(storage) == [8]


def test_eight_threads_get_eight_distinct_results(storage: Storage, wq: WriteQueue) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: wq.submit(_insert(i)), range(200)))  # type: ignore[arg-type]
    assert results == [i * 10 for i in range(200)]
    assert _values(storage) == list(range(200))
    assert wq.units == 200


def test_reads_inside_a_unit_see_its_own_writes(wq: WriteQueue) -> None:
    def unit(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t VALUES (42)")
        return int(conn.execute("SELECT count(*) FROM t WHERE v = 42").fetchone()[0])
    assert wq.submit(unit) == 1


def test_close_drains_every_unit_submitted_before_it(storage: Storage) -> None:
    wq = WriteQueue(storage)
    release, first = _hold(wq)
    futures = [wq.submit_async(_insert(i)) for i in range(50)]  # type: ignore[arg-type]
    closer = threading.Thread(target=wq.close)
    closer.start()
    release.set()
    closer.join(WAIT_S)
    assert not closer.is_alive()
    first.result(WAIT_S)
    assert [f.result(0) for f in futures] == [i * 10 for i in range(50)]
    assert _values(storage) == list(range(50))
    with pytest.raises(StoreError, match="closed"):
        wq.submit(_insert(99))  # type: ignore[arg-type]


def test_exclusive_turn_keeps_queue_order_and_holds_no_lock(storage: Storage, wq: WriteQueue) -> None:
    wq.submit(_insert(1))  # type: ignore[arg-type]
    with wq.exclusive(), storage.write() as conn:  # the caller's own transaction, on its own thread
        conn.execute("INSERT INTO t VALUES (2)")
        later = wq.submit_async(_insert(3))  # type: ignore[arg-type]
        assert not later.done()  # waits for the turn to end
    assert later.result(WAIT_S) == 30
    assert _values(storage) == [1, 2, 3]


def test_the_writer_thread_cannot_wait_on_itself(wq: WriteQueue) -> None:
    def unit(_conn: sqlite3.Connection) -> None:
        wq.submit(_insert(1))  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="inline"):
        wq.submit(unit)


# ------------------------------------------------------------------ through the facade
@pytest.fixture
def queued(make_api: MakeApi) -> UnifiedMemoryAPI:
    api = make_api(embedder="none")
    api.start_write_queue()
    return api


def test_facade_writes_go_through_the_queue_with_their_own_results(queued: UnifiedMemoryAPI) -> None:
    assert queued._queue is not None
    with ThreadPoolExecutor(8) as pool:
        memories = list(pool.map(lambda i: queued.remember_memory(f"note {i}", tags=[f"t{i}"]), range(64)))
    assert [m.content for m in memories] == [f"note {i}" for i in range(64)]
    assert len({m.id for m in memories}) == 64
    assert all(m.tags == (f"t{i}",) for i, m in enumerate(memories))
    assert queued._queue.units >= 64
    updated = queued.update(memories[0].id, content="changed")
    assert updated.content == "changed"
    assert queued.forget(memories[1].id)
    with pytest.raises(NotFound):
        queued.forget(memories[1].id)
    queued.set_persona("terse")
    assert queued.get_persona() == "terse"
    assert queued.import_memory({"id": memories[2].id, "content": "again"}) is False
    assert queued.doctor(quick=True).ok


def test_nested_batches_run_inline_in_the_callers_transaction(queued: UnifiedMemoryAPI) -> None:
    with queued.batch_operations():
        first = queued.remember("in the batch")
        with queued.batch_operations():
            second = queued.remember("in the inner batch")
            queued.update(first, priority=0.9)
        assert queued.get(second).content == "in the inner batch"
    assert queued.get(first).priority == 0.9
    with pytest.raises(RuntimeError), queued.batch_operations():
        queued.remember("rolled back")
        raise RuntimeError
    assert [m.content for m in queued.recall("rolled back", mode="text")] == []


def test_batches_and_single_writes_from_many_threads_all_land(queued: UnifiedMemoryAPI) -> None:
    def batch(i: int) -> list[str]:
        with queued.batch_operations():
            return [queued.remember(f"batch {i} item {j}") for j in range(5)]

    def single(i: int) -> list[str]:
        return [queued.remember(f"single {i}")]

    with ThreadPoolExecutor(8) as pool:
        ids = [rid for got in pool.map(lambda i: (batch if i % 2 else single)(i), range(40)) for rid in got]
    assert len(set(ids)) == len(ids) == 20 * 5 + 20
    assert queued.counts()["memories"] == len(ids)


def test_close_drains_facade_writes(make_api: MakeApi, tmp_path: Path) -> None:
    api = make_api(embedder="none")
    api.start_write_queue()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(api.remember, f"pending {i}") for i in range(40)]
        done = [f.result(WAIT_S) for f in futures]
    api.close()
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(tmp_path / "store"), embedder="none")) as again:
        assert again.counts()["memories"] == len(done) == 40


def test_server_writes_go_through_the_queue(make_api: MakeApi) -> None:
    api = make_api(embedder="none")
    token = "t" * 43
    with TestClient(create_app(api, token), headers={"Authorization": f"Bearer {token}"}) as client:
        assert api._queue is not None
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda i: client.post("/v1/memories", json={"content": f"c{i}"}), range(16)))
        assert [r.status_code for r in replies] == [201] * 16
        assert sorted(r.json()["content"] for r in replies) == sorted(f"c{i}" for i in range(16))
        assert api._queue.units >= 16


def test_a_unit_the_writer_does_not_reach_in_time_is_withdrawn(storage: Storage) -> None:
    wq = WriteQueue(storage, wait_s=0.2)
    try:
        release, first = _hold(wq)
        with pytest.raises(StoreBusy):
            wq.submit(_insert(1))  # type: ignore[arg-type]
        with pytest.raises(StoreBusy), wq.exclusive():
            pass  # never reached: the turn was withdrawn
        release.set()
        first.result(WAIT_S)
        assert wq.submit(_insert(2)) == 20  # type: ignore[arg-type]
        assert _values(storage) == [2]  # the withdrawn unit never ran
    finally:
        wq.close()


def test_a_broken_writer_fails_its_callers_instead_of_leaving_them_waiting(
        storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    wq = WriteQueue(storage, window_s=0)  # the waiting unit forms the next group
    release, first = _hold(wq)
    waiting = wq.submit_async(_insert(1))  # type: ignore[arg-type]

    def broken(self: WriteQueue, group: list[object]) -> None:
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(WriteQueue, "_commit", broken)
    release.set()
    with pytest.raises(StoreError):
        waiting.result(WAIT_S)
    with pytest.raises(StoreError, match="closed"):
        wq.submit(_insert(2))  # type: ignore[arg-type]
    wq.close()
    assert first.done() or not first.running()


def test_mcp_facades_write_through_their_queue(tmp_path: Path) -> None:
    from neuralsync.mcp.server import ApiPool

    pool = ApiPool(MemoryConfig(base_path=str(tmp_path / "store"), embedder="none"))
    try:
        api = pool.get("codex")
        assert api._queue is not None
        with ThreadPoolExecutor(8) as workers:
            ids = list(workers.map(lambda i: api.remember(f"from mcp {i}"), range(16)))
        assert len(set(ids)) == 16 and api._queue.units >= 16
    finally:
        pool.close()
    assert api._queue is not None and not api._queue.running
