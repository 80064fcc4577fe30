"""The compactor: analysis, a plan that changes nothing, compaction that replicas agree on."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from neuralsync.errors import InvalidInput, NotFound
from neuralsync.oplog import codec
from neuralsync.services import compactor, logtrim
from neuralsync.services.compactor import PURGE_SLICE
from neuralsync.services.doctor import fts_levels, run_doctor
from neuralsync.unified_memory_api import UnifiedMemoryAPI

MakeApi = Callable[..., UnifiedMemoryAPI]


def _fill(api: UnifiedMemoryAPI, n: int = 300) -> None:
    with api.batch_operations():
        for i in range(n):
            api.remember(f"note {i} on subject {i % 17}: " + "detail " * 20, ttl_ms=1 if i % 3 == 0 else None,
                         tags=[f"t{i % 5}"])
        for i in range(0, n, 10):
            api.remember(f"NOTE {i} on subject {i % 17}: " + "detail " * 20, merge="off")
    time.sleep(0.01)  # the ttl_ms=1 memories expire


def _ops(api: UnifiedMemoryAPI) -> list[codec.Op]:
    """Every op as a peer would receive it (a compacted op's skeleton is never sent)."""
    return [codec.op_from_wire(codec.op_to_wire(op)) for _, op in api.log.ops_since(0, 100_000) if not op.pruned]


def test_analyze_and_dry_run_measure_and_change_nothing(make_api: MakeApi, snapshot: Callable[..., Any]) -> None:
    api = make_api(embedder="none")
    _fill(api)
    before = snapshot(api)
    report = api.compact_analyze()
    assert report["expired"] == 100 and report["memories"] == 230
    assert report["duplicate_clusters"] == report["duplicates"] == 20  # every tenth note repeated (ttl ones too)
    assert report["auto_vacuum"] == "incremental" and report["oplog_bytes"] > 0
    assert report["reclaimable_bytes"]["purge_expired"] > report["reclaimable_bytes"]["consolidate_duplicates"] > 0
    plan = api.compact(dry_run=True)["plan"]
    assert [s["strategy"] for s in plan][:2] == ["purge_expired", "consolidate_duplicates"]
    assert plan[0]["memories"] == 100
    assert snapshot(api) == before


def test_compaction_purges_expired_and_merges_duplicates_as_ops_replicas_agree(make_api: MakeApi,
                                                                               tmp_path: Path) -> None:
    a = make_api(tmp_path / "a", embedder="none")
    b = make_api(tmp_path / "b", embedder="none")
    _fill(a)
    b.log.apply_remote(_ops(a))
    # The copies (NOTE) of live notes merge into them; a copy whose note expired stays on its own.
    live_before = {m.id: m.content for m in a.range_recall()
                   if m.content.startswith("note") or int(m.content.split()[1]) % 3 == 0}
    result = a.compact()
    steps = {s["strategy"]: s for s in result["steps"]}
    assert steps["purge_expired"]["purged"] == 100
    assert steps["consolidate_duplicates"]["merged"] == 20
    assert result["after"]["wal_bytes"] == 0
    after = a.compact_analyze()
    assert after["expired"] == 0 and after["duplicates"] == 0 and after["fts_segments"] <= 1
    # Recall of the surviving memories is unchanged: the originals stay, the copies merged into them.
    assert {m.id: m.content for m in a.range_recall()} == live_before
    b.log.apply_remote(_ops(a))
    ra, rb = run_doctor(a.storage), run_doctor(b.storage)
    assert ra.ok and rb.ok and ra.digest == rb.digest
    assert b.counts()["expired"] == 0


def test_bad_strategies_are_refused_and_change_nothing(make_api: MakeApi, snapshot: Callable[..., Any]) -> None:
    api = make_api(embedder="none")
    _fill(api, 30)
    before = snapshot(api)
    for bad in (["purge_expired", "shred"], "vacuum", [3]):
        with pytest.raises(InvalidInput) as err:
            api.compact(bad)  # type: ignore[arg-type]
        assert err.value.field == "strategies"
    assert snapshot(api) == before


def test_an_idle_slice_is_short_and_does_the_cheap_steps(make_api: MakeApi) -> None:
    api = make_api(embedder="none")
    _fill(api)
    started = time.perf_counter()
    done = api.compactor.idle_slice()
    assert done["purged"] == min(100, PURGE_SLICE)  # one slice holds at most PURGE_SLICE
    assert time.perf_counter() - started < 5
    assert api.counts()["expired"] == 100 - done["purged"]  # the rest waits for the next slices


def _sync(a: UnifiedMemoryAPI, b: UnifiedMemoryAPI, b_name: str = "b") -> None:
    from tests._replicas import signed_transport

    (report,) = a.sync(b_name, transport=lambda peer: signed_transport(a, b, b_name))
    assert report.ok, report


def test_pruned_ops_keep_a_verifying_log_and_the_same_state(make_api: MakeApi, tmp_path: Path) -> None:
    a = make_api(tmp_path / "a", embedder="none", merge_undo_days=0)
    whole = make_api(tmp_path / "whole", embedder="none")
    _fill(a)
    a.compact(["purge_expired", "consolidate_duplicates"])
    whole.log.apply_remote(_ops(a))
    pruned = a.compact(["prune_payloads", "vacuum"])["steps"][0]["pruned"]
    assert pruned >= 120  # the expired notes' creates and the merged copies' ops
    ra, rw = run_doctor(a.storage), run_doctor(whole.storage)
    assert ra.ok and rw.ok and ra.digest == rw.digest  # every op (skeletons too) verified and replayed
    assert a.compact_analyze()["reclaimable_bytes"]["prune_payloads"] == 0
    merge_id = a.merges()[0]["merge_id"]
    with pytest.raises(InvalidInput, match="compacted"):
        a.undo_merge(merge_id)


def test_truncated_ops_keep_the_same_state_and_signed_cuts_vouch_for_them(make_api: MakeApi,
                                                                          tmp_path: Path) -> None:
    a = make_api(tmp_path / "a", embedder="none", merge_undo_days=0)
    whole = make_api(tmp_path / "whole", embedder="none")
    _fill(a)
    gone = a.remember("deleted by hand, then compacted")
    a.forget(gone)
    a.compact(["purge_expired", "consolidate_duplicates"])
    whole.log.apply_remote(_ops(a))
    conn = a.storage.conn
    removed_bytes = "SELECT sum(length(body) + length(sig)) FROM ops WHERE record_id NOT IN (SELECT id FROM memories)"
    before = conn.execute(removed_bytes).fetchone()[0]
    step = a.compact(["truncate_log", "vacuum"])["steps"][0]
    # Every op of a memory gone for good is truncated (creates, the merges and the delete that took them)
    # but the purges, which name many memories, and the graph's heads.
    assert step["truncated"] > 130 and step["cuts"] == 2
    assert conn.execute("SELECT count(*) FROM ops WHERE record_id IN (SELECT record_id FROM tombstones) AND cut IS NULL"
                        " AND kind != 'purge' AND id NOT IN (SELECT id FROM heads)").fetchone()[0] == 0
    assert conn.execute(removed_bytes).fetchone()[0] < before / 5
    assert a.compact_analyze()["reclaimable_bytes"]["truncate_log"] == 0
    assert a.compact(["truncate_log"])["steps"][0]["truncated"] == 0  # nothing left to truncate
    ra, rw = a.doctor(), run_doctor(whole.storage)
    assert ra.ok and rw.ok and ra.digest == rw.digest, ra.to_dict()  # the rebuild replays the stubs
    assert not [op for _, op in a.log.ops_since(0, 100_000) if op.pruned and op.kind]  # read back: no fields
    with pytest.raises(InvalidInput, match="compacted"):
        a.restore(gone)
    with pytest.raises(InvalidInput, match="compacted"):
        a.undo_merge(a.merges()[0]["merge_id"])
    assert a.merges()[0]["strategy"]  # the audit trail stays
    stub, sig = conn.execute("SELECT body, sig FROM ops WHERE cut IS NOT NULL LIMIT 1").fetchone()
    with pytest.raises(codec.InvalidOp, match="never sent"):
        codec.parse_op(stub, sig)  # a peer cannot send one
    # What the cuts vouch for cannot be changed unseen: a flipped tombstone flag, a live memory's create
    # made into a stub to hide it.
    with a.storage.write() as wconn:
        seq, body = wconn.execute("SELECT seq, body FROM ops WHERE cut IS NOT NULL LIMIT 1").fetchone()
        wconn.execute("UPDATE ops SET body = ? WHERE seq = ?", (body[:1] + bytes([body[1] ^ 1]) + body[2:], seq))
        live = a.range_recall(limit=1)[0].id
        wconn.execute("UPDATE ops SET body = ? WHERE record_id = ? AND kind = 'create'",
                      (codec.stub_body([], False), live))
    report = a.doctor()
    assert not report.ok and any("do not match what it signed" in p for p in report.cuts)
    assert any("no signed cut vouches" in p for p in report.cuts)


def test_nothing_is_pruned_before_every_peer_has_the_delete(make_api: MakeApi, tmp_path: Path) -> None:
    from tests._replicas import introduce

    # (dedupe off: the copies _fill writes would be merged by whichever replica receives them)
    a = make_api(tmp_path / "a", embedder="none", dedupe=False)
    b = make_api(tmp_path / "b", embedder="none", dedupe=False)
    c = make_api(tmp_path / "c", embedder="none", dedupe=False)  # offline during the compaction
    introduce({"a": a, "b": b, "c": c})
    _fill(a, 60)
    _sync(a, b)
    _sync(a, c, "c")
    a.compact(["purge_expired"])  # new delete ops: no peer has them yet
    assert a.compact(["prune_payloads"])["steps"][0]["pruned"] == 0
    _sync(a, b)  # b acknowledges the deletes; c, offline, has not
    assert a.compact(["prune_payloads"])["steps"][0]["pruned"] == 0
    _sync(a, c, "c")
    assert a.compact(["prune_payloads"])["steps"][0]["pruned"] == 20
    # Compacted replicas keep syncing with each other and with the one that was offline.
    a.remember("written after the compaction")
    c.remember("written on c")
    _sync(a, c, "c")
    _sync(a, b)
    _sync(b, c, "c")
    digests = {run_doctor(x.storage).digest for x in (a, b, c)}
    assert len(digests) == 1 and all(run_doctor(x.storage).ok for x in (a, b, c))


def test_archived_memories_leave_recall_on_every_replica_and_come_back(make_api: MakeApi, tmp_path: Path) -> None:
    a = make_api(tmp_path / "a", embedder="none")
    b = make_api(tmp_path / "b", embedder="none")
    old = a.remember("the legacy deploy script lives in tools/old", priority=0.1)
    kept = a.remember("the deploy script lives in tools/deploy", priority=0.9)
    assert a.archive([old]) == 1
    assert [m.id for m in a.recall("deploy script")] == [kept]
    assert [m.id for m in a.archived()] == [old] and a.counts()["archived"] == 1
    b.log.apply_remote(_ops(a))
    assert [m.id for m in b.recall("deploy script")] == [kept]
    assert run_doctor(a.storage).digest == run_doctor(b.storage).digest
    back = a.unarchive(old)
    assert back.id == old and {m.id for m in a.recall("deploy script")} == {old, kept}
    b.log.apply_remote(_ops(a))
    assert run_doctor(a.storage).digest == run_doctor(b.storage).digest and run_doctor(b.storage).ok
    with pytest.raises(NotFound):
        a.unarchive(kept)  # not archived


def test_over_a_quota_the_least_valuable_memories_are_archived(make_api: MakeApi,
                                                               snapshot: Callable[..., Any]) -> None:
    api = make_api(embedder="none")
    with api.batch_operations():
        for i in range(200):
            api.remember(f"fact {i}: " + "words " * 30, priority=0.9 if i % 2 else 0.1)
    before = snapshot(api)
    with pytest.raises(InvalidInput) as err:
        api.compact(quota_bytes=-1)
    assert err.value.field == "quota_bytes" and snapshot(api) == before
    assert "archive_over_quota" not in [s["strategy"] for s in api.compact(dry_run=True)["plan"]]
    size = api.storage.sizes()["total_bytes"]
    result = api.compact(["archive_over_quota"], quota_bytes=size // 2)
    archived = result["steps"][0]["archived"]
    assert 90 <= archived <= 110
    valuable = sum(m.priority == 0.9 for m in api.archived(500))
    assert valuable == max(0, archived - 100)  # the low-priority half went first
    assert api.counts()["memories"] == 200 - archived


def test_a_purge_is_one_op_that_replicas_apply_like_deletes(make_api: MakeApi, tmp_path: Path) -> None:
    a = make_api(tmp_path / "a", embedder="none", dedupe=False)
    b = make_api(tmp_path / "b", embedder="none", dedupe=False)
    _fill(a, 30)  # 10 expired
    b.log.apply_remote(_ops(a))
    expired = [r for (r,) in b.storage.conn.execute("SELECT id FROM memories WHERE expires_at <= ?",
                                                    (int(time.time() * 1000),))]
    with b.storage.write() as conn:  # b revives one expired memory, concurrently with a's purge
        b.log.append(conn, [("update", expired[0], {"expires_at": None})])
    ops_before = a.counts()["ops"]
    assert a.compact(["purge_expired"])["steps"][0]["purged"] == 10
    assert a.counts()["ops"] == ops_before + 1  # one op for the ten
    ops_a, ops_b = _ops(a), _ops(b)
    a.log.apply_remote(ops_b)
    b.log.apply_remote(list(reversed(ops_a)))
    ra, rb = run_doctor(a.storage), run_doctor(b.storage)
    assert ra.ok and rb.ok and ra.digest == rb.digest
    assert a.get(expired[0]).id == expired[0]  # the write the purge had not seen keeps it (update wins)
    assert a.counts()["deleted"] == 9


def test_a_purge_of_a_memory_it_never_saw_is_refused(make_api: MakeApi, tmp_path: Path) -> None:
    a = make_api(tmp_path / "a", embedder="none")
    b = make_api(tmp_path / "b", embedder="none")
    seen = a.remember("a memory both replicas hold")
    b.log.apply_remote(_ops(a))
    unseen = b.remember("only on b")
    forged = codec.make_op(a.log.key, "purge", min(seen, unseen), {"records": sorted([seen, unseen])},
                           a.log.clock.tick(0), [op.id for _, op in a.log.ops_since(0, 100)][-1:])
    result = b.log.apply_remote([codec.op_from_wire(codec.op_to_wire(forged))])
    assert result.rejected and "create is not among its ancestors" in result.rejected[0][1]
    assert b.counts()["memories"] == 2


def test_a_forgotten_memory_restores_until_compaction_prunes_it(make_api: MakeApi) -> None:
    api = make_api(embedder="none")
    gone = api.remember("a fact forgotten, then wanted back")
    api.forget(gone)
    assert api.restore(gone).content == "a fact forgotten, then wanted back"
    api.forget(gone)
    api.compact(["prune_payloads"])  # no peers: every op is stable
    with pytest.raises(InvalidInput, match="compacted"):
        api.restore(gone)


def test_replicas_compacted_in_full_sync_with_each_other_and_with_one_offline_meanwhile(
        make_api: MakeApi, tmp_path: Path) -> None:
    from tests._replicas import introduce

    # Every default strategy on a and on b (purge, consolidation, pruning, FTS merge, vacuum) while c is
    # offline and writes: a write c makes to a copy that a merges away, and to a memory that expires.
    names = ("a", "b", "c")
    apis = {n: make_api(tmp_path / n, embedder="none", merge_undo_days=0) for n in names}
    a, b, c = (apis[n] for n in names)
    introduce(apis)
    _fill(a, 120)
    _sync(a, b)
    _sync(a, c, "c")
    queries = ["subject 3", "note 7", "detail"]
    copy = next(m.id for m in c.range_recall() if m.content.startswith("NOTE 10 "))
    original = next(m.id for m in c.range_recall() if m.content.startswith("note 10 "))
    c.update(copy, tags=["kept-by-c"])  # concurrent with the merge of the copy: the write c made survives
    late = c.remember("written on c while it was offline")
    survivors_before = {q: [m.id for m in a.recall(q, top_k=50, mode="text")] for q in queries}
    for api in (a, b):
        steps = {s["strategy"]: s for s in api.compact()["steps"]}
        assert steps["purge_expired"]["purged"] == 40 and steps["consolidate_duplicates"]["merged"] == 8
        assert steps["prune_payloads"]["pruned"] == 0  # c has not acknowledged: its ops stay whole
        assert all(s["max_lock_ms"] < 1000 for s in steps.values())
    _sync(a, b)  # a and b now hold both compactions (two purges and merges of the same memories)
    _sync(c, a, "a")  # c comes back: it gets everything it lacks, whole, and gives its own writes
    _sync(c, b, "b")
    _sync(a, b)
    _sync(a, c, "c")  # a and b learn what c now holds (a server records the heads a client came with)
    _sync(b, c, "c")
    for api in (a, b):  # every peer has acknowledged: now the removed memories' ops go
        assert api.compact(["truncate_log", "vacuum"])["steps"][0]["truncated"] > 0
    c.remember("written on c after the pruning")
    _sync(c, a, "a")
    _sync(b, c, "c")
    _sync(a, b)
    reports = [run_doctor(x.storage) for x in (a, b, c)]
    assert all(r.ok for r in reports), [r.to_dict() for r in reports if not r.ok]
    assert len({r.digest for r in reports}) == 1
    assert a.get(late).content == "written on c while it was offline"
    # The merges had not seen c's tag: it kept the copy (update wins) until a merger that had seen it
    # merged the copy again, its tag carried over to the original.
    assert "kept-by-c" in {t for m in a.range_recall(limit=1000) if m.id in (copy, original) for t in m.tags}
    for api in (a, b, c):  # recall of the memories that survive is unchanged on every replica
        for q in queries:
            found = [m.id for m in api.recall(q, top_k=50, mode="text")]
            alive = {m.id for m in api.range_recall(limit=1000)}
            assert [i for i in survivors_before[q] if i in alive] == [i for i in found if i in set(survivors_before[q])]


def test_the_fts_step_beside_a_writer_keeps_the_index_shallow(make_api: MakeApi,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Rounds of the compactor's FTS merge, each too small to finish, with writes between them: the merge
    # FTS5's automerge uses adds no levels (a negative merge adds one or two a round - test_doctor - until
    # FTS5 refuses the index, as it did once at 1M).
    monkeypatch.setattr(compactor, "FTS_MERGE_PAGES", 2)
    api = make_api(embedder="none")
    with api.batch_operations():
        for i in range(300):
            api.remember(f"fact {i}: " + " ".join(f"word{(i * 7 + j) % 997}" for j in range(40)))
    for i in range(60):
        api.remember(f"note {i} about the glacier")
        api.compact(["fts_optimize"])
    assert fts_levels(api.storage.conn) <= 8
    assert run_doctor(api.storage, quick=True).ok


def test_vacuum_frees_pages_in_slices_and_only_a_rewrite_asked_for_by_name_rewrites(make_api: MakeApi) -> None:
    api = make_api(embedder="none")
    _fill(api, 600)
    assert "rewrite" not in [s["strategy"] for s in api.compact(dry_run=True)["plan"]]
    steps = {s["strategy"]: s for s in api.compact(["purge_expired", "prune_payloads", "vacuum"])["steps"]}
    assert steps["vacuum"]["mode"] == "incremental" and steps["vacuum"]["slices"] >= 1
    assert api.storage.conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert all(s["max_lock_ms"] >= s["p99_lock_ms"] >= 0 for s in steps.values())
    sliced = api.storage.sizes()["total_bytes"]
    assert api.compact_analyze()["reclaimable_bytes"]["rewrite"] > 0  # space freed inside pages stays
    rewrite = api.compact(["rewrite"])["steps"][0]
    assert rewrite["mode"] == "full rewrite" and rewrite["lock_held_ms"] > 0
    assert api.storage.sizes()["total_bytes"] < sliced and run_doctor(api.storage, quick=True).ok


def test_a_slice_checks_its_ops_again_under_the_write_lock(make_api: MakeApi) -> None:
    # Two compactors at once (`neuralsync compact` beside a server's idle slices): one finds its candidates,
    # the other truncates them meanwhile; the first one's slices must leave them alone, not stub a stub.
    api = make_api(embedder="none")
    gone = api.remember("deleted, then compacted by two compactors at once")
    api.forget(gone)
    api.remember("a later write (the delete is no head)")
    conn, trimmer = api.storage.conn, api.compactor.trimmer
    removal = trimmer.removal_args(conn)
    found = trimmer.truncatable(conn, removal)
    assert len(found) == 2  # the create and the delete
    assert api.compact(["truncate_log"])["steps"][0]["truncated"] == 2  # the other compactor
    assert trimmer.truncate_slice(found, removal) == 0 and trimmer.prune_slice(found, removal) == (0, 0)
    assert conn.execute("SELECT count(*) FROM log_cuts").fetchone()[0] == 1
    assert api.doctor().ok



def _idle_until_quiet(api: UnifiedMemoryAPI, limit: int = 400) -> list[dict[str, Any]]:
    """``idle_slice()`` until a whole pass over the log (from a call that starts at its beginning to the
    next) truncates and prunes nothing; every call's report."""
    rounds: list[dict[str, Any]] = []
    work: int | None = None  # truncated and pruned in the pass under way (None: before the first one)
    for _ in range(limit):
        done = api.compactor.idle_slice()
        if done["log_window"][0] == 0:
            if work == 0:
                return rounds
            work = 0
        rounds.append(done)
        work = (work or 0) + done["truncated"] + done["pruned"]
    raise AssertionError(f"idle slices still at work after {limit} calls: {rounds[-3:]}")


def _log_rows(api: UnifiedMemoryAPI) -> list[tuple[bytes, bytes, bytes]]:
    return api.storage.conn.execute("SELECT id, body, sig FROM ops ORDER BY id").fetchall()


def test_idle_slices_truncate_what_compaction_would_a_bounded_slice_at_a_time(
        make_api: MakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small slices and windows, so that the ~150 ops to truncate take many calls and several passes.
    monkeypatch.setattr(logtrim, "TRUNCATE_SLICE", 7)
    monkeypatch.setattr(logtrim, "IDLE_SCAN_OPS", 60)
    a = make_api(tmp_path / "a", embedder="none", merge_undo_days=0)
    twin = make_api(tmp_path / "twin", embedder="none", merge_undo_days=0)
    _fill(a)
    gone = [a.remember(f"deleted by hand {i}") for i in range(3)]
    for record_id in gone:
        a.forget(record_id)
    a.compact(["purge_expired", "consolidate_duplicates"])  # purged and merged memories
    twin.log.apply_remote(_ops(a))
    assert _log_rows(twin) == _log_rows(a)  # the same history
    queries = ["subject 3", "note 7", "detail"]
    recalled = {q: [m.id for m in a.recall(q, top_k=50, mode="text")] for q in queries}
    survivors = {m.id: m.content for m in a.range_recall(limit=1000)}
    digest = run_doctor(a.storage).digest

    rounds = _idle_until_quiet(a)
    compacted = twin.compact(["truncate_log", "prune_payloads"])["steps"]
    assert sum(r["truncated"] for r in rounds) == compacted[0]["truncated"] > 130
    assert sum(r["pruned"] for r in rounds) == compacted[1]["pruned"]
    assert _log_rows(a) == _log_rows(twin)  # the same stubs, skeletons and whole ops as compaction left
    # Each call truncated one slice at most, one signed cut, and read one window of the log after the last.
    assert all(r["truncated"] <= 7 for r in rounds) and sum(r["truncated"] > 0 for r in rounds) >= 20
    assert a.storage.conn.execute("SELECT max(ops) FROM log_cuts").fetchone()[0] <= 7
    windows = [r["log_window"] for r in rounds]
    assert all(0 <= upto - after <= 60 for after, upto in windows)
    # Each call goes on from where the last one stopped, and starts over only once a pass reached the end
    # (a pass over the ~360-op log takes 6 windows or more), rather than walking the log from its beginning.
    assert all(after in (0, previous[1]) for previous, (after, _) in zip(windows, windows[1:], strict=False))
    assert 2 <= sum(after == 0 for after, _ in windows) <= len(windows) // 6
    assert a.compact_analyze()["reclaimable_bytes"]["truncate_log"] == 0
    report = a.doctor()
    assert report.ok and report.digest == run_doctor(twin.storage).digest == digest, report.to_dict()
    assert {m.id: m.content for m in a.range_recall(limit=1000)} == survivors
    assert {q: [m.id for m in a.recall(q, top_k=50, mode="text")] for q in queries} == recalled


def test_idle_slices_prune_what_truncation_leaves(make_api: MakeApi, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Truncation takes every op pruning would but the graph's heads, so idle pruning seldom finds anything
    # left; with truncation held off, it prunes what compaction would, a bounded slice a call.
    monkeypatch.setattr(logtrim.LogTrimmer, "_TRUNCATABLE", logtrim.LogTrimmer._TRUNCATABLE + " AND 0")
    monkeypatch.setattr(logtrim, "PRUNE_SLICE", 9)
    a = make_api(tmp_path / "a", embedder="none", merge_undo_days=0)
    twin = make_api(tmp_path / "twin", embedder="none", merge_undo_days=0)
    _fill(a, 120)
    a.compact(["purge_expired", "consolidate_duplicates"])
    twin.log.apply_remote(_ops(a))
    rounds = _idle_until_quiet(a)
    pruned = twin.compact(["prune_payloads"])["steps"][0]["pruned"]
    assert sum(r["pruned"] for r in rounds) == pruned > 40 and all(r["pruned"] <= 9 for r in rounds)
    assert not any(r["truncated"] for r in rounds)
    assert _log_rows(a) == _log_rows(twin)
    report = a.doctor()
    assert report.ok and report.digest == run_doctor(twin.storage).digest


def test_idle_slices_truncate_nothing_a_peer_has_not_acknowledged(make_api: MakeApi, tmp_path: Path) -> None:
    from tests._replicas import introduce

    a = make_api(tmp_path / "a", embedder="none", dedupe=False)
    b = make_api(tmp_path / "b", embedder="none", dedupe=False)
    introduce({"a": a, "b": b})
    _fill(a, 60)  # 20 expired, which the first idle slice purges: b has not seen the purge
    acked = a.remember("forgotten, and b holds the delete")
    a.forget(acked)
    _sync(a, b)
    unacked = a.remember("forgotten after the last sync")
    a.forget(unacked)
    conn = a.storage.conn
    stable = a.compactor.trimmer.stable_seq(conn)
    rounds = _idle_until_quiet(a)
    assert rounds[0]["purged"] == 20
    # Only the memory whose delete b holds is truncated (its create and its delete), all below the cut.
    truncated = conn.execute("SELECT record_id, max(seq), count(*) FROM ops WHERE cut IS NOT NULL"
                             " GROUP BY record_id").fetchall()
    assert truncated == [(acked, stable, 2)] and sum(r["truncated"] for r in rounds) == 2
    whole = f"NOT {codec.COMPACTED_SQL.format(column='body')}"
    purged = conn.execute("SELECT count(*) FROM ops WHERE kind = 'create' AND record_id IN"
                          f" (SELECT record_id FROM tombstones) AND {whole}").fetchone()[0]
    assert purged == 21  # the expired memories' creates, and the unacknowledged one's, stay whole
    _sync(a, b)  # b acknowledges: the idle slices go back to the start of the log for them
    rounds = _idle_until_quiet(a)
    assert sum(r["truncated"] for r in rounds) == 21 + 1  # the creates, and the delete of unacked
    assert conn.execute("SELECT count(*) FROM ops WHERE record_id IN (SELECT record_id FROM tombstones)"
                        " AND cut IS NULL AND kind != 'purge' AND id NOT IN (SELECT id FROM heads)").fetchone()[0] == 0
    a.remember("written after the truncation")
    _sync(a, b)
    ra, rb = a.doctor(), run_doctor(b.storage)
    assert ra.ok and rb.ok and ra.digest == rb.digest, ra.to_dict()


def test_vacuum_returns_every_free_page_over_several_slices(make_api: MakeApi,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # PRAGMA incremental_vacuum(N) frees one page per step, and Python steps such a statement once: a slice
    # that ran it once returned one page, and a large free list stayed in the file.
    monkeypatch.setattr(compactor, "VACUUM_SLICE_PAGES", 16)
    api = make_api(embedder="none")
    with api.batch_operations():
        ids = [api.remember(f"memory {i}: " + "words to fill pages " * 80) for i in range(800)]
    with api.batch_operations():
        for memory_id in ids:
            api.forget(memory_id)
    free = api.storage.conn.execute("PRAGMA freelist_count").fetchone()[0]
    assert free > 3 * compactor.VACUUM_SLICE_PAGES
    pages = api.storage.conn.execute("PRAGMA page_count").fetchone()[0]
    step = api.compact(["vacuum"])["steps"][0]
    assert step["pages_freed"] == free and step["slices"] >= 3
    assert api.storage.conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert api.storage.conn.execute("PRAGMA page_count").fetchone()[0] == pages - free
