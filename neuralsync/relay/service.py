"""The relay's rules, without HTTP: registering devices, pushing and pulling a scope's ops, listing scopes.

The relay is untrusted by design: replicas verify every op they pull and decide rights from the scope's
graph themselves. What the relay checks is what keeps its database clean and private: every op parses and
verifies (signature, id = hash, size bounds) and belongs to the scope it is pushed to; each request runs
as the pushing device's user, so PostgreSQL's row-level security (``migrations/0001_relay.sql``) refuses
a non-member; a bad op is refused with its reason and the rest of the batch goes on.

Membership in the relay's own table (what the database enforces) follows the verified membership ops it
sees: a ``team_create`` op creates its scope with the creator as admin (the scope id is bound to the
creator, so nobody else can make that root), and a ``team_member`` op signed by a device whose user is an
admin in the relay's table sets that member's role; the latest per user by (hlc, op id) wins.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nacl.signing

from ..errors import InvalidOp, SyncRejected
from ..model import Op
from ..oplog import codec, team
from ..utils import now_ms
from .store import Pulled, RelayOp, RelayStore

MAX_PUSH_OPS = 1000
MAX_PULL_OPS = 2000
MAX_PULL_BYTES = 8 << 20  # a pull answer stops adding ops past this many body bytes (always at least one)
NONCE_WINDOW_MS = 10 * 60 * 1000  # twice the accepted clock skew of a signed request
MAX_NONCES_PER_DEVICE = 20_000


@dataclass(frozen=True, slots=True)
class Refused:
    """An op of a batch the relay would not store, and why."""

    index: int
    op_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class PushReport:
    stored: int
    duplicates: int
    last_seq: int
    refused: tuple[Refused, ...] = ()
    created: bool = False
    members_changed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"stored": self.stored, "duplicates": self.duplicates, "last_seq": self.last_seq,
                "refused": [{"index": r.index, "id": r.op_id, "reason": r.reason} for r in self.refused],
                "created": self.created, "members_changed": self.members_changed}


@dataclass(frozen=True, slots=True)
class PullPage:
    ops: list[dict[str, Any]] = field(default_factory=list)
    cursor: int = 0
    last_seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"ops": self.ops, "cursor": self.cursor, "last_seq": self.last_seq}


def scope_of(text: object, name: str = "scope") -> bytes:
    """A scope id from its 64 hex digits, or a 400 naming the field."""
    try:
        value = bytes.fromhex(text) if isinstance(text, str) else b""
    except ValueError:
        value = b""
    if len(value) != 32:
        raise SyncRejected(f"{name} must be a scope id: 64 hex digits", field=name)
    return value


def wire(item: Pulled) -> dict[str, Any]:
    """A stored op in the wire form replicas read (``codec.op_from_wire``: id, body, signature) plus its seq.
    The readable header copies are left out: replicas verify the body, and decoding costs the relay time."""
    return {"id": item.op_id.hex(), "body": base64.b64encode(item.body).decode("ascii"),
            "sig": base64.b64encode(item.sig).decode("ascii"), "seq": item.seq}


class Relay:
    """The relay service over a :class:`RelayStore`; ``key`` is the relay's own signing key (it signs replies)."""

    def __init__(self, store: RelayStore, key: nacl.signing.SigningKey) -> None:
        self.store = store
        self.key = key
        self.public_key = bytes(key.verify_key)

    # -- devices
    def register(self, user_key: bytes, device_key: bytes, certificate: bytes) -> None:
        """Admit a device whose user key certified it (team.certify_device); its user gets a role."""
        for name, value, size in (("user", user_key, 32), ("device", device_key, 32), ("certificate", certificate, 64)):
            if len(value) != size:
                raise SyncRejected(f"{name} must be {size} bytes", field=name)
        try:
            team.check_certificate(user_key, device_key, certificate)
        except InvalidOp as exc:
            raise SyncRejected(str(exc), status=403, field="certificate") from None
        known = self.store.user_of_device(device_key)
        if known is not None and known != user_key:
            raise SyncRejected("this device is registered for another user", status=409, field="device")
        self.store.add_user(user_key)
        self.store.add_device(device_key, user_key, certificate)

    def user_of(self, device_key: bytes) -> bytes:
        """The registered device's user, or a 403."""
        user = self.store.user_of_device(device_key)
        if user is None:
            raise SyncRejected("unknown device: register it first (POST /relay/v1/devices)", status=403,
                               field="X-Neuralsync-Key")
        return user

    def use_nonce(self, device_key: bytes, nonce: bytes) -> None:
        now = now_ms()
        self.store.use_nonce(device_key, nonce, now, now, NONCE_WINDOW_MS, MAX_NONCES_PER_DEVICE)

    # -- ops
    def push(self, device_key: bytes, scope: bytes, wire_ops: Sequence[object]) -> PushReport:
        """Store the batch's valid ops in the scope (as the device's user); refuse each bad one with its reason."""
        if len(wire_ops) > MAX_PUSH_OPS:
            raise SyncRejected(f"at most {MAX_PUSH_OPS} ops per push", status=413, field="ops")
        user = self.user_of(device_key)
        good, refused = self._parse(scope, wire_ops)
        created = self._create_scope(scope, user, good)
        if not good:
            return PushReport(0, 0, self._last_seq(user, scope), tuple(refused), created)
        # Membership first: a removal pushed together with later ops must already bar the removed member when
        # the push's notification wakes the streams. Only a writer's push moves it (a refused push moves nothing).
        changed = 0
        if any(op.kind == "team_member" for op in good) and self.store.role_in(scope, user) in team.WRITE_ROLES:
            changed = self._apply_membership(scope, good)
        result = self.store.push(user, scope, [RelayOp(op.id, op.body, op.sig, op.author) for op in good])
        return PushReport(result.stored, result.duplicates, result.last_seq, tuple(refused), created, changed)

    @staticmethod
    def _parse(scope: bytes, wire_ops: Sequence[object]) -> tuple[list[Op], list[Refused]]:
        good: list[Op] = []
        refused: list[Refused] = []
        for index, data in enumerate(wire_ops):
            claimed = data.get("id") if isinstance(data, dict) else None
            try:
                op = codec.op_from_wire(data)
                if op.graph != scope:
                    raise InvalidOp("the op belongs to another scope's graph" if op.graph else
                                    "a personal op (no graph) is never pushed to a relay")
            except InvalidOp as exc:
                refused.append(Refused(index, claimed if isinstance(claimed, str) else None, str(exc)))
                continue
            good.append(op)
        return good, refused

    def _create_scope(self, scope: bytes, user: bytes, ops: list[Op]) -> bool:
        """A verified root (``team_create``) of an unknown scope creates it, if its creator is the pusher's user."""
        root = next((op for op in ops if op.kind == "team_create"), None)
        if root is None or self.store.scope_exists(scope):
            return False
        if root.fields["user"] != user:  # parse_op checked the scope id is the creator's, and its certificate
            raise SyncRejected("only the scope's creator creates it on the relay", status=403, field="ops")
        self.store.create_scope(scope, user)
        return True

    def _apply_membership(self, scope: bytes, ops: list[Op]) -> int:
        """Member changes signed by a device whose user is an admin in the relay's table."""
        changed = 0
        for op in sorted((o for o in ops if o.kind == "team_member"), key=lambda o: (o.hlc, o.id)):
            author_user = self.store.user_of_device(op.author)
            if author_user is None or self.store.role_in(scope, author_user) != "admin":
                continue  # stored all the same: replicas judge it from the graph
            if op.fields["role"] != "removed":
                self.store.add_user(op.fields["user"])  # the member's role, before the row that names it
            changed += self.store.apply_member(scope, op.fields["user"], op.fields["role"], op.hlc, op.id)
        return changed

    def _last_seq(self, user: bytes, scope: bytes) -> int:
        """The scope's cursor as the user sees it (0 for a scope hidden from them: nothing is said of it)."""
        try:
            return self.store.pull(user, scope, 0, 1)[1]
        except SyncRejected:
            return 0

    def pull(self, device_key: bytes, scope: bytes, after: int = 0, limit: int = 1000) -> PullPage:
        """Ops after the cursor in cursor order (wire form plus ``seq``), as the device's user sees them."""
        if after < 0:
            raise SyncRejected("after must be 0 or more", field="after")
        if not 1 <= limit <= MAX_PULL_OPS:
            raise SyncRejected(f"limit must be 1 to {MAX_PULL_OPS}", field="limit")
        user = self.user_of(device_key)
        pulled, last = self.store.pull(user, scope, after, limit)
        ops: list[dict[str, Any]] = []
        size, cursor = 0, after
        for item in pulled:
            size += len(item.body)
            if ops and size > MAX_PULL_BYTES:
                break
            ops.append(wire(item))
            cursor = item.seq
        return PullPage(ops, cursor, last)

    def scopes(self, device_key: bytes) -> list[dict[str, Any]]:
        """The scopes the device's user is a member of: id, role, last seq."""
        user = self.user_of(device_key)
        return [{"scope": s.hex(), "role": role, "last_seq": last} for s, role, last in self.store.scopes_of(user)]
