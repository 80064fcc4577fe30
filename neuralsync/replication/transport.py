"""The HTTP transport of sync: signed requests to a peer's ``POST /v1/sync``, signed answers checked.

The sync engine (:mod:`.protocol`) is transport-free; this is the transport ``neuralsync sync`` and
interval sync use. The timeout bounds each whole request, so a peer that trickles its answer is cut
off; redirects are not followed; a busy peer is ``SyncUnavailable``, a refusal ``SyncRejected``.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from urllib.parse import urlsplit

import nacl.signing

from ..errors import SyncRejected, SyncUnavailable
from .peers import Peer
from .signing import NONCE_HEADER, SIGNATURE_HEADER, sign_request, verify_reply
from .wire import MAX_MESSAGE_BYTES


class HttpTransport:
    """POSTs signed sync messages to a peer's ``/v1/sync`` and checks the answer's signature.

    ``timeout`` bounds the whole request (connect, send, answer), not each socket read: a peer that
    trickles its answer is cut off at the deadline. Redirects are not followed.
    """

    def __init__(self, key: nacl.signing.SigningKey, peer: Peer, timeout: float = 30.0) -> None:
        self.key = key
        self.peer = peer
        self.timeout = timeout

    def __call__(self, body: bytes) -> bytes:
        headers = sign_request(self.key, self.peer.key, body)
        parts = urlsplit(self.peer.url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = kind(parts.hostname or "", parts.port, timeout=self.timeout)
        expired = threading.Event()
        late = f"peer {self.peer.name} did not answer within {self.timeout:g} s"
        sockets: list[socket.socket] = []  # held here: a response that reads to EOF takes conn.sock over

        def cut_off() -> None:
            expired.set()
            for sock in sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked read
                except OSError:
                    pass

        watchdog = threading.Timer(self.timeout, cut_off)
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.connect()  # bounded by the timeout itself
            if conn.sock is not None:
                sockets.append(conn.sock)
            conn.request("POST", f"{parts.path.rstrip('/')}/v1/sync", body=body,
                         headers={**headers, "Content-Type": "application/json"})
            response = conn.getresponse()
            answer = response.read(MAX_MESSAGE_BYTES + 1)
            if response.length and len(answer) <= MAX_MESSAGE_BYTES:  # promised by Content-Length, never came
                raise http.client.IncompleteRead(answer, response.length)
            status, signature = response.status, response.getheader(SIGNATURE_HEADER)
        except (OSError, http.client.HTTPException) as exc:
            if expired.is_set():
                raise SyncUnavailable(late) from None
            raise SyncUnavailable(f"peer {self.peer.name} at {self.peer.url} is unreachable or answered"
                                  f" badly: {type(exc).__name__}: {exc}") from None
        finally:
            watchdog.cancel()
            conn.close()
        if expired.is_set():
            raise SyncUnavailable(late)
        if status in (429, 502, 503, 504):
            raise SyncUnavailable(f"peer {self.peer.name} is busy ({status}); retry later")
        if status != 200:
            detail = answer[:4096].decode("utf-8", "replace")
            try:
                detail = json.loads(detail)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                pass
            raise SyncRejected(f"peer {self.peer.name} refused the sync ({status}): {detail}")
        if len(answer) > MAX_MESSAGE_BYTES:
            raise SyncRejected(f"peer {self.peer.name} sent an answer over {MAX_MESSAGE_BYTES} bytes")
        verify_reply(self.peer.key, headers[NONCE_HEADER], answer, signature)
        return answer
