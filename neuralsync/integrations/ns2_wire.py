"""NeuralSync2's wire shapes, to and from ours: its items, its ids, its ``/sync`` ops (issue 12).

An item is answered exactly as NeuralSync2's server answers it: its keys in its
order, ``tags`` and ``meta`` as JSON strings (``json.dumps``'s default
separators, non-ASCII kept), a dashed UUID id, ``site_id`` and ``lamport``.

Its ops are ``{op, id, lamport, site_id, clock_ts, payload}`` with ``op`` one
of ``add``, ``update``, ``delete``, ``persona_set``. Pushed to us, each becomes
a local, signed op through the facade, as ``neuralsync import`` does, with
NeuralSync2's provenance kept in ``metadata["neuralsync2"]``; it is applied
only when it is newer (by the wall-clock time it was made: NeuralSync2's
Lamport counter restarts at 0 with its server) than what we hold, so a repeated
push adds nothing. Pulled from us, our log reads as its log: ``since`` is a
position, inclusive (the op at ``since`` comes again, as NeuralSync2's byte
offset does), and ``cursor`` is where to pull from next.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput, NotFound
from ..model import LoggedOp, Memory
from ..utils import now_ms
from .neuralsync2 import PERSONA_OP, PROVENANCE, carry_persona, clean_tags, our_id, provenance, to_record

if TYPE_CHECKING:
    from ..unified_memory_api import UnifiedMemoryAPI

DEFAULT_SOURCE = "api"  # what NeuralSync2 recorded when a client gave no source
PULL_BYTE_BUDGET = 4 << 20  # a pull answer stays near this size; the cursor says where to go on
ITEM_WRITES = ("add", "update")
SIGNED_OP_HINT = ("a signed neuralsync op: replicas exchange those on /v1/sync"
                  " (see 'neuralsync peer add'), the legacy route speaks NeuralSync2's ops")
_COMPARED = ("content", "scope", "kind", "tool", "confidence", "metadata", "source", "expires_at")


# ------------------------------------------------------------------ items
def dashed(memory_id: str) -> str:
    """Our 32-hex id in NeuralSync2's form (a dashed UUID)."""
    return str(uuid.UUID(hex=memory_id))


def _provenance(memory: Memory) -> dict[str, Any]:
    kept = memory.metadata.get(PROVENANCE)
    return kept if isinstance(kept, dict) else {}


def ns2_id(memory: Memory) -> str:
    """The id NeuralSync2 knows the memory by: its own when it came from there, else ours, dashed."""
    original = _provenance(memory).get("id")
    if isinstance(original, str) and original and our_id(original) == memory.id:
        return original
    return dashed(memory.id)


def ns2_item(memory: Memory, site_id: str, lamport: int, *, own_version: bool = True) -> dict[str, Any]:
    """The memory as NeuralSync2's item (no vector). ``site_id``/``lamport`` are used unless the memory
    came from NeuralSync2 and ``own_version`` keeps the version it had there."""
    kept = _provenance(memory)
    meta = {key: value for key, value in memory.metadata.items() if key != PROVENANCE}
    order = kept.get("tags")
    tags = order if isinstance(order, list) and set(order) == set(memory.tags) else list(memory.tags)
    if own_version and isinstance(kept.get("site_id"), str) and isinstance(kept.get("lamport"), int):
        site_id, lamport = kept["site_id"], kept["lamport"]
    expires = memory.expires_at
    return {"id": ns2_id(memory), "kind": memory.kind, "text": memory.content, "scope": memory.scope,
            "tool": memory.tool, "tags": json.dumps(tags, ensure_ascii=False), "confidence": memory.confidence,
            "benefit": kept.get("benefit"), "consistency": kept.get("consistency"),
            "created_at": memory.created_at, "updated_at": memory.updated_at,
            "ttl_ms": None if expires is None else max(0, expires - memory.created_at), "expires_at": expires,
            "tombstone": 0, "site_id": site_id, "lamport": lamport, "source": memory.source,
            "meta": json.dumps(meta, ensure_ascii=False)}


def remember_metadata(meta: dict[str, Any] | None, tags: list[str], benefit: float | None,
                      consistency: float | None) -> dict[str, Any] | None:
    """Our metadata for a NeuralSync2 ``/remember``: its ``meta``, plus what we have no field for."""
    kept = provenance({"benefit": benefit, "consistency": consistency}, clean_tags(tags), original_id=False)
    if not kept:
        return meta
    return {**(meta or {}), PROVENANCE: kept}


def items_of(api: UnifiedMemoryAPI, memories: Sequence[Memory]) -> list[dict[str, Any]]:
    """NeuralSync2 items for memories of this store; ``lamport`` is the position of the newest op on
    each (NeuralSync2's counter), ``site_id`` this replica's key, unless they came from NeuralSync2."""
    site = api.identity()
    seqs = api.latest_seqs([m.id for m in memories])
    return [ns2_item(m, site, seqs.get(m.id, 0)) for m in memories]


# ------------------------------------------------------------------ /sync/push
@dataclass
class PushReport:
    """What a push did: ``applied`` changed something here, ``skipped`` was known or older."""

    applied: int = 0
    skipped: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The answer: NeuralSync2's ``{"applied": n}`` and what it did not say."""
        return {"applied": self.applied, "skipped": self.skipped, "rejected": self.rejected}


def apply_ops(api: UnifiedMemoryAPI, entries: Sequence[dict[str, Any]]) -> PushReport:
    """Apply NeuralSync2 ops (bare, or ``{"pos", "op"}`` as its pull answers them) as local ops, in one
    transaction. A bad op is refused alone, naming the field, and changes nothing."""
    report = PushReport()
    with api.batch_operations():
        for index, entry in enumerate(entries):
            try:
                applied = _apply(api, _unwrap(entry))
            except InvalidInput as exc:
                wrapped = entry.get("op")
                claimed = (wrapped if isinstance(wrapped, dict) else entry).get("id")
                claimed = claimed if isinstance(claimed, str) else None
                report.rejected.append({"index": index, "id": claimed, "reason": str(exc)})
                continue
            report.applied += applied
            report.skipped += not applied
    return report


def _unwrap(entry: dict[str, Any]) -> dict[str, Any]:
    inner = entry.get("op")
    if isinstance(inner, dict):
        return inner
    if isinstance(inner, str):
        return entry
    if "body" in entry and "sig" in entry:
        raise InvalidInput("op", SIGNED_OP_HINT)
    raise InvalidInput("op", "must name the op ('add', 'update', 'delete', 'persona_set'), bare or as {pos, op}")


def _apply(api: UnifiedMemoryAPI, op: dict[str, Any]) -> bool:
    kind, payload = op.get("op"), op.get("payload")
    made = _time(op.get("clock_ts"))
    if kind == PERSONA_OP:
        if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
            raise InvalidInput("payload.text", "a persona_set op needs its text")
        return carry_persona(api, payload["text"], made or now_ms())
    if kind in ITEM_WRITES:
        if not isinstance(payload, dict):
            raise InvalidInput("payload", f"an {kind} op needs the item as an object")
        item = {"created_at": made, **payload}
        item["id"] = payload.get("id") if payload.get("id") is not None else op.get("id")
        if not isinstance(item["id"], str) or not item["id"]:
            raise InvalidInput("id", "the item has no id")
        if item.get("tombstone"):
            return _forget(api, item["id"])
        return _write_item(api, item, _time(payload.get("updated_at")) or made)
    if kind == "delete":
        target = op.get("id") if op.get("id") is not None else payload.get("id") if isinstance(payload, dict) else None
        if not isinstance(target, str) or not target:
            raise InvalidInput("id", "a delete op needs the id of the item")
        return _forget(api, target)
    raise InvalidInput("op", f"unknown NeuralSync2 op {str(kind)[:40]!r}")


def _time(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 53 else None


def _write_item(api: UnifiedMemoryAPI, item: dict[str, Any], made: int | None) -> bool:
    if not isinstance(item.get("text"), str) or not item["text"].strip():
        raise InvalidInput("payload.text", "the item has no text")
    record = to_record(item)
    if record is None:
        return False  # expired already: NeuralSync2 would never recall it
    if api.import_memory(record):
        return True
    try:
        current = api.get(record["id"])
    except NotFound:
        return False  # forgotten (or expired) here: it stays so, as after an import
    if (made or now_ms()) <= current.updated_at:
        return False
    changes = {name: record[name] for name in _COMPARED if record[name] != getattr(current, name)}
    if set(record["tags"]) != set(current.tags):
        changes["tags"] = record["tags"]
    if not changes:
        return False
    api.update(record["id"], **changes)
    return True


def _forget(api: UnifiedMemoryAPI, ns2_identifier: str) -> bool:
    try:
        return api.forget(our_id(ns2_identifier))
    except NotFound:
        return False


# ------------------------------------------------------------------ /sync/pull
def pull(api: UnifiedMemoryAPI, since: int, limit: int) -> dict[str, Any]:
    """Our ops from position ``since`` (inclusive) in NeuralSync2's shape, about ``PULL_BYTE_BUDGET``
    at most. Ops with nothing to say there (an edit of a memory since forgotten, another register)
    are passed over; ``cursor`` is the last position looked at, ``since`` when there was none."""
    ops: list[dict[str, Any]] = []
    cursor, size = since, 0
    for logged in api.log_page(max(0, since - 1), limit):
        rendered = render_op(logged)
        if rendered is not None:
            size += len(json.dumps(rendered, ensure_ascii=False))
            if ops and size > PULL_BYTE_BUDGET:
                break  # the next pull, from the cursor, goes on from here
            ops.append({"pos": logged.seq, "op": rendered})
        cursor = logged.seq
    return {"cursor": cursor, "ops": ops}


def render_op(logged: LoggedOp) -> dict[str, Any] | None:
    """One of our ops as NeuralSync2's: a create as ``add`` (the memory as created), an edit as
    ``update`` (the memory as it is now), a delete, a persona; None when it has no equivalent."""
    op, author = logged.op, logged.op.author.hex()
    if op.kind == "persona":
        if op.fields.get("key", "persona") != "persona":
            return None
        return _ns2_op(PERSONA_OP, None, logged.seq, author, logged.at, {"text": op.fields.get("text", "")})
    if op.kind == "delete" or (op.kind == "merge" and op.fields.get("absorbed") is False):
        # A memory merged into another is gone from NeuralSync2's point of view (the survivor's update
        # carries what it kept); an absorbed write never was a memory there.
        return _ns2_op("delete", dashed(op.record_id), logged.seq, author, logged.at, {})
    if op.kind == "merge":
        return None
    if op.kind == "create":
        item = ns2_item(_created(logged), author, logged.seq)
        return _ns2_op("add", item["id"], item["lamport"], item["site_id"], logged.at, item)
    if logged.memory is None:
        return None
    # A later edit must win over the version NeuralSync2 holds: Lamport's rule, max(seen) + 1.
    seen = _provenance(logged.memory).get("lamport")
    lamport = max(logged.seq, seen + 1) if isinstance(seen, int) else logged.seq
    item = ns2_item(logged.memory, author, lamport, own_version=False)
    return _ns2_op("update", item["id"], lamport, author, logged.at, item)


def _ns2_op(kind: str, item_id: str | None, lamport: int, site_id: str, clock_ts: int,
            payload: dict[str, Any]) -> dict[str, Any]:
    """An op as NeuralSync2 logs it (a ``persona_set`` has no id)."""
    head: dict[str, Any] = {"op": kind} if item_id is None else {"op": kind, "id": item_id}
    return {**head, "lamport": lamport, "site_id": site_id, "clock_ts": clock_ts, "payload": payload}


def _created(logged: LoggedOp) -> Memory:
    """The memory as its create op made it."""
    f = logged.op.fields
    metadata: dict[str, Any] = f["metadata"] if isinstance(f.get("metadata"), dict) else {}
    return Memory(logged.op.record_id, f.get("content", ""), f.get("scope", "global"), f.get("kind", "fact"),
                  tuple(f.get("tags") or ()), f.get("priority", 0.5), f.get("confidence", 0.8), f.get("tool"),
                  f.get("source"), f.get("session"), metadata, f.get("created_at", logged.at),
                  f.get("updated_at") or f.get("created_at", logged.at), f.get("expires_at"), "")
