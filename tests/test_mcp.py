"""MCP server on the real SDK: in-process tools, stdio and streamable HTTP subprocesses (loopback only)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

mcp = pytest.importorskip("mcp")

import httpx2  # noqa: E402 - the SDK's HTTP client, present whenever mcp is
from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.types import CallToolResult, Implementation  # noqa: E402

from neuralsync.mcp.server import (  # noqa: E402
    ALIASES,
    GET_CONTENT_CHARS,
    PRIMARY,
    RESULT_BUDGET,
    aliases_from_env,
    build_server,
)
from neuralsync.unified_memory_api import UnifiedMemoryAPI  # noqa: E402

TIMEOUT = 30.0
REPO = Path(__file__).resolve().parents[1]
READ_ONLY = {"recall", "get_memory", "list_recent", "memory_stats"}
CLIENT = Implementation(name="test-client", version="1.0")
Flow = Callable[[ClientSession], Awaitable[Any]]


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def _stdio_params(home: Path, *extra: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "neuralsync.mcp.server", "--home", str(home),
                                                               *extra], env=_env(), cwd=str(REPO))


def _in_session(streams_cm: Any, flow: Flow) -> Any:
    """Run ``flow`` in an initialised SDK client session over ``streams_cm``, within TIMEOUT."""
    async def main() -> Any:
        with anyio.fail_after(TIMEOUT):
            async with streams_cm as (read, write), ClientSession(read, write, client_info=CLIENT) as session:
                await session.initialize()
                return await flow(session)
    return anyio.run(main)


def _stdio(home: Path, flow: Flow, *extra: str, env: dict[str, str] | None = None) -> Any:
    params = _stdio_params(home, *extra)
    if env:
        params.env = {**(params.env or {}), **env}
    return _in_session(stdio_client(params), flow)


def _data(result: CallToolResult) -> dict[str, Any]:
    """A result's one representation: a single text block of JSON, within the budget, no structuredContent."""
    assert result.structured_content is None
    assert len(result.content) == 1 and result.content[0].type == "text"
    text = result.content[0].text
    assert len(text) <= RESULT_BUDGET, (len(text), text[:200])
    data: dict[str, Any] = json.loads(text)
    return data


async def _ok(session: Any, name: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await session.call_tool(name, args)
    assert not result.is_error, result.content
    return _data(result)


def _text(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


# ------------------------------------------------------------------ in-process (fast)
def _local(api: UnifiedMemoryAPI, flow: Callable[[Any], Awaitable[Any]], aliases: bool = False) -> Any:
    async def main() -> Any:
        with anyio.fail_after(TIMEOUT):
            async with mcp.Client(build_server(api, aliases=aliases)) as client:
                return await flow(client)
    return anyio.run(main)


def test_core_tools_by_default_and_aliases_behind_the_option(api: UnifiedMemoryAPI) -> None:
    async def flow(client: Any) -> list[Any]:
        return (await client.list_tools()).tools

    core = [name for name, _, _ in PRIMARY]
    assert [t.name for t in _local(api, flow, aliases=False)] == core
    tools = _local(api, flow, aliases=True)
    names = [t.name for t in tools]
    assert names[:len(PRIMARY)] == core
    assert set(names[len(PRIMARY):]) == {alias for alias, *_ in ALIASES}
    for tool in tools[len(PRIMARY):]:
        assert tool.description.startswith("Compatibility alias of")
        assert "alias of" in (tool.title or "")
    recall = next(t for t in tools if t.name == "recall")
    assert "hybrid" in recall.description and "BM25" in recall.description and "full-text" not in recall.description


def test_default_tool_list_is_under_8_kb(api: UnifiedMemoryAPI) -> None:
    async def flow(client: Any) -> Any:
        return await client.list_tools()

    listed = _local(api, flow).model_dump_json(by_alias=True, exclude_none=True)  # the tools/list result
    assert len(listed.encode()) < 8 * 1024, len(listed.encode())


def test_aliases_option_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("1", True), ("true", True), ("on", True), ("0", False), ("", False)):
        monkeypatch.setenv("NEURALSYNC_MCP_ALIASES", value)
        assert aliases_from_env() is expected
    monkeypatch.delenv("NEURALSYNC_MCP_ALIASES")
    assert aliases_from_env() is False


def test_every_tool_with_valid_and_invalid_arguments(api: UnifiedMemoryAPI) -> None:
    """Through the SDK client, aliases listed: each tool answers valid arguments and refuses invalid ones."""
    async def flow(client: Any) -> dict[str, Any]:
        listed = {t.name for t in (await client.list_tools()).tools}
        first = (await _ok(client, "remember", {"content": "pytest runs the suite", "tags": "ci"}))["id"]
        second = (await _ok(client, "store_memory", {"content": "ruff lints the code"}))["id"]
        valid: dict[str, dict[str, Any]] = {
            "remember": {"content": "mypy checks types", "kind": "decision"},
            "recall": {"query": "suite", "limit": 5},
            "get_memory": {"memory_id": first},
            "update_memory": {"memory_id": first, "priority": 0.9},
            "list_recent": {"limit": 2},
            "memory_stats": {},
            "store_memory": {"content": "alias store"}, "memory_store": {"content": "alias store 2"},
            "add_memory": {"text": "mem0 add"}, "retrieve_memory": {"query": "suite"},
            "memory_search": {"query": "ruff"}, "search_by_tag": {"tags": ["ci"]},
            "search_memories": {"query": "mypy"}, "list_memories": {"page": 1, "page_size": 2},
            "memory_list": {"limit": 2}, "get_memories": {"limit": 2},
            "memory_update": {"memory_id": first, "tags": ["ci", "tests"]},
            "delete_memory": {"memory_id": second},
            "forget": {"memory_id": first},
        }
        invalid: dict[str, dict[str, Any]] = {
            "remember": {"content": "x", "priority": 5}, "recall": {"query": "x", "tag_match": "most"},
            "get_memory": {"memory_id": "not-an-id"}, "update_memory": {"memory_id": "0" * 32, "priority": 0.1},
            "forget": {"memory_id": "0" * 32}, "list_recent": {"limit": 0}, "memory_stats": {"limit": "x"},
            "store_memory": {"tags": "a"}, "memory_store": {"content": 7}, "add_memory": {},
            "retrieve_memory": {"limit": -1}, "memory_search": {"tag_match": "some"},
            "search_by_tag": {"tags": 3}, "search_memories": {"since": "not a date"},
            "list_memories": {"page": 0}, "memory_list": {"page_size": 5000}, "get_memories": {"limit": "many"},
            "memory_update": {"memory_id": "bad"}, "delete_memory": {"content_hash": "abc"},
        }
        assert set(valid) == set(invalid) == listed
        answers: dict[str, Any] = {}
        for name, arguments in invalid.items():
            result = await client.call_tool(name, arguments)
            answers[name] = (result.is_error, _text(result))
        for name, arguments in valid.items():
            answers[name + ":ok"] = await _ok(client, name, arguments)
        return answers

    answers = _local(api, flow, aliases=True)
    refused = {name: text for name, (error, text) in
               ((k, v) for k, v in answers.items() if not k.endswith(":ok")) if error}
    # memory_stats takes no arguments: an unknown one is ignored, as for every tool (JSON schema default)
    assert set(refused) == {k for k in answers if not k.endswith(":ok")} - {"memory_stats"}, refused
    assert answers["recall:ok"]["count"] >= 1 and answers["forget:ok"] == {"id": answers["get_memory:ok"][
        "memory"]["id"], "forgotten": True}


def test_result_shape_and_peer_argument_shapes(api: UnifiedMemoryAPI) -> None:
    async def flow(client: Any) -> tuple[Any, ...]:
        await client.call_tool("store_memory", {"content": "deploys use blue-green",
                                                "metadata": {"tags": ["ops", "deploy"], "type": "decision"}})
        await client.call_tool("add_memory", {"text": "mem0-shaped note"})
        tagged = await client.call_tool("search_by_tag", {"tags": "ops,deploy", "match_all": True})
        top = await client.call_tool("recall", {"query": "note", "top_k": 1})
        listed = await client.call_tool("memory_list", {"page": 1, "page_size": 1})
        return tagged, top, listed

    tagged, top, listed = (_data(r) for r in _local(api, flow, aliases=True))
    memory = tagged["memories"][0]
    assert memory["kind"] == "decision" and memory["tags"] == ["deploy", "ops"]
    assert memory["created_at"].endswith("Z") and isinstance(memory["created_at_ms"], int)
    assert {"id", "content", "scope", "priority", "confidence", "score"} <= set(memory)
    assert top["count"] == 1
    assert listed["memories"][0]["content"] == "mem0-shaped note"  # newest first


def test_no_result_over_the_budget_and_long_content_pages(api: UnifiedMemoryAPI) -> None:
    long = "".join(f"{i:06d} " for i in range(100_000 // 7 + 1))[:100_000]
    ids = [api.remember((f"copy {n} " + long)[:100_000], tags=["big"]) for n in range(3)]

    async def flow(client: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"recall": await _ok(client, "recall", {"query": "000001", "limit": 50}),
                               "list": await _ok(client, "list_recent", {"limit": 1000}),
                               "update": await _ok(client, "update_memory", {"memory_id": ids[0], "priority": 0.7}),
                               "stats": await _ok(client, "memory_stats", {})}
        pages, offset = [], 0
        while offset is not None:
            page = (await _ok(client, "get_memory", {"memory_id": ids[0], "offset": offset}))["memory"]
            pages.append(page)
            offset = page["content_page"]["next_offset"]
        out["pages"] = pages
        bad = await client.call_tool("get_memory", {"memory_id": ids[0], "offset": 10**6})
        out["bad"] = (bad.is_error, _text(bad))
        return out

    out = _local(api, flow)  # _ok checked every result against RESULT_BUDGET
    first = out["pages"][0]
    assert "[truncated: characters 0-12000 of 100000; the rest: get_memory with offset=12000]" in first["content"]
    text = "".join(p["content"].split(" [truncated:")[0] for p in out["pages"])
    assert text == ("copy 0 " + long)[:100_000] and len(out["pages"]) == -(-100_000 // GET_CONTENT_CHARS)
    assert out["recall"]["memories"] and "get_memory with offset=2000" in out["recall"]["memories"][0]["content"]
    assert out["list"]["count"] == 3 and len(out["list"]["memories"]) == 3
    assert out["update"]["memory"]["content_page"]["total_chars"] == 100_000
    assert out["bad"][0] and "offset" in out["bad"][1]


def test_remembering_a_stored_fact_again_says_it_merged(api: UnifiedMemoryAPI) -> None:
    async def flow(client: Any) -> tuple[Any, ...]:
        first = await client.call_tool("remember", {"content": "the VPN needs the corp profile"})
        again = await client.call_tool("remember", {"content": "The VPN needs the corp profile."})
        return first, again

    first, again = (_data(r) for r in _local(api, flow))
    assert again["id"] == first["id"] and again["merged"] is True and "merged" not in first
    assert api.counts()["memories"] == 1


# ------------------------------------------------------------------ stdio subprocess
@pytest.mark.slow
def test_stdio_lists_tools_and_recalls_across_sessions(tmp_path: Path) -> None:
    async def first(session: ClientSession) -> tuple[Any, str]:
        tools = (await session.list_tools()).tools
        stored = await _ok(session, "remember", {"content": "The build uses ruff and pytest", "tags": "python,ci",
                                                 "scope": "project:neuralsync", "priority": 0.8})
        return tools, stored["id"]

    async def second(session: ClientSession) -> dict[str, Any]:
        return await _ok(session, "recall", {"query": "ruff", "tags": ["ci"], "n_results": 5})

    tools, memory_id = _stdio(tmp_path, first)
    for tool in tools:
        if tool.name in READ_ONLY:
            assert tool.annotations and tool.annotations.read_only_hint is True, tool.name
        if tool.name in ("remember", "update_memory", "forget"):
            assert tool.annotations and not tool.annotations.read_only_hint, tool.name
    assert [t.name for t in tools] == [name for name, _, _ in PRIMARY]  # the core tools only, by default

    async def names(session: ClientSession) -> list[str]:
        return [t.name for t in (await session.list_tools()).tools]

    assert len(_stdio(tmp_path, names, env={"NEURALSYNC_MCP_ALIASES": "1"})) == len(PRIMARY) + len(ALIASES)
    assert len(_stdio(tmp_path, names, "--aliases")) == len(PRIMARY) + len(ALIASES)
    found = _stdio(tmp_path, second)
    assert [m["id"] for m in found["memories"]] == [memory_id]
    hit = found["memories"][0]
    assert hit["tags"] == ["ci", "python"] and hit["scope"] == "project:neuralsync"
    assert hit["tool"] == CLIENT.name  # registered from the client's clientInfo


@pytest.mark.slow
def test_stdio_bad_arguments_are_tool_errors_and_server_keeps_serving(tmp_path: Path) -> None:
    bad = [
        ("remember", {"content": "x", "priority": 5}, "priority"),
        ("remember", {"content": "x", "tags": 7}, "tags"),
        ("remember", {"tags": "a"}, "content"),
        ("get_memory", {"memory_id": "not-an-id"}, "malformed id"),
        ("forget", {"memory_id": "0" * 32}, "not found"),
        ("recall", {"query": "x", "tag_match": "most"}, "tag_match"),
    ]

    async def flow(session: ClientSession) -> list[tuple[CallToolResult, str]]:
        results = [(await session.call_tool(name, args), field) for name, args, field in bad]
        await _ok(session, "remember", {"content": "still serving"})
        return results

    for result, field in _stdio(tmp_path, flow):
        assert result.is_error and field in _text(result), _text(result)


@pytest.mark.slow
def test_stdout_carries_only_json_rpc(tmp_path: Path) -> None:
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
         "params": {"name": "remember", "arguments": {"content": "raw wire test", "tags": "a,b"}}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
         "params": {"name": "remember", "arguments": {"content": "bad", "priority": 5}}},
        {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "memory_stats", "arguments": {}}},
    ]
    with (tmp_path / "stderr.log").open("wb") as errlog:  # a file: a full stderr pipe would stall the server
        proc = subprocess.Popen([sys.executable, "-m", "neuralsync.mcp.server", "--home", str(tmp_path / "store"),
                                 "--log-level", "DEBUG"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=errlog, cwd=REPO, env={**os.environ, **_env()})
    watchdog = threading.Timer(TIMEOUT, proc.kill)  # bounds the blocking readline below
    watchdog.start()
    replies = []
    try:
        assert proc.stdin and proc.stdout
        for message in messages:
            proc.stdin.write((json.dumps(message) + "\n").encode())
            proc.stdin.flush()
            if "id" in message:  # answer before the next request, so the order is fixed
                replies.append(proc.stdout.readline())
        out, _ = proc.communicate(timeout=TIMEOUT)  # closes stdin: the server exits
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in b"".join(replies + [out]).decode().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # any stray text fails here
    assert all(p["jsonrpc"] == "2.0" for p in parsed)
    by_id = {p["id"]: p for p in parsed if "id" in p}
    assert set(by_id) == {1, 2, 3, 4, 5} and proc.returncode == 0
    assert by_id[4]["result"]["isError"] is True and not by_id[3]["result"].get("isError")


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


def _raw_stdio(home: Path, messages: list[dict[str, Any] | str], errlog: Path) -> dict[Any, dict[str, Any]]:
    """Send raw JSON-RPC lines (a str is sent as it is) to a stdio server, each request answered before
    the next is sent; the answers by id. A request the server never answers fails on the watchdog."""
    with errlog.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "neuralsync.mcp.server", "--home", str(home)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=REPO,
                                env={**os.environ, **_env()})
    watchdog = threading.Timer(TIMEOUT, proc.kill)
    watchdog.start()
    answers: dict[Any, dict[str, Any]] = {}
    try:
        assert proc.stdin and proc.stdout
        for message in messages:
            line = message if isinstance(message, str) else json.dumps(message)
            proc.stdin.write((line + "\n").encode())
            proc.stdin.flush()
            if isinstance(message, str) or "id" in message:
                reply = json.loads(proc.stdout.readline())
                answers[reply.get("id")] = reply
        proc.communicate(timeout=TIMEOUT)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return answers


@pytest.mark.slow
def test_stdio_answers_a_deeply_nested_call_with_an_error_and_keeps_serving(tmp_path: Path) -> None:
    """Nested past the SDK parser's limit, a call used to get no answer at all (issue 13)."""
    def call(ident: int, arguments: dict[str, Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": ident, "method": "tools/call",
                "params": {"name": "remember", "arguments": arguments}}

    deep = json.dumps(call(4, {"content": "x"})).replace('{"content": "x"}', '{"a": ' * 5000 + "1" + "}" * 5000)
    answers = _raw_stdio(tmp_path / "store", [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        call(2, {"content": "deep", "metadata": _nested(200)}),
        call(3, {"content": "deep", "extra": _nested(40)}),
        deep,
        call(5, {"content": "still serving"}),
    ], tmp_path / "stderr.log")
    for ident in (2, 3, 4):
        assert "nested deeper than 32 levels" in answers[ident]["error"]["message"], answers[ident]
    assert not answers[5]["result"].get("isError")
    assert "nested deeper than 32 levels" in (tmp_path / "stderr.log").read_text()


def test_a_deeply_nested_call_is_refused_in_process(api: UnifiedMemoryAPI) -> None:
    async def flow(client: Any) -> Any:
        with pytest.raises(Exception, match="nested deeper than 32 levels"):
            await client.call_tool("remember", {"content": "deep", "extra": _nested(40)})
        return await client.call_tool("remember", {"content": "shallow"})

    assert not _local(api, flow).is_error
    assert api.reads.counts()["memories"] == 1


# ------------------------------------------------------------------ streamable HTTP subprocess
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen[bytes], errlog: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, errlog.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"MCP HTTP server not listening on {port}")


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A streamable HTTP server subprocess with a token; yields (url, token) and stops it afterwards."""
    port, token = _free_port(), "test-token-123"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    errlog = tmp_path / "stderr.log"
    with errlog.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "neuralsync.mcp.server", "--http", "--port", str(port),
                                 "--home", str(tmp_path / "store"), "--token-file", str(token_file)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                cwd=REPO, env={**os.environ, **_env()})
    try:
        _wait_listening(port, proc, errlog)
        yield f"http://127.0.0.1:{port}/mcp", token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _http(url: str, token: str, flow: Flow) -> Any:
    client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)
    return _in_session(streamable_http_client(url, http_client=client), flow)


@pytest.mark.slow
def test_http_remember_then_recall_in_a_new_session(http_server: tuple[str, str]) -> None:
    url, token = http_server

    async def first(session: ClientSession) -> str:
        return (await _ok(session, "remember", {"content": "HTTP memories persist", "tags": ["http"]}))["id"]

    async def second(session: ClientSession) -> dict[str, Any]:
        bad = await session.call_tool("remember", {"content": "x", "priority": 5})
        assert bad.is_error and "priority" in _text(bad)
        return await _ok(session, "recall", {"query": "persist", "limit": 3})

    memory_id = _http(url, token, first)
    found = _http(url, token, second)
    assert [m["id"] for m in found["memories"]] == [memory_id]
    assert found["memories"][0]["tool"] == CLIENT.name


@pytest.mark.slow
def test_http_requires_the_token_and_says_where_it_listens(http_server: tuple[str, str], tmp_path: Path) -> None:
    url, _token = http_server
    said = (tmp_path / "stderr.log").read_text()
    port = url.split(":")[2].split("/")[0]
    assert f"streamable HTTP on {url} (host 127.0.0.1, port {port}, path /mcp)" in said, said
    assert f"send 'Authorization: Bearer <token>' (the token in {tmp_path / 'token'})" in said, said
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        reply = httpx2.post(url, json=body, headers=headers, timeout=TIMEOUT)
        assert reply.status_code == 401


def test_a_far_future_expiry_never_breaks_listing(api: UnifiedMemoryAPI) -> None:
    """A memory that expires past year 9999 must not make recall or list_recent fail for everyone."""
    from neuralsync.mcp.server import memory_dict

    memory_id = api.remember("long lived fact", ttl_ms=99 * 365 * 86_400_000)
    far = api.get(memory_id)._replace(expires_at=1 << 60)
    assert memory_dict(far)["id"] == memory_id
