"""A real ``python -m neuralsync.server.run`` on a free loopback port: the NeuralSync2 contract subset,
the SSE feed carrying another process's write, and a clean stop with a stream open."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from _live import Server, live_server, stop  # noqa: E402 - after the skips

pytestmark = pytest.mark.slow
START_TIMEOUT_S = 20.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with live_server(tmp_path / "store") as running:
        yield running


def test_ns2_contract_over_a_real_socket(server: Server) -> None:
    assert oct((server.home / "server.token").stat().st_mode & 0o777) == "0o600"
    health = httpx.get(f"{server.url}/health").json()
    assert health["ok"] is True and len(health["site_id"]) == 64
    assert httpx.post(f"{server.url}/remember", json={"text": "x"}).status_code == 401
    assert httpx.post(f"{server.url}/remember", json={"text": "x"},
                      headers={"Authorization": "Bearer wrong"}).status_code == 403
    with httpx.Client(base_url=server.url, headers=server.auth) as client:
        item = client.post("/remember", json={"text": "Loves minimal elegant code.", "kind": "note"}).json()
        assert item["text"] == "Loves minimal elegant code." and item["kind"] == "note"
        client.post("/persona", json={"text": "Be brief."})
        answer = client.post("/recall", json={"query": "elegant"}).json()
        assert answer["preamble"] == "Persona: Be brief.\n\n[M1] (note, global, conf=0.8) Loves minimal elegant code.\n"
        broken = {"content": b"{broken", "headers": {"Content-Type": "application/json"}}
        assert client.post("/remember", **broken).status_code == 422  # NeuralSync2's (FastAPI's) answer
        assert client.post("/v1/memories", **broken).status_code == 400
        assert client.get("/health").status_code == 200


WRITER = textwrap.dedent("""
    import sys, time
    from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI
    with UnifiedMemoryAPI(MemoryConfig(base_path=sys.argv[1]), tool="writer") as api:
        time.sleep(0.2)
        memory_id = api.remember("written by another process")
        print(memory_id, time.time(), flush=True)
""")


def test_sse_delivers_another_process_write_quickly(server: Server) -> None:
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=10.0) as client, \
            client.stream("GET", "/v1/changes/stream") as response:
        lines = response.iter_lines()
        assert next(lines).startswith("retry:")  # the stream is open before the write happens
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(server.home)], stdout=subprocess.PIPE)
        data = None
        for line in lines:
            if line.startswith("data: ") and json.loads(line[6:])["kind"] == "create":
                received = time.time()
                data = json.loads(line[6:])
                break
        out, _ = writer.communicate(timeout=30)
    memory_id, committed = out.decode().split()
    assert data is not None and data["record_id"] == memory_id
    latency_ms = (received - float(committed)) * 1000
    print(f"SSE delivery latency across processes: {latency_ms:.1f} ms")
    assert latency_ms < 1000


def test_stops_promptly_with_a_stream_open(server: Server) -> None:
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=10.0) as client, \
            client.stream("GET", "/v1/changes/stream") as response:
        assert next(response.iter_lines()).startswith("retry:")
        took = stop(server.process)
    print(f"stop with an open stream took {took:.2f} s")
    assert server.process.returncode in (0, -signal.SIGTERM)
    assert took < 5.0
