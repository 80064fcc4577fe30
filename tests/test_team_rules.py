"""Shared scopes' own rules, on ops alone: scope ids bound to their creator, device certificates, membership
ops and the rights their fold gives (``oplog/team.py``)."""

from __future__ import annotations

import os
from typing import Any

import nacl.signing
import pytest

from neuralsync.errors import InvalidOp
from neuralsync.model import Op
from neuralsync.oplog import codec, team

ALICE_USER, BOB_USER, EVE_USER = (nacl.signing.SigningKey(bytes([n]) * 32) for n in (11, 12, 13))
ALICE_LAPTOP, ALICE_DESKTOP, BOB_LAPTOP, EVE_LAPTOP = (nacl.signing.SigningKey(bytes([n]) * 32) for n in (1, 2, 3, 4))
NONCE = bytes(range(16))
HLC = 1 << 40


def pub(key: nacl.signing.SigningKey) -> bytes:
    return bytes(key.verify_key)


SCOPE = team.scope_id_for(pub(ALICE_USER), "platform", NONCE)


def genesis(name: str = "platform", nonce: bytes = NONCE, device: nacl.signing.SigningKey = ALICE_LAPTOP,
            user: nacl.signing.SigningKey = ALICE_USER, graph: bytes | None = None) -> Op:
    scope = graph or team.scope_id_for(pub(user), name, nonce)
    fields = {"name": name, "user": pub(user), "nonce": nonce, "cert": team.certify_device(user, pub(device))}
    return codec.make_op(device, "team_create", scope.hex(), fields, HLC, (), graph=scope)


def member(author: nacl.signing.SigningKey, user: nacl.signing.SigningKey, role: str, hlc: int = HLC + 1,
           preds: tuple[bytes, ...] = ()) -> Op:
    return codec.make_op(author, "team_member", pub(user).hex(), {"user": pub(user), "role": role}, hlc, preds,
                         graph=SCOPE)


def device(dev: nacl.signing.SigningKey, user: nacl.signing.SigningKey, hlc: int = HLC + 2) -> Op:
    fields = {"user": pub(user), "cert": team.certify_device(user, pub(dev))}
    return codec.make_op(dev, "team_device", pub(dev).hex(), fields, hlc, (), graph=SCOPE)


def parsed(op: Op) -> Op:
    return codec.parse_op(op.body, op.sig)


def folded(*ops: Op) -> team.Membership:
    return team.Membership.fold(team.MembershipOp(op.hlc, op.id, op.kind, op.author, op.fields) for op in ops)


def test_a_scope_id_is_bound_to_its_creator_name_and_nonce() -> None:
    root = parsed(genesis())
    assert root.graph == SCOPE and root.record_id == SCOPE.hex()
    squatter = genesis(device=EVE_LAPTOP, user=EVE_USER, graph=SCOPE)  # Eve claims Alice's scope id
    with pytest.raises(InvalidOp, match="scope id"):
        parsed(squatter)
    assert team.scope_id_for(pub(ALICE_USER), "platform", os.urandom(16)) != SCOPE


def test_a_device_certificate_is_the_users_signature_of_that_device() -> None:
    forged = {"name": "platform", "user": pub(ALICE_USER), "nonce": NONCE,
              "cert": team.certify_device(EVE_USER, pub(EVE_LAPTOP))}
    op = codec.make_op(EVE_LAPTOP, "team_create", SCOPE.hex(), forged, HLC, (), graph=SCOPE)
    with pytest.raises(InvalidOp, match="certificate"):
        parsed(op)
    parsed(device(ALICE_DESKTOP, ALICE_USER))
    stolen = {"user": pub(ALICE_USER), "cert": team.certify_device(ALICE_USER, pub(ALICE_DESKTOP))}
    with pytest.raises(InvalidOp):  # Alice's desktop certificate replayed by Eve's device
        parsed(codec.make_op(EVE_LAPTOP, "team_device", pub(EVE_LAPTOP).hex(), stolen, HLC, (), graph=SCOPE))


@pytest.mark.parametrize(("kind", "record", "fields", "graph", "why"), [
    ("team_member", "ab" * 32, {"user": pub(BOB_USER), "role": "writer"}, None, "shared scope"),
    ("team_member", pub(BOB_USER).hex(), {"user": pub(BOB_USER), "role": "owner"}, SCOPE, "role"),
    ("team_member", pub(EVE_USER).hex(), {"user": pub(BOB_USER), "role": "writer"}, SCOPE, "record"),
    ("team_member", pub(BOB_USER).hex(), {"user": b"short", "role": "writer"}, SCOPE, "user"),
    ("persona", "persona", {"text": "terse"}, SCOPE, "does not belong"),
])
def test_membership_ops_obey_their_own_rules(kind: str, record: str, fields: dict[str, Any], graph: bytes | None,
                                             why: str) -> None:
    op = codec.make_op(ALICE_LAPTOP, kind, record, fields, HLC, (), graph=graph)
    with pytest.raises(InvalidOp, match=why):
        parsed(op)


def test_rights_come_from_the_fold_of_the_membership_ops() -> None:
    root = genesis()
    bob_in = member(ALICE_LAPTOP, BOB_USER, "writer")
    bob_dev = device(BOB_LAPTOP, BOB_USER)
    state = folded(root, bob_in, bob_dev)
    assert state.name == "platform" and state.creator == pub(ALICE_USER)
    assert state.role_of_device(pub(ALICE_LAPTOP)) == "admin" and state.role_of_device(pub(BOB_LAPTOP)) == "writer"
    state.check("create", pub(BOB_LAPTOP), {})
    with pytest.raises(InvalidOp, match="admin"):
        state.check("team_member", pub(BOB_LAPTOP), {"user": pub(EVE_USER)})
    with pytest.raises(InvalidOp, match="writer"):  # a device nobody certified in the scope
        state.check("create", pub(ALICE_DESKTOP), {})
    with pytest.raises(InvalidOp, match="not a member"):
        state.check("team_device", pub(EVE_LAPTOP), {"user": pub(EVE_USER)})
    reader = folded(root, member(ALICE_LAPTOP, BOB_USER, "reader"), bob_dev)
    with pytest.raises(InvalidOp, match="writer"):
        reader.check("update", pub(BOB_LAPTOP), {})
    removed = folded(root, bob_in, bob_dev, member(ALICE_LAPTOP, BOB_USER, "removed", hlc=HLC + 9))
    assert removed.role_of_device(pub(BOB_LAPTOP)) is None
    with pytest.raises(InvalidOp):
        removed.check("create", pub(BOB_LAPTOP), {})
    # The fold is the same whatever order the ops arrive in.
    assert folded(bob_dev, member(ALICE_LAPTOP, BOB_USER, "removed", hlc=HLC + 9), bob_in, root) == removed
