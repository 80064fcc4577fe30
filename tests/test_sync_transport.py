"""The HTTP transport against broken or hostile peers: raw sockets on 127.0.0.1 that answer badly.

Each server here accepts one connection, plays its part and stops by itself; every test is bounded
by the transport's own deadline.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import nacl.signing
import pytest

from neuralsync.errors import SyncRejected, SyncUnavailable
from neuralsync.replication import transport as http_transport
from neuralsync.replication.peers import Peer
from neuralsync.replication.transport import HttpTransport
from neuralsync.replication.wire import Message

Handler = Callable[[socket.socket], None]
LIMIT_S = 10.0  # no fake server lives longer than this


@contextmanager
def fake_peer(handler: Handler) -> Iterator[tuple[str, list[bytes]]]:
    """A one-connection server on a free loopback port running ``handler``; yields (url, requests seen)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(LIMIT_S)
    seen: list[bytes] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(LIMIT_S)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                request += chunk
            seen.append(request)
            try:
                handler(conn)
            except OSError:
                pass  # the client hung up: what a hostile peer wants to outlast

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", seen
    finally:
        listener.close()
        thread.join(LIMIT_S)


def transport(url: str, timeout: float = 1.0) -> HttpTransport:
    peer = Peer("f", url, nacl.signing.SigningKey.generate().verify_key.encode(), 0)
    return HttpTransport(nacl.signing.SigningKey.generate(), peer, timeout=timeout)


def request_body() -> bytes:
    return json.dumps(Message().to_wire(), separators=(",", ":")).encode()


def trickle(prefix: bytes) -> Handler:
    """Send ``prefix``, then one byte every 50 ms for as long as the client listens (bounded)."""

    def handler(conn: socket.socket) -> None:
        conn.sendall(prefix)
        deadline = time.monotonic() + LIMIT_S
        while time.monotonic() < deadline:
            conn.sendall(b"x")
            time.sleep(0.05)

    return handler


@pytest.mark.parametrize("prefix", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n",  # a body that never ends
    b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n",  # no length: read to the end, which never comes
    b"HTTP/1.0 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Slow: ",  # headers that never end
], ids=["slow-body", "slow-body-connection-close", "slow-body-no-length", "http-1.0", "slow-headers"])
def test_a_peer_that_trickles_its_answer_is_cut_off_at_the_deadline(prefix: bytes) -> None:
    with fake_peer(trickle(prefix)) as (url, _):
        started = time.monotonic()
        with pytest.raises(SyncUnavailable, match="did not answer within 1 s"):
            transport(url, timeout=1.0)(request_body())
        assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("reply", [
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"",
], ids=["not-http", "truncated", "hang-up"])
def test_a_reply_that_is_not_http_is_unavailable_not_a_crash(reply: bytes) -> None:
    def handler(conn: socket.socket) -> None:
        conn.sendall(reply)

    with fake_peer(handler) as (url, _), pytest.raises(SyncUnavailable, match="unreachable"):
        transport(url)(request_body())


def test_a_redirect_is_not_followed() -> None:
    def handler(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/elsewhere\r\nContent-Length: 0\r\n\r\n")

    with fake_peer(handler) as (url, seen), pytest.raises(SyncRejected, match=r"\(302\)"):
        transport(url)(request_body())
    assert len(seen) == 1 and seen[0].startswith(b"POST /v1/sync ")


def test_an_oversized_answer_is_refused_without_reading_it_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_transport, "MAX_MESSAGE_BYTES", 1000)

    def handler(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000)

    with fake_peer(handler) as (url, _), pytest.raises(SyncRejected, match="over 1000 bytes"):
        transport(url)(request_body())


def test_an_unsigned_answer_is_refused() -> None:
    body = request_body()

    def handler(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    with fake_peer(handler) as (url, _), pytest.raises(SyncRejected, match="not signed by the peer"):
        transport(url)(body)
