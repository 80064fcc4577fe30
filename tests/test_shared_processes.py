"""Three kinds of process on one store - the CLI, an MCP stdio server and the HTTP server - see
each other's writes in recall and on the change feed, and eight concurrent writers lose nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("mcp")
httpx = pytest.importorskip("httpx")

import anyio  # noqa: E402 - after the skips
from _live import Server, live_server  # noqa: E402
from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402

from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 60


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    # These tests count every write; templated notes ("writer 1 note 3") would merge as near duplicates
    # (the merger has its own tests), so the processes here keep every write.
    return {**os.environ, "PYTHONPATH": path, "NEURALSYNC_MERGE": "off"}


def _cli(home: Path, *args: str) -> Any:
    done = subprocess.run([sys.executable, "-m", "neuralsync.cli", "--home", str(home), "--json", *args],
                          capture_output=True, text=True, timeout=TIMEOUT_S, env=_env(), check=True)
    return json.loads(done.stdout)


def _mcp(home: Path, calls: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run tool calls in one MCP stdio session of a fresh ``neuralsync.mcp.server`` process."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "neuralsync.mcp.server", "--home", str(home)],
                                   env=_env(), cwd=str(REPO))

    async def main() -> list[dict[str, Any]]:
        with anyio.fail_after(TIMEOUT_S):
            async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                out = []
                for name, arguments in calls:
                    result = await session.call_tool(name, arguments)
                    assert not result.is_error, result.content
                    out.append(json.loads(result.content[0].text))  # one JSON text block
                return out

    return anyio.run(main)


class _Feed(threading.Thread):
    """Collects (arrival time, change) from the server's SSE stream until stopped."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server, self.events, self.ready = server, [], threading.Event()
        self.client = httpx.Client(base_url=server.url, headers=server.auth, timeout=TIMEOUT_S)

    def run(self) -> None:
        try:
            with self.client.stream("GET", "/v1/changes/stream") as response:
                for line in response.iter_lines():
                    self.ready.set()
                    if line.startswith("data: "):
                        self.events.append((time.time(), json.loads(line[6:])))
        except httpx.HTTPError:
            return  # closed by the test

    def arrival(self, record_id: str, within_s: float = 10.0) -> float:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            for at, change in list(self.events):
                if change["record_id"] == record_id:
                    return at
            time.sleep(0.01)
        raise AssertionError(f"change for {record_id} never arrived on the feed")


def _ids(items: list[dict[str, Any]]) -> set[str]:
    return {item["id"] for item in items}


def test_cli_mcp_and_http_see_each_others_writes_and_changes(tmp_path: Path) -> None:
    home = tmp_path / "store"
    with live_server(home) as server, httpx.Client(base_url=server.url, headers=server.auth,
                                                   timeout=TIMEOUT_S) as http:
        feed = _Feed(server)
        feed.start()
        assert feed.ready.wait(10)
        follower = UnifiedMemoryAPI(MemoryConfig(base_path=home), tool="follower")
        try:
            cursor = follower.last_seq()
            cli_id = _cli(home, "remember", "the staging cluster is called blue-heron", "--tool", "cli")["id"]
            cli_done = time.time()
            remembered, from_mcp = _mcp(home, [
                ("remember", {"content": "the release train leaves on thursdays", "tags": "release,process"}),
                ("recall", {"query": "blue-heron staging cluster", "n_results": 5}),
            ])
            mcp_id = remembered["id"]
            http_id = http.post("/v1/memories", json={"content": "oncall handoff happens at nine in the morning"}
                                ).json()["id"]

            assert cli_id in _ids(from_mcp["memories"])                      # CLI -> MCP
            assert mcp_id in _ids(http.post("/v1/recall", json={"query": "release train thursdays"}).json()["items"])
            assert cli_id in _ids(http.post("/v1/recall", json={"query": "blue-heron"}).json()["items"])
            assert http_id in _ids(_cli(home, "recall", "oncall", "handoff"))  # HTTP -> CLI
            [(from_http_via_mcp)] = _mcp(home, [("recall", {"query": "oncall handoff", "limit": 3})])
            assert http_id in _ids(from_http_via_mcp["memories"])            # HTTP -> MCP

            latency_ms = (feed.arrival(cli_id) - cli_done) * 1000
            print(f"CLI write seen on the HTTP server's SSE feed {latency_ms:.0f} ms after the CLI exited")
            assert latency_ms < 1000
            for record_id in (mcp_id, http_id):
                feed.arrival(record_id)
            followed = {c.record_id for c in follower.changes_since(cursor)}
            assert {cli_id, mcp_id, http_id} <= followed                    # and on this process's feed
        finally:
            follower.close()
            feed.client.close()


WRITER = """
import sys
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI
with UnifiedMemoryAPI(MemoryConfig.from_env(sys.argv[1]), tool=f"writer-{sys.argv[2]}") as api:
    for i in range(int(sys.argv[3])):
        api.remember(f"writer {sys.argv[2]} note {i} about shared memory")
"""


def test_eight_concurrent_writers_through_api_http_and_cli_lose_nothing(tmp_path: Path) -> None:
    home, per_writer = tmp_path / "store", 40
    with live_server(home) as server:
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(home), str(n), str(per_writer)], env=_env())
                 for n in range(5)]
        errors: list[BaseException] = []

        def http_writer(n: int) -> None:
            try:
                with httpx.Client(base_url=server.url, headers=server.auth, timeout=TIMEOUT_S) as client:
                    for i in range(per_writer):
                        response = client.post("/remember", json={"text": f"http writer {n} note {i}"})
                        assert response.status_code == 200, response.text
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread below
                errors.append(exc)

        threads = [threading.Thread(target=http_writer, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        cli_ids = [_cli(home, "remember", f"cli writer note {i}")["id"] for i in range(per_writer // 4)]
        for thread in threads:
            thread.join(TIMEOUT_S)
        assert [p.wait(timeout=TIMEOUT_S) for p in procs] == [0] * 5
        assert not errors, errors
    with UnifiedMemoryAPI(MemoryConfig(base_path=home)) as api:
        expected = 5 * per_writer + 2 * per_writer + len(cli_ids)
        assert api.get_system_stats()["memories"] == expected
        from neuralsync.services.doctor import run_doctor

        assert run_doctor(api.storage, quick=True).ok
