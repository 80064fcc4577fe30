"""How replicas prove who they are: signed sync requests and signed answers.

Every sync request is signed by the caller's replica key over the target's
key, the time, a nonce and the SHA-256 of the body; the answer is signed by the
target over the request's nonce and the answer's hash. So both ends know whom
they talk to, a request cannot be replayed (nonce, ±5 minute window) or sent to
another replica, and a body cannot be altered on the way. Nonces are kept in
the store (``sync_nonces``) for the whole window, so a restart of the server,
or a second server on the same store, does not forget them. The bearer token is
not involved: it is for local tools, and a peer never needs it. (TLS is still
wanted on an untrusted network: signatures give authenticity, not secrecy.)
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from ..errors import SyncRejected
from ..store.storage import Storage
from ..utils import now_ms
from .peers import Peer, PeerRegistry

REQUEST_DOMAIN = b"neuralsync-sync-request-v1\x00"
REPLY_DOMAIN = b"neuralsync-sync-reply-v1\x00"
MAX_CLOCK_SKEW_MS = 5 * 60 * 1000
KEY_HEADER = "x-neuralsync-key"
TIME_HEADER = "x-neuralsync-time"
NONCE_HEADER = "x-neuralsync-nonce"
SIGNATURE_HEADER = "x-neuralsync-signature"


def _request_message(server_key: bytes, client_key: bytes, at_ms: int, nonce: bytes, body: bytes) -> bytes:
    return (REQUEST_DOMAIN + server_key + client_key + at_ms.to_bytes(8, "big") + nonce
            + hashlib.sha256(body).digest())


def sign_request(key: nacl.signing.SigningKey, server_key: bytes, body: bytes) -> dict[str, str]:
    """Headers that authenticate ``body`` as sent by ``key``'s replica to ``server_key``'s."""
    at_ms = now_ms()
    nonce = secrets.token_bytes(16)
    client_key = bytes(key.verify_key)
    signature = key.sign(_request_message(server_key, client_key, at_ms, nonce, body)).signature
    return {KEY_HEADER: client_key.hex(), TIME_HEADER: str(at_ms), NONCE_HEADER: nonce.hex(),
            SIGNATURE_HEADER: signature.hex()}


def sign_reply(key: nacl.signing.SigningKey, nonce_hex: str, body: bytes) -> str:
    """The signature header of an answer to the request with this nonce."""
    message = REPLY_DOMAIN + bytes.fromhex(nonce_hex) + hashlib.sha256(body).digest()
    return key.sign(message).signature.hex()


def verify_reply(peer_key: bytes, nonce_hex: str, body: bytes, signature_hex: str | None) -> None:
    """Raise :class:`SyncRejected` unless the answer was signed by the peer for our request."""
    try:
        signature = bytes.fromhex(signature_hex or "")
        nacl.signing.VerifyKey(peer_key).verify(REPLY_DOMAIN + bytes.fromhex(nonce_hex)
                                                + hashlib.sha256(body).digest(), signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        raise SyncRejected("the answer is not signed by the peer's key: wrong URL or key for this peer?") from None


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """The signature headers of a request, parsed (each bad one refused with a 401 naming it)."""

    client_key: bytes
    at_ms: int
    nonce: bytes
    signature: bytes

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> SignedRequest:
        client_key = _hex_header(headers, KEY_HEADER, 32)
        time_text = headers.get(TIME_HEADER, "")
        if not time_text.isdigit() or len(time_text) > 16:
            raise _refused("sync requests need a signed X-Neuralsync-Time header (epoch milliseconds)", TIME_HEADER)
        return cls(client_key, int(time_text), _hex_header(headers, NONCE_HEADER, 16),
                   _hex_header(headers, SIGNATURE_HEADER, 64))

    def check_time(self) -> None:
        if abs(now_ms() - self.at_ms) > MAX_CLOCK_SKEW_MS:
            raise _refused("request time is more than 5 minutes from this replica's clock", TIME_HEADER)

    def check(self, server_key: bytes, body: bytes) -> None:
        """Raise a 401 unless the client key signed this body for ``server_key`` (time and nonce included)."""
        self.check_time()
        try:
            nacl.signing.VerifyKey(self.client_key).verify(
                _request_message(server_key, self.client_key, self.at_ms, self.nonce, body), self.signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
            raise _refused("bad request signature", SIGNATURE_HEADER) from None


class RequestVerifier:
    """Checks signed sync requests: known peer, fresh time, unused nonce, valid signature.

    Nonces are remembered per peer, in the store, for twice the time window (a request stamped up
    to 5 minutes ahead stays acceptable that long); a peer that sends more requests than
    ``max_nonces_per_peer`` in that time is told to retry later (429) rather than have older nonces
    forgotten, so a captured request cannot be replayed while its time is still accepted.
    """

    def __init__(self, own_key: bytes, storage: Storage, max_nonces_per_peer: int = 20_000) -> None:
        self.own_key = own_key
        self.storage = storage
        self._max_nonces = max_nonces_per_peer

    def precheck(self, headers: Mapping[str, str], registry: PeerRegistry) -> Peer:
        """What can be checked before the body is read (headers, peer, time, nonce), or
        :class:`SyncRejected`: a stranger is refused without the server reading 16 MiB from it."""
        peer, request = self._headers(headers, registry)
        if self.storage.conn.execute("SELECT 1 FROM sync_nonces WHERE peer = ? AND nonce = ?",
                                     (peer.key, request.nonce)).fetchone() is not None:
            raise _refused("replayed sync request (nonce already used)", NONCE_HEADER)
        return peer

    def verify(self, headers: Mapping[str, str], body: bytes, registry: PeerRegistry) -> Peer:
        """The authenticated peer, or :class:`SyncRejected` with the reason (status 401, 403 or 429)."""
        peer, request = self._headers(headers, registry)
        request.check(self.own_key, body)
        self._use_nonce(peer.key, request.nonce, now_ms())
        return peer

    @staticmethod
    def _headers(headers: Mapping[str, str], registry: PeerRegistry) -> tuple[Peer, SignedRequest]:
        request = SignedRequest.from_headers(headers)
        peer = registry.by_key(request.client_key)
        if peer is None:
            raise _refused("unknown peer key: add it here with 'neuralsync peer add NAME URL --key KEY'",
                           KEY_HEADER, status=403)
        request.check_time()
        return peer, request

    def _use_nonce(self, peer_key: bytes, nonce: bytes, now: int) -> None:
        """Record the nonce (committed before the request is answered), or refuse the request."""
        with self.storage.write() as conn:
            conn.execute("DELETE FROM sync_nonces WHERE at < ?", (now - 2 * MAX_CLOCK_SKEW_MS,))
            if conn.execute("SELECT 1 FROM sync_nonces WHERE peer = ? AND nonce = ?",
                            (peer_key, nonce)).fetchone() is not None:
                raise _refused("replayed sync request (nonce already used)", NONCE_HEADER)
            (count,) = conn.execute("SELECT count(*) FROM sync_nonces WHERE peer = ?", (peer_key,)).fetchone()
            if count >= self._max_nonces:
                raise _refused("too many sync requests from this peer in the last 10 minutes; retry later",
                               KEY_HEADER, status=429)
            conn.execute("INSERT INTO sync_nonces(peer, nonce, at) VALUES (?, ?, ?)", (peer_key, nonce, now))


def _refused(message: str, header: str, status: int = 401) -> SyncRejected:
    """A refusal naming the header at fault, spelled as HTTP writes it (``X-Neuralsync-Nonce``)."""
    return SyncRejected(message, status=status, field=_spelled(header))


def _spelled(header: str) -> str:
    return "-".join(part.capitalize() for part in header.split("-"))


def _hex_header(headers: Mapping[str, str], name: str, size: int) -> bytes:
    """A header holding ``size`` bytes in hex, or a 401 naming it."""
    try:
        value = bytes.fromhex(headers.get(name, ""))
    except ValueError:
        value = b""
    if len(value) != size:
        raise _refused(f"sync requests need a signed {_spelled(name)} header ({size} bytes in hex)", name)
    return value
