"""Trusted peers: the ``peers`` table (name, URL, Ed25519 public key, last common heads).

How a peer proves who it is, request by request, is :mod:`.signing`.

The list of peers is local configuration. It decides who may *talk* to this
replica, never whether an op is valid: ops carry their own signatures, and an
op from any author is judged by the same rules on every replica.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import nacl.exceptions
import nacl.signing

from ..errors import InvalidInput, NotFound
from ..store.storage import Storage
from ..utils import now_ms

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


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
                raise NotFound(f"no peer named {name!r}", field="name")

    def all(self) -> list[Peer]:
        """Every trusted peer, by name."""
        return [_row_to_peer(r) for r in self.storage.conn.execute(f"SELECT {_COLUMNS} FROM peers ORDER BY name")]

    def get(self, name: str) -> Peer:
        """The peer with this name."""
        row = self.storage.conn.execute(f"SELECT {_COLUMNS} FROM peers WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no peer named {name!r} (see 'neuralsync peer list')", field="name")
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
