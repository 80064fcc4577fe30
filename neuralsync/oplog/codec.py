"""Ops of the hash-linked, signed log: canonical encoding, hashing, signing, checks.

Design (Kleppmann, "Making CRDTs Byzantine Fault Tolerant", PaPoC 2022):
an op's id is SHA-256 over a typed, length-prefixed canonical encoding of
``{v, kind, record_id, fields_hash, hlc, author, preds}`` (format 2: the fields
enter the id through their own hash, so an op whose fields were pruned keeps a
*skeleton* - that header - that still verifies; format 1, read still, hashed
the whole body ``{v, kind, record_id, fields, hlc, author, preds}``). The body
stored and sent is the full one, with the fields; the author is the Ed25519
public key itself, so a signature can be checked from the op alone; ``preds``
are the ids of the heads the author had seen. Validity depends only on the op
(and, in the sync layer, its ancestors) - never on local clock or config.

The encoding is our own rather than JSON so that floats, integers and nesting
have exactly one byte form: each value is a one-byte type tag, then a 4-byte
big-endian length (or fixed width), then the payload; map keys are sorted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import struct
from collections.abc import Iterable
from typing import Any

import nacl.exceptions
import nacl.signing

from ..errors import InvalidOp
from ..model import Op
from . import team
from .clock import HLC_MAX
from .fields import check_fields

FORMAT_VERSION = 2  # new ops; format 1 ops (id over the whole body) are still read and verified
# Format 3 is format 2 plus ``graph``: the id of the shared scope whose own hash graph the op belongs to
# (its predecessors are in that graph only). Ops without a graph belong to the replica's personal graph.
GRAPH_FORMAT = 3
FORMATS = (1, 2, 3)
OP_KINDS = frozenset({"create", "update", "tag_add", "tag_remove", "delete", "persona", "merge", "unmerge",
                      "purge"}) | team.TEAM_KINDS
MAX_OP_BYTES = 1 << 20  # one op, encoded
MAX_PREDS = 64
MAX_DEPTH = 8
SIG_DOMAIN = b"neuralsync-op-v1\x00"

_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")
_LEN = struct.Struct(">I")


# ---------------------------------------------------------------- encoding
def encode(value: Any) -> bytes:
    """The canonical byte form of a JSON-like value (None, bool, int, float, str, bytes, list, dict)."""
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value: Any, out: list[bytes], depth: int) -> None:
    # Exact-type dispatch first (the hot path: every op is encoded once),
    # then the subclass-tolerant checks.
    kind = type(value)
    if kind is str:
        raw = value.encode("utf-8")
        out.append(b"s" + _LEN.pack(len(raw)) + raw)
    elif kind is dict:
        _encode_map(value, out, depth)
    elif kind is float:
        if not math.isfinite(value):
            raise InvalidOp("non-finite float")
        out.append(b"f" + _F64.pack(value + 0.0))  # + 0.0 folds -0.0 into 0.0
    elif value is None:
        out.append(b"N")
    elif value is True:
        out.append(b"T")
    elif value is False:
        out.append(b"F")
    elif isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 63):
            raise InvalidOp("integer outside the signed 64-bit range")
        out.append(b"i" + _I64.pack(value))
    elif isinstance(value, (list, tuple)):
        if depth >= MAX_DEPTH:
            raise InvalidOp("value nested too deeply")
        out.append(b"l" + _LEN.pack(len(value)))
        for item in value:
            _encode(item, out, depth + 1)
    elif isinstance(value, dict):
        _encode_map(value, out, depth)
    elif isinstance(value, str):
        _encode(str(value), out, depth)
    elif isinstance(value, float):
        _encode(float(value), out, depth)
    elif isinstance(value, bytes):
        out.append(b"b" + _LEN.pack(len(value)) + bytes(value))
    else:
        raise InvalidOp(f"cannot encode a {type(value).__name__}")


def _encode_map(value: dict[Any, Any], out: list[bytes], depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise InvalidOp("value nested too deeply")
    out.append(b"d" + _LEN.pack(len(value)))
    for key in sorted(value):
        if type(key) is not str:
            raise InvalidOp("map keys must be strings")
        raw = key.encode("utf-8")
        out.append(b"s" + _LEN.pack(len(raw)) + raw)
        _encode(value[key], out, depth + 1)


def decode(data: bytes) -> Any:
    """Inverse of :func:`encode`; rejects trailing bytes and non-canonical maps."""
    data = bytes(data)
    try:
        value, end = _decode(data, 0, 0)
    except (struct.error, UnicodeDecodeError, IndexError) as exc:
        raise InvalidOp(f"malformed encoding: {exc}") from None
    if end != len(data):
        raise InvalidOp("trailing bytes after encoded value")
    return value


_T_STR, _T_BYTES, _T_INT, _T_FLOAT, _T_LIST, _T_MAP = b"sbifld"
_T_NONE, _T_TRUE, _T_FALSE = b"NTF"
_unpack_len = _LEN.unpack_from
_unpack_i64 = _I64.unpack_from
_unpack_f64 = _F64.unpack_from


def _decode(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    tag = buf[pos]
    pos += 1
    if tag == _T_STR or tag == _T_BYTES:
        (length,) = _unpack_len(buf, pos)
        pos += 4
        end = pos + length
        if end > len(buf):
            raise InvalidOp("truncated value")
        return (buf[pos:end].decode("utf-8") if tag == _T_STR else buf[pos:end]), end
    if tag == _T_INT:
        return _unpack_i64(buf, pos)[0], pos + 8
    if tag == _T_MAP or tag == _T_LIST:
        if depth >= MAX_DEPTH:
            raise InvalidOp("value nested too deeply")
        (length,) = _unpack_len(buf, pos)
        pos += 4
        if tag == _T_MAP:
            return _decode_map(buf, pos, depth, length)
        items = []
        for _ in range(length):
            item, pos = _decode(buf, pos, depth + 1)
            items.append(item)
        return items, pos
    if tag == _T_NONE:
        return None, pos
    if tag == _T_TRUE:
        return True, pos
    if tag == _T_FALSE:
        return False, pos
    if tag == _T_FLOAT:
        number = _unpack_f64(buf, pos)[0]
        if not math.isfinite(number) or (number == 0.0 and math.copysign(1, number) < 0):
            raise InvalidOp("non-canonical float")
        return number, pos + 8
    raise InvalidOp(f"unknown type tag {bytes([tag])!r}")


def _decode_map(buf: bytes, pos: int, depth: int, length: int) -> tuple[dict[str, Any], int]:
    result: dict[str, Any] = {}
    previous: str | None = None
    for _ in range(length):
        if buf[pos] != _T_STR:
            raise InvalidOp("map keys must be unique strings in sorted order")
        key, pos = _decode(buf, pos, depth + 1)
        if previous is not None and key <= previous:
            raise InvalidOp("map keys must be unique strings in sorted order")
        result[key], pos = _decode(buf, pos, depth + 1)
        previous = key
    return result, pos


# ---------------------------------------------------------------- ops
FULL_KEYS = frozenset({"v", "kind", "record_id", "fields", "hlc", "author", "preds"})
SKELETON_KEYS = frozenset({"v", "kind", "record_id", "fields_hash", "hlc", "author", "preds"})
GRAPH_KEYS = (FULL_KEYS | {"graph"}, SKELETON_KEYS | {"graph"})


def _key(name: str) -> bytes:
    raw = name.encode("utf-8")
    return b"s" + _LEN.pack(len(raw)) + raw


_K_AUTHOR, _K_FIELDS, _K_FIELDS_HASH, _K_GRAPH, _K_HLC, _K_KIND, _K_PREDS, _K_RECORD, _K_V = (
    _key(name) for name in ("author", "fields", "fields_hash", "graph", "hlc", "kind", "preds", "record_id", "v"))
_MAP7 = b"d" + _LEN.pack(7)
_MAP8 = b"d" + _LEN.pack(8)
_V2 = b"i" + _I64.pack(2)
_V3 = b"i" + _I64.pack(GRAPH_FORMAT)


def _op_bytes(kind: str, record_id: str, encoded_fields: bytes, hlc: int, author: bytes,
              preds: list[bytes], graph: bytes | None = None) -> tuple[bytes, bytes]:
    """(full body, skeleton) of a format-2 op (format 3 with a ``graph``), the fields encoded once. Keys
    in sorted order; the skeleton puts ``fields_hash`` where the body has ``fields`` (the same place in
    the order, before ``graph``)."""
    head = (_MAP7 if graph is None else _MAP8) + _K_AUTHOR + encode(author)
    tail = b"".join([b"" if graph is None else _K_GRAPH + encode(graph), _K_HLC, encode(hlc), _K_KIND,
                     encode(kind), _K_PREDS, encode(preds), _K_RECORD, encode(record_id), _K_V,
                     _V2 if graph is None else _V3])
    body = b"".join([head, _K_FIELDS, encoded_fields, tail])
    skeleton = b"".join([head, _K_FIELDS_HASH, encode(hashlib.sha256(encoded_fields).digest()), tail])
    return body, skeleton


def op_body(kind: str, record_id: str, fields: dict[str, Any], hlc: int, author: bytes,
            preds: Iterable[bytes], graph: bytes | None = None) -> bytes:
    """The canonical full body of a new op. Preds are sorted: a set, not a list."""
    return _op_bytes(kind, record_id, encode(fields), hlc, author, sorted(preds), _graph(graph))[0]


def _graph(graph: object) -> bytes | None:
    if graph is not None and not (isinstance(graph, bytes) and len(graph) == 32):
        raise InvalidOp("graph must be a 32-byte scope id")
    return graph


def skeleton_of(body: bytes) -> bytes | None:
    """The skeleton of a full format-2 body (what pruning keeps: it hashes to the op id), or None for
    a format-1 op (whose id needs the whole body) or a body that is a skeleton already."""
    data = decode(body)
    if not isinstance(data, dict) or data.get("v") not in (2, GRAPH_FORMAT) or set(data) != _full_keys(data["v"]):
        return None
    return _op_bytes(data["kind"], data["record_id"], encode(data["fields"]), data["hlc"], data["author"],
                     data["preds"], _graph(data.get("graph")))[1]


def _full_keys(version: object) -> frozenset[str]:
    return GRAPH_KEYS[0] if version == GRAPH_FORMAT else FULL_KEYS


_SKELETON_MARK = b"s" + _LEN.pack(11) + b"fields_hash"
_MARK_AT = 1 + 4 + (1 + 4 + 6) + (1 + 4 + 32)  # after the map header and the author entry


# The same test in SQL, on a column holding op bodies: substr is 1-based; the key's text follows its tag and length.
SKELETON_SQL = f"substr({{column}}, {_MARK_AT + 6}, 11) = CAST('fields_hash' AS BLOB)"


def is_skeleton(body: bytes) -> bool:
    """True for a stored skeleton (an op whose fields were pruned), without decoding it."""
    return body[_MARK_AT:_MARK_AT + len(_SKELETON_MARK)] == _SKELETON_MARK


# A *truncated* op (``Compactor``'s ``truncate_log``): what is left of an op of a memory that is gone for good
# once every known peer holds the op that removed it. The row keeps its header columns (id, author, clock,
# kind, record id) and its place in the graph; the body keeps only a mark, whether the op is its memory's
# tombstone, and the predecessors, so the graph can be replayed. It verifies through the signed cut that
# truncated it (``log_cuts``), not on its own, and is never sent. A stored body starting with the mark is
# nothing else: full bodies and skeletons start with a map's tag ("d"), format 1 with "{".
STUB_MARK = b"T"
STUB_SQL = "substr({column}, 1, 1) = CAST('T' AS BLOB)"
# Skeletons and stubs: ops whose fields this store no longer holds.
COMPACTED_SQL = f"({SKELETON_SQL} OR {STUB_SQL})"


def stub_body(preds: Iterable[bytes], tombstone: bool) -> bytes:
    """The stored body of a truncated op: the mark, the tombstone flag, its predecessors (sorted)."""
    return STUB_MARK + (b"\x01" if tombstone else b"\x00") + b"".join(sorted(preds))


def is_stub(body: bytes) -> bool:
    """True for a truncated op's stored body."""
    return body[:1] == STUB_MARK


def is_compacted(body: bytes) -> bool:
    """True for an op whose fields this store dropped (a skeleton or a stub): it is never sent."""
    return is_stub(body) or is_skeleton(body)


def stub_parts(body: bytes) -> tuple[bool, tuple[bytes, ...]]:
    """(is its memory's tombstone, predecessors) of a truncated op's body."""
    if not is_stub(body) or len(body) < 2 or body[1:2] not in (b"\x00", b"\x01") or (len(body) - 2) % 32:
        raise InvalidOp("not a truncated op's body")
    return body[1:2] == b"\x01", tuple(body[i:i + 32] for i in range(2, len(body), 32))


def stub_op(oid: bytes, kind: str, record_id: str, hlc: int, author: bytes, body: bytes) -> Op:
    """A truncated op as an :class:`Op` with no fields (``pruned``), its header from its row."""
    _, preds = stub_parts(body)
    return Op(oid, kind, record_id, {}, hlc, author, preds, b"", body, True, None)


def op_id(body: bytes) -> bytes:
    """The 32-byte id of an op body (full or skeleton, either format): SHA-256 of the skeleton for a
    full format-2 body, of the body itself otherwise."""
    if body[:1] == b"d":
        try:
            skeleton = skeleton_of(body)
        except InvalidOp:
            skeleton = None  # not an op at all: hashed as it is, refused by whoever parses it
        if skeleton is not None:
            return hashlib.sha256(skeleton).digest()
    return hashlib.sha256(body).digest()


def make_op(key: nacl.signing.SigningKey, kind: str, record_id: str, fields: dict[str, Any],
            hlc: int, preds: Iterable[bytes], graph: bytes | None = None) -> Op:
    """Build, hash and sign a new op authored by ``key`` (in the shared scope ``graph``'s own graph when
    given: format 3)."""
    author = bytes(key.verify_key)
    pred_list = tuple(sorted(preds))
    body, skeleton = _op_bytes(kind, record_id, encode(fields), hlc, author, list(pred_list), _graph(graph))
    if len(body) > MAX_OP_BYTES:
        raise InvalidOp(f"op of {len(body)} bytes exceeds {MAX_OP_BYTES}")
    oid = hashlib.sha256(skeleton).digest()
    sig = key.sign(SIG_DOMAIN + oid).signature
    return Op(oid, kind, record_id, fields, hlc, author, pred_list, sig, body, graph=graph)


def parse_op(body: bytes, sig: bytes, verify: bool = True, stored: bool = False) -> Op:
    """Decode and fully check an op received as bytes (from the log or a peer).

    Checks structure, bounds and (unless ``verify`` is False, for ops read back
    from this store's own log) the signature. Checks that need the rest of the
    log (predecessors present, clock above theirs) belong to the caller.
    ``stored``: a skeleton (an op whose fields this store pruned) is accepted,
    as an op with no fields and ``pruned`` set; from a peer it never is: its
    fields could not be checked. So is a truncated op's stub, as an op with
    only its predecessors (``stub_op`` gives it its header from its row).
    """
    if len(body) > MAX_OP_BYTES:
        raise InvalidOp("op too large")
    if is_stub(body):
        if not stored:
            raise InvalidOp("a truncated op is never sent")
        # Its header is in its row (``stub_op``); read back alone it is an op whose fields are gone.
        return Op(b"", "", "", {}, 0, b"", stub_parts(body)[1], b"", body, True, None)
    data = decode(body)
    if not isinstance(data, dict):
        raise InvalidOp("op body has the wrong set of keys")
    version = data.get("v")
    keys, skeleton_keys = GRAPH_KEYS if version == GRAPH_FORMAT else (FULL_KEYS, SKELETON_KEYS)
    pruned = stored and version in (2, GRAPH_FORMAT) and set(data) == skeleton_keys
    if set(data) != keys and not pruned:
        raise InvalidOp("op body has the wrong set of keys")
    if version not in FORMATS:
        raise InvalidOp(f"unsupported op format version {version!r}")
    graph = _graph(data.get("graph"))
    kind, record_id, fields = data["kind"], data["record_id"], data.get("fields")
    if pruned and not (isinstance(data["fields_hash"], bytes) and len(data["fields_hash"]) == 32):
        raise InvalidOp("a skeleton's fields_hash must be 32 bytes")
    hlc, author, preds = data["hlc"], data["author"], data["preds"]
    if not isinstance(kind, str) or kind not in OP_KINDS:
        raise InvalidOp(f"unknown op kind {kind!r}")
    if not isinstance(record_id, str) or not 0 < len(record_id) <= 128:
        raise InvalidOp("bad record_id")
    if pruned:
        fields = {}
    elif not isinstance(fields, dict):
        raise InvalidOp("fields must be a map")
    if not isinstance(hlc, int) or isinstance(hlc, bool) or not 0 < hlc <= HLC_MAX:
        raise InvalidOp("hlc out of range")
    if not isinstance(author, bytes) or len(author) != 32:
        raise InvalidOp("author must be a 32-byte Ed25519 public key")
    if (not isinstance(preds, list) or len(preds) > MAX_PREDS
            or any(not isinstance(p, bytes) or len(p) != 32 for p in preds)
            or preds != sorted(set(preds))):
        raise InvalidOp("preds must be a sorted set of at most 64 op ids")
    if not pruned:
        check_op_fields(kind, record_id, fields, author, graph)
    if version != 1 and not pruned:
        oid = hashlib.sha256(_op_bytes(kind, record_id, encode(fields), hlc, author, preds, graph)[1]).digest()
    else:
        oid = hashlib.sha256(body).digest()
    if verify:
        verify_signature(author, oid, sig)
    return Op(oid, kind, record_id, fields, hlc, author, tuple(preds), sig, body, pruned, graph)


def check_op_fields(kind: str, record_id: str, fields: dict[str, Any], author: bytes, graph: bytes | None) -> None:
    """The rules on an op's own fields, by kind and graph (a shared scope holds memory and membership ops)."""
    if kind in team.TEAM_KINDS:
        team.check_team_fields(kind, record_id, fields, author, graph)
        return
    if graph is not None and kind not in team.CONTENT_KINDS:
        raise InvalidOp(f"a {kind} op does not belong to a shared scope")
    check_fields(kind, record_id, fields)


def verify_signature(author: bytes, oid: bytes, sig: bytes) -> None:
    """Raise :class:`InvalidOp` unless ``sig`` is ``author``'s signature of ``oid``."""
    try:
        nacl.signing.VerifyKey(author).verify(SIG_DOMAIN + oid, sig)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        raise InvalidOp("bad signature") from None


# ---------------------------------------------------------------- wire form
def op_to_wire(op: Op) -> dict[str, Any]:
    """JSON form of an op: the signed body and signature, plus readable copies of its header."""
    return {
        "id": op.id.hex(),
        "body": base64.b64encode(op.body).decode("ascii"),
        "sig": base64.b64encode(op.sig).decode("ascii"),
        "kind": op.kind,
        "record_id": op.record_id,
        "hlc": op.hlc,
        "author": op.author.hex(),
    }


def wire_parts(data: object) -> tuple[bytes, bytes, str | None]:
    """(body, signature, claimed id or None) of an op in JSON form, decoded but not yet checked."""
    if not isinstance(data, dict) or not isinstance(data.get("body"), str) or not isinstance(data.get("sig"), str):
        raise InvalidOp("an op must be an object with base64 'body' and 'sig'")
    if len(data["body"]) > MAX_OP_BYTES * 4 // 3 + 4:
        raise InvalidOp("op too large")
    try:
        body = base64.b64decode(data["body"], validate=True)
        sig = base64.b64decode(data["sig"], validate=True)
    except (ValueError, binascii.Error):
        raise InvalidOp("op body or signature is not valid base64") from None
    claimed = data.get("id")
    if claimed is not None and claimed != op_id(body).hex():
        raise InvalidOp("op id does not match the hash of its body")
    return body, sig, claimed


def op_from_wire(data: object) -> Op:
    """Parse and verify an op from its JSON form; the readable copies are ignored, the body rules."""
    body, sig, _ = wire_parts(data)
    return parse_op(body, sig)
