"""Peer sync over real HTTP on 127.0.0.1: request authentication against a live server, three
``neuralsync serve`` processes written to concurrently and brought in step with ``neuralsync sync``,
and interval sync between two servers. Every subprocess is stopped in a ``finally`` block."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.signing
import pytest

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from _live import Server, free_port, live_server, stop  # noqa: E402 - after the skips

from neuralsync.errors import SyncRejected  # noqa: E402
from neuralsync.replication import signing as peers  # noqa: E402
from neuralsync.replication import transport as http_transport  # noqa: E402
from neuralsync.replication.peers import Peer  # noqa: E402
from neuralsync.replication.signing import (  # noqa: E402
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIME_HEADER,
    sign_request,
    verify_reply,
)
from neuralsync.replication.transport import HttpTransport  # noqa: E402
from neuralsync.replication.wire import Message  # noqa: E402
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI  # noqa: E402

pytestmark = pytest.mark.slow
START_TIMEOUT_S = 20.0
CLI_TIMEOUT_S = 60.0
ENV = {k: v for k, v in os.environ.items() if k not in ("NS_TOKEN", "NS_HOST", "NS_PORT", "NS_ENDPOINT")}
ENV["NEURALSYNC_MERGE"] = "off"  # the tests count every write; templated notes would merge (see test_merger)


# ------------------------------------------------------------------ helpers
def cli(home: Path, *argv: str, ok: bool = True) -> str:
    """Run ``neuralsync --home HOME ARGV`` in a subprocess; its stdout."""
    done = subprocess.run([sys.executable, "-m", "neuralsync.cli", "--home", str(home), *argv], env=ENV,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    if ok:
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done.stdout


def in_parallel(calls: Sequence[Any]) -> list[Any]:
    """Run zero-argument callables on threads; their results in order (the first error is raised)."""
    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


def empty_request() -> bytes:
    return json.dumps(Message().to_wire(), separators=(",", ":")).encode()


@dataclass
class Node:
    """One ``neuralsync serve`` process and what a client needs to reach it."""

    name: str
    home: Path
    port: int
    key: str
    token: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def prepare(root: Path, names: Sequence[str]) -> list[Node]:
    """Homes, ports and keys (``neuralsync identity``), and every node a CLI-added peer of every other."""
    nodes = [Node(name, root / name, free_port(), "") for name in names]
    keys = in_parallel([lambda n=n: cli(n.home, "identity").strip() for n in nodes])
    for node, key in zip(nodes, keys, strict=True):
        node.key = key

    def trust_the_others(node: Node) -> None:
        for other in nodes:
            if other is not node:
                cli(node.home, "peer", "add", other.name, other.url, "--key", other.key)

    in_parallel([lambda n=n: trust_the_others(n) for n in nodes])
    tokens = in_parallel([lambda n=n: cli(n.home, "token").strip() for n in nodes])
    for node, token in zip(nodes, tokens, strict=True):
        node.token = token
    return nodes


@contextmanager
def serving(nodes: Sequence[Node], sync_interval: float = 0.0) -> Iterator[None]:
    """``neuralsync serve`` on each node's home and port (loopback); all stopped and waited for on exit."""
    logs = []
    try:
        for node in nodes:
            log = (node.home.parent / f"{node.name}.log").open("wb")
            logs.append(log)
            node.process = subprocess.Popen(
                [sys.executable, "-m", "neuralsync.cli", "--home", str(node.home), "serve", "--host", "127.0.0.1",
                 "--port", str(node.port), "--log-level", "warning", "--sync-interval", str(sync_interval)],
                env=ENV, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT_S
        for node in nodes:
            assert node.process is not None
            while True:
                assert node.process.poll() is None, (node.home.parent / f"{node.name}.log").read_text()
                assert time.monotonic() < deadline, f"{node.name} did not start in time"
                try:
                    if httpx.get(f"{node.url}/health", timeout=0.5).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
        yield
    finally:
        for node in nodes:
            if node.process is not None and node.process.poll() is None:
                stop(node.process)
        for log in logs:
            log.close()


# ------------------------------------------------------------------ (1) request authentication
@dataclass
class Live:
    server: Server
    server_key: bytes
    client: UnifiedMemoryAPI
    client_key: nacl.signing.SigningKey

    def post(self, body: bytes, headers: dict[str, str]) -> Any:
        return httpx.post(f"{self.server.url}/v1/sync", content=body, timeout=10,
                          headers={**headers, "Content-Type": "application/json"})

    def signed(self, body: bytes) -> dict[str, str]:
        return sign_request(self.client_key, self.server_key, body)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("sync-http-auth")
    client = UnifiedMemoryAPI(MemoryConfig(base_path=str(root / "client"), embedder="none"))
    try:
        with live_server(root / "server") as server:
            server_key = httpx.get(f"{server.url}/health", timeout=5).json()["site_id"]
            cli(server.home, "peer", "add", "client", "http://127.0.0.1:9", "--key", client.identity())
            client.add_peer("server", server.url, server_key)
            yield Live(server, bytes.fromhex(server_key), client, client.log.key)
    finally:
        client.close()


def test_a_signed_sync_needs_no_bearer_token_and_the_answer_is_signed(live: Live) -> None:
    body = empty_request()
    headers = live.signed(body)
    response = live.post(body, headers)
    assert response.status_code == 200, response.text
    verify_reply(live.server_key, headers[NONCE_HEADER], response.content, response.headers.get(SIGNATURE_HEADER))
    assert set(response.json()) == {"v", "heads", "need", "have", "ops", "more"}


def test_every_other_route_still_needs_the_bearer_token(live: Live) -> None:
    url = live.server.url
    body = empty_request()
    # A peer's signature opens /v1/sync only.
    assert httpx.get(f"{url}/v1/stats", headers=live.signed(b""), timeout=5).status_code == 401
    assert httpx.post(f"{url}/v1/memories", json={"content": "x"}, headers=live.signed(b""),
                      timeout=5).status_code == 401
    assert httpx.get(f"{url}/v1/stats", timeout=5).status_code == 401
    assert httpx.get(f"{url}/v1/stats", headers=live.server.auth, timeout=5).status_code == 200
    # And the bearer token does not open /v1/sync: a sync request must be signed.
    response = httpx.post(f"{url}/v1/sync", content=body, headers=live.server.auth, timeout=5)
    assert response.status_code == 401
    assert "sign" in response.json()["error"]["message"].lower()


def test_an_unknown_peer_key_is_403(live: Live) -> None:
    body = empty_request()
    stranger = nacl.signing.SigningKey.generate()
    response = live.post(body, sign_request(stranger, live.server_key, body))
    assert response.status_code == 403
    assert "unknown peer" in response.json()["error"]["message"]


@pytest.mark.parametrize("who", ["unknown-key", "no-headers", "stale-time"])
def test_a_stranger_is_refused_before_its_body_is_read(live: Live, who: str) -> None:
    """Headers announcing a 16 MiB body, and no body at all: the refusal must come at once, without
    the server waiting to read (or buffering) what a stranger sends."""
    stranger = nacl.signing.SigningKey.generate()
    headers = {"unknown-key": sign_request(stranger, live.server_key, b"x"),
               "no-headers": {},
               "stale-time": {**live.signed(b"x"), TIME_HEADER: str(int(time.time() * 1000) - 3_600_000)}}[who]
    port = int(live.server.url.rsplit(":", 1)[1])
    lines = ["POST /v1/sync HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json",
             f"Content-Length: {16 << 20}", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = conn.recv(4096)  # times out (an error) if the server waits for the body
    status = int(answer.split(b" ", 2)[1])
    assert status == (403 if who == "unknown-key" else 401), answer


def test_a_bad_signature_is_401(live: Live) -> None:
    body = empty_request()
    headers = live.signed(body)
    altered = body.replace(b'"more":false', b'"more":true ')
    assert altered != body
    response = live.post(altered, headers)  # the body is not the one that was signed
    assert response.status_code == 401 and "signature" in response.json()["error"]["message"]
    forged = {**live.signed(body), SIGNATURE_HEADER: secrets.token_bytes(64).hex()}
    assert live.post(body, forged).status_code == 401
    for_another = sign_request(live.client_key, secrets.token_bytes(32), body)  # addressed to another replica
    assert live.post(body, for_another).status_code == 401
    missing = {k: v for k, v in headers.items() if k != NONCE_HEADER}
    assert live.post(body, missing).status_code == 401


def test_a_replayed_request_is_401_the_second_time(live: Live) -> None:
    body = empty_request()
    headers = live.signed(body)
    assert live.post(body, headers).status_code == 200
    again = live.post(body, headers)
    assert again.status_code == 401
    assert "replay" in again.json()["error"]["message"]


def test_a_request_replayed_after_a_restart_is_401(tmp_path: Path) -> None:
    """Nonces outlive the process: a captured request, still inside its time window, is refused by
    the next server on the same store (issue 13) - before its body is read, and when it is."""
    config = MemoryConfig(base_path=str(tmp_path / "holder"), embedder="none")
    me = nacl.signing.SigningKey.generate()
    holder = UnifiedMemoryAPI(config)
    body = empty_request()
    try:
        holder.add_peer("me", "http://127.0.0.1:9", me.verify_key.encode().hex())
        headers = sign_request(me, holder.log.author, body)
        assert holder.check_sync_request(headers) is None
        assert holder.serve_sync(headers, body)[0] == 200
    finally:
        holder.close()
    restarted = UnifiedMemoryAPI(config)
    try:
        refused = restarted.check_sync_request(headers)
        assert refused is not None and refused[0] == 401 and "replay" in refused[1]
        status, answer, _ = restarted.serve_sync(headers, body)
        assert status == 401 and "replay" in json.loads(answer)["error"]["message"]
        fresh = sign_request(me, restarted.log.author, body)
        assert restarted.serve_sync(fresh, body)[0] == 200
    finally:
        restarted.close()


def test_nonces_are_kept_for_the_window_and_a_flooding_peer_is_told_to_wait(tmp_path: Path) -> None:
    """A peer's nonces are never forgotten early to make room: past the bound it gets 429, and its
    first request still cannot be replayed. Other peers are not affected."""
    holder = UnifiedMemoryAPI(MemoryConfig(base_path=str(tmp_path / "holder"), embedder="none"))
    try:
        me, other = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
        registry = holder.replication.registry
        registry.add("me", "http://127.0.0.1:9", me.verify_key.encode().hex())
        registry.add("other", "http://127.0.0.1:9", other.verify_key.encode().hex())
        verifier = peers.RequestVerifier(holder.log.author, holder.storage, max_nonces_per_peer=3)
        body = b"{}"
        first = sign_request(me, holder.log.author, body)
        for headers in (first, *(sign_request(me, holder.log.author, body) for _ in range(2))):
            assert verifier.verify(headers, body, registry).name == "me"
        with pytest.raises(SyncRejected, match="retry later") as busy:
            verifier.verify(sign_request(me, holder.log.author, body), body, registry)
        assert busy.value.status == 429
        with pytest.raises(SyncRejected, match="replayed") as replay:
            verifier.verify(first, body, registry)
        assert replay.value.status == 401
        assert verifier.verify(sign_request(other, holder.log.author, body), body, registry).name == "other"
    finally:
        holder.close()


@pytest.mark.parametrize("skew_ms", [-10 * 60 * 1000, 10 * 60 * 1000])
def test_a_stale_or_future_request_time_is_401(live: Live, monkeypatch: pytest.MonkeyPatch, skew_ms: int) -> None:
    body = empty_request()
    real_now = peers.now_ms
    monkeypatch.setattr(peers, "now_ms", lambda: real_now() + skew_ms)
    headers = live.signed(body)  # a valid signature over a time too far from the server's clock
    monkeypatch.setattr(peers, "now_ms", real_now)
    response = live.post(body, headers)
    assert response.status_code == 401
    assert "5 minutes" in response.json()["error"]["message"]


def test_http_transport_syncs_both_ways_with_the_right_key(live: Live) -> None:
    mine = live.client.remember("written on the client")
    theirs = httpx.post(f"{live.server.url}/v1/memories", json={"content": "written on the server"},
                        headers=live.server.auth, timeout=10).json()["id"]
    (report,) = live.client.sync("server", timeout=10)
    assert report.ok, report.error
    assert live.client.reads.exists(theirs)
    assert httpx.get(f"{live.server.url}/v1/memories/{mine}", headers=live.server.auth, timeout=5).status_code == 200


def test_a_client_with_the_wrong_server_key_refuses_to_sync(live: Live) -> None:
    wrong = nacl.signing.SigningKey.generate().verify_key
    live.client.add_peer("impostor", live.server.url, bytes(wrong).hex())
    try:
        before = live.client.reads.counts()["ops"]
        (report,) = live.client.sync("impostor", timeout=10)
        assert not report.ok and "signature" in (report.error or "")
        assert live.client.reads.counts()["ops"] == before
        (listed,) = [p for p in live.client.list_peers() if p["name"] == "impostor"]
        assert "signature" in (listed["last_error"] or "")
    finally:
        live.client.remove_peer("impostor")
    transport = HttpTransport(live.client_key, Peer("impostor", live.server.url, bytes(wrong), 0), timeout=10)
    with pytest.raises(SyncRejected, match="signature"):  # the server cannot verify a request addressed to `wrong`
        transport(empty_request())


def test_an_answer_signed_by_another_key_is_refused(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client expects key K at this URL; the replica there (another key) accepts the request,
    but its answer is not signed by K, so the client refuses it."""
    expected = bytes(nacl.signing.SigningKey.generate().verify_key)
    real_sign = http_transport.sign_request
    monkeypatch.setattr(http_transport, "sign_request",
                        lambda key, _server_key, body: real_sign(key, live.server_key, body))
    transport = HttpTransport(live.client_key, Peer("expected", live.server.url, expected, 0), timeout=10)
    with pytest.raises(SyncRejected, match="not signed by the peer's key"):
        transport(empty_request())


# ------------------------------------------------------------------ (2) three servers, concurrent writers, CLI sync
def remember(node: Node, content: str, **fields: Any) -> str:
    response = httpx.post(f"{node.url}/v1/memories", json={"content": content, **fields}, headers=node.auth,
                          timeout=30)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def sync_until_still(nodes: Sequence[Node], passes: int = 6) -> int:
    """``neuralsync sync`` on every home, one after another, until a whole pass moves nothing; the passes run."""
    for done in range(1, passes + 1):
        moved = 0
        for node in nodes:
            reports = json.loads(cli(node.home, "--json", "sync"))
            assert len(reports) == len(nodes) - 1 and all(r["ok"] for r in reports), reports
            moved += sum(r["applied"] for r in reports)
        if not moved:
            return done
    raise AssertionError(f"still moving after {passes} passes")


def test_three_servers_written_concurrently_converge_with_cli_sync(tmp_path: Path) -> None:
    nodes = prepare(tmp_path, ["alpha", "beta", "gamma"])
    with serving(nodes):
        shared = remember(nodes[0], "the shared memory", tags=["shared"])

        def writer(node: Node, thread: int) -> list[str]:
            return [remember(node, f"{node.name} thread {thread} note {i}", tags=[node.name]) for i in range(5)]

        def cli_writer(node: Node) -> str:
            return cli(node.home, "remember", f"{node.name} via the CLI, beside its server").strip()

        written = in_parallel([*(lambda n=n, t=t: writer(n, t) for n in nodes for t in range(2)),
                               *(lambda n=n: cli_writer(n) for n in nodes)])
        total = sum(len(w) if isinstance(w, list) else 1 for w in written) + 1
        sync_until_still(nodes)

        # Concurrent updates of the same memory, each server unaware of the others'.
        def edit(node: Node) -> None:
            response = httpx.patch(f"{node.url}/v1/memories/{shared}", headers=node.auth, timeout=30,
                                   json={"content": f"edited on {node.name}", "tags": [node.name]})
            assert response.status_code == 200, response.text

        in_parallel([lambda n=n: edit(n) for n in nodes])
        sync_until_still(nodes)

        quiet = cli(nodes[0].home, "sync").splitlines()  # what a user reads once nothing is left to move
        assert sorted(line.split(":")[0] for line in quiet) == ["beta", "gamma"], quiet
        assert all(": received 0 new ops, sent 0 (1 round trip, " in line for line in quiet), quiet

        doctors = in_parallel([lambda n=n: json.loads(cli(n.home, "--json", "doctor")) for n in nodes])
        assert all(d["ok"] for d in doctors), doctors
        assert len({d["digest"] for d in doctors}) == 1, doctors
        assert all(d["memories"] == total for d in doctors), (total, doctors)
        finals = [httpx.get(f"{n.url}/v1/memories/{shared}", headers=n.auth, timeout=10).json() for n in nodes]
        assert all(f == finals[0] for f in finals)
        edits = {f"edited on {n.name}" for n in nodes}
        assert finals[0]["content"] in edits
        assert set(finals[0]["tags"]) == {n.name for n in nodes}  # each removed "shared", none saw the others' adds
        for node in nodes:
            rows = json.loads(cli(node.home, "--json", "conflicts", "--id", shared))
            content = [r for r in rows if r["field"] == "content"]
            assert content, (node.name, rows)
            assert all({r["winner_value"], r["loser_value"]} <= edits and r["winner_value"] != r["loser_value"]
                       for r in content), (node.name, content)
            assert any(r["winner_value"] == finals[0]["content"] for r in content), (node.name, content)


# ------------------------------------------------------------------ (3) interval sync
def test_interval_sync_brings_a_memory_across_within_seconds(tmp_path: Path) -> None:
    nodes = prepare(tmp_path, ["east", "west"])
    with serving(nodes, sync_interval=1.0):
        east = remember(nodes[0], "remembered in the east")
        west = remember(nodes[1], "remembered in the west")
        deadline = time.monotonic() + 15
        arrived: set[str] = set()
        while arrived != {"east", "west"} and time.monotonic() < deadline:
            if httpx.get(f"{nodes[1].url}/v1/memories/{east}", headers=nodes[1].auth, timeout=5).status_code == 200:
                arrived.add("east")
            if httpx.get(f"{nodes[0].url}/v1/memories/{west}", headers=nodes[0].auth, timeout=5).status_code == 200:
                arrived.add("west")
            time.sleep(0.2)
        assert arrived == {"east", "west"}, f"only {arrived} arrived within 15 s"
    assert all(n.process is not None and n.process.poll() is not None for n in nodes)
