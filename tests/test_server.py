"""HTTP server, in process: auth, the v1 API, error mapping, limits, the SSE feed, and fuzzed input."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from starlette.testclient import TestClient

from neuralsync.errors import ConfigError, StoreBusy
from neuralsync.server import create_app, load_or_create_token, resolve_address, resolve_token, token_path
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(api: UnifiedMemoryAPI) -> Iterator[MakeClient]:
    """``make_client(**create_app options)``: a client on the test's store (the test keeps owning the API)."""
    clients: list[TestClient] = []

    def factory(**options: Any) -> TestClient:
        client = TestClient(create_app(api, TOKEN, **options), headers=AUTH)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    return make_client()


def create(client: TestClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/memories", json={"content": "default text", **fields})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


# ------------------------------------------------------------------ auth and token
def test_health_needs_no_token(api: UnifiedMemoryAPI) -> None:
    bare = TestClient(create_app(api, TOKEN))
    for path in ("/health", "/v1/health"):
        response = bare.get(path)
        assert response.status_code == 200
        assert response.json()["ok"] is True and response.json()["site_id"] == api.log.site_id


@pytest.mark.parametrize("headers, status", [
    ({}, 401), ({"Authorization": "Basic abc"}, 401), ({"Authorization": "Bearer "}, 401),
    ({"Authorization": "Bearer wrong"}, 403), ({"Authorization": f"Bearer {TOKEN}x"}, 403),
])
def test_token_is_required(api: UnifiedMemoryAPI, headers: dict[str, str], status: int) -> None:
    bare = TestClient(create_app(api, TOKEN))
    for method, path in (("GET", "/v1/stats"), ("POST", "/remember"), ("GET", "/no/such/route"),
                         ("GET", "/metrics"), ("GET", "/v1/changes/stream")):
        response = bare.request(method, path, headers=headers, json={"text": "x"})
        assert response.status_code == status, (method, path)
        assert response.json()["error"]["type"] in ("unauthorized", "forbidden")
    assert api.reads.counts()["memories"] == 0


def test_token_file_is_created_once_with_mode_0600(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NS_TOKEN", raising=False)
    config = MemoryConfig(base_path=str(tmp_path / "home"))
    first = load_or_create_token(config)
    assert len(first) >= 32
    assert stat.S_IMODE(os.stat(token_path(config)).st_mode) == 0o600
    assert load_or_create_token(config) == first
    assert resolve_token(config) == first
    monkeypatch.setenv("NS_TOKEN", "from-env")
    assert resolve_token(config) == "from-env"
    assert resolve_token(config, "explicit") == "explicit"


def test_address_defaults_to_loopback_and_follows_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NS_HOST", "NS_PORT", "NS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert resolve_address() == ("127.0.0.1", 8373)
    monkeypatch.setenv("NS_ENDPOINT", "http://127.0.0.2:9000")
    assert resolve_address() == ("127.0.0.2", 9000)
    monkeypatch.setenv("NS_PORT", "9100")
    assert resolve_address() == ("127.0.0.2", 9100)
    assert resolve_address("127.0.0.3", 1) == ("127.0.0.3", 1)
    monkeypatch.setenv("NS_PORT", "eighty")
    with pytest.raises(ConfigError):
        resolve_address()


def test_app_from_config_uses_file_token_and_registers_server_session(tmp_path: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NS_TOKEN", raising=False)
    config = MemoryConfig(base_path=str(tmp_path / "own"))
    with TestClient(create_app(config)) as own:  # the context runs startup and shutdown
        token = token_path(config).read_text().strip()
        assert own.get("/v1/stats", headers={"Authorization": "Bearer nope"}).status_code == 403
        sessions = own.get("/v1/sessions", headers={"Authorization": f"Bearer {token}"}).json()["sessions"]
        assert any(s["tool"] == "http-server" and s["pid"] == os.getpid() for s in sessions)


def test_the_servers_writes_carry_only_the_tool_their_client_names(tmp_path: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12: a write without a tool was stamped "http-server" (or the server's own $TOOL_NAME)."""
    monkeypatch.setenv("TOOL_NAME", "claude-code")
    with TestClient(create_app(MemoryConfig(base_path=str(tmp_path / "own")), TOKEN), headers=AUTH) as own:
        assert own.post("/v1/memories", json={"content": "no tool named"}).json()["tool"] is None
        assert own.post("/v1/memories", json={"content": "named", "tool": "codex"}).json()["tool"] == "codex"


# ------------------------------------------------------------------ v1
def test_v1_crud(client: TestClient) -> None:
    made = client.post("/v1/memories", headers={"X-Tool-Name": "codex"},
                       json={"content": "SQLite is the B+ tree", "tags": ["db", "design"], "scope": "proj",
                             "metadata": {"k": 1}, "priority": 1})
    assert made.status_code == 201
    item = made.json()
    assert item["tool"] == "codex" and item["tags"] == ["db", "design"] and item["metadata"] == {"k": 1}
    assert client.get(f"/v1/memories/{item['id']}").json()["content"] == "SQLite is the B+ tree"

    changed = client.patch(f"/v1/memories/{item['id']}", json={"content": "changed", "tags": ["db"]})
    assert changed.status_code == 200
    assert changed.json()["content"] == "changed" and changed.json()["tags"] == ["db"]

    assert client.delete(f"/v1/memories/{item['id']}").json() == {"ok": True, "id": item["id"]}
    for response in (client.get(f"/v1/memories/{item['id']}"), client.delete(f"/v1/memories/{item['id']}")):
        assert response.status_code == 404 and response.json()["error"]["type"] == "not_found"


def test_v1_body_tool_wins_over_header_and_unknown_fields_are_refused(client: TestClient) -> None:
    item = client.post("/v1/memories", headers={"X-Tool-Name": "codex"},
                       json={"content": "x", "tool": "gemini"}).json()
    assert item["tool"] == "gemini"
    response = client.post("/v1/memories", json={"content": "x", "colour": "blue"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "colour"


def test_v1_bad_values_name_the_field(client: TestClient) -> None:
    cases = [({"content": ""}, "content"), ({"content": "x", "priority": 2}, "priority"),
             ({"content": "x", "kind": "no spaces"}, "kind"), ({"content": "x", "ttl_ms": -5}, "ttl_ms"),
             ({"content": "x", "priority": "0.5"}, "priority")]
    for body, field in cases:
        response = client.post("/v1/memories", json=body)
        assert response.status_code == 422, body
        assert response.json()["error"]["field"] == field
    assert client.get("/v1/memories/not-an-id").status_code == 422
    assert client.patch(f"/v1/memories/{'0' * 32}", json={"content": "x"}).status_code == 404


@pytest.mark.parametrize("path", ["/v1/recall", "/recall"])
def test_a_bad_query_names_the_query_field(client: TestClient, path: str) -> None:
    # A body field called "query" is not the query-string location (issue 13).
    for value in (5, ["x"], {"a": 1}):
        response = client.post(path, json={"query": value})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == "query"


def test_refusals_before_routing_name_the_field(api: UnifiedMemoryAPI) -> None:
    bare = TestClient(create_app(api, TOKEN, max_body_bytes=64))
    assert bare.get("/v1/stats").json()["error"]["field"] == "Authorization"
    assert bare.get("/v1/stats", headers={"Authorization": "Bearer wrong"}).json()["error"]["field"] == "Authorization"
    big = bare.post("/remember", headers=AUTH, content=b"{" + b" " * 100 + b"}")
    assert big.status_code == 413 and big.json()["error"]["field"] == "body"
    bad_json = bare.post("/remember", headers={**AUTH, "Content-Type": "application/json"}, content=b"{bad")
    assert bad_json.status_code == 422 and bad_json.json()["error"]["field"] == "body"  # NeuralSync2's status
    bad_json = bare.post("/v1/memories", headers={**AUTH, "Content-Type": "application/json"}, content=b"{bad")
    assert bad_json.status_code == 400 and bad_json.json()["error"]["field"] == "body"
    unsigned = bare.post("/v1/sync", content=b"{}")
    assert unsigned.status_code == 401 and unsigned.json()["error"]["field"] == "X-Neuralsync-Key"
    missing = bare.get(f"/v1/memories/{'0' * 32}", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "id"


def test_v1_recall_range_stats_sessions(client: TestClient) -> None:
    create(client, content="alpha build uses ruff", scope="a", tags=["lint"])
    create(client, content="beta build uses make", scope="b", tool="codex")
    hits = client.post("/v1/recall", json={"query": "build"}).json()
    assert hits["count"] == 2
    assert [m["scope"] for m in client.post("/v1/recall", json={"query": "build", "scope": "a"}).json()["items"]] \
        == ["a"]
    assert [m["tool"] for m in client.post("/v1/recall", json={"tool": "codex"}).json()["items"]] == ["codex"]
    assert client.post("/v1/recall", json={"tags": ["lint"]}).json()["count"] == 1

    ranged = client.get("/v1/range", params={"limit": 1}).json()
    assert ranged["count"] == 1 and ranged["items"][0]["content"] == "alpha build uses ruff"
    assert client.get("/v1/range", params={"start": "2001-01-01T00:00:00Z", "end": "1"}).status_code == 422
    assert client.get("/v1/range", params={"limit": 100_000}).status_code == 422

    stats = client.get("/v1/stats").json()
    assert stats["memories"] == 2 and "recall" in stats["performance_stats"]["operations"]
    assert isinstance(client.get("/v1/sessions").json()["sessions"], list)
    assert client.get("/v1/growth", params={"days": 7}).json()["days"] == 7
    assert client.put("/v1/persona", json={"text": "Be brief."}).json() == {"ok": True}
    assert client.get("/v1/persona").json() == {"text": "Be brief."}


def test_openapi_lists_the_v1_paths(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    for path in ("/v1/memories", "/v1/memories/{memory_id}", "/v1/recall", "/v1/range", "/v1/stats",
                 "/v1/sessions", "/v1/changes", "/v1/changes/stream", "/remember", "/recall", "/sync/pull"):
        assert path in doc["paths"], path
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_changes_page(client: TestClient) -> None:
    first = create(client, content="one")
    page = client.get("/v1/changes", params={"since": 0}).json()
    assert page["changes"][-1]["record_id"] == first["id"]
    create(client, content="two")
    later = client.get("/v1/changes", params={"since": page["cursor"]}).json()
    assert [c["kind"] for c in later["changes"]] == ["create"] and later["cursor"] == later["last_seq"]


def test_metrics_text_format(client: TestClient) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    create(client)
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}  # the client's own parser
    assert families["neuralsync_memories"].samples[0].value == 1
    latency = families["neuralsync_operation_latency_seconds"]
    assert latency.type == "histogram"
    count = [s for s in latency.samples if s.name.endswith("_count") and s.labels == {"operation": "remember"}]
    assert count and count[0].value == 1
    inf = [s for s in latency.samples if s.labels.get("le") == "+Inf" and s.labels["operation"] == "remember"]
    assert inf[0].value == 1
    total = [s for s in latency.samples if s.name.endswith("_sum") and s.labels == {"operation": "remember"}]
    assert 0 < total[0].value < 10  # seconds, not milliseconds
    assert families["neuralsync_operation_latency_recent_seconds"].type == "gauge"
    assert {"neuralsync_alerts", "neuralsync_operation_over_target", "neuralsync_operation_stage_seconds",
            "neuralsync_tool_operation_latency_seconds", "neuralsync_processes",
            "process_resident_memory_bytes"} <= set(families)


# ------------------------------------------------------------------ error mapping
def test_busy_store_is_503_with_retry_after(client: TestClient, api: UnifiedMemoryAPI,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(*_: Any, **__: Any) -> None:
        raise StoreBusy("locked")

    monkeypatch.setattr(api, "recall", busy)
    response = client.post("/v1/recall", json={})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"


def test_unexpected_error_is_a_generic_500(client: TestClient, api: UnifiedMemoryAPI,
                                           monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    def boom(*_: Any, **__: Any) -> None:
        raise RuntimeError("secret internal detail /path/to/file.py")

    monkeypatch.setattr(api, "get_system_stats", boom)
    response = client.get("/v1/stats")
    assert response.status_code == 500
    assert "secret" not in response.text and "Traceback" not in response.text
    assert response.json()["error"]["type"] == "internal"
    assert "secret internal detail" in caplog.text  # the log has it
    assert client.get("/health").status_code == 200


# ------------------------------------------------------------------ limits and fuzzing
def test_body_over_the_limit_is_413(make_client: MakeClient, api: UnifiedMemoryAPI,
                                    snapshot: Callable[[UnifiedMemoryAPI], tuple[int, str]]) -> None:
    small = make_client(max_body_bytes=1000)
    before = snapshot(api)
    big = {"text": "x" * 2000}
    assert small.post("/remember", json=big).status_code == 413
    chunks = (b'{"text": "' + b"y" * 600, b"y" * 600 + b'"}')
    assert small.post("/remember", content=iter(chunks)).status_code == 413  # chunked, no Content-Length
    default = make_client()
    assert default.post("/v1/memories", json={"content": "z" * (2 << 20)}).status_code == 413
    assert snapshot(api) == before
    assert small.post("/remember", json={"text": "fits"}).status_code == 200


STRING_BAD: list[Any] = [5, ["x"], {"a": 1}, "\ud800", "\udfff tail", "a\ud83d"]
LABEL_BAD = [*STRING_BAD, "", "a\u0000b", "x" * 10_000, "evil\u202etxt.exe", "a\u2066b", "a\x85b"]
UNIT_BAD: list[Any] = ["x", [1], 2, -1, True, float("inf")]
INT_BAD: list[Any] = ["x", -1, 10**30, 1.5, [1]]
TAGS_BAD: list[Any] = [5, [1], ["\ud800"], ["a\u0000b"], [f"t{i}" for i in range(1000)], ["a\u202eb"]]
CONTENT_BAD: list[Any] = [*STRING_BAD, "", None, "\u0000", "a\u0000b", " \n\u200b "]
QUERY_BAD: list[Any] = [*STRING_BAD, "word " * 60_000]  # under the 1 MiB body limit, over the query bound
META_BAD: list[Any] = [[], "x", {"k": "\ud800"}, {"k": float("nan")}, {"d": [[[[[[[[[[1]]]]]]]]]]}]
NS2_TOOL_BAD = [value for value in LABEL_BAD if value != ""]
MEMORY_FIELDS = {"scope": LABEL_BAD, "kind": LABEL_BAD, "tool": LABEL_BAD, "tags": TAGS_BAD,
                 "confidence": UNIT_BAD}
# route -> (valid base body, {field: values that must be refused})
FUZZ: dict[tuple[str, str], tuple[dict[str, Any], dict[str, list[Any]]]] = {
    ("POST", "/v1/memories"): ({"content": "x"}, {"content": CONTENT_BAD, **MEMORY_FIELDS,
                                                  "priority": UNIT_BAD, "ttl_ms": [*INT_BAD, 0],
                                                  "metadata": META_BAD, "source": LABEL_BAD, "extra": [1]}),
    ("PATCH", "/v1/memories/{id}"): ({}, {"content": CONTENT_BAD, **MEMORY_FIELDS,
                                         "priority": UNIT_BAD, "metadata": META_BAD, "id": ["x"]}),
    ("POST", "/v1/recall"): ({}, {"query": QUERY_BAD, "scope": LABEL_BAD, "top_k": [*INT_BAD, 0],
                                  "tags": TAGS_BAD, "tag_match": ["x", 5], "kinds": [5, [1]],
                                  "since": ["not a time", True, -1], "tool": LABEL_BAD}),
    ("PUT", "/v1/persona"): ({"text": "x"}, {"text": [*STRING_BAD, None]}),
    # NeuralSync2 read an empty tool as no tool, and top_k 0 as "nothing": both answer 200 there and here.
    ("POST", "/remember"): ({"text": "x"}, {"text": CONTENT_BAD, **MEMORY_FIELDS, "tool": NS2_TOOL_BAD,
                                            "benefit": ["x", [1], float("inf")], "ttl_ms": INT_BAD,
                                            "meta": META_BAD, "source": STRING_BAD}),
    ("POST", "/recall"): ({"query": ""}, {"query": [*QUERY_BAD, None], "top_k": INT_BAD, "scope": LABEL_BAD,
                                          "tool": NS2_TOOL_BAD}),
    ("POST", "/persona"): ({"text": "x"}, {"text": [*STRING_BAD, None]}),
    ("POST", "/sync/pull"): ({}, {"since": ["x", -1, [1], 1.5], "limit": [0, 10**9, "x"]}),
    # Objects that are not valid NeuralSync2 ops are refused one by one (see test_server_compat); a body
    # that is not a list of objects is refused whole.
    ("POST", "/sync/push"): ({"ops": []}, {"ops": ["nope", [1], None, [[]], "x" * 10]}),
}
# NeuralSync2 field names the facade knows by its own (an error may name either).
ALIASES = {"text": "content", "meta": "metadata", "benefit": "priority"}
RAW_BODIES = [b"{bad", b"", b"null", b"[]", b'"text"', b"123", b'{"text": "a\x00b"}', b"\xff\xfe{}",
              b"[" * 5000 + b"]" * 5000, b"{" * 100_000,
              b'{"text": NaN, "content": NaN, "query": NaN, "since": NaN, "ops": NaN}']


def _send(client: TestClient, method: str, path: str, raw: bytes) -> Any:
    return client.request(method, path, content=raw, headers={"Content-Type": "application/json"})


def test_fuzzed_input_is_4xx_and_writes_nothing(client: TestClient, api: UnifiedMemoryAPI,
                                                snapshot: Callable[[UnifiedMemoryAPI], tuple[int, str]]) -> None:
    target = create(client, content="fuzz target")["id"]
    before = snapshot(api)
    seen: set[int] = set()
    for (method, template), (base, fields) in FUZZ.items():
        path = template.format(id=target)
        for raw in RAW_BODIES:
            response = _send(client, method, path, raw)
            assert 400 <= response.status_code < 500, (method, path, raw[:40], response.text)
            assert response.json()["error"]["field"], (method, path, raw[:40], response.text)
            seen.add(response.status_code)
        for field, values in fields.items():
            for value in values:
                # ensure_ascii keeps lone surrogates as \ud800 escapes, as a hostile client would send them
                raw = json.dumps({**base, field: value}, ensure_ascii=True).encode()
                response = _send(client, method, path, raw)
                assert 400 <= response.status_code < 500, (method, path, field, value, response.text)
                named = response.json()["error"]["field"]
                assert named and named.split(".")[0].split("[")[0] in (field, ALIASES.get(field)), (
                    method, path, field, value, response.text)
                seen.add(response.status_code)
    assert snapshot(api) == before
    assert {400, 422} <= seen
    assert client.get("/health").status_code == 200
    assert client.post("/remember", json={"text": "still serving"}).status_code == 200


def test_unicode_round_trips(client: TestClient) -> None:
    text = "naïve café — 東京 🚀 \u200d"
    item = client.post("/remember", json={"text": text, "tags": ["日本"]}).json()
    assert client.get(f"/v1/memories/{item['id'].replace('-', '')}").json()["content"] == text  # NS2 ids are dashed
    assert client.post("/recall", json={"query": "東京"}).json()["items"][0]["text"] == text


# ------------------------------------------------------------------ SSE, in process
def _events(lines: Iterator[str], count: int) -> list[dict[str, Any]]:
    """Parse ``count`` SSE events from a line iterator."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in lines:
        if not line:
            if "data" in current:
                events.append(current)
                if len(events) == count:
                    return events
            current = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            current[key] = value
    return events


def test_sse_resumes_from_last_event_id_and_since(client: TestClient) -> None:
    ids = [create(client, content=f"event {i}")["id"] for i in range(3)]
    seqs = [c["seq"] for c in client.get("/v1/changes").json()["changes"]]
    with client.stream("GET", "/v1/changes/stream", headers={"Last-Event-ID": str(seqs[0])},
                       params={"since": 0}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response.iter_lines(), 2)
    assert [e["event"] for e in events] == ["change", "change"]
    assert [int(e["id"]) for e in events] == seqs[1:]
    assert [json.loads(e["data"])["record_id"] for e in events] == ids[1:]
    with client.stream("GET", "/v1/changes/stream", params={"since": 0}) as response:
        assert [json.loads(e["data"])["record_id"] for e in _events(response.iter_lines(), 3)] == ids


def test_sse_keepalive_and_bad_last_event_id(make_client: MakeClient) -> None:
    fast = make_client(keepalive_s=0.05)
    with fast.stream("GET", "/v1/changes/stream") as response:
        lines = response.iter_lines()
        assert next(lines).startswith("retry:")
        assert next(line for line in lines if line) == ": keep-alive"
    assert fast.get("/v1/changes/stream", headers={"Last-Event-ID": "abc"}).status_code == 422
    assert fast.get("/v1/changes/stream", params={"since": -1}).status_code == 422


def test_sse_alert_events_are_opt_in_and_leave_the_change_cursor_alone(client: TestClient,
                                                                        api: UnifiedMemoryAPI) -> None:
    import time

    with client.stream("GET", "/v1/changes/stream", params={"alerts": "true", "since": 0}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("retry:")
        with api.performance_profiling("slow_call"):
            time.sleep(0.03)
        create(client, content="after the slow call")
        events = _events(lines, 2)
    alert = next(e for e in events if e["event"] == "alert")
    assert "id" not in alert
    body = json.loads(alert["data"])
    assert body["operation"] == "slow_call" and body["bottleneck"] == "other" and body["ms"] >= 30
    assert api.monitor._callbacks == []  # the stream's subscription ended with it


# ------------------------------------------------------------------ found in review
@pytest.mark.parametrize(("path", "status"), [("/docs", 303), ("/redoc", 303), ("/openapi.json", 401)])
def test_api_description_needs_the_token_too(api: UnifiedMemoryAPI, client: TestClient, path: str,
                                             status: int) -> None:
    # Without the token or a signed-in browser's cookie: a page is sent to sign-in, the document refused.
    anonymous = TestClient(create_app(api, TOKEN)).get(path, follow_redirects=False)
    assert anonymous.status_code == status
    assert status != 303 or anonymous.headers["location"] == f"/ui/login?next={path}"
    assert client.get(path).status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", f"/v1/changes?since={1 << 63}", None),
    ("POST", "/sync/pull", {"since": 1 << 63}),
    ("GET", "/v1/range?start=%C2%B2", None),   # a superscript two: a digit to str.isdigit, not to int()
    ("GET", "/v1/range?end=%E2%91%A0", None),  # a circled one
])
def test_out_of_range_cursors_and_unicode_digits_are_4xx(client: TestClient, method: str, path: str,
                                                          body: dict[str, Any] | None) -> None:
    response = client.request(method, path, json=body)
    assert 400 <= response.status_code < 500, response.text
    assert client.get("/v1/health").status_code == 200


SECRET = "sk-ant-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4"


@pytest.mark.parametrize("route", ["/v1/memories", "/remember"])
def test_a_remembered_secret_is_never_echoed_even_when_its_ttl_has_passed(client: TestClient, route: str) -> None:
    """Issue 10: the answer is the memory as stored (redacted), also when it expired before it was read back."""
    field = "content" if route == "/v1/memories" else "text"
    response = client.post(route, json={field: f"deploy key {SECRET}", "ttl_ms": 1})
    assert response.status_code in (200, 201), response.text
    assert SECRET not in response.text
    assert response.json()[field] == "deploy key [REDACTED:anthropic_key]"
    assert response.json()["expires_at"] - response.json()["created_at"] == 1
