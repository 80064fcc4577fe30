"""NeuralSync2's HTTP contract, in process: its item shapes, tool rule, recent fill, status codes, the exact
preamble, and its ``/sync`` ops in both directions (issue 12). Running NeuralSync2's own code against these
routes is ``test_ns2_reference_*``."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from starlette.testclient import TestClient

from neuralsync.server import create_app
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

TOKEN = "compat-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NS2_ITEM_KEYS = ["id", "kind", "text", "scope", "tool", "tags", "confidence", "benefit", "consistency", "created_at",
                 "updated_at", "ttl_ms", "expires_at", "tombstone", "site_id", "lamport", "source", "meta"]
Snapshot = Callable[[UnifiedMemoryAPI], tuple[int, str]]


@pytest.fixture
def client(api: UnifiedMemoryAPI) -> TestClient:
    return TestClient(create_app(api, TOKEN), headers=AUTH)


def remember(client: TestClient, text: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/remember", json={"text": text, **fields})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def recall(client: TestClient, **body: Any) -> list[dict[str, Any]]:
    response = client.post("/recall", json={"query": "", **body})
    assert response.status_code == 200, response.text
    return response.json()["items"]  # type: ignore[no-any-return]


def compact(ns2_id: str) -> str:
    return ns2_id.replace("-", "")


# ------------------------------------------------------------------ health, persona, status codes
def test_health_and_auth(api: UnifiedMemoryAPI, caplog: pytest.LogCaptureFixture) -> None:
    bare = TestClient(create_app(api, TOKEN))
    assert bare.get("/health").json() == {"ok": True, "site_id": api.log.site_id}
    assert bare.post("/recall", json={"query": ""}).status_code == 401
    assert bare.post("/remember", json={"text": "x"}).status_code == 401
    assert bare.post("/recall", json={"query": ""}, headers={"Authorization": "Bearer nope"}).status_code == 403
    # NeuralSync2's nswrap hides the 401: the server's log says it, once.
    told = [r.getMessage() for r in caplog.records if "without a token" in r.getMessage()]
    assert len(told) == 1 and "/recall" in told[0] and "neuralsync migrate" in told[0]


def test_persona_get_and_set_as_neuralsync2(client: TestClient, api: UnifiedMemoryAPI) -> None:
    assert client.get("/persona").json() == {"text": ""}
    assert client.post("/persona", json={"text": "Loves minimal elegant code."}).json() == {"ok": True}
    got = client.get("/persona").json()
    assert list(got) == ["text", "site_id", "lamport"] and got["text"] == "Loves minimal elegant code."
    assert got["site_id"] == api.identity() and isinstance(got["lamport"], int) and got["lamport"] > 0
    client.post("/persona", json={"text": ""})  # cleared, but set: NeuralSync2 keeps answering the object
    cleared = client.get("/persona").json()
    assert cleared["text"] == "" and cleared["lamport"] > got["lamport"]


@pytest.mark.parametrize(("path", "body"), [("/remember", {}), ("/recall", {}), ("/persona", {}),
                                            ("/remember", {"text": 5}), ("/recall", {"query": "", "top_k": -1})])
def test_missing_or_mistyped_fields_are_422(client: TestClient, path: str, body: dict[str, Any]) -> None:
    assert client.post(path, json=body).status_code == 422


@pytest.mark.parametrize("path", ["/remember", "/recall", "/persona", "/sync/pull", "/sync/push"])
def test_malformed_json_is_422_on_the_legacy_routes_and_400_on_v1(client: TestClient, path: str) -> None:
    raw = {"content": b"{bad", "headers": {"Content-Type": "application/json"}}
    response = client.post(path, **raw)  # type: ignore[arg-type]
    assert response.status_code == 422 and response.json()["error"]["type"] == "bad_json"
    assert client.post("/v1/recall", **raw).status_code == 400  # type: ignore[arg-type]


# ------------------------------------------------------------------ item shapes
def test_remember_answers_neuralsync2s_item(client: TestClient, api: UnifiedMemoryAPI) -> None:
    item = remember(client, "Prefers tabs", tags=["style", "editor", "style"], meta={"origin": "test", "é": 1},
                    benefit=0.7, consistency=0.9, ttl_ms=60_000)
    assert list(item) == NS2_ITEM_KEYS
    assert str(uuid.UUID(item["id"])) == item["id"]  # a dashed UUID
    assert item["tags"] == '["style", "editor", "style"]'  # a JSON string, NeuralSync2's order and repeats kept
    assert item["meta"] == '{"origin": "test", "é": 1}'
    assert (item["kind"], item["scope"], item["tool"], item["confidence"], item["source"]) == (
        "fact", "global", None, 0.8, "api")
    assert (item["benefit"], item["consistency"], item["ttl_ms"], item["tombstone"]) == (0.7, 0.9, 60_000, 0)
    assert item["expires_at"] == item["created_at"] + 60_000
    assert item["site_id"] == api.identity() and item["lamport"] == api.last_seq()
    stored = client.get(f"/v1/memories/{compact(item['id'])}").json()  # /v1 keeps its own shape
    assert stored["tags"] == ["editor", "style"] and stored["metadata"]["origin"] == "test"
    [recalled] = recall(client, query="tabs")
    assert recalled == {**item, "updated_at": recalled["updated_at"]}


def test_empty_tags_are_dropped_not_refused(client: TestClient) -> None:
    """NeuralSync2's nswrap sends `tag=` as an empty tag, and swallows any error: refusing it loses the capture."""
    assert remember(client, "with an empty tag", tags=["", " a ", "b"])["tags"] == '["a", "b"]'


def test_a_write_without_a_tool_stays_without_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12: the server is not a tool; it stamped 'http-server' (or its own $TOOL_NAME) on such writes."""
    monkeypatch.setenv("TOOL_NAME", "claude-code")
    with TestClient(create_app(MemoryConfig(base_path=str(tmp_path / "own")), TOKEN), headers=AUTH) as own:
        assert remember(own, "no tool here")["tool"] is None
        assert own.post("/v1/memories", json={"content": "nor here"}).json()["tool"] is None
        assert remember(own, "named", tool="gemini")["tool"] == "gemini"
        assert own.post("/remember", json={"text": "b"}, headers={"X-Tool-Name": "codex"}).json()["tool"] == "codex"
        assert any(s["tool"] == "http-server" for s in own.get("/v1/sessions").json()["sessions"])


# ------------------------------------------------------------------ recall: preamble, tool rule, recent fill
def test_recall_preamble_exact_without_and_with_persona(client: TestClient) -> None:
    remember(client, "Uses ruff for linting", kind="preference", scope="proj", confidence=0.9)
    remember(client, "Unrelated note about lunch")
    text_only = {"query": "ruff", "use_embedding": False, "top_k": 1}
    answer = client.post("/recall", json=text_only).json()
    assert [i["text"] for i in answer["items"]] == ["Uses ruff for linting"]
    assert answer["preamble"] == "[M1] (preference, proj, conf=0.9) Uses ruff for linting\n"

    client.post("/persona", json={"text": "Terse and exact."})
    answer = client.post("/recall", json=text_only).json()
    expected = "Persona: Terse and exact.\n\n[M1] (preference, proj, conf=0.9) Uses ruff for linting\n"
    assert answer["preamble"] == expected

    both = client.post("/recall", json={"query": ""}).json()
    lines = both["preamble"].split("\n")
    assert lines[:2] == ["Persona: Terse and exact.", ""]
    assert [line[:4] for line in lines[2:4]] == ["[M1]", "[M2]"] and lines[-1] == ""
    for i, item in enumerate(both["items"], 1):
        assert f"[M{i}] ({item['kind']}, {item['scope']}, conf={item['confidence']}) {item['text']}" in lines


def test_a_memory_without_a_tool_matches_every_tool(client: TestClient) -> None:
    """NeuralSync2's nswrap recalls with its tool name and stores captures without one."""
    remember(client, "shared capture")
    remember(client, "codex only", tool="codex")
    remember(client, "gemini only", tool="gemini")
    for tool, expected in (("codex", {"shared capture", "codex only"}), ("claude-code", {"shared capture"}),
                           (None, {"shared capture", "codex only", "gemini only"})):
        assert {i["text"] for i in recall(client, top_k=10, tool=tool)} == expected, tool
        assert {i["text"] for i in recall(client, query="only capture", top_k=10, tool=tool)} == expected, tool


def test_recall_fills_top_k_with_the_most_recently_updated(client: TestClient) -> None:
    made = [remember(client, f"note {word}", scope="a" if i % 2 else "b")
            for i, word in enumerate(["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"])]
    time.sleep(0.005)  # updated_at has millisecond resolution
    client.patch(f"/v1/memories/{compact(made[0]['id'])}", json={"confidence": 0.5})  # now the latest update
    texts = [i["text"] for i in recall(client, query="charlie", top_k=4, use_embedding=False)]
    assert texts == ["note charlie", "note alpha", "note foxtrot", "note echo"]
    scoped = recall(client, query="charlie", top_k=8, scope="a", use_embedding=False)
    assert [i["text"] for i in scoped] == ["note foxtrot", "note delta", "note bravo"]  # the fill keeps the filters
    assert len(recall(client, query="zzz-nothing-matches", top_k=5)) == 5
    assert recall(client, top_k=0) == []


def test_expired_and_forgotten_items_are_never_recalled_nor_filled(client: TestClient) -> None:
    kept = remember(client, "long lived plan", ttl_ms=0)  # NeuralSync2 read 0 as "no expiry"
    assert kept["ttl_ms"] is None and kept["expires_at"] is None
    short = remember(client, "short lived secret plan", ttl_ms=150)
    assert short["ttl_ms"] == 150
    gone = remember(client, "forgotten plan")
    assert client.delete(f"/v1/memories/{compact(gone['id'])}").status_code == 200
    time.sleep(0.2)
    for query in ("plan", "secret", ""):
        for use_embedding in (True, False):
            texts = [i["text"] for i in recall(client, query=query, use_embedding=use_embedding)]
            assert texts == ["long lived plan"], (query, use_embedding)
    assert remember(client, "gone before it is read", ttl_ms=1)["text"] == "gone before it is read"


# ------------------------------------------------------------------ /sync/pull serves NeuralSync2's ops
def test_pull_serves_neuralsync2_ops_with_its_cursor(client: TestClient, api: UnifiedMemoryAPI) -> None:
    first = remember(client, "replicate me", tags=["y", "x"], scope="proj")
    client.post("/persona", json={"text": "Persona travels too."})
    client.patch(f"/v1/memories/{compact(first['id'])}", json={"content": "replicate me, changed"})
    doomed = remember(client, "deleted later")
    client.delete(f"/v1/memories/{compact(doomed['id'])}")

    answer = client.post("/sync/pull", json={"since": 0}).json()
    ops = [entry["op"] for entry in answer["ops"]]
    assert [op["op"] for op in ops] == ["add", "persona_set", "update", "add", "delete"]
    assert answer["cursor"] == answer["ops"][-1]["pos"] == api.last_seq()
    for op in ops:
        assert op["site_id"] == api.identity() and isinstance(op["lamport"], int) and op["clock_ts"] > 0
    assert ops[0]["id"] == first["id"] and ops[0]["payload"]["text"] == "replicate me"
    assert ops[0]["payload"]["tags"] == '["y", "x"]'
    assert "id" not in ops[1] and ops[1]["payload"] == {"text": "Persona travels too."}
    assert ops[2]["payload"]["text"] == "replicate me, changed" and ops[2]["lamport"] > ops[0]["lamport"]
    assert ops[4]["id"] == doomed["id"]

    # NeuralSync2's cursor: `since` is inclusive, so pulling from the cursor answers that op again.
    again = client.post("/sync/pull", json={"since": answer["cursor"]}).json()
    assert [e["pos"] for e in again["ops"]] == [answer["cursor"]] and again["cursor"] == answer["cursor"]
    beyond = client.post("/sync/pull", json={"since": answer["cursor"] + 10}).json()
    assert beyond == {"cursor": answer["cursor"] + 10, "ops": []}
    paged = client.post("/sync/pull", json={"since": 0, "limit": 2}).json()
    assert [e["pos"] for e in paged["ops"]] == [1, 2] and paged["cursor"] == 2


def test_pull_shows_a_merged_memory_as_deleted_and_a_repeat_as_nothing(client: TestClient,
                                                                        api: UnifiedMemoryAPI) -> None:
    kept = remember(client, "the build uses make")
    merged = remember(client, "The build uses make, with -j8")
    client.post("/v1/merges", json={"into": compact(kept["id"]), "merged": compact(merged["id"])})
    remember(client, "THE BUILD USES MAKE, WITH -J8")  # the survivor's text again: absorbed, never a memory
    ops = [entry["op"] for entry in client.post("/sync/pull", json={"since": 0}).json()["ops"]]
    assert [(op["op"], op.get("id")) for op in ops if op["op"] == "delete"] == [("delete", merged["id"])]
    assert sum(op["op"] == "add" for op in ops) == 2


def _pull_everything(source: TestClient) -> Iterator[list[dict[str, Any]]]:
    """Pages of a pull, as a NeuralSync2-era bridge walks it: from the cursor until it stops moving."""
    since = 0
    while True:
        answer = source.post("/sync/pull", json={"since": since, "limit": 3}).json()
        yield answer["ops"]
        if answer["cursor"] == since:
            return
        since = answer["cursor"]


def test_what_one_server_pulls_another_applies_once(client: TestClient, make_api: Callable[..., UnifiedMemoryAPI],
                                                    tmp_path: Path) -> None:
    first = remember(client, "replicate me", tags=["y", "x"], meta={"k": "v"}, benefit=0.4)
    second = remember(client, "and me, until forgotten")
    client.post("/persona", json={"text": "Persona travels too."})
    client.patch(f"/v1/memories/{compact(first['id'])}", json={"content": "replicate me, changed"})
    client.delete(f"/v1/memories/{compact(second['id'])}")
    other_api = make_api(tmp_path / "second")
    other = TestClient(create_app(other_api, TOKEN), headers=AUTH)

    totals = [other.post("/sync/push", json={"ops": page}).json() for page in _pull_everything(client)]
    assert sum(t["applied"] for t in totals) == 5 and all(t["rejected"] == [] for t in totals)
    [copied] = recall(other)
    assert copied["text"] == "replicate me, changed" and copied["id"] == first["id"]
    assert (copied["tags"], copied["meta"], copied["benefit"]) == ('["y", "x"]', '{"k": "v"}', 0.4)
    assert other.get("/persona").json()["text"] == "Persona travels too."
    ops_after = other_api.last_seq()
    everything = client.post("/sync/pull", json={"since": 0}).json()["ops"]
    assert other.post("/sync/push", json={"ops": everything}).json()["applied"] == 0  # a repeat adds nothing
    assert other_api.last_seq() == ops_after


# ------------------------------------------------------------------ /sync/push applies NeuralSync2's ops
def ns2_op(op: str, item_id: str | None = None, payload: dict[str, Any] | None = None, lamport: int = 1,
           clock_ts: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"op": op, "lamport": lamport, "site_id": "ns2-site",
                             "clock_ts": clock_ts or int(time.time() * 1000), "payload": payload or {}}
    if item_id is not None:
        entry["id"] = item_id
    return entry


def ns2_item(item_id: str, text: str, **fields: Any) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {"id": item_id, "kind": "fact", "text": text, "scope": "global", "tool": None, "tags": "[]",
            "confidence": 0.8, "benefit": None, "consistency": None, "created_at": now, "updated_at": now,
            "ttl_ms": None, "expires_at": None, "tombstone": 0, "site_id": "ns2-site", "lamport": 1,
            "source": "api", "meta": "{}", **fields}


def test_push_applies_neuralsync2_ops_as_local_signed_ops(client: TestClient, api: UnifiedMemoryAPI) -> None:
    item_id = str(uuid.uuid4())
    item = ns2_item(item_id, "Deploys happen on Tuesdays.", tags='["ops", "calendar"]', meta='{"team": "infra"}',
                    tool="codex", benefit=0.6)
    answer = client.post("/sync/push", json={"ops": [{"pos": 0, "op": ns2_op("add", item_id, item)}]}).json()
    assert answer == {"applied": 1, "skipped": 0, "rejected": []}
    stored = api.get(compact(item_id))
    assert (stored.content, stored.tool, stored.tags, stored.metadata["team"]) == (
        "Deploys happen on Tuesdays.", "codex", ("calendar", "ops"), "infra")
    assert stored.metadata["neuralsync2"] == {"id": item_id, "site_id": "ns2-site", "lamport": 1, "benefit": 0.6,
                                              "tags": ["ops", "calendar"]}
    assert api.doctor(quick=True).ok  # signed by this replica, like any local write
    [back] = recall(client, tool="codex")
    assert (back["id"], back["tags"], back["site_id"], back["lamport"]) == (item_id, '["ops", "calendar"]',
                                                                             "ns2-site", 1)

    older = ns2_op("update", item_id, {**item, "text": "stale", "updated_at": stored.updated_at - 1000},
                   lamport=2, clock_ts=stored.updated_at - 1000)
    newer = ns2_op("update", item_id, {**item, "text": "Deploys happen on Wednesdays.",
                                       "updated_at": stored.updated_at + 1000}, lamport=3)
    bare = ns2_op("persona_set", payload={"text": "Pushed persona."})  # bare ops too (NeuralSync2 failed on them)
    assert client.post("/sync/push", json={"ops": [older, newer, bare]}).json()["applied"] == 2
    assert api.get(compact(item_id)).content == "Deploys happen on Wednesdays."
    assert api.get_persona() == "Pushed persona."
    stale_persona = ns2_op("persona_set", payload={"text": "An old persona."}, clock_ts=1_000_000)
    delete = ns2_op("delete", item_id)
    assert client.post("/sync/push", json={"ops": [stale_persona, delete, delete]}).json() == {
        "applied": 1, "skipped": 2, "rejected": []}
    assert api.get_persona() == "Pushed persona." and recall(client) == []
    readd = ns2_op("add", item_id, item)  # forgotten here stays forgotten, as after an import
    assert client.post("/sync/push", json={"ops": [readd]}).json()["skipped"] == 1


def test_bad_ops_are_refused_one_by_one_and_change_nothing(client: TestClient, api: UnifiedMemoryAPI,
                                                           snapshot: Snapshot) -> None:
    remember(client, "genuine")
    before = snapshot(api)
    signed = {"id": "ab" * 32, "body": "AAAA", "sig": "AAAA"}  # our own wire form: replicas use /v1/sync
    bad = [signed, {"op": 5}, {"nothing": True}, {**ns2_op("add", str(uuid.uuid4())), "payload": None},
           ns2_op("add", None, ns2_item("", "no id")), ns2_op("add", "x", ns2_item("x", "  ")),
           ns2_op("add", "y", ns2_item("y", "bad tool", tool="x\u0000y")),
           ns2_op("persona_set", payload={"text": 7}), ns2_op("delete"), ns2_op("merge", "z"),
           ns2_op("add", "w", ns2_item("w", "bad scope", scope="a\u0000"))]
    answer = client.post("/sync/push", json={"ops": bad}).json()
    assert answer["applied"] == 0 and [r["index"] for r in answer["rejected"]] == list(range(len(bad)))
    reasons = [r["reason"] for r in answer["rejected"]]
    assert "/v1/sync" in reasons[0] and reasons[3].startswith("payload") and reasons[7].startswith("payload.text")
    assert reasons[10].startswith("scope")
    assert snapshot(api) == before
    good = ns2_op("add", "custom-id-7", ns2_item("custom-id-7", "kept beside bad ones"))
    answer = client.post("/sync/push", json={"ops": [bad[4], good]}).json()
    assert (answer["applied"], [r["index"] for r in answer["rejected"]]) == (1, [0])
    assert [i["id"] for i in recall(client, query="beside")][:1] == ["custom-id-7"]  # a non-UUID id is kept


def test_an_empty_or_missing_op_list_applies_nothing(client: TestClient) -> None:
    assert client.post("/sync/push", json={}).json()["applied"] == 0
    assert client.post("/sync/push", json={"ops": []}).json()["applied"] == 0


def test_pulled_items_render_json_strings_like_neuralsync2(client: TestClient) -> None:
    remember(client, "naïve café 東京", meta={"city": "東京"}, tags=["日本"])
    [entry] = client.post("/sync/pull", json={"since": 0}).json()["ops"]
    payload = entry["op"]["payload"]
    assert payload["meta"] == json.dumps({"city": "東京"}, ensure_ascii=False)
    assert payload["tags"] == json.dumps(["日本"], ensure_ascii=False)
