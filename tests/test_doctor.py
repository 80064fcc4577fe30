"""Doctor: a clean store passes; tampering with state or with the log is reported, never missed."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from neuralsync.services.doctor import FTS_MAX_LEVELS, fts_levels, run_doctor
from neuralsync.unified_memory_api import UnifiedMemoryAPI


@pytest.fixture
def busy_store(api: UnifiedMemoryAPI) -> UnifiedMemoryAPI:
    """A store that went through every kind of op."""
    first = api.remember("first memory", tags=["a", "b"], metadata={"k": 1})
    second = api.remember("second memory", scope="work")
    api.remember("third memory", ttl_ms=60_000)
    api.update(first, content="first memory, edited", priority=0.9, tags=["b", "c"])
    api.forget(second)
    api.set_persona("concise")
    return api


def _tamper(api: UnifiedMemoryAPI, sql: str, *args: object) -> None:
    raw = sqlite3.connect(api.storage.path)
    try:
        changed = raw.execute(sql, args).rowcount
        raw.commit()
    finally:
        raw.close()
    assert changed >= 1


def _ops(api: UnifiedMemoryAPI) -> list[tuple[int, str, str]]:
    return api.storage.conn.execute("SELECT seq, kind, record_id FROM ops ORDER BY seq").fetchall()


def test_clean_store_is_ok_and_rebuilds_to_the_same_digest(busy_store: UnifiedMemoryAPI) -> None:
    seen: list[tuple[int, int]] = []
    report = run_doctor(busy_store.storage, progress=lambda done, total: seen.append((done, total)))
    assert report.ok, report.to_dict()
    assert (report.integrity, report.fts) == ("ok", "ok")
    assert report.digest == report.rebuilt_digest != ""
    assert report.bad_ops == [] and report.differences == []
    assert report.ops_checked == len(_ops(busy_store))
    assert report.memories == 2
    assert seen[-1] == (report.ops_checked, report.ops_checked)


def test_empty_store_is_ok(api: UnifiedMemoryAPI) -> None:
    report = run_doctor(api.storage)
    assert report.ok and report.ops_checked == 0 and report.digest == report.rebuilt_digest


def test_the_digest_changes_with_the_state(api: UnifiedMemoryAPI) -> None:
    empty = run_doctor(api.storage, quick=True).digest
    api.remember("x")
    assert run_doctor(api.storage, quick=True).digest != empty


def test_tampered_memory_row_is_reported(busy_store: UnifiedMemoryAPI) -> None:
    target = busy_store.range_recall()[0].id
    _tamper(busy_store, "UPDATE memories SET priority = 0.01 WHERE id = ?", target)
    report = run_doctor(busy_store.storage)
    assert not report.ok
    assert report.digest != report.rebuilt_digest
    assert report.differences == [f"memory {target}: differs"]
    assert report.bad_ops == []


def test_tampered_memory_content_is_reported(busy_store: UnifiedMemoryAPI) -> None:
    target = busy_store.range_recall()[0].id
    _tamper(busy_store, "UPDATE memories SET content = 'planted' WHERE id = ?", target)
    report = run_doctor(busy_store.storage)
    assert not report.ok
    assert f"memory {target}: differs" in report.differences


def test_a_memory_row_missing_from_the_log_is_reported(busy_store: UnifiedMemoryAPI) -> None:
    _tamper(busy_store, "INSERT INTO memories(id, content, scope, kind, priority, confidence, created_at,"
            " updated_at, content_hash) VALUES ('f' || printf('%031d', 0), 'ghost', 'global', 'fact', 0.5, 0.5,"
            " 1, 1, 'x')")
    report = run_doctor(busy_store.storage)
    assert not report.ok
    assert f"memory {'f' + '0' * 31}: missing from rebuild" in report.differences


def test_a_deleted_memory_row_is_reported(busy_store: UnifiedMemoryAPI) -> None:
    target = busy_store.range_recall()[0].id
    _tamper(busy_store, "DELETE FROM memories WHERE id = ?", target)
    report = run_doctor(busy_store.storage)
    assert not report.ok
    assert f"memory {target}: missing from store" in report.differences


def test_tampered_persona_is_reported(busy_store: UnifiedMemoryAPI) -> None:
    _tamper(busy_store, "UPDATE kv SET value = 'verbose'")
    report = run_doctor(busy_store.storage)
    assert not report.ok and report.differences


@pytest.mark.parametrize("position", [0, 3, -1])
def test_tampered_op_body_is_a_bad_op(busy_store: UnifiedMemoryAPI, position: int) -> None:
    seq = _ops(busy_store)[position][0]
    body = busy_store.storage.conn.execute("SELECT body FROM ops WHERE seq = ?", (seq,)).fetchone()[0]
    forged = body.replace(b"memory", b"MEMORY") if b"memory" in body else body[:-1] + bytes([body[-1] ^ 1])
    _tamper(busy_store, "UPDATE ops SET body = ? WHERE seq = ?", forged, seq)
    report = run_doctor(busy_store.storage)
    assert not report.ok
    assert any(entry.startswith(f"op #{seq} ") for entry in report.bad_ops)


def test_tampered_signature_is_a_bad_op(busy_store: UnifiedMemoryAPI) -> None:
    seq = _ops(busy_store)[2][0]
    _tamper(busy_store, "UPDATE ops SET sig = zeroblob(64) WHERE seq = ?", seq)
    report = run_doctor(busy_store.storage)
    assert not report.ok
    assert any(entry.startswith(f"op #{seq} ") and "signature" in entry for entry in report.bad_ops)


def test_stored_id_not_matching_the_body_is_a_bad_op(busy_store: UnifiedMemoryAPI) -> None:
    seq = _ops(busy_store)[1][0]
    _tamper(busy_store, "UPDATE ops SET id = randomblob(32) WHERE seq = ?", seq)
    report = run_doctor(busy_store.storage)
    assert not report.ok
    assert any(entry.startswith(f"op #{seq} ") for entry in report.bad_ops)


@pytest.mark.parametrize("kind", ["create", "update", "tag_add", "delete", "persona"])
def test_a_deleted_op_row_is_reported(busy_store: UnifiedMemoryAPI, kind: str) -> None:
    seq = next(s for s, k, _ in _ops(busy_store) if k == kind)
    _tamper(busy_store, "DELETE FROM ops WHERE seq = ?", seq)
    report = run_doctor(busy_store.storage)
    assert not report.ok
    assert report.bad_ops or report.differences


def test_deleting_the_last_op_is_reported(api: UnifiedMemoryAPI) -> None:
    mid = api.remember("a")
    api.update(mid, priority=0.7)
    last = _ops(api)[-1][0]
    _tamper(api, "DELETE FROM ops WHERE seq = ?", last)
    report = run_doctor(api.storage)
    assert not report.ok
    assert f"memory {mid}: differs" in report.differences


def test_deleting_a_middle_op_breaks_the_chain(api: UnifiedMemoryAPI) -> None:
    for i in range(3):
        api.remember(f"m{i}")
    seqs = [s for s, _, _ in _ops(api)]
    _tamper(api, "DELETE FROM ops WHERE seq = ?", seqs[1])
    report = run_doctor(api.storage)
    assert not report.ok
    assert any(entry.startswith(f"op #{seqs[2]} ") and "predecessor" in entry for entry in report.bad_ops)


@pytest.mark.parametrize(("damage", "unreadable"), [
    ("DELETE FROM memories_fts_data", True),  # structure record gone: 'vtable constructor failed' (seen at 1M)
    ("DROP TABLE memories_fts_config", True),  # a shadow table missing: the same
    ("UPDATE memories_fts_data SET block = x'ffff' WHERE id = 10", False),  # damaged structure: 'malformed'
])
def test_a_damaged_fts_index_is_reported_and_repair_rebuilds_it(make_api: Callable[..., UnifiedMemoryAPI],
                                                                 tmp_path: Path, damage: str,
                                                                 unreadable: bool) -> None:
    api = make_api(embedder="none")
    for i in range(40):
        api.remember(f"note {i} about the {('harbour', 'glacier', 'orchard')[i % 3]}", tags=[f"t{i % 4}"])
    before = [m.id for m in api.recall("glacier", top_k=20, mode="text")]
    digest = run_doctor(api.storage, quick=True).digest
    api.close()
    _tamper_path(tmp_path / "store" / "memory.db", damage)
    api = make_api(embedder="none")
    report = run_doctor(api.storage, quick=True)
    assert not report.ok and report.fts.startswith("FTS index") and "--repair" in report.fts
    assert report.digest == digest  # the memories and the log are intact: only the derived index is damaged
    repaired = api.repair_fts()
    assert repaired["rebuilt"] and (repaired["shadow_tables_reset"] != []) == unreadable
    assert repaired["found"].startswith("FTS index unreadable") == unreadable
    after = run_doctor(api.storage, quick=True)
    assert after.ok and after.fts == "ok" and after.digest == digest
    assert [m.id for m in api.recall("glacier", top_k=20, mode="text")] == before
    api.remember("a glacier note written after the repair")
    assert len(api.recall("glacier", top_k=20, mode="text")) == len(before) + 1


def _tamper_path(path: Path, sql: str) -> None:
    raw = sqlite3.connect(path)
    try:
        raw.execute(sql)
        raw.commit()
    finally:
        raw.close()


def test_fts_levels_grown_by_negative_merges_are_reported_before_the_index_breaks(
        make_api: Callable[..., UnifiedMemoryAPI]) -> None:
    # What broke a 1M index once: FTS5's negative 'merge' with rows arriving between rounds adds levels
    # until, past 2000, FTS5 refuses the index. The doctor names it long before; a repair resets it.
    # (It takes a merge that cannot finish in one round: an index larger than the pages a round may write.)
    api = make_api(embedder="none")
    with api.batch_operations():
        for i in range(300):
            api.remember(f"fact {i}: " + " ".join(f"word{(i * 7 + j) % 997}" for j in range(40)))
    for i in range(60):
        api.remember(f"note {i} about the harbour")
        with api.storage.write() as conn:
            conn.execute("INSERT INTO memories_fts(memories_fts, rank) VALUES ('merge', -2)")
    assert fts_levels(api.storage.conn) > FTS_MAX_LEVELS
    report = run_doctor(api.storage, quick=True)
    assert not report.ok and "levels" in report.fts
    api.repair_fts()
    assert fts_levels(api.storage.conn) <= 2 and run_doctor(api.storage, quick=True).ok
    assert len(api.recall("harbour", top_k=100, mode="text")) == 60
