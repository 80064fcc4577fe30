"""The sync protocol's wire format and bounds: messages, the Bloom filter of op ids, byte budgets.

Everything a peer sends is bounded here (ops, needs and heads per message,
filter size, op size) and refused with :class:`~neuralsync.errors.SyncRejected`
naming what is wrong. The Bloom filter is salted per session, so nobody can
craft ids that collide in everyone's filter; its bytes must agree on every
replica, so it is written out here rather than taken from a library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import SyncRejected
from ..oplog import codec

PROTOCOL_VERSION = 1
MAX_OPS_PER_MESSAGE = 2000
MAX_MESSAGE_BYTES = 16 << 20  # the HTTP body limit of the sync route
OP_BYTE_BUDGET = 8 << 20  # ops per message stop here (one op may be up to codec.MAX_OP_BYTES)
MAX_NEED = 2000
MAX_HEADS = 1000
MAX_PENDING = 20_000  # ops waiting for predecessors, per peer and session
MAX_ROUNDS = 500
MAX_SESSION_S = 900.0  # a session stops here (progress is kept; the next sync goes on from it)
MAX_PENDING_BYTES = 64 << 20  # bytes of ops waiting for predecessors, per peer and session
MAX_BLOOM_ENTRIES = 200_000
MAX_BLOOM_BITS = 16 * MAX_BLOOM_ENTRIES
BLOOM_BITS_PER_ENTRY = 10
BLOOM_HASHES = 7




class Budget:
    """Room left in one message: at most ``count`` items and ``size`` bytes. The first item always
    goes (an op may be larger than the budget on its own); later ones only if they fit."""

    def __init__(self, count: int, size: int) -> None:
        self.count = count
        self.left = size
        self.taken = 0

    def take(self, nbytes: int) -> bool:
        """Reserve room for an item of ``nbytes``; False when it does not fit (the message is full)."""
        if self.taken >= self.count or (self.taken and self.left - nbytes < 0):
            return False
        self.taken += 1
        self.left -= nbytes
        return True


# ---------------------------------------------------------------- Bloom filter
class Bloom:
    """A salted Bloom filter of op ids (10 bits per entry, 7 hashes: about 1% false positives)."""

    def __init__(self, salt: bytes, bits: bytearray, hashes: int = BLOOM_HASHES) -> None:
        self.salt = salt
        self.bits = bits
        self.size = len(bits) * 8
        self.hashes = hashes

    @classmethod
    def of(cls, ids: Iterable[bytes], count: int, salt: bytes | None = None) -> Bloom:
        """A filter holding ``ids`` (``count`` of them)."""
        size = max(64, math.ceil(count * BLOOM_BITS_PER_ENTRY / 8) * 8)
        bloom = cls(salt or secrets.token_bytes(16), bytearray(size // 8))
        for oid in ids:
            for index in bloom._indexes(oid):
                bloom.bits[index >> 3] |= 1 << (index & 7)
        return bloom

    def _indexes(self, oid: bytes) -> list[int]:
        digest = hashlib.blake2b(oid, key=self.salt, digest_size=16).digest()
        first, second = int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big") | 1
        return [(first + i * second) % self.size for i in range(self.hashes)]

    def __contains__(self, oid: bytes) -> bool:
        return all(self.bits[i >> 3] & (1 << (i & 7)) for i in self._indexes(oid))

    def to_wire(self) -> dict[str, Any]:
        """JSON form."""
        return {"salt": base64.b64encode(self.salt).decode(), "hashes": self.hashes,
                "bits": base64.b64encode(bytes(self.bits)).decode()}

    @classmethod
    def from_wire(cls, data: object) -> Bloom:
        """Parse a peer's filter, bounded."""
        if not isinstance(data, dict):
            raise SyncRejected("have.bloom must be an object", field="have.bloom")
        try:
            salt = base64.b64decode(str(data.get("salt", "")), validate=True)
            raw_bits = str(data.get("bits", ""))
            if len(raw_bits) > MAX_BLOOM_BITS // 6 + 8:
                raise SyncRejected("have.bloom is too large", field="have.bloom")
            bits = bytearray(base64.b64decode(raw_bits, validate=True))
        except (ValueError, binascii.Error):
            raise SyncRejected("have.bloom is not valid base64", field="have.bloom") from None
        hashes = data.get("hashes")
        if not 8 <= len(salt) <= 64 or type(hashes) is not int or not 1 <= hashes <= 16 or len(bits) < 8:
            raise SyncRejected("have.bloom needs an 8-64 byte salt, 1-16 hashes and at least 64 bits",
                                field="have.bloom")
        return cls(salt, bits, hashes)


# ---------------------------------------------------------------- messages
@dataclass
class Message:
    """One sync message, either direction."""

    heads: list[bytes] = field(default_factory=list)
    need: list[bytes] = field(default_factory=list)
    last_sync: list[bytes] = field(default_factory=list)
    bloom: Bloom | None = None
    ops: list[tuple[bytes, bytes]] = field(default_factory=list)  # (body, sig), unparsed
    more: bool = False
    oversized: int = 0  # ops dropped unread for their size (refused by rule, logged by the receiver)

    def to_wire(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "v": PROTOCOL_VERSION,
            "heads": [h.hex() for h in self.heads],
            "need": [n.hex() for n in self.need],
            "have": {"last_sync": [h.hex() for h in self.last_sync],
                     "bloom": None if self.bloom is None else self.bloom.to_wire()},
            "ops": [[base64.b64encode(b).decode(), base64.b64encode(s).decode()] for b, s in self.ops],
            "more": self.more,
        }

    @classmethod
    def from_wire(cls, data: object) -> Message:
        """Parse and bound a message; :class:`SyncRejected` names what is wrong."""
        if not isinstance(data, dict):
            raise SyncRejected("a sync message must be a JSON object", field="body")
        version = data.get("v")
        if type(version) is not int or version != PROTOCOL_VERSION:  # True and 1.0 equal 1 in Python
            raise SyncRejected(f"unsupported sync protocol version {version!r} (this replica speaks 1)", field="v")
        have = data.get("have") or {}
        if not isinstance(have, dict):
            raise SyncRejected("have must be an object", field="have")
        message = cls(
            heads=_ids(data.get("heads", []), "heads", MAX_HEADS),
            need=_ids(data.get("need", []), "need", MAX_NEED),
            last_sync=_ids(have.get("last_sync", []), "have.last_sync", MAX_HEADS),
            bloom=None if have.get("bloom") is None else Bloom.from_wire(have["bloom"]),
            more=data.get("more") is True,
        )
        ops = data.get("ops", [])
        if not isinstance(ops, list) or len(ops) > MAX_OPS_PER_MESSAGE:
            raise SyncRejected(f"ops must be a list of at most {MAX_OPS_PER_MESSAGE}", field="ops")
        for index, pair in enumerate(ops):
            if (not isinstance(pair, list) or len(pair) != 2
                    or not all(isinstance(x, str) for x in pair)):
                raise SyncRejected(f"ops[{index}] must be [body, signature] in base64", field=f"ops[{index}]")
            if len(pair[0]) > codec.MAX_OP_BYTES * 4 // 3 + 4:
                message.oversized += 1
                continue
            try:
                message.ops.append((base64.b64decode(pair[0], validate=True), base64.b64decode(pair[1], validate=True)))
            except (ValueError, binascii.Error):
                raise SyncRejected(f"ops[{index}] is not valid base64", field=f"ops[{index}]") from None
        return message


def _ids(value: object, name: str, limit: int) -> list[bytes]:
    if not isinstance(value, list) or len(value) > limit:
        raise SyncRejected(f"{name} must be a list of at most {limit} op ids", field=name)
    out = []
    for item in value:
        if not isinstance(item, str) or len(item) != 64:
            raise SyncRejected(f"{name} holds something that is not a 64-hex-digit op id", field=name)
        try:
            out.append(bytes.fromhex(item))
        except ValueError:
            raise SyncRejected(f"{name} holds something that is not a 64-hex-digit op id", field=name) from None
    return out


