"""The merger: duplicates merged on every write path, by strategy, as ops; undo; one audit trail."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from neuralsync.errors import ConfigError, InvalidInput, NotFound
from neuralsync.oplog import codec
from neuralsync.services.doctor import run_doctor
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI
from tests._replicas import introduce, signed_transport

MakeApi = Callable[..., UnifiedMemoryAPI]
FACT = "Deploy to staging on Fridays only after the smoke tests pass"


def _state(api: UnifiedMemoryAPI, memory_id: str) -> dict[str, Any]:
    memory = api.get(memory_id).to_dict()
    for moving in ("updated_at", "accessed_at", "access_count"):
        memory.pop(moving)
    return memory


def test_a_repeated_remember_merges_into_the_first_and_says_so(api: UnifiedMemoryAPI) -> None:
    first = api.remember_outcome(FACT, tags=["ops"], priority=0.4, tool="claude-code")
    again = api.remember_outcome("  deploy to STAGING on fridays only after the smoke tests pass. ", tags=["deploy"],
                                 priority=0.9, tool="codex", source="cli")
    assert not first.merged and again.merged
    assert again.memory.id == first.memory.id and again.merge_id is not None
    assert again.memory.content == FACT  # an exact duplicate keeps the survivor's spelling
    assert set(again.memory.tags) == {"ops", "deploy"} and again.memory.priority == 0.9
    assert api.counts()["memories"] == 1
    assert api.remember(FACT) == first.memory.id
    assert again.to_dict()["merged_into"] == first.memory.id


def test_the_same_fact_from_three_paths_leaves_one_memory_with_every_source(make_api: MakeApi,
                                                                           tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from neuralsync.server import create_app

    base = tmp_path / "store"
    api = make_api(base)
    client = TestClient(create_app(api, "t" * 32), headers={"Authorization": "Bearer " + "t" * 32})
    env = {**os.environ, "NEURALSYNC_HOME": str(base)}

    def cli(n: int) -> None:
        for _ in range(n):
            subprocess.run([sys.executable, "-m", "neuralsync.cli", "remember", FACT, "--tool", "cli-tool"],
                           env=env, check=True, capture_output=True, timeout=60)

    def http(n: int) -> None:
        for _ in range(n):
            answer = client.post("/v1/memories", json={"content": FACT, "source": "http-client"},
                                 headers={"X-Tool-Name": "http-tool"})
            assert answer.status_code in (200, 201), answer.text

    def local(n: int) -> None:
        for _ in range(n):
            api.remember(FACT, tool="api-tool")

    workers = [threading.Thread(target=f, args=(n,)) for f, n in ((cli, 3), (http, 150), (local, 150))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    client.close()
    assert api.counts()["memories"] == 1
    (memory,) = api.range_recall()
    sources = {(p["tool"], p["source"]): p["writes"] for p in api.provenance(memory.id)}
    assert sources[("cli-tool", None)] >= 1 and sources.get(("cli-tool", None), 0) <= 3
    assert sources[("http-tool", "http-client")] == 150 - (("http-tool", "http-client") == (memory.tool, memory.source))
    assert sum(sources.values()) == 303
    assert run_doctor(api.storage).ok


def test_strategies_decide_the_survivors_values(make_api: MakeApi) -> None:
    api = make_api(embedder="none")
    a = api.remember("use pnpm for installs", priority=0.3, confidence=0.9, metadata={"k": 1}, kind="preference")
    b = api.remember("Use pnpm for installs in this repo: pnpm install --frozen-lockfile", priority=0.7,
                     confidence=0.5, metadata={"j": 2}, tags=["node"], merge="off")
    assert api.counts()["memories"] == 2
    merged = api.merge_memories(a, b)  # the store's default: semantic_merge
    kept = api.get(a)
    assert kept.content.endswith("--frozen-lockfile")  # the more specific text
    assert (kept.priority, kept.confidence, kept.metadata, kept.tags) == (0.7, 0.9, {"k": 1, "j": 2}, ("node",))
    assert merged["strategy"] == "semantic_merge" and merged["survivor_before"]["priority"] == 0.3
    with pytest.raises(NotFound):
        api.get(b)

    c = api.remember("run the linter before committing", scope="s2")
    d = api.remember("Keep commits small.\nrun the linter before committing", scope="s2", merge="off")
    api.merge_memories(c, d, "content_merge")
    assert api.get(c).content.splitlines() == ["run the linter before committing", "Keep commits small."]

    e = api.remember("the api listens on 8080", scope="s3", priority=0.9)
    f = api.remember("The API listens on port 8080 in dev", scope="s3", priority=0.1, merge="off")
    api.merge_memories(e, f, "last_writer_wins")
    assert (api.get(e).content, api.get(e).priority) == ("The API listens on port 8080 in dev", 0.1)


def test_manual_keeps_both_and_lists_the_pair(make_api: MakeApi) -> None:
    api = make_api(embedder="none", scope_merge_strategies={"team": "manual"})
    a = api.remember_outcome(FACT, scope="team")
    b = api.remember_outcome(FACT.lower(), scope="team")
    assert not b.merged and b.candidate_of == a.memory.id
    assert api.counts()["memories"] == 2
    (pair,) = api.merge_candidates()
    assert {pair["a"], pair["b"]} == {a.memory.id, b.memory.id}
    api.merge_memories(a.memory.id, b.memory.id)
    assert api.merge_candidates() == []
    assert api.remember_outcome(FACT, scope="global").merged is False  # another scope, the store's default


def test_undo_restores_both_memories_exactly(make_api: MakeApi) -> None:
    api = make_api(embedder="none")
    a = api.remember("prefer tabs in Makefiles", tags=["style"], priority=0.2, metadata={"x": 1})
    b = api.remember("Prefer tabs in Makefiles (make needs them)", tags=["make"], priority=0.8,
                     source="notes", merge="off")
    before_a, before_b = _state(api, a), _state(api, b)
    digest_before = run_doctor(api.storage).digest
    merged = api.merge_memories(a, b)
    assert _state(api, a) != before_a
    undone = api.undo_merge(merged["merge_id"][:12])
    assert undone["state"] == "undone" and undone["undone_by"]
    assert _state(api, a) == before_a and _state(api, b) == before_b
    report = run_doctor(api.storage)
    assert report.ok
    assert report.digest != digest_before or True  # updated_at moved; the fields above are what must match
    # An absorbed write (no memory of its own) comes back as the memory it would have been.
    again = api.remember_outcome("PREFER TABS IN MAKEFILES", tool="other")
    assert again.merged
    api.undo_merge(again.merge_id or "")
    back = [m for m in api.range_recall() if m.content == "PREFER TABS IN MAKEFILES"]
    assert len(back) == 1 and back[0].tool == "other"
    # An undone pair is not merged again by a scan.
    assert api.scan_duplicates(near=False)["exact"] == 0


def test_bad_input_is_refused_and_changes_nothing(make_api: MakeApi, snapshot: Callable[..., Any]) -> None:
    api = make_api(embedder="none")
    a, b = api.remember("one fact"), api.remember("another fact")
    gone = api.remember("a forgotten fact")
    api.forget(gone)
    before = snapshot(api)
    with pytest.raises(InvalidInput) as err:
        api.remember("one fact", merge="smash")
    assert err.value.field == "merge"
    with pytest.raises(InvalidInput) as err:
        api.merge_memories(a, b, "manual")
    assert err.value.field == "strategy"
    with pytest.raises(NotFound):
        api.merge_memories(a, gone)
    with pytest.raises(InvalidInput) as err:
        api.merge_memories(a, a)
    assert err.value.field == "merged_id"
    with pytest.raises(NotFound):
        api.undo_merge("ab" * 32)
    with pytest.raises(InvalidInput) as err:
        api.undo_merge("xyz")
    assert err.value.field == "merge_id"
    assert snapshot(api) == before
    with pytest.raises(ConfigError):
        MemoryConfig(merge_strategy="smash")
    done = api.merge_memories(a, b)
    api.undo_merge(done["merge_id"])
    with pytest.raises(InvalidInput, match="already undone"):
        api.undo_merge(done["merge_id"])


def _sync(a: UnifiedMemoryAPI, b: UnifiedMemoryAPI) -> None:
    a.sync("b", transport=lambda peer: signed_transport(a, b, "b"))


def test_two_replicas_with_the_same_duplicate_agree_on_one_survivor(make_api: MakeApi, tmp_path: Path) -> None:
    a = make_api(tmp_path / "a", embedder="none")
    b = make_api(tmp_path / "b", embedder="none")
    introduce({"a": a, "b": b})
    a.remember(FACT, tags=["from-a"], priority=0.3)
    b.remember(FACT.upper(), tags=["from-b"], priority=0.6)
    b.remember("only on b")
    for _ in range(2):  # both replicas merge what arrived, then exchange their merges
        _sync(a, b)
        b.scan_duplicates(near=False)
        _sync(a, b)
    ra, rb = run_doctor(a.storage), run_doctor(b.storage)
    assert ra.ok and rb.ok and ra.digest == rb.digest
    (left_a,) = [m for m in a.range_recall() if m.content.lower() == FACT.lower()]
    (left_b,) = [m for m in b.range_recall() if m.content.lower() == FACT.lower()]
    assert left_a == left_b and set(left_a.tags) == {"from-a", "from-b"}


def test_concurrent_merges_of_one_pair_converge_in_any_order(make_api: MakeApi, tmp_path: Path) -> None:
    a = make_api(tmp_path / "a", embedder="none")
    b = make_api(tmp_path / "b", embedder="none")
    x = a.remember("the cache lives in redis")
    y = a.remember("The cache lives in Redis 7 on the ops box", merge="off")
    b.log.apply_remote(_ops(a))
    a.merge_memories(x, y, "semantic_merge")
    b.merge_memories(x, y, "last_writer_wins")
    ops_a, ops_b = _ops(a), _ops(b)
    a.log.apply_remote(ops_b)
    b.log.apply_remote(list(reversed(ops_a)))
    ra, rb = run_doctor(a.storage), run_doctor(b.storage)
    assert ra.ok and rb.ok and ra.digest == rb.digest
    assert a.counts()["memories"] == b.counts()["memories"] == 1
    assert len(a.merges()) == len(b.merges()) == 2


def _ops(api: UnifiedMemoryAPI) -> list[codec.Op]:
    return [codec.op_from_wire(codec.op_to_wire(op)) for _, op in api.log.ops_since(0, 10_000)]


def test_an_undo_travels_to_the_other_replica(make_api: MakeApi, tmp_path: Path) -> None:
    a = make_api(tmp_path / "a", embedder="none")
    b = make_api(tmp_path / "b", embedder="none")
    x = a.remember("ci runs on every push")
    y = a.remember("CI runs on every push to main", merge="off")
    done = a.merge_memories(x, y)
    b.log.apply_remote(_ops(a))
    assert b.counts()["memories"] == 1
    a.undo_merge(done["merge_id"])
    b.log.apply_remote(_ops(a))
    assert b.counts()["memories"] == 2 and b.merge_info(done["merge_id"])["state"] == "undone"
    assert run_doctor(a.storage).digest == run_doctor(b.storage).digest


def test_import_of_a_duplicate_merges_and_stays_idempotent(make_api: MakeApi) -> None:
    api = make_api(embedder="none")
    kept = api.remember(FACT)
    record = {"id": "f" * 32, "content": FACT, "tool": "exported", "created_at": 1_700_000_000_000}
    assert api.import_memory(record) is True
    assert api.import_memory(record) is False
    assert api.counts()["memories"] == 1
    assert api.merges()[0]["merged"] == "f" * 32 and api.merges()[0]["into"] == kept


def test_paraphrases_merge_after_embedding_and_contradictions_do_not(make_api: MakeApi) -> None:
    api = make_api()  # the default embedder
    a = api.remember("Run the database migrations with alembic upgrade head before starting the app")
    b = api.remember("Before starting the app, run the database migrations with alembic upgrade head")
    c = api.remember("deploy to staging on Fridays")
    d = api.remember("never deploy to staging on Fridays")
    e = api.remember("the service listens on port 8080")
    f = api.remember("the service listens on port 8443")
    result = api.scan_duplicates()
    assert result["near"] == 1, result
    assert {m.id for m in api.range_recall()} == {a, c, d, e, f}
    merge = api.merges()[0]
    assert (merge["into"], merge["merged"]) == (a, b) and merge["rule"].startswith("near duplicate")
    assert api.scan_duplicates()["near"] == 0  # nothing new since the last scan


def test_a_full_scan_merges_what_was_written_with_merging_off(make_api: MakeApi) -> None:
    api = make_api(embedder="none")
    kept = api.remember(FACT, tool="one")
    api.remember(FACT.upper(), tool="two", merge="off")
    assert api.scan_duplicates(near=False)["exact"] == 0  # a local write with merging off stays apart
    assert api.scan_duplicates(near=False, everything=True)["exact"] == 1
    assert [m.id for m in api.range_recall()] == [kept]
    assert {p["tool"] for p in api.provenance(kept)} == {"one", "two"}


def test_http_says_merged_and_offers_the_audit_trail(make_api: MakeApi) -> None:
    from starlette.testclient import TestClient

    from neuralsync.server import create_app

    api = make_api(embedder="none")
    token = "k" * 32
    with TestClient(create_app(api, token), headers={"Authorization": f"Bearer {token}"}) as client:
        first = client.post("/v1/memories", json={"content": FACT})
        again = client.post("/v1/memories", json={"content": FACT + ".", "tags": ["x"]})
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json()["merged"] is True and again.json()["merged_into"] == first.json()["id"]
        listed = client.get("/v1/merges").json()["merges"]
        assert [m["merge_id"] for m in listed] == [again.json()["merge_id"]]
        assert client.get(f"/v1/merges/{listed[0]['merge_id'][:10]}").json()["rule"].startswith("exact")
        bad = client.post("/v1/memories", json={"content": "x", "merge": "smash"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "merge"
        assert client.post("/v1/merges/" + "ab" * 32 + "/undo").status_code == 404
        undone = client.post(f"/v1/merges/{listed[0]['merge_id']}/undo")
        assert undone.status_code == 200 and undone.json()["state"] == "undone"
        assert api.counts()["memories"] == 2
        sources = client.get(f"/v1/memories/{first.json()['id']}/provenance").json()["provenance"]
        assert len(sources) == 1


def test_cli_remember_says_it_merged_and_merges_undo_restores(tmp_path: Path) -> None:
    env = {**os.environ, "NEURALSYNC_HOME": str(tmp_path / "cli-store")}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "neuralsync.cli", *argv], env=env, capture_output=True,
                              text=True, timeout=60, check=False)

    first = cli("remember", FACT)
    again = cli("remember", FACT.lower())
    assert first.returncode == again.returncode == 0
    assert first.stdout == again.stdout and "merged into an existing memory" in again.stderr
    merge_id = again.stderr.rsplit("undo ", 1)[1].strip()
    assert cli("merges", "undo", merge_id).returncode == 0
    assert len(cli("list", "--json").stdout.strip().splitlines()) >= 2
    wrong = cli("remember", "y", "--merge", "smash")
    assert wrong.returncode == 2 and "merge" in wrong.stderr


def test_duplicates_inside_one_batch_merge_like_one_by_one(make_api: MakeApi, tmp_path: Path) -> None:
    lines = [f"batch fact number {i}" for i in range(50)] + ["Batch fact number 7.", "BATCH FACT NUMBER 42"]
    bulk = make_api(tmp_path / "bulk", embedder="none")
    with bulk.batch_operations():
        ids = [bulk.remember(line) for line in lines]
    assert ids[-2:] == [ids[7], ids[42]]
    single = make_api(tmp_path / "single", embedder="none")
    for line in lines:
        single.remember(line)
    assert bulk.counts()["memories"] == single.counts()["memories"] == 50
    assert len(bulk.merges()) == len(single.merges()) == 2
    assert run_doctor(bulk.storage).ok


@pytest.mark.slow
def test_a_running_server_merges_paraphrases_in_the_background(tmp_path: Path) -> None:
    import time

    import httpx
    from _live import live_server

    with live_server(tmp_path / "store") as server:
        def remember(text: str) -> str:
            answer = httpx.post(f"{server.url}/v1/memories", json={"content": text}, headers=server.auth, timeout=30)
            assert answer.status_code == 201, answer.text
            return str(answer.json()["id"])

        first = remember("Run the database migrations with alembic upgrade head before starting the app")
        second = remember("Before starting the app, run the database migrations with alembic upgrade head")
        third = remember("never run the database migrations by hand on production")
        deadline = time.monotonic() + 60  # the server embeds new memories, then scans them (every 5 s)
        merges: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not merges:
            merges = httpx.get(f"{server.url}/v1/merges", headers=server.auth, timeout=10).json()["merges"]
            time.sleep(0.5)
        assert [(m["into"], m["merged"]) for m in merges] == [(first, second)], merges
        listed = httpx.get(f"{server.url}/v1/memories/{third}", headers=server.auth, timeout=10)
        assert listed.status_code == 200
