"""Creates written set-at-a-time (a batch's remembers and imports) leave exactly the state that
writing them one by one leaves: the same ops, rows, rowids and doctor digest."""

from __future__ import annotations

import itertools
import shutil
import sqlite3
from pathlib import Path

import pytest

from neuralsync.errors import StoreError
from neuralsync.model import Op
from neuralsync.oplog.clock import HybridClock
from neuralsync.oplog.materialize import apply_creates
from neuralsync.services.doctor import run_doctor, state_digest
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

WALL_MS = 1_700_000_000_000
TABLES = ("SELECT seq, id, hlc, kind, record_id, body, sig, eff, floor FROM ops ORDER BY seq",
          "SELECT rowid, * FROM memories ORDER BY rowid",
          "SELECT mem, tag, add_op FROM tags ORDER BY mem, tag, add_op",
          "SELECT * FROM op_preds ORDER BY op, pred",
          "SELECT id FROM heads ORDER BY id",
          "SELECT mem FROM embed_queue ORDER BY mem",
          "SELECT name, seq FROM sqlite_sequence WHERE name IN ('ops', 'memories') ORDER BY name")


def _open(path: Path, key_from: Path | None, monkeypatch: pytest.MonkeyPatch) -> UnifiedMemoryAPI:
    """A store whose ids, clock, session and key are the same on every run."""
    if key_from is not None:
        path.mkdir(parents=True)
        shutil.copy(key_from / "identity.key", path / "identity.key")
    counter = itertools.count(1)
    monkeypatch.setattr("neuralsync.unified_memory_api.new_id", lambda: f"{next(counter):032x}")
    monkeypatch.setattr("neuralsync.unified_memory_api.now_ms", lambda: WALL_MS)
    api = UnifiedMemoryAPI(MemoryConfig(base_path=str(path), embedder="none"), register_session=False)
    api.log.clock = HybridClock(wall=lambda: WALL_MS)
    api.session_id = "fixed-session"
    return api


def _script(api: UnifiedMemoryAPI) -> None:
    """Creates with runs broken by other writes, imports (one of them a repeat) and tags."""
    for i in range(30):
        api.remember(f"note {i} about sqlite", tags=[f"t{i % 4}", "shared"], priority=i / 40,
                     metadata={"n": i} if i % 3 else None)
    api.import_memory({"id": "f" * 32, "content": "imported", "created_at": WALL_MS - 10, "tags": ["old"]})
    api.import_memory({"id": "f" * 32, "content": "imported again"})  # already there: skipped
    api.update(f"{5:032x}", content="changed", tags=["new"])
    for i in range(20):
        api.import_memory({"id": f"{0xe0 + i:032x}", "content": f"exported {i}", "updated_at": WALL_MS + i})
    api.forget(f"{7:032x}")
    api.set_persona("terse")
    for i in range(10):
        api.remember(f"late {i}")


def _tables(api: UnifiedMemoryAPI) -> list[list[tuple[object, ...]]]:
    conn = api.storage.conn
    rows = [conn.execute(sql).fetchall() for sql in TABLES]
    rows.append(conn.execute("SELECT rowid FROM memories_fts WHERE memories_fts MATCH 'sqlite' ORDER BY rowid")
                .fetchall())
    return rows


def test_bulk_ingest_matches_one_by_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = _open(tmp_path / "one", None, monkeypatch)
    try:
        _script(one)  # every write its own transaction: apply_op per op
        expected, digest = _tables(one), state_digest(one.storage.conn)
    finally:
        one.close()
    bulk = _open(tmp_path / "bulk", tmp_path / "one", monkeypatch)
    runs: list[int] = []

    def counted(conn: sqlite3.Connection, ops: list[Op], effs: list[int], heads: list[bytes]) -> object:
        runs.append(len(ops))
        return apply_creates(conn, ops, effs, heads)

    monkeypatch.setattr("neuralsync.oplog.log.apply_creates", counted)
    try:
        with bulk.batch_operations():  # creates held back and written set-at-a-time
            _script(bulk)
        got = _tables(bulk)
        for sql, want, have in zip([*TABLES, "fts"], expected, got, strict=True):
            assert have == want, sql
        assert state_digest(bulk.storage.conn) == digest
        report = run_doctor(bulk.storage)
        assert report.ok, report.to_dict()
        assert report.rebuilt_digest == report.digest == digest
        assert runs == [31, 20, 10]  # the three runs of creates were each written set-at-a-time
    finally:
        bulk.close()


def test_reads_inside_a_batch_see_the_held_back_creates(tmp_path: Path) -> None:
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(tmp_path), embedder="none")) as api:
        with api.batch_operations():
            first = api.remember("held back")
            assert api.get(first).content == "held back"
            assert api.counts()["memories"] == 1
            second = api.remember("also held back")
            assert [m.id for m in api.recall("held back", mode="text")] and api.get(second)
            assert api.import_memory({"id": "a" * 32, "content": "x"}) is True
            assert api.import_memory({"id": "a" * 32, "content": "x"}) is False  # waiting, not yet written
        assert api.counts()["memories"] == 3


def test_a_failing_batch_drops_its_held_back_creates(tmp_path: Path) -> None:
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(tmp_path), embedder="none")) as api:
        with pytest.raises(RuntimeError), api.batch_operations():
            for i in range(10):
                api.remember(f"gone {i}")
            raise RuntimeError
        with api.batch_operations():
            with pytest.raises(RuntimeError), api.batch_operations():  # a nested batch is a savepoint
                api.remember("inner, rolled back")
                raise RuntimeError
            kept = api.remember("outer, kept")
        assert [m.id for m in api.range_recall()] == [kept]
        assert api.doctor(quick=True).ok


def test_a_store_with_deleted_rows_continues_autoincrement_alike(tmp_path: Path) -> None:
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(tmp_path), embedder="none")) as api:
        last = [api.remember(f"m{i}") for i in range(3)][-1]
        api.forget(last)  # the largest rowid is gone; AUTOINCREMENT does not reuse it
        with api.batch_operations():
            ids = [api.remember(f"n{i}") for i in range(5)]
        rowids = [r[0] for r in api.storage.conn.execute(
            f"SELECT rowid FROM memories WHERE id IN ({','.join('?' * 5)}) ORDER BY rowid", ids)]
        assert rowids == [4, 5, 6, 7, 8]
        assert isinstance(api.storage.conn, sqlite3.Connection)
        assert api.doctor(quick=True).ok


def test_a_failure_writing_held_back_creates_aborts_the_batch(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> object:
        raise OSError("simulated failure half-way through the set-at-a-time write")

    with UnifiedMemoryAPI(MemoryConfig(base_path=str(tmp_path), embedder="none")) as api:
        kept = api.remember("before")
        monkeypatch.setattr("neuralsync.oplog.log.apply_creates", broken)
        with pytest.raises(StoreError), api.batch_operations():
            for i in range(5):
                api.remember(f"lost {i}")
            with pytest.raises(OSError):
                api.counts()  # the first touch of the store writes them, and fails; caught
            api.remember("after the failure")
        assert [m.id for m in api.range_recall()] == [kept]
        with pytest.raises(OSError), api.batch_operations():  # failing at the batch's end
            api.remember("a")
            api.remember("b")
        assert [m.id for m in api.range_recall()] == [kept]
