"""A real ``python -m neuralsync.server.run`` on a free loopback port: the NeuralSync2 contract subset,
the SSE feed carrying another process's write, and a clean stop with a stream open."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.slow
START_TIMEOUT_S = 20.0


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    home: Path
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            if httpx.get(f"{url}/health", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("server did not start in time")


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> float:
    """Terminate and wait; returns how long the stop took."""
    start = time.monotonic()
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
        raise
    return time.monotonic() - start


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    home = tmp_path / "store"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("NS_TOKEN", "NS_HOST", "NS_PORT", "NS_ENDPOINT")}
    process = subprocess.Popen(
        [sys.executable, "-m", "neuralsync.server.run", "--home", str(home), "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(process, url)
        token = (home / "server.token").read_text().strip()
        yield Server(process, url, home, token)
    finally:
        if process.poll() is None:
            stop(process)
        if process.stderr:
            process.stderr.close()


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
        assert client.post("/remember", content=b"{broken", headers={"Content-Type": "application/json"}
                           ).status_code == 400
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
