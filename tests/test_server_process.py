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
    # The log goes to <home>/logs/server.log as well as stderr, readable by the user alone (issue 16).
    log = server.home / "logs" / "server.log"
    assert oct(log.stat().st_mode & 0o777) == "0o600" and oct(log.parent.stat().st_mode & 0o777) == "0o700"
    assert "refused /remember without a token" in log.read_text()  # the server runs at --log-level warning
    assert oct((server.home / "memory.db").stat().st_mode & 0o777) == "0o600"


def _raw(url: str, request: bytes) -> bytes:
    """Send raw bytes to the server; everything it answers until it closes (or 5 s pass)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            pass
    return answer


def test_a_malformed_chunked_body_is_a_400_without_a_traceback(server: Server) -> None:
    """uvicorn answers 400 itself; the app's own answer (401, or a route's) must not then raise
    LocalProtocolError into the log as 'Exception in ASGI application' (issue 13)."""
    bad_body = b"Transfer-Encoding: chunked\r\n\r\nZZZ\r\nabc\r\n0\r\n\r\n"
    auth = f"Authorization: Bearer {server.token}\r\n".encode()
    for path, headers in (("/remember", b""), ("/remember", auth), ("/v1/sync", b""), ("/health", b"")):
        request = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode() + headers
        assert _raw(server.url, request + bad_body).startswith(b"HTTP/1.1 400 "), path
    assert httpx.get(f"{server.url}/health").status_code == 200
    time.sleep(0.3)  # let the app's tasks for those requests finish
    stop(server.process)
    assert server.process.stderr is not None
    log = server.process.stderr.read().decode()
    assert "Invalid HTTP request received" in log
    assert "Exception in ASGI application" not in log and "Traceback" not in log, log


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


def test_processes_of_a_store_embed_through_its_running_server(server: Server) -> None:
    """One model per machine: a CLI or MCP process on the same home asks the server for vectors
    instead of loading the model; when the server is gone it falls back to its own model."""
    info = json.loads((server.home / "server.json").read_text())
    assert info["url"] == server.url and info["embedder"] == "minilm-l6-v2-q8:384"
    assert (server.home / "server.json").stat().st_mode & 0o077 == 0
    client = textwrap.dedent(f"""
        import json, sys
        from neuralsync.search.embed import minilm
        from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI
        # recall_via_server off: this search runs here, so its vectors come through the server's model
        # (with it on, the whole recall goes to the server: tests/test_recall_via_server.py).
        with UnifiedMemoryAPI(MemoryConfig(base_path={str(server.home)!r}, recall_via_server=False)) as api:
            text = "the nightly backup job writes to the cold storage bucket"
            api.remember(text)
            hits = api.semantic_search("where do backups go", top_k=1)
            print(json.dumps({{"found": hits[0].content == text, "model_loaded_here": bool(minilm._loaded),
                               "embedder": repr(api.semantic.embedder)}}))
        """)
    done = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["found"] and not answer["model_loaded_here"] and "ServerEmbedder" in answer["embedder"]
    stats = httpx.get(f"{server.url}/v1/stats", headers=server.auth, timeout=10).json()
    assert stats["performance_stats"]["operations"]["embed_texts"]["count"] >= 2  # the memory and the query
    bad = httpx.post(f"{server.url}/v1/embed", json={"texts": []}, headers=server.auth, timeout=10)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "texts"

    stop(server.process)
    assert not (server.home / "server.json").exists()  # withdrawn at shutdown
    done = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, timeout=120, check=False)
    answer = json.loads(done.stdout)
    assert answer["found"] and answer["model_loaded_here"] and "MiniLM" in answer["embedder"]


def test_cli_recall_asks_the_running_server_and_falls_back_to_the_store(server: Server) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NS_")}
    env["NEURALSYNC_HOME"] = str(server.home)
    cli = [sys.executable, "-m", "neuralsync.cli"]
    httpx.post(f"{server.url}/v1/memories", json={"content": "the staging cluster is rebuilt every Monday"},
               headers=server.auth, timeout=10).raise_for_status()

    def recalls_served() -> int:
        stats = httpx.get(f"{server.url}/v1/stats", headers=server.auth, timeout=10).json()
        return int(stats["performance_stats"]["operations"].get("recall", {}).get("count", 0))

    before = recalls_served()
    done = subprocess.run([*cli, "--json", "recall", "when is staging rebuilt"], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    assert json.loads(done.stdout)[0]["content"] == "the staging cluster is rebuilt every Monday"
    assert recalls_served() == before + 1  # answered by the server, not by a store opened here
    local = subprocess.run([*cli, "--json", "recall", "--local", "when is staging rebuilt"], env=env,
                           capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(local.stdout)[0]["content"] == json.loads(done.stdout)[0]["content"]
    assert recalls_served() == before + 1
    bad = subprocess.run([*cli, "recall", "-k", "0", "x"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "top_k" in bad.stderr  # refused by the server as the facade refuses it

    stop(server.process)
    fallback = subprocess.run([*cli, "--json", "recall", "when is staging rebuilt"], env=env, capture_output=True,
                              text=True, timeout=120, check=True)
    assert json.loads(fallback.stdout)[0]["content"] == "the staging cluster is rebuilt every Monday"
