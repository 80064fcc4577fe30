"""The op log: canonical encoding, op ids, signatures, the identity key and the hash chain."""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from neuralsync.errors import ConfigError, InvalidOp
from neuralsync.model import MAX_CONTENT_CHARS, Op
from neuralsync.oplog import codec as crdt
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

MakeApi = Callable[..., UnifiedMemoryAPI]

scalars = (st.none() | st.booleans() | st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text() | st.binary())


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


# Three levels of containers: well inside crdt.MAX_DEPTH, so every value is encodable.
values = scalars | _nested(scalars | _nested(scalars | _nested(scalars)))


def same(a: Any, b: Any) -> bool:
    """Equality that also tells 1, 1.0 and True apart (Python's == does not)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def canonical(value: Any) -> Any:
    """What decode(encode(value)) must return: -0.0 folded into 0.0."""
    if isinstance(value, float) and value == 0.0:
        return 0.0
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------- encoding
@given(values)
def test_encoding_round_trips(value: Any) -> None:
    decoded = crdt.decode(crdt.encode(value))
    assert same(decoded, canonical(value))
    assert crdt.encode(decoded) == crdt.encode(value)


@given(values, values)
def test_encoding_is_injective(a: Any, b: Any) -> None:
    if not same(canonical(a), canonical(b)):
        assert crdt.encode(a) != crdt.encode(b)


@pytest.mark.parametrize(("a", "b"), [
    (["ab", "c"], ["a", "bc"]),
    ([1], [1.0]),
    (1, 1.0),
    (1, True),
    (0, False),
    (1.0, True),
    ("", None),
    (b"x", "x"),
    ([], {}),
    ([[]], [[], []]),
    ({"a": "b"}, ["a", "b"]),
    ("a", ["a"]),
])
def test_distinct_values_have_distinct_encodings(a: Any, b: Any) -> None:
    assert crdt.encode(a) != crdt.encode(b)


def test_negative_zero_folds_to_zero() -> None:
    assert crdt.encode(-0.0) == crdt.encode(0.0)
    assert math.copysign(1, crdt.decode(crdt.encode(-0.0))) == 1


def test_map_key_order_does_not_change_the_encoding() -> None:
    assert crdt.encode({"b": 1, "a": 2}) == crdt.encode({"a": 2, "b": 1})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [math.nan], {"x": math.nan}])
def test_non_finite_floats_are_rejected(value: Any) -> None:
    with pytest.raises(InvalidOp):
        crdt.encode(value)


@pytest.mark.parametrize("value", [1 << 63, -(1 << 63) - 1, {1: "x"}, {1, 2}, object(), [[[[[[[[[[1]]]]]]]]]]])
def test_unencodable_values_are_rejected(value: Any) -> None:
    with pytest.raises(InvalidOp):
        crdt.encode(value)


def _map(*pairs: tuple[str, int]) -> bytes:
    """A raw map encoding with keys in the given order (bypassing the sorting encoder)."""
    return b"d" + struct.pack(">I", len(pairs)) + b"".join(crdt.encode(k) + crdt.encode(v) for k, v in pairs)


@pytest.mark.parametrize(("data", "why"), [
    (crdt.encode(1) + b"\x00", "trailing"),
    (crdt.encode("x") + crdt.encode("y"), "trailing"),
    (_map(("b", 1), ("a", 2)), "sorted"),
    (_map(("a", 1), ("a", 2)), "sorted"),
    (b"d" + struct.pack(">I", 1) + crdt.encode(5) + crdt.encode(1), "sorted"),
    (b"f" + struct.pack(">d", -0.0), "non-canonical"),
    (b"f" + struct.pack(">d", math.nan), "non-canonical"),
    (b"s" + struct.pack(">I", 10) + b"abc", "truncated"),
    (b"s" + struct.pack(">I", 1) + b"\xff", "malformed"),
    (b"i\x00\x00", "malformed"),
    (b"Z", "unknown|malformed"),
    (b"", "unknown|malformed"),
    (b"l" + struct.pack(">I", 3) + crdt.encode(1), "malformed|unknown"),
])
def test_decode_rejects_non_canonical_or_broken_bytes(data: bytes, why: str) -> None:
    with pytest.raises(InvalidOp, match=why):
        crdt.decode(data)


# ---------------------------------------------------------------- ops
@pytest.fixture
def key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


def _op(key: nacl.signing.SigningKey, preds: tuple[bytes, ...] = ()) -> Op:
    fields = {"content": "hello", "scope": "global", "kind": "fact", "priority": 0.5, "confidence": 0.8,
              "created_at": 1, "tags": ["a", "b"]}
    return crdt.make_op(key, "create", "0" * 32, fields, 1 << 40, preds)


CREATE = {"content": "x", "scope": "g", "kind": "f", "priority": 0.5, "confidence": 0.5}


@pytest.mark.parametrize(("kind", "record_id", "fields", "reason"), [
    ("create", "0" * 32, {"content": "x"}, "lacks"),
    ("create", "0" * 32, {"content": "", "scope": "g", "kind": "f", "priority": 0.5, "confidence": 0.5}, "content"),
    ("create", "0" * 32, {"content": "x", "scope": "g", "kind": "f", "priority": 2.0, "confidence": 0.5}, "priority"),
    ("update", "0" * 32, {"tags": "not-a-list"}, "tags"),
    ("update", "not-an-id", {"content": "x"}, "record id"),
    ("tag_remove", "0" * 32, {"tag": "a", "removes": [b"short"]}, "32-byte"),
    ("persona", "persona", {"text": 5}, "persona"),
    # One content rule for local and remote writes (issue 13): the protocol limit, text to read.
    ("create", "0" * 32, {**CREATE, "content": "x" * (MAX_CONTENT_CHARS + 1)}, "content"),
    ("create", "0" * 32, {**CREATE, "content": "\x00"}, "content"),
    ("update", "0" * 32, {"content": "a\x00b"}, "content"),
    ("update", "0" * 32, {"content": " \n\u200b\t"}, "content"),
    ("update", "0" * 32, {"scope": "a\u202eb"}, "scope"),
    ("update", "0" * 32, {"tool": "a\x85b"}, "tool"),
    ("tag_add", "0" * 32, {"tag": "\u2066x"}, "tag"),
    ("update", "0" * 32, {"tags": ["ok", "a\u202eb"]}, "tags"),
    ("persona", "persona", {"text": "x" * (MAX_CONTENT_CHARS + 1)}, "persona"),
])
def test_ops_with_invalid_fields_are_rejected_by_rule(key: nacl.signing.SigningKey, kind: str, record_id: str,
                                                      fields: dict[str, object], reason: str) -> None:
    op = crdt.make_op(key, kind, record_id, fields, 1 << 40, ())
    with pytest.raises(InvalidOp, match=reason):
        crdt.parse_op(op.body, op.sig)


def test_op_id_is_sha256_of_the_header_that_commits_to_the_fields(key: nacl.signing.SigningKey) -> None:
    op = _op(key)
    skeleton = crdt.skeleton_of(op.body)
    assert skeleton is not None and op.id == hashlib.sha256(skeleton).digest()
    header = crdt.decode(skeleton)
    assert header["fields_hash"] == hashlib.sha256(crdt.encode(crdt.decode(op.body)["fields"])).digest()
    assert crdt.decode(op.body)["fields"]["content"] == "hello"


def test_a_skeleton_verifies_from_the_store_and_is_refused_from_a_peer(key: nacl.signing.SigningKey) -> None:
    op = _op(key)
    skeleton = crdt.skeleton_of(op.body)
    assert skeleton is not None
    kept = crdt.parse_op(skeleton, op.sig, stored=True)
    assert (kept.id, kept.pruned, kept.fields, kept.preds) == (op.id, True, {}, op.preds)
    with pytest.raises(InvalidOp):
        crdt.parse_op(skeleton, op.sig)  # a peer's skeleton: its fields could not be checked
    forged = crdt.decode(skeleton)
    forged["fields_hash"] = bytes(32)
    with pytest.raises(InvalidOp, match="signature"):
        crdt.parse_op(crdt.encode(forged), op.sig, stored=True)


def test_a_format_1_op_still_verifies(key: nacl.signing.SigningKey) -> None:
    fields = {"content": "old", "scope": "g", "kind": "fact", "priority": 0.5, "confidence": 0.5}
    body = crdt.encode({"v": 1, "kind": "create", "record_id": "b" * 32, "hlc": 1 << 40,
                        "author": bytes(key.verify_key), "preds": [], "fields": fields})
    sig = key.sign(crdt.SIG_DOMAIN + hashlib.sha256(body).digest()).signature
    op = crdt.parse_op(body, sig)
    assert op.id == hashlib.sha256(body).digest() == crdt.op_id(body)
    assert crdt.skeleton_of(body) is None  # its id needs the whole body: never pruned


def test_a_graph_op_names_its_shared_scope_in_the_signed_header(key: nacl.signing.SigningKey) -> None:
    graph = hashlib.sha256(b"team scope").digest()
    fields = {"content": "team fact", "scope": "team", "kind": "fact", "priority": 0.5, "confidence": 0.5}
    op = crdt.make_op(key, "create", "c" * 32, fields, 1 << 40, (), graph=graph)
    plain = crdt.make_op(key, "create", "c" * 32, fields, 1 << 40, ())
    assert op.graph == graph and crdt.decode(op.body)["v"] == crdt.GRAPH_FORMAT and op.id != plain.id
    assert crdt.parse_op(op.body, op.sig) == op and crdt.op_id(op.body) == op.id
    skeleton = crdt.skeleton_of(op.body)
    assert skeleton is not None and crdt.is_skeleton(skeleton) and not crdt.is_skeleton(op.body)
    assert crdt.parse_op(skeleton, op.sig, stored=True).graph == graph
    moved = crdt.decode(op.body)
    moved["graph"] = hashlib.sha256(b"another team").digest()  # the same op claimed for another scope
    with pytest.raises(InvalidOp, match="signature"):
        crdt.parse_op(crdt.encode(moved), op.sig)
    for bad in (b"short", "text"):
        with pytest.raises(InvalidOp, match="graph"):
            crdt.make_op(key, "create", "c" * 32, fields, 1 << 40, (), graph=bad)  # type: ignore[arg-type]
    unlabelled = crdt.decode(op.body)
    unlabelled["v"] = 2  # a graph key in a format-2 body, or a format-3 body without one: refused
    del moved["graph"]
    for body in (unlabelled, moved):
        with pytest.raises(InvalidOp):
            crdt.parse_op(crdt.encode(body), op.sig)


def test_a_valid_op_parses_back_identically(key: nacl.signing.SigningKey) -> None:
    op = _op(key, preds=(os.urandom(32), os.urandom(32)))
    assert crdt.parse_op(op.body, op.sig) == op


def test_preds_are_a_set_their_order_does_not_change_the_id(key: nacl.signing.SigningKey) -> None:
    a, b = os.urandom(32), os.urandom(32)
    assert _op(key, (a, b)).id == _op(key, (b, a)).id


def test_tampering_with_any_body_byte_is_detected(key: nacl.signing.SigningKey) -> None:
    op = _op(key)
    for index in range(len(op.body)):
        for flip in (0x01, 0x80):
            body = bytearray(op.body)
            body[index] ^= flip
            with pytest.raises(InvalidOp):
                crdt.parse_op(bytes(body), op.sig)


def test_tampering_with_any_signature_byte_is_detected(key: nacl.signing.SigningKey) -> None:
    op = _op(key)
    for index in range(len(op.sig)):
        sig = bytearray(op.sig)
        sig[index] ^= 0x01
        with pytest.raises(InvalidOp, match="signature"):
            crdt.parse_op(op.body, bytes(sig))


def test_truncated_or_extended_signature_is_rejected(key: nacl.signing.SigningKey) -> None:
    op = _op(key)
    for sig in (op.sig[:-1], op.sig + b"\x00", b""):
        with pytest.raises(InvalidOp):
            crdt.parse_op(op.body, sig)


def test_an_op_claiming_another_author_is_rejected(key: nacl.signing.SigningKey) -> None:
    op = _op(key)
    other = nacl.signing.SigningKey.generate()
    forged = crdt.op_body(op.kind, op.record_id, op.fields, op.hlc, bytes(other.verify_key), op.preds)
    with pytest.raises(InvalidOp, match="signature"):
        crdt.parse_op(forged, op.sig)


def test_a_signature_by_the_wrong_key_is_rejected(key: nacl.signing.SigningKey) -> None:
    op = _op(key)
    wrong = nacl.signing.SigningKey.generate().sign(crdt.SIG_DOMAIN + op.id).signature
    with pytest.raises(InvalidOp, match="signature"):
        crdt.parse_op(op.body, wrong)


def _body(**overrides: Any) -> dict[str, Any]:
    body = {"v": 1, "kind": "create", "record_id": "r", "fields": {}, "hlc": 1, "author": b"a" * 32, "preds": []}
    body.update(overrides)
    return body


@pytest.mark.parametrize("body", [
    _body(v=2),
    _body(kind="explode"),
    _body(record_id=""),
    _body(record_id="x" * 129),
    _body(fields=[]),
    _body(hlc=0),
    _body(hlc=True),
    _body(author=b"short"),
    _body(preds=[b"b" * 32, b"a" * 32]),
    _body(preds=[b"a" * 32, b"a" * 32]),
    _body(preds=[b"x" * 31]),
    _body(preds=[bytes([i]) * 32 for i in range(65)]),
    {k: v for k, v in _body().items() if k != "preds"},
    {**_body(), "extra": 1},
])
def test_structurally_invalid_ops_are_rejected(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidOp):
        crdt.parse_op(crdt.encode(body), b"\x00" * 64)


_KEY = nacl.signing.SigningKey(b"k" * 32)
_FIELDS = ("v", "kind", "record_id", "fields", "hlc", "author", "preds")


@given(st.sampled_from(_FIELDS), values, st.sampled_from(sorted(crdt.OP_KINDS)),
       st.dictionaries(st.sampled_from(["content", "tags", "tag", "removes", "text", "key", "metadata",
                                        "priority", "created_at", "scope"]), values, max_size=4))
def test_a_signed_op_of_any_shape_is_parsed_or_refused_never_crashes(slot: str, junk: Any, kind: str,
                                                                     fields: dict[str, Any]) -> None:
    """Whatever a peer signs, parsing gives an op or ``InvalidOp``: never another exception (which
    would turn a sync request into a 500 or end a session)."""
    body = _body(kind=kind, fields=fields, author=bytes(_KEY.verify_key))
    body[slot] = junk
    encoded = crdt.encode(body)
    signature = _KEY.sign(crdt.SIG_DOMAIN + crdt.op_id(encoded)).signature
    try:
        crdt.parse_op(encoded, signature)
    except InvalidOp:
        pass


def test_oversized_op_is_refused_when_made(key: nacl.signing.SigningKey) -> None:
    with pytest.raises(InvalidOp, match="exceeds"):
        crdt.make_op(key, "create", "r", {"content": "x" * (crdt.MAX_OP_BYTES + 1)}, 1, ())


# ---------------------------------------------------------------- identity key
def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    config = MemoryConfig(base_path=str(tmp_path / "s"))
    with UnifiedMemoryAPI(config) as first:
        site = first.log.site_id
    assert config.key_path.stat().st_mode & 0o777 == 0o600
    raw = config.key_path.read_bytes()
    with UnifiedMemoryAPI(config) as second:
        assert second.log.site_id == site
    assert config.key_path.read_bytes() == raw


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    config = MemoryConfig(base_path=str(tmp_path / "s"))
    UnifiedMemoryAPI(config).close()
    config.key_path.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        UnifiedMemoryAPI(config)


def test_key_of_wrong_length_is_refused(tmp_path: Path) -> None:
    config = MemoryConfig(base_path=str(tmp_path / "s"))
    config.home.mkdir(parents=True)
    fd = os.open(config.key_path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"short")
    os.close(fd)
    with pytest.raises(ConfigError, match="bytes"):
        UnifiedMemoryAPI(config)


# ---------------------------------------------------------------- the chain
def _log(api: UnifiedMemoryAPI) -> list[Op]:
    rows = api.storage.conn.execute("SELECT body, sig FROM ops ORDER BY seq").fetchall()
    return [crdt.parse_op(body, sig) for body, sig in rows]


def _heads(api: UnifiedMemoryAPI) -> list[bytes]:
    return [h for (h,) in api.storage.conn.execute("SELECT id FROM heads")]


def test_every_mutation_appends_ops_chained_on_the_previous_head(api: UnifiedMemoryAPI) -> None:
    mid = api.remember("first", tags=["keep", "drop"])
    mutations: list[tuple[Callable[[], object], list[str]]] = [
        (lambda: api.remember("second"), ["create"]),
        (lambda: api.update(mid, content="first, edited", priority=0.9), ["update"]),
        (lambda: api.update(mid, tags=["keep", "drop", "new"]), ["tag_add"]),
        (lambda: api.update(mid, tags=["keep"]), ["tag_remove", "tag_remove"]),
        (lambda: api.update(mid, tags=["other"], scope="s2"), ["update", "tag_add", "tag_remove"]),
        (lambda: api.set_persona("terse"), ["persona"]),
        (lambda: api.forget(mid), ["delete"]),
    ]
    for mutate, kinds in mutations:
        before = _log(api)
        mutate()
        after = _log(api)
        new = after[len(before):]
        assert [op.kind for op in new] == kinds
        previous = before[-1].id
        for op in new:
            assert op.preds == (previous,)
            assert op.hlc > before[-1].hlc
            previous = op.id
        assert _heads(api) == [after[-1].id]
        assert all(op.author == api.log.author for op in new)


def test_first_op_has_no_preds_and_becomes_the_only_head(api: UnifiedMemoryAPI) -> None:
    api.remember("only")
    (op,) = _log(api)
    assert op.preds == ()
    assert _heads(api) == [op.id]


def test_tag_remove_names_the_add_ops_it_observed(api: UnifiedMemoryAPI) -> None:
    mid = api.remember("x", tags=["a"])
    api.update(mid, tags=["a", "b"])
    api.update(mid, tags=[])
    log = _log(api)
    create, add_b = log[0], log[1]
    removes = {op.fields["tag"]: op.fields["removes"] for op in log if op.kind == "tag_remove"}
    assert removes == {"a": [create.id], "b": [add_b.id]}


def test_failed_validation_appends_no_op(api: UnifiedMemoryAPI) -> None:
    mid = api.remember("x")
    before = _log(api)
    with pytest.raises(ValueError):
        api.update(mid, priority=2)
    assert _log(api) == before


def test_a_predecessor_at_the_maximum_clock_does_not_drag_the_local_clock() -> None:
    from neuralsync.oplog.clock import HLC_MAX, HybridClock, hlc_ms, pack

    wall = 1_700_000_000_000
    clock = HybridClock(wall=lambda: wall, max_skew_ms=1000)
    first = clock.tick(after=HLC_MAX)
    clock.observe(HLC_MAX)
    second = clock.tick()
    assert hlc_ms(first) <= wall + 1000 and hlc_ms(second) <= wall + 1000
    assert first < second
    assert clock.tick(after=pack(wall + 10)) > pack(wall + 10)  # honest skew is followed
