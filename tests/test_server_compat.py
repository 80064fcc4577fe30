"""NeuralSync2's HTTP contract, in process: every route, the exact preamble, replication via /sync."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import nacl.signing
from starlette.testclient import TestClient

from neuralsync.oplog import codec as crdt
from neuralsync.server import create_app
from neuralsync.unified_memory_api import UnifiedMemoryAPI

TOKEN = "compat-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Snapshot = Callable[[UnifiedMemoryAPI], tuple[int, str]]


@pytest.fixture
def client(api: UnifiedMemoryAPI) -> TestClient:
    return TestClient(create_app(api, TOKEN), headers=AUTH)


def remember(client: TestClient, text: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/remember", json={"text": text, **fields})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_health_and_auth(api: UnifiedMemoryAPI) -> None:
    bare = TestClient(create_app(api, TOKEN))
    assert bare.get("/health").json() == {"ok": True, "site_id": api.log.site_id}
    assert bare.post("/recall", json={"query": ""}).status_code == 401
    assert bare.post("/recall", json={"query": ""}, headers={"Authorization": "Bearer nope"}).status_code == 403


def test_persona_get_and_set(client: TestClient) -> None:
    assert client.get("/persona").json() == {"text": ""}
    assert client.post("/persona", json={"text": "Loves minimal elegant code."}).json() == {"ok": True}
    got = client.get("/persona").json()
    assert got["text"] == "Loves minimal elegant code."
    assert isinstance(got["site_id"], str) and isinstance(got["lamport"], int) and got["lamport"] > 0
    client.post("/persona", json={"text": ""})
    assert client.get("/persona").json() == {"text": ""}


def test_remember_returns_the_ns2_item(client: TestClient) -> None:
    item = remember(client, "Prefers tabs", tags=["style"], meta={"origin": "test"}, benefit=0.7, consistency=0.9)
    for key in ("id", "kind", "text", "scope", "tool", "tags", "confidence", "created_at", "updated_at"):
        assert key in item
    assert "vector" not in item
    assert (item["kind"], item["scope"], item["confidence"], item["text"]) == ("fact", "global", 0.8, "Prefers tabs")
    assert item["tags"] == ["style"] and item["meta"] == {"origin": "test"}
    assert (item["benefit"], item["consistency"], item["source"]) == (0.7, 0.9, "api")
    assert item["created_at"] <= item["updated_at"]


def test_remember_tool_from_body_or_header(client: TestClient) -> None:
    assert remember(client, "a", tool="gemini")["tool"] == "gemini"
    by_header = client.post("/remember", json={"text": "b"}, headers={"X-Tool-Name": "claude-code"}).json()
    assert by_header["tool"] == "claude-code"


def test_recall_preamble_exact_without_and_with_persona(client: TestClient) -> None:
    remember(client, "Uses ruff for linting", kind="preference", scope="proj", confidence=0.9)
    remember(client, "Unrelated note about lunch")
    text_only = {"query": "ruff", "use_embedding": False}  # hybrid recall may add near-meaning items
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


def test_recall_defaults_scope_any_and_tool_filter(client: TestClient) -> None:
    for i in range(10):
        remember(client, f"note number {i}", scope="a" if i % 2 else "b", tool="codex" if i < 3 else "gemini")
    assert len(client.post("/recall", json={"query": ""}).json()["items"]) == 8  # top_k defaults to 8
    assert len(client.post("/recall", json={"query": "note", "top_k": 20, "scope": "any"}).json()["items"]) == 10
    scoped = client.post("/recall", json={"query": "note", "top_k": 20, "scope": "a"}).json()["items"]
    assert len(scoped) == 5 and {i["scope"] for i in scoped} == {"a"}
    tooled = client.post("/recall", json={"query": "", "top_k": 20, "tool": "codex"}).json()["items"]
    assert len(tooled) == 3 and {i["tool"] for i in tooled} == {"codex"}
    assert client.post("/recall", json={"query": "note", "use_embedding": False}).status_code == 200


def test_expired_and_forgotten_items_are_never_recalled(client: TestClient) -> None:
    kept = remember(client, "long lived plan", ttl_ms=0)  # NeuralSync2 read 0 as "no expiry"
    assert kept["ttl_ms"] is None
    short = remember(client, "short lived secret plan", ttl_ms=150)
    assert short["ttl_ms"] == 150
    gone = remember(client, "forgotten plan")
    assert client.delete(f"/v1/memories/{gone['id']}").status_code == 200
    time.sleep(0.2)
    for query in ("plan", "secret", ""):
        for use_embedding in (True, False):
            body = {"query": query, "use_embedding": use_embedding}
            texts = [i["text"] for i in client.post("/recall", json=body).json()["items"]]
            assert texts in (["long lived plan"], []), body
    assert remember(client, "gone before it is read", ttl_ms=1)["text"] == "gone before it is read"


# ------------------------------------------------------------------ sync
def _pull_all(client: TestClient, page: int = 2) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    cursor = 0
    while True:
        answer = client.post("/sync/pull", json={"since": cursor, "limit": page}).json()
        if not answer["ops"]:
            return ops
        assert [o["pos"] for o in answer["ops"]] == sorted(o["pos"] for o in answer["ops"])
        ops += answer["ops"]
        cursor = answer["cursor"]


def test_pull_then_push_replicates_into_a_second_store(client: TestClient, make_api: Callable[..., UnifiedMemoryAPI],
                                                       tmp_path: Any) -> None:
    first = remember(client, "replicate me", tags=["x", "y"], scope="proj")
    second = remember(client, "and me too")
    client.patch(f"/v1/memories/{second['id']}", json={"content": "and me, changed"})
    client.post("/persona", json={"text": "Persona travels too."})
    other_api = make_api(tmp_path / "second")
    other = TestClient(create_app(other_api, TOKEN), headers=AUTH)

    ops = _pull_all(client)
    assert client.post("/sync/pull", json={"since": None}).json()["cursor"] == ops[-1]["pos"]
    answer = other.post("/sync/push", json={"ops": ops}).json()  # {"pos", "op"} wrappers, as pulled
    assert answer["applied"] == len(ops) and answer["rejected"] == [] and answer["missing"] == []

    for made in (first, second):
        mine = client.get(f"/v1/memories/{made['id']}").json()
        theirs = other.get(f"/v1/memories/{made['id']}").json()
        for key in ("id", "content", "tags", "scope", "kind", "confidence", "created_at", "content_hash"):
            assert mine[key] == theirs[key], key
    assert other.get("/persona").json()["text"] == "Persona travels too."
    again = other.post("/sync/push", json={"ops": [o["op"] for o in ops]}).json()  # bare ops
    assert again["applied"] == 0 and again["duplicates"] == len(ops)


def _tampered(wire: dict[str, Any]) -> dict[str, Any]:
    body = bytearray(base64.b64decode(wire["body"]))
    body[-5] ^= 0x01
    return {**wire, "body": base64.b64encode(bytes(body)).decode()}


def test_tampered_or_malformed_ops_are_refused_one_by_one_and_change_nothing(
        client: TestClient, make_api: Callable[..., UnifiedMemoryAPI], tmp_path: Any, snapshot: Snapshot) -> None:
    remember(client, "genuine")
    good = [o["op"] for o in _pull_all(client)]
    other_api = make_api(tmp_path / "victim")
    other = TestClient(create_app(other_api, TOKEN), headers=AUTH)
    before = snapshot(other_api)

    stranger = nacl.signing.SigningKey.generate()
    empty_create = crdt.op_to_wire(crdt.make_op(stranger, "create", "a" * 32, {}, 1 << 20, []))
    bad_ops = [
        _tampered(good[-1]),
        {**good[0], "sig": base64.b64encode(b"\0" * 64).decode()},
        {**good[0], "id": "00" * 32},
        {"body": good[0]["body"]},
        {"body": "!!", "sig": "??"},
        {"op": 5},
        {"body": "AAAA", "sig": "AAAA"},
        {"id": "x"},
        empty_create,  # validly signed, but its fields cannot be materialised
    ]
    answer = other.post("/sync/push", json={"ops": bad_ops})
    assert answer.status_code == 200, answer.text
    refused = answer.json()["rejected"]
    assert answer.json()["applied"] == 0 and len(refused) == len(bad_ops)
    assert all(item["reason"] for item in refused)
    assert snapshot(other_api) == before
    assert sum(other_api.get_system_stats()["sync"]["refusals"]["sync-push"].values()) == len(bad_ops)


def test_one_bad_op_in_a_push_does_not_fail_the_good_ones(
        client: TestClient, make_api: Callable[..., UnifiedMemoryAPI], tmp_path: Any) -> None:
    """The rule of peer sync: each op is judged alone, so a poisoned op cannot block every batch it is in."""
    for text in ("one", "two", "three"):
        remember(client, text)
    good = [o["op"] for o in _pull_all(client)]
    other_api = make_api(tmp_path / "mixed")
    other = TestClient(create_app(other_api, TOKEN), headers=AUTH)
    answer = other.post("/sync/push", json={"ops": [*good[:-1], _tampered(good[-1])]}).json()
    assert answer["applied"] == len(good) - 1
    assert [(r["index"], r["id"]) for r in answer["rejected"]] == [(len(good) - 1, good[-1]["id"])]
    assert sorted(m.content for m in other_api.range_recall()) == ["one", "two"]
    assert other.post("/sync/push", json={"ops": good}).json()["applied"] == 1
    assert sorted(m.content for m in other_api.range_recall()) == ["one", "three", "two"]


def test_push_reports_missing_predecessors(client: TestClient, make_api: Callable[..., UnifiedMemoryAPI],
                                           tmp_path: Any) -> None:
    remember(client, "first")
    remember(client, "second")
    ops = [o["op"] for o in _pull_all(client)]
    other = TestClient(create_app(make_api(tmp_path / "partial"), TOKEN), headers=AUTH)
    answer = other.post("/sync/push", json={"ops": ops[1:]}).json()
    assert answer["applied"] == 0 and len(answer["missing"]) == len(ops) - 1
