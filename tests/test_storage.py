"""Storage: the connection factory, pragmas, transactions, busy handling and migrations."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from neuralsync.config import MemoryConfig
from neuralsync.errors import ConfigError, StoreBusy, StoreError
from neuralsync.oplog.log import OpLog
from neuralsync.store.schema import MIGRATIONS
from neuralsync.store.storage import Storage, _pragma_sql
from neuralsync.unified_memory_api import UnifiedMemoryAPI

MakeApi = Callable[..., UnifiedMemoryAPI]


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    config = MemoryConfig(base_path=str(tmp_path / "s"), pool_size_mb=8, cache_size_mb=4, busy_timeout_ms=1234)
    storage = Storage(config)
    with storage.write() as conn:
        conn.execute("CREATE TABLE t(x INTEGER)")
    yield storage
    storage.close()


def _values(storage: Storage) -> list[int]:
    return [x for (x,) in storage.conn.execute("SELECT x FROM t ORDER BY x")]


def _pragmas(conn: sqlite3.Connection) -> dict[str, object]:
    names = ("journal_mode", "synchronous", "busy_timeout", "mmap_size", "foreign_keys", "temp_store", "cache_size")
    return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names}


# ---------------------------------------------------------------- pragmas and connections
def test_every_connection_gets_the_configured_pragmas(storage: Storage) -> None:
    expected = {"journal_mode": "wal", "synchronous": 1, "busy_timeout": 1234, "mmap_size": 8 * 1024 * 1024,
                "foreign_keys": 1, "temp_store": 2, "cache_size": -4 * 1024}
    seen: list[dict[str, object]] = []
    worker = threading.Thread(target=lambda: seen.append(_pragmas(storage.conn)))
    worker.start()
    worker.join(10)
    assert _pragmas(storage.conn) == expected
    assert seen == [expected]


def test_mmap_size_follows_pool_size_mb(tmp_path: Path) -> None:
    storage = Storage(MemoryConfig(base_path=str(tmp_path), pool_size_mb=16))
    try:
        assert storage.conn.execute("PRAGMA mmap_size").fetchone()[0] == 16 * 1024 * 1024
    finally:
        storage.close()


def test_full_durability_sets_synchronous_full(tmp_path: Path) -> None:
    storage = Storage(MemoryConfig(base_path=str(tmp_path), durability="full"))
    try:
        assert storage.conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        storage.close()


def test_unknown_durability_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="durability"):
        MemoryConfig(base_path=str(tmp_path), durability="fast")


def test_api_store_is_in_wal_mode(api: UnifiedMemoryAPI) -> None:
    assert api.storage.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw = sqlite3.connect(api.storage.path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persisted in the file
    finally:
        raw.close()


def test_each_thread_has_its_own_connection_reused_within_the_thread(storage: Storage) -> None:
    main = storage.conn
    assert storage.conn is main
    others: list[sqlite3.Connection] = []

    def grab() -> None:
        others.append(storage.conn)
        others.append(storage.conn)

    worker = threading.Thread(target=grab)
    worker.start()
    worker.join(10)
    assert others[0] is others[1]
    assert others[0] is not main


def test_a_forked_child_opens_its_own_connection_and_can_write(storage: Storage) -> None:
    inherited = storage.conn
    pid = os.fork()
    if pid == 0:  # child: report through the exit status only
        code = 1
        try:
            conn = storage.conn
            if conn is not inherited:
                with storage.write() as c:
                    c.execute("INSERT INTO t VALUES (42)")
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert storage.conn is inherited
    assert _values(storage) == [42]


def test_closed_storage_refuses_use(storage: Storage) -> None:
    storage.close()
    with pytest.raises(StoreError):
        _ = storage.conn


def test_a_file_that_is_not_a_database_raises_store_error(tmp_path: Path) -> None:
    home = tmp_path / "bad"
    home.mkdir()
    (home / "memory.db").write_bytes(b"this is not an sqlite database" * 200)
    with pytest.raises(StoreError):
        UnifiedMemoryAPI(MemoryConfig(base_path=str(home)))


# ---------------------------------------------------------------- pragma whitelist
@pytest.mark.parametrize(("name", "value"), [
    ("user_version", 5),
    ("writable_schema", "on"),
    ("journal_mode", "wal; DROP TABLE t"),
    ("journal_mode", "delete"),
    ("busy_timeout", "100"),
    ("busy_timeout", True),
    ("mmap_size", 1.5),
    ("synchronous", "normal --"),
])
def test_pragma_whitelist_rejects_everything_else(name: str, value: object) -> None:
    with pytest.raises(StoreError, match="not allowed"):
        _pragma_sql(name, value)


def test_pragma_whitelist_accepts_configured_values() -> None:
    assert _pragma_sql("busy_timeout", 50) == "PRAGMA busy_timeout=50"
    assert _pragma_sql("synchronous", "full") == "PRAGMA synchronous=full"


# ---------------------------------------------------------------- transactions
def test_write_takes_the_write_lock_at_begin(storage: Storage) -> None:
    other = sqlite3.connect(storage.path, timeout=0, isolation_level=None)
    try:
        with storage.write():
            # Nothing written yet: only BEGIN IMMEDIATE can already hold the lock.
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_inner_failure_rolls_back_only_the_savepoint(storage: Storage) -> None:
    with storage.write() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(RuntimeError), storage.write() as inner:
            inner.execute("INSERT INTO t VALUES (2)")
            raise RuntimeError("inner")
        conn.execute("INSERT INTO t VALUES (3)")
    assert _values(storage) == [1, 3]


def test_exception_in_outer_block_rolls_back_everything(storage: Storage) -> None:
    with pytest.raises(RuntimeError), storage.write() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        with storage.write() as inner:
            inner.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("outer")
    assert _values(storage) == []
    assert not storage.conn.in_transaction


def test_failure_in_a_joined_block_poisons_the_whole_transaction(storage: Storage) -> None:
    with pytest.raises(StoreError, match="rolled back"), storage.write() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(RuntimeError), storage.write(savepoint=False) as joined:
            joined.execute("INSERT INTO t VALUES (2)")
            raise RuntimeError("caught by the caller, but the write cannot be undone alone")
        conn.execute("INSERT INTO t VALUES (3)")
    assert _values(storage) == []
    with storage.write() as conn:  # the next transaction starts clean
        conn.execute("INSERT INTO t VALUES (4)")
    assert _values(storage) == [4]


def test_a_savepoint_around_a_failed_joined_block_heals_the_poison(storage: Storage) -> None:
    with storage.write() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(RuntimeError), storage.write() as inner, storage.write(savepoint=False) as joined:
            inner.execute("INSERT INTO t VALUES (2)")
            joined.execute("INSERT INTO t VALUES (3)")
            raise RuntimeError
    assert _values(storage) == [1]


def test_sql_error_inside_write_is_translated_and_rolled_back(storage: Storage) -> None:
    with pytest.raises(StoreError), storage.write() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("INSERT INTO no_such_table VALUES (1)")
    assert _values(storage) == []


def test_lock_held_past_busy_timeout_raises_store_busy(make_api: MakeApi) -> None:
    api = make_api(busy_timeout_ms=50)
    api.remember("before the lock")
    holder = sqlite3.connect(api.storage.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreBusy):
            api.remember("while locked")
        assert time.monotonic() - started < 5  # bounded retries, not a hang
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [m.content for m in api.range_recall()] == ["before the lock"]
    api.remember("after the lock")  # the store is usable again
    assert api.reads.counts()["memories"] == 2


def test_store_busy_is_transient_and_not_a_sqlite_error() -> None:
    assert not issubclass(StoreBusy, sqlite3.Error)
    assert not issubclass(StoreBusy, StoreError)


# ---------------------------------------------------------------- migrations
def test_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    config = MemoryConfig(base_path=str(tmp_path))
    for _ in range(2):
        store = OpLog.open(config)
        rows = store.storage.conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        store.close()
        assert rows == [(v, name) for v, name, _ in MIGRATIONS]
    assert store.schema_version == max(v for v, _, _ in MIGRATIONS)


def test_a_new_migration_runs_once(storage: Storage) -> None:
    calls: list[int] = []

    def step(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("CREATE TABLE extra(y)")

    migrations = [*MIGRATIONS, (99, "extra table", step)]
    assert storage.migrate(migrations) == 99
    assert storage.migrate(migrations) == 99
    assert calls == [1]
    assert storage.conn.execute("SELECT name FROM schema_migrations WHERE version = 99").fetchone() == ("extra table",)


def test_a_failing_migration_leaves_nothing_behind(storage: Storage) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half(y)")
        raise RuntimeError("migration bug")

    with pytest.raises(RuntimeError):
        storage.migrate([(7, "broken", broken)])
    tables = {r[0] for r in storage.conn.execute("SELECT name FROM sqlite_master")}
    assert "half" not in tables
    recorded = storage.conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] \
        if "schema_migrations" in tables else 0
    assert recorded == 0


def test_new_stores_use_8k_pages_and_older_stores_keep_theirs(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # 8 KB pages hold five vector rows where 4 KB pages held two (~23% of the embeddings table was empty).
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(tmp_path / "new"), embedder="none")) as api:
        assert api.storage.conn.execute("PRAGMA page_size").fetchone()[0] == 8192
    # A store made with 4 KB pages (before this) keeps them: the size is fixed when the file is created.
    import neuralsync.store.storage as storage_module

    made_with = storage_module.pragmas_for
    monkeypatch.setattr(storage_module, "pragmas_for", lambda config: {**made_with(config), "page_size": 4096})
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(tmp_path / "old"), embedder="none")) as api:
        api.remember("made with 4 KB pages")
    monkeypatch.setattr(storage_module, "pragmas_for", made_with)
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(tmp_path / "old"), embedder="none")) as api:
        assert api.storage.conn.execute("PRAGMA page_size").fetchone()[0] == 4096
        api.remember("written after the upgrade")
        assert [m.content for m in api.recall("made with pages", mode="text")] == ["made with 4 KB pages"]
        assert api.doctor(quick=True).ok
