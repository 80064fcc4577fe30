"""Shared (team) scopes: their ids, device certificates, membership ops and the rights they give.

A shared scope is a hash graph of its own (op format 3: the scope id is in every op's signed header). Its
root is a ``team_create`` op; the scope id is a hash of (creator's user key, name, nonce), so nobody but
the creator can make a root for it. People are *users* (a user key, kept on the person's machines) and
write through *devices* (each replica's own op-signing key), which their user key certifies.

Membership is a set of signed ops in the scope's own graph:

- ``team_create`` (record: the scope id): name, creator user, nonce, the certificate of the author device.
  The creator is the first admin.
- ``team_member`` (record: the user's key): role ``reader``, ``writer``, ``admin`` or ``removed``; by an
  admin.
- ``team_device`` (record: the device key): a member's device, certified by the member's user key; by
  that device.

Rights are decided as every validity rule is (Kleppmann, "Making CRDTs Byzantine Fault Tolerant"): from an
op and its ancestors only. The membership an op is judged by is the fold of the membership ops among its
ancestors, the latest per user by ``(effective clock, op id)``. So every replica decides alike, and a
removal is not retroactive: an op its author signed before seeing the removal (concurrent with it) stays
valid; ops that descend from the removal are refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import nacl.exceptions
import nacl.signing

from ..errors import InvalidOp

TEAM_KINDS = frozenset({"team_create", "team_member", "team_device"})
# What may appear in a shared scope's graph besides membership: memory ops (persona is personal).
CONTENT_KINDS = frozenset({"create", "update", "tag_add", "tag_remove", "delete", "merge", "unmerge", "purge"})
ROLES = ("reader", "writer", "admin")
MEMBER_ROLES = (*ROLES, "removed")
WRITE_ROLES = frozenset({"writer", "admin"})
SCOPE_PREFIX = "team:"
MAX_NAME = 64
_SCOPE_DOMAIN = b"neuralsync-team-scope-v1\x00"
_CERT_DOMAIN = b"neuralsync-device-cert-v1\x00"
_RECORD_DOMAIN = b"neuralsync-team-record-v1\x00"


def scope_id_for(user: bytes, name: str, nonce: bytes) -> bytes:
    """The id of the shared scope ``name`` created by ``user`` (32 bytes)."""
    raw = name.encode("utf-8")
    return hashlib.sha256(_SCOPE_DOMAIN + user + len(raw).to_bytes(2, "big") + raw + nonce).digest()


def record_id_for(graph: bytes, salt: object) -> str:
    """The id of a shared scope's memory: a hash of the scope and the create's ``id_salt`` (16 bytes), so no
    member can give a shared memory the id of someone's private one."""
    if not isinstance(salt, bytes) or len(salt) != 16:
        return ""  # no valid id: the create is refused
    return hashlib.sha256(_RECORD_DOMAIN + graph + salt).digest()[:16].hex()


def scope_label(name: str) -> str:
    """How a shared scope's memories are labelled in recall and lists (``team:<name>``)."""
    return SCOPE_PREFIX + name


def certify_device(user_key: nacl.signing.SigningKey, device: bytes) -> bytes:
    """The user key's certificate that ``device`` writes for it (a 64-byte signature)."""
    return user_key.sign(_CERT_DOMAIN + device + bytes(user_key.verify_key)).signature


def check_certificate(user: bytes, device: bytes, cert: object) -> None:
    """Raise :class:`InvalidOp` unless ``cert`` is ``user``'s certificate of ``device``."""
    if not isinstance(cert, bytes) or len(cert) != 64:
        raise InvalidOp("a device certificate is a 64-byte signature")
    try:
        nacl.signing.VerifyKey(user).verify(_CERT_DOMAIN + device + user, cert)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        raise InvalidOp("the device certificate is not the user's signature") from None


def _key32(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == 32


def check_team_fields(kind: str, record_id: str, fields: dict[str, Any], author: bytes,
                      graph: bytes | None) -> None:
    """The rules a membership op obeys on its own (rights need its ancestors: :class:`Membership`)."""
    if graph is None:
        raise InvalidOp(f"a {kind} op belongs to a shared scope's graph")
    user = fields.get("user")
    if not _key32(user):
        raise InvalidOp(f"{kind} op needs 'user': a 32-byte user key")
    assert isinstance(user, bytes)
    if kind == "team_create":
        name, nonce = fields.get("name"), fields.get("nonce")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or not name.replace("-", "").replace(
                "_", "").replace(".", "").isalnum():
            raise InvalidOp(f"team_create op needs a 'name' of 1 to {MAX_NAME} letters, digits, '-', '_' or '.'")
        if not isinstance(nonce, bytes) or len(nonce) != 16:
            raise InvalidOp("team_create op needs a 16-byte 'nonce'")
        if scope_id_for(user, name, nonce) != graph or record_id != graph.hex():
            raise InvalidOp("team_create op's scope id is not the hash of its creator, name and nonce")
        check_certificate(user, author, fields.get("cert"))
    elif kind == "team_member":
        if fields.get("role") not in MEMBER_ROLES or record_id != user.hex():
            raise InvalidOp(f"team_member op needs a 'role' (one of {', '.join(MEMBER_ROLES)}) for its record's user")
    elif kind == "team_device":
        if record_id != author.hex():
            raise InvalidOp("team_device op is written by the device it certifies")
        check_certificate(user, author, fields.get("cert"))


@dataclass(frozen=True, slots=True)
class MembershipOp:
    """A stored membership op, as the fold needs it."""

    eff: int
    id: bytes
    kind: str
    author: bytes
    fields: dict[str, Any]


@dataclass
class Membership:
    """The fold of a set of (valid) membership ops: users' roles and devices' users."""

    name: str | None = None
    creator: bytes | None = None
    roles: dict[bytes, str] = field(default_factory=dict)
    devices: dict[bytes, bytes] = field(default_factory=dict)

    @classmethod
    def fold(cls, ops: Iterable[MembershipOp]) -> Membership:
        state = cls()
        for op in sorted(ops, key=lambda o: (o.eff, o.id)):  # the root first: its clock is the smallest
            user = op.fields["user"]
            if op.kind == "team_create":
                state.name, state.creator = op.fields["name"], user
                state.devices[op.author] = user
                state.roles.setdefault(user, "admin")
            elif op.kind == "team_device":
                state.devices[op.author] = user
            else:
                state.roles[user] = op.fields["role"]  # the latest per user wins
        return state

    def role_of_device(self, device: bytes) -> str | None:
        user = self.devices.get(device)
        role = None if user is None else self.roles.get(user)
        return None if role == "removed" else role

    def check(self, kind: str, author: bytes, fields: dict[str, Any]) -> None:
        """Raise :class:`InvalidOp` unless ``author`` may write an op of ``kind`` under this membership."""
        if kind == "team_create":
            return
        if kind == "team_device":
            role = self.roles.get(fields["user"])
            if role is None or role == "removed":
                raise InvalidOp("a device of a user who is not a member of the scope")
            return
        role = self.role_of_device(author)
        if kind == "team_member":
            if role != "admin":
                raise InvalidOp("only an admin of the scope changes its members")
            return
        if kind not in CONTENT_KINDS:
            raise InvalidOp(f"a {kind} op does not belong to a shared scope")
        if role not in WRITE_ROLES:
            raise InvalidOp("the author is not a writer of the scope (as of the ops it had seen)")
