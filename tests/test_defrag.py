"""Defragmentation: sparse pages packed in short slices with every row the same; every free page returned."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from neuralsync.services import compactor, defrag
from neuralsync.services.doctor import run_doctor
from neuralsync.unified_memory_api import UnifiedMemoryAPI

MakeApi = Callable[..., UnifiedMemoryAPI]
# Every table a slice touches or whose triggers it sets aside, by its key.
TABLES = {"ops": "seq", "memories": "rowid", "embeddings": "seq", "embed_queue": "mem",
          "vector_removed": "mem", "tags": "mem, tag, add_op", "tombstones": "record_id"}
QUERIES = ("fact 3", "payload words", "fact 1197 about subject 9")


def _sparse(make_api: MakeApi, n: int = 1200) -> tuple[UnifiedMemoryAPI, list[str]]:
    """A store where every other memory was forgotten and its ops truncated: pages of the op log, memories
    and vectors keep about half of their bytes (fewer, and SQLite would merge the pages as it deletes)."""
    api = make_api(embedder="hashing", merge_undo_days=0)
    with api.batch_operations():
        ids = [api.remember(f"fact {i} about subject {i % 13}: " + "payload words " * 30, tags=[f"t{i % 4}"])
               for i in range(n)]
    api.embed_pending()
    with api.batch_operations():
        for i, memory_id in enumerate(ids):
            if i % 2:
                api.forget(memory_id)
    api.compact(["truncate_log", "vacuum"])
    return api, [memory_id for i, memory_id in enumerate(ids) if not i % 2]


def _dump(api: UnifiedMemoryAPI) -> dict[str, list[Any]]:
    conn = api.storage.conn
    return {table: conn.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall() for table, key in TABLES.items()}


def _recalls(api: UnifiedMemoryAPI) -> list[list[str]]:
    return [[m.id for m in api.recall(q, top_k=10, mode=mode)] for q in QUERIES for mode in ("text", "semantic")]


def _pragma(api: UnifiedMemoryAPI, name: str) -> int:
    return int(api.storage.conn.execute(f"PRAGMA {name}").fetchone()[0])


def test_defragment_packs_sparse_pages_in_slices_and_every_row_stays_the_same(make_api: MakeApi) -> None:
    api, kept = _sparse(make_api)
    before, recalls, pages = _dump(api), _recalls(api), _pragma(api, "page_count")
    estimated = api.compact_analyze()["reclaimable_bytes"]["defragment"]
    assert estimated > 100_000
    steps = {s["strategy"]: s for s in api.compact(["defragment", "vacuum"])["steps"]}
    rewritten = steps["defragment"]["rows_rewritten"]
    assert rewritten["ops"] > 0 and rewritten["memories"] > 0
    assert steps["defragment"]["pages_emptied"] > 0 and steps["defragment"]["slices"] > 3
    # Every emptied page goes back to the file system, over several slices of the incremental vacuum.
    assert steps["vacuum"]["slices"] > 1 and steps["vacuum"]["pages_freed"] >= steps["defragment"]["pages_emptied"]
    assert _pragma(api, "freelist_count") == 0
    assert _pragma(api, "page_count") < pages - steps["defragment"]["pages_emptied"] // 2
    # Nothing a reader sees changed: every row byte for byte (the vector queue and removals included, which
    # the memories triggers would have touched), the same answers, and the doctor's replay matches.
    assert _dump(api) == before
    assert _recalls(api) == recalls
    assert api.storage.conn.execute("SELECT count(*) FROM meta WHERE key = ?", (defrag.GUARD_KEY,)).fetchone()[0] == 0
    assert run_doctor(api.storage, quick=False).ok
    assert api.compact_analyze()["reclaimable_bytes"]["defragment"] < estimated / 3
    # The triggers are back at work: a new memory is queued for its vector, a forgotten one's vector goes.
    new = api.remember("written after the defragmentation")
    conn = api.storage.conn
    rowid = conn.execute("SELECT rowid FROM memories WHERE id = ?", (new,)).fetchone()[0]
    assert conn.execute("SELECT count(*) FROM embed_queue WHERE mem = ?", (rowid,)).fetchone()[0] == 1
    gone = conn.execute("SELECT rowid FROM memories WHERE id = ?", (kept[0],)).fetchone()[0]
    api.forget(kept[0])
    assert conn.execute("SELECT count(*) FROM embeddings WHERE mem = ?", (gone,)).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM vector_removed WHERE mem = ?", (gone,)).fetchone()[0] == 1


def test_a_plan_gone_stale_loses_no_row(make_api: MakeApi) -> None:
    api, kept = _sparse(make_api, 600)
    with api.storage.read() as conn:
        queue = deque(defrag.plan(conn))
    assert queue
    # The store moves on between the plan and its slices: planned rows removed, new ones written.
    for memory_id in kept[::2]:
        api.forget(memory_id)
    api.remember("a memory newer than the plan", tags=["late"])
    api.embed_pending()
    before = _dump(api)
    slices = 0
    while queue:
        with api.storage.write() as conn:
            assert defrag.rewrite(conn, queue) <= max(t.slice_rows for t in defrag.TABLES)
        slices += 1
    assert slices > 1 and _dump(api) == before
    assert run_doctor(api.storage, quick=True).ok


def test_idle_slices_defragment_a_bounded_amount_each(make_api: MakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    api, kept = _sparse(make_api)
    monkeypatch.setattr(compactor, "IDLE_DEFRAG_SLICES", 2)
    before = _dump(api)
    with api.storage.read() as conn:
        planned = sum(run.rows for run in defrag.plan(conn))
    most = 2 * max(t.slice_rows for t in defrag.TABLES)
    done = []
    for _ in range(1000):
        rows = api.compactor.idle_slice()["defragmented_rows"]
        if not rows:
            break
        done.append(rows)
    assert len(done) > 1 and max(done) <= most
    assert sum(done) == planned  # the whole plan, then nothing until it is read again
    with api.storage.read() as conn:
        assert sum(run.rows for run in defrag.plan(conn)) < planned / 3
    assert _dump(api) == before
    for _ in range(100):  # and the idle slices return the emptied pages too
        if not _pragma(api, "freelist_count"):
            break
        api.compactor.idle_slice()
    assert _pragma(api, "freelist_count") == 0
    # The plan is read again only once the store was written since: an idle store is not walked for nothing.
    monkeypatch.setattr(compactor, "IDLE_DEFRAG_REPLAN_S", 0.0)
    plans: list[int] = []
    real_plan = defrag.plan
    monkeypatch.setattr(defrag, "plan", lambda conn: plans.append(1) or real_plan(conn))
    api.compactor.idle_slice()
    api.compactor.idle_slice()
    assert plans == []
    api.forget(kept[0])
    api.compactor.idle_slice()
    assert plans == [1]
