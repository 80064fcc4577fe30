"""Trusted peers and how they prove who they are.

A peer is a name, a URL and an Ed25519 public key. Every sync request is
signed by the caller's replica key over the target's key, the time, a nonce and
the SHA-256 of the body; the answer is signed by the target over the request's
nonce and the answer's hash. So both ends know whom they talk to, a request
cannot be replayed (nonce, ±5 minute window) or sent to another replica, and a
body cannot be altered on the way. The bearer token is not involved: it is for
local tools, and a peer never needs it. (TLS is still wanted on an untrusted
network: signatures give authenticity, not secrecy.)

The list of peers is local configuration. It decides who may *talk* to this
replica, never whether an op is valid: ops carry their own signatures, and an
op from any author is judged by the same rules on every replica.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import nacl.exceptions
import nacl.signing

from .errors import InvalidInput, NotFound, SyncRejected
from .storage import Storage
from .utils import now_ms

REQUEST_DOMAIN = b"neuralsync-sync-request-v1\x00"
REPLY_DOMAIN = b"neuralsync-sync-reply-v1\x00"
MAX_CLOCK_SKEW_MS = 5 * 60 * 1000
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KEY_HEADER = "x-neuralsync-key"
TIME_HEADER = "x-neuralsync-time"
NONCE_HEADER = "x-neuralsync-nonce"
SIGNATURE_HEADER = "x-neuralsync-signature"


@dataclass(frozen=True)
class Peer:
    """One trusted replica."""

    name: str
    url: str
    key: bytes
    added_at: int
    last_sync: tuple[bytes, ...] = ()
    synced_at: int | None = None
    last_error: str | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (keys and heads in hex)."""
        return {"name": self.name, "url": self.url, "key": self.key.hex(), "added_at": self.added_at,
                "last_sync_heads": [h.hex() for h in self.last_sync], "synced_at": self.synced_at,
                "last_error": self.last_error}


def parse_key(text: object, field: str = "key") -> bytes:
    """A 32-byte Ed25519 public key from its 64-hex-digit form."""
    if not isinstance(text, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()):
        raise InvalidInput(field, "must be a 64-hex-digit Ed25519 public key (see 'neuralsync identity')")
    raw = bytes.fromhex(text.strip())
    try:
        nacl.signing.VerifyKey(raw)
    except (nacl.exceptions.ValueError, ValueError, TypeError):
        raise InvalidInput(field, "is not a valid Ed25519 public key") from None
    return raw


def check_url(url: object) -> str:
    """An http(s) URL with a host, without a trailing slash."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput("url", "must be an http:// or https:// URL")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("url", "must be an http:// or https:// URL with a host, e.g. http://laptop:8373")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise InvalidInput("url", "has a bad port") from None
    return url.strip().rstrip("/")


def _row_to_peer(row: tuple[Any, ...]) -> Peer:
    name, url, key, added_at, last_sync, synced_at, last_error = row
    raw = bytes(last_sync)
    heads = tuple(raw[i:i + 32] for i in range(0, len(raw), 32))
    return Peer(str(name), str(url), bytes(key), int(added_at), heads,
                None if synced_at is None else int(synced_at), None if last_error is None else str(last_error))


_COLUMNS = "name, url, key, added_at, last_sync, synced_at, last_error"


class PeerRegistry:
    """The ``peers`` table: add, list, remove, look up, and remember each peer's last common heads."""

    def __init__(self, storage: Storage, own_key: bytes) -> None:
        self.storage = storage
        self.own_key = own_key

    def add(self, name: str, url: str, key: str) -> Peer:
        """Trust a peer (or change a known peer's URL); the name and key must not belong to another peer."""
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise InvalidInput("name", "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        clean_url = check_url(url)
        raw = parse_key(key)
        if raw == self.own_key:
            raise InvalidInput("key", "is this replica's own key; give the other replica's key")
        with self.storage.write() as conn:
            other = conn.execute("SELECT name FROM peers WHERE key = ? AND name != ?", (raw, name)).fetchone()
            if other is not None:
                raise InvalidInput("key", f"already belongs to peer {other[0]!r}")
            existing = conn.execute("SELECT key FROM peers WHERE name = ?", (name,)).fetchone()
            if existing is not None and bytes(existing[0]) != raw:
                raise InvalidInput("name", f"peer {name!r} exists with another key; remove it first")
            conn.execute("INSERT INTO peers(name, url, key, added_at) VALUES (?, ?, ?, ?)"
                         " ON CONFLICT(name) DO UPDATE SET url = excluded.url", (name, clean_url, raw, now_ms()))
        return self.get(name)

    def remove(self, name: str) -> None:
        """Stop trusting a peer. Ops already received from it stay: they are valid by rule."""
        with self.storage.write() as conn:
            if conn.execute("DELETE FROM peers WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"no peer named {name!r}")

    def all(self) -> list[Peer]:
        """Every trusted peer, by name."""
        return [_row_to_peer(r) for r in self.storage.conn.execute(f"SELECT {_COLUMNS} FROM peers ORDER BY name")]

    def get(self, name: str) -> Peer:
        """The peer with this name."""
        row = self.storage.conn.execute(f"SELECT {_COLUMNS} FROM peers WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no peer named {name!r} (see 'neuralsync peer list')")
        return _row_to_peer(row)

    def by_key(self, key: bytes) -> Peer | None:
        """The peer with this public key, or None."""
        row = self.storage.conn.execute(f"SELECT {_COLUMNS} FROM peers WHERE key = ?", (key,)).fetchone()
        return None if row is None else _row_to_peer(row)

    def record_sync(self, key: bytes, heads: list[bytes], error: str | None = None) -> None:
        """Remember the heads both sides are known to hold (or the error of a failed attempt)."""
        with self.storage.write() as conn:
            if error is None:
                conn.execute("UPDATE peers SET last_sync = ?, synced_at = ?, last_error = NULL WHERE key = ?",
                             (b"".join(sorted(heads)), now_ms(), key))
            else:
                conn.execute("UPDATE peers SET last_error = ? WHERE key = ?", (error[:500], key))


# ---------------------------------------------------------------- request signatures
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


class RequestVerifier:
    """Checks signed sync requests: known peer, fresh time, unused nonce, valid signature.

    Nonces are remembered per peer for the whole time window; a peer that sends more requests than
    that in one window is told to retry later (429) rather than have older nonces forgotten, so a
    captured request cannot be replayed while its time is still accepted (until a restart).
    """

    def __init__(self, own_key: bytes, max_nonces_per_peer: int = 20_000) -> None:
        self.own_key = own_key
        self._nonces: dict[bytes, OrderedDict[bytes, int]] = {}
        self._max_nonces = max_nonces_per_peer
        self._lock = threading.Lock()

    def precheck(self, headers: Mapping[str, str], registry: PeerRegistry) -> Peer:
        """What can be checked before the body is read (headers, peer, time, nonce), or
        :class:`SyncRejected`: a stranger is refused without the server reading 16 MiB from it."""
        peer, _, _, nonce, _ = self._headers(headers, registry)
        with self._lock:
            if nonce in self._nonces.get(peer.key, ()):
                raise SyncRejected("replayed sync request (nonce already used)", status=401)
        return peer

    def verify(self, headers: Mapping[str, str], body: bytes, registry: PeerRegistry) -> Peer:
        """The authenticated peer, or :class:`SyncRejected` with the reason (status 401, 403 or 429)."""
        peer, client_key, at_ms, nonce, signature = self._headers(headers, registry)
        try:
            nacl.signing.VerifyKey(client_key).verify(
                _request_message(self.own_key, client_key, at_ms, nonce, body), signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
            raise SyncRejected("bad request signature", status=401) from None
        self._use_nonce(peer.key, nonce, now_ms())
        return peer

    @staticmethod
    def _headers(headers: Mapping[str, str], registry: PeerRegistry) -> tuple[Peer, bytes, int, bytes, bytes]:
        try:
            client_key = bytes.fromhex(headers.get(KEY_HEADER, ""))
            at_ms = int(headers.get(TIME_HEADER, ""))
            nonce = bytes.fromhex(headers.get(NONCE_HEADER, ""))
            signature = bytes.fromhex(headers.get(SIGNATURE_HEADER, ""))
        except ValueError:
            raise SyncRejected("sync requests need signed X-Neuralsync-Key/-Time/-Nonce/-Signature headers",
                               status=401) from None
        if len(client_key) != 32 or len(nonce) != 16:
            raise SyncRejected("malformed sync authentication headers", status=401)
        peer = registry.by_key(client_key)
        if peer is None:
            raise SyncRejected("unknown peer key: add it here with 'neuralsync peer add NAME URL --key KEY'",
                               status=403)
        if abs(now_ms() - at_ms) > MAX_CLOCK_SKEW_MS:
            raise SyncRejected("request time is more than 5 minutes from this replica's clock", status=401)
        return peer, client_key, at_ms, nonce, signature

    def _use_nonce(self, peer_key: bytes, nonce: bytes, now: int) -> None:
        with self._lock:
            seen = self._nonces.setdefault(peer_key, OrderedDict())
            while seen and next(iter(seen.values())) < now - 2 * MAX_CLOCK_SKEW_MS:
                seen.popitem(last=False)
            if nonce in seen:
                raise SyncRejected("replayed sync request (nonce already used)", status=401)
            if len(seen) >= self._max_nonces:
                raise SyncRejected("too many sync requests from this peer in the last 10 minutes; retry later",
                                   status=429)
            seen[nonce] = now


