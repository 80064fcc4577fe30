"""The replica's side of the relay protocol (issue 17; the relay is ``neuralsync.relay``): register a device,
push batches, pull by cursor, follow a stream.

Every request is signed by the device key for the relay's public key (``replication/signing.py``) and every
answer's signature is checked, so a man in the middle can neither act as the device nor answer as the relay.
The ops themselves are never trusted on the relay's word: :meth:`RelayClient.pull` returns them in wire
form for the replica to verify (``codec.op_from_wire``) like any op from a peer. Plain ``http.client``, as
``replication/transport.py``: no redirects, a timeout on every request.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import nacl.signing

from ..errors import SyncRejected, SyncUnavailable
from ..model import Op
from ..oplog import codec, team
from .signing import NONCE_HEADER, SIGNATURE_HEADER, sign_request, verify_reply

PREFIX = "/relay/v1"
PUSH_BATCH = 500
MAX_ANSWER = 64 << 20


@dataclass(frozen=True, slots=True)
class StreamPage:
    """One ``ops`` event of a stream: ops in wire form (with ``seq``), the cursor after them, the scope's last seq."""

    ops: list[dict[str, Any]]
    cursor: int
    last_seq: int


class RelayClient:
    """A device talking to one relay (``relay_key``: the relay's public key, as ``relay serve`` printed it)."""

    def __init__(self, url: str, relay_key: bytes, device: nacl.signing.SigningKey, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SyncRejected("the relay URL must be http(s)://host[:port]", field="url")
        if len(relay_key) != 32:
            raise SyncRejected("the relay key is 32 bytes", field="relay_key")
        self.url, self.relay_key, self.device, self.timeout = url, relay_key, device, timeout
        self._parts = parts

    # -- requests
    def register(self, user: nacl.signing.SigningKey) -> dict[str, Any]:
        """Register this device for ``user`` (the user key certifies it; only the certificate is sent)."""
        certificate = team.certify_device(user, bytes(self.device.verify_key))
        return self._call("POST", "/devices", {"user": bytes(user.verify_key).hex(),
                                               "certificate": certificate.hex()})

    def scopes(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/scopes")["scopes"])

    def push(self, scope: bytes, ops: Iterable[Op | dict[str, Any]], batch: int = PUSH_BATCH) -> list[dict[str, Any]]:
        """Push ops (or their wire forms) in batches; each batch's report (stored, duplicates, refused...)."""
        reports: list[dict[str, Any]] = []
        pending: list[dict[str, Any]] = []
        for op in ops:
            pending.append(codec.op_to_wire(op) if isinstance(op, Op) else op)
            if len(pending) == batch:
                reports.append(self.push_batch(scope, pending))
                pending = []
        if pending:
            reports.append(self.push_batch(scope, pending))
        return reports

    def push_batch(self, scope: bytes, wire_ops: list[dict[str, Any]]) -> dict[str, Any]:
        return self._call("POST", f"/scopes/{scope.hex()}/push", {"ops": wire_ops})

    def pull(self, scope: bytes, after: int = 0, limit: int = 1000) -> StreamPage:
        """Ops after the cursor, in cursor order (verify them: ``codec.op_from_wire``)."""
        page = self._call("GET", f"/scopes/{scope.hex()}/ops?{urlencode({'after': after, 'limit': limit})}")
        return StreamPage(page["ops"], int(page["cursor"]), int(page["last_seq"]))

    def pull_all(self, scope: bytes, after: int = 0) -> Iterator[StreamPage]:
        """Pages until the scope's last seq as of the last page."""
        while True:
            page = self.pull(scope, after)
            yield page
            if not page.ops or page.cursor >= page.last_seq:
                return
            after = page.cursor

    def stream(self, scope: bytes, after: int = 0, timeout: float | None = None) -> Iterator[StreamPage]:
        """Pages of new ops as the relay sends them (each checked against the relay's signature), until the
        connection closes (:class:`SyncRejected` if the relay ended it: access lost) or no byte, not even a
        keep-alive, comes for ``timeout`` seconds."""
        path = f"/scopes/{scope.hex()}/stream?{urlencode({'after': after})}"
        conn, response, nonce = self._open("GET", path, b"", timeout or self.timeout)
        try:
            if response.status != 200:
                self._refused(response.status, response.read(65536))
            verify_reply(self.relay_key, nonce, b"", response.getheader(SIGNATURE_HEADER))
            yield from _events(response, self.relay_key, nonce)
        except (OSError, http.client.HTTPException) as exc:
            raise SyncUnavailable(f"the relay stream at {self.url} stopped: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()

    # -- plumbing
    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        conn, response, nonce = self._open(method, path, body, self.timeout)
        try:
            answer = response.read(MAX_ANSWER + 1)
            status, signature = response.status, response.getheader(SIGNATURE_HEADER)
        except (OSError, http.client.HTTPException) as exc:
            raise SyncUnavailable(f"the relay at {self.url} answered badly: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        if status != 200:
            self._refused(status, answer)
        if len(answer) > MAX_ANSWER:
            raise SyncRejected(f"the relay sent an answer over {MAX_ANSWER} bytes")
        verify_reply(self.relay_key, nonce, answer, signature)
        data = json.loads(answer)
        if not isinstance(data, dict):
            raise SyncRejected("the relay's answer is not a JSON object")
        return data

    def _open(self, method: str, path: str, body: bytes, timeout: float
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, str]:
        headers = sign_request(self.device, self.relay_key, body)
        kind = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
        conn = kind(self._parts.hostname or "", self._parts.port, timeout=timeout)
        try:
            conn.request(method, self._parts.path.rstrip("/") + PREFIX + path, body=body or None,
                         headers={**headers, "Content-Type": "application/json"})
            return conn, conn.getresponse(), headers[NONCE_HEADER]
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise SyncUnavailable(f"the relay at {self.url} is unreachable or answered badly:"
                                  f" {type(exc).__name__}: {exc}") from None

    def _refused(self, status: int, answer: bytes) -> None:
        if status in (429, 502, 503, 504):
            raise SyncUnavailable(f"the relay is busy ({status}); retry later")
        message, field = answer[:4096].decode("utf-8", "replace"), "body"
        try:
            error = json.loads(answer)["error"]
            message, field = str(error["message"]), str(error["field"])
        except (ValueError, KeyError, TypeError):
            pass
        raise SyncRejected(f"the relay refused ({status}): {message}", status=status, field=field)


def _events(response: http.client.HTTPResponse, relay_key: bytes, nonce: str) -> Iterator[StreamPage]:
    """Parse server-sent events; ``ops`` events are verified and yielded, ``end`` stops the stream."""
    kind, data = "", []
    while True:
        raw = response.readline(MAX_ANSWER)
        if not raw:
            return
        line = raw.decode("utf-8").rstrip("\r\n")
        if line:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)
            continue
        if kind == "end":  # the relay stopped the stream: the scope is no longer the device's to read
            reason = json.loads(data[0]) if data else {}
            raise SyncRejected(f"the relay ended the stream: {reason.get('message', 'no reason given')}",
                               status=403, field=str(reason.get("field", "scope")))
        if kind == "ops" and len(data) == 2:
            verify_reply(relay_key, nonce, data[1].encode(), data[0])
            page = json.loads(data[1])
            yield StreamPage(page["ops"], int(page["cursor"]), int(page["last_seq"]))
        kind, data = "", []
