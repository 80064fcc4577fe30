"""Two replicas holding the same ops hold the same state, whichever order the ops arrived in."""

from __future__ import annotations

from pathlib import Path

from neuralsync.oplog import codec as crdt
from neuralsync.services.doctor import run_doctor
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

SHARED_ID = "0" * 31 + "a"


def _ops(api: UnifiedMemoryAPI) -> list[crdt.Op]:
    return [crdt.op_from_wire(crdt.op_to_wire(op)) for _, op in api.log.ops_since(0, 10_000)]


def test_the_same_record_created_on_two_replicas_converges(tmp_path: Path) -> None:
    a = UnifiedMemoryAPI(MemoryConfig(base_path=tmp_path / "a", embedder="none"), tool="tool-a")
    b = UnifiedMemoryAPI(MemoryConfig(base_path=tmp_path / "b", embedder="none"), tool="tool-b")
    try:
        a.import_memory({"id": SHARED_ID, "content": "shared fact", "priority": 0.2, "tool": "x",
                         "metadata": {"from": "a"}, "created_at": 1_700_000_000_000, "tags": ["t1"]})
        b.import_memory({"id": SHARED_ID, "content": "shared fact", "priority": 0.9,
                         "created_at": 1_700_000_100_000, "updated_at": 1_700_000_200_000, "tags": ["t2"]})
        a.update(SHARED_ID, priority=0.5)
        ops_a, ops_b = _ops(a), _ops(b)
        a.log.apply_remote(ops_b)
        b.log.apply_remote(list(reversed(ops_a)))
        ra, rb = run_doctor(a.storage), run_doctor(b.storage)
        assert ra.ok and rb.ok
        assert ra.digest == rb.digest
        ma, mb = a.get(SHARED_ID), b.get(SHARED_ID)
        assert ma == mb
        assert set(ma.tags) == {"t1", "t2"}
    finally:
        a.close()
        b.close()


def test_a_local_write_after_remote_ops_in_one_batch_names_them_as_predecessors(tmp_path: Path) -> None:
    a = UnifiedMemoryAPI(MemoryConfig(base_path=tmp_path / "a", embedder="none"))
    b = UnifiedMemoryAPI(MemoryConfig(base_path=tmp_path / "b", embedder="none"))
    try:
        a.remember("from a")
        remote = _ops(a)
        with b.batch_operations():
            b.remember("first local")
            b.log.apply_remote(remote)
            b.remember("after the remote op")
        last = b.log.ops_since(0, 100)[-1][1]
        assert remote[-1].id in last.preds
        assert len(b.storage.conn.execute("SELECT id FROM heads").fetchall()) == 1
    finally:
        a.close()
        b.close()
