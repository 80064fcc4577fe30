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

from neuralsync.mcp.server import ALIASES, PRIMARY, build_server  # noqa: E402
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


def _stdio(home: Path, flow: Flow, *extra: str) -> Any:
    return _in_session(stdio_client(_stdio_params(home, *extra)), flow)


async def _ok(session: ClientSession, name: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await session.call_tool(name, args)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def _text(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


# ------------------------------------------------------------------ in-process (fast)
def _local(api: UnifiedMemoryAPI, flow: Callable[[Any], Awaitable[Any]], aliases: bool = True) -> Any:
    async def main() -> Any:
        with anyio.fail_after(TIMEOUT):
            async with mcp.Client(build_server(api, aliases=aliases)) as client:
                return await flow(client)
    return anyio.run(main)


def test_primary_tools_first_and_aliases_marked(api: UnifiedMemoryAPI) -> None:
    async def flow(client: Any) -> list[Any]:
        return (await client.list_tools()).tools

    tools = _local(api, flow)
    names = [t.name for t in tools]
    assert names[:len(PRIMARY)] == [name for name, _, _ in PRIMARY]
    assert set(names[len(PRIMARY):]) == {alias for alias, *_ in ALIASES}
    for tool in tools[len(PRIMARY):]:
        assert tool.description.startswith("Compatibility alias of")
        assert "alias of" in (tool.title or "")
    assert [t.name for t in _local(api, flow, aliases=False)] == names[:len(PRIMARY)]


def test_result_shape_and_peer_argument_shapes(api: UnifiedMemoryAPI) -> None:
    async def flow(client: Any) -> tuple[Any, ...]:
        await client.call_tool("store_memory", {"content": "deploys use blue-green",
                                                "metadata": {"tags": ["ops", "deploy"], "type": "decision"}})
        await client.call_tool("add_memory", {"text": "mem0-shaped note"})
        tagged = await client.call_tool("search_by_tag", {"tags": "ops,deploy", "match_all": True})
        top = await client.call_tool("recall", {"query": "note", "top_k": 1})
        listed = await client.call_tool("memory_list", {"page": 1, "page_size": 1})
        return tagged, top, listed

    tagged, top, listed = _local(api, flow)
    memory = tagged.structured_content["memories"][0]
    assert memory["kind"] == "decision" and memory["tags"] == ["deploy", "ops"]
    assert memory["created_at"].endswith("Z") and isinstance(memory["created_at_ms"], int)
    assert {"id", "content", "scope", "priority", "confidence", "score"} <= set(memory)
    assert top.structured_content["count"] == 1
    assert listed.structured_content["memories"][0]["content"] == "mem0-shaped note"  # newest first


def test_remembering_a_stored_fact_again_says_it_merged(api: UnifiedMemoryAPI) -> None:
    async def flow(client: Any) -> tuple[Any, ...]:
        first = await client.call_tool("remember", {"content": "the VPN needs the corp profile"})
        again = await client.call_tool("remember", {"content": "The VPN needs the corp profile."})
        return first, again

    first, again = _local(api, flow)
    assert again.structured_content["id"] == first.structured_content["id"]
    assert again.structured_content["merged"] is True and "merged" in again.content[0].text
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
def test_http_requires_the_token(http_server: tuple[str, str]) -> None:
    url, _token = http_server
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
