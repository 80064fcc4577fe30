"""NeuralSync2's routes, unchanged for its users' scripts and wrappers.

Field names follow NeuralSync2 (``text``, ``meta``, ``benefit``...) and are
mapped onto the facade here: ``text`` is ``content``; ``benefit`` and
``consistency`` live in ``metadata`` beside the keys of ``meta`` (and are
taken back out when an item is answered). Models ignore unknown fields, as
NeuralSync2's did, but take JSON types strictly (``true`` is not a
confidence); the facade validates every value. A client's tool is the body's
``tool``, else the ``X-Tool-Name`` header, else the server's own.

The preamble is NeuralSync2's byte for byte: items numbered from 1, every
line ending in a newline, confidence printed as Python prints a float.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, ConfigDict, Field

from ..model import Memory
from ..validation import MAX_SEQ
from .common import StrictJSONRoute, api_of

router = APIRouter(tags=["neuralsync2"], route_class=StrictJSONRoute)

NS2_KEYS = ("benefit", "consistency")
DEFAULT_SOURCE = "api"  # what NeuralSync2 recorded when a client gave no source
PULL_LIMIT = 1000
MAX_PULL_LIMIT = 5000
MAX_PUSH_OPS = 10_000


class _Lax(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class MemoryIn(_Lax):
    """NeuralSync2's MemoryIn."""

    text: str
    kind: str = "fact"
    scope: str = "global"
    tool: str | None = None
    tags: list[str] = Field(default_factory=list)
    confidence: float = 0.8
    benefit: float | None = None
    consistency: float | None = None
    ttl_ms: int | None = None
    source: str | None = None
    meta: dict[str, Any] | None = None


class RecallIn(_Lax):
    """NeuralSync2's RecallIn; ``scope="any"`` searches every scope, ``tool=None`` every tool;
    ``use_embedding=false`` searches text only (BM25), true fuses text and meaning."""

    query: str = ""
    top_k: int = 8
    scope: str = "any"
    tool: str | None = None
    use_embedding: bool = True


class PersonaIn(_Lax):
    """NeuralSync2's PersonaIn."""

    text: str


class PullIn(_Lax):
    """A page of the op log after local position ``since``."""

    since: int | None = Field(default=0, ge=0, le=MAX_SEQ)
    limit: int = Field(default=PULL_LIMIT, ge=1, le=MAX_PULL_LIMIT)


class PushIn(_Lax):
    """Ops in wire form, bare or wrapped as ``{"pos", "op"}`` (a pull's answer can be pushed as is).
    Each op is checked on its own: bad ones are refused and listed, the others applied."""

    ops: list[dict[str, Any]] = Field(max_length=MAX_PUSH_OPS)


# ------------------------------------------------------------------ shapes
def ns2_item(memory: Memory) -> dict[str, Any]:
    """A memory in NeuralSync2's item shape (no vector), plus our extra fields."""
    meta = dict(memory.metadata)
    extras = {key: meta.pop(key, None) for key in NS2_KEYS}
    ttl = None if memory.expires_at is None else max(0, memory.expires_at - memory.created_at)
    item = {"id": memory.id, "kind": memory.kind, "text": memory.content, "scope": memory.scope,
            "tool": memory.tool, "tags": list(memory.tags), "confidence": memory.confidence, **extras,
            "created_at": memory.created_at, "updated_at": memory.updated_at, "ttl_ms": ttl,
            "expires_at": memory.expires_at, "tombstone": 0, "source": memory.source, "meta": meta,
            "priority": memory.priority}
    if memory.score is not None:
        item["score"] = memory.score
    return item


def preamble(persona: str, items: list[dict[str, Any]]) -> str:
    """NeuralSync2's context preamble, exactly."""
    text = f"Persona: {persona}\n\n" if persona else ""
    for i, item in enumerate(items, 1):
        text += f"[M{i}] ({item['kind']}, {item['scope']}, conf={item['confidence']}) {item['text']}\n"
    return text


def _metadata(body: MemoryIn) -> dict[str, Any] | None:
    extras = {key: getattr(body, key) for key in NS2_KEYS if getattr(body, key) is not None}
    if body.meta is None and not extras:
        return None
    return {**(body.meta or {}), **extras}


# ------------------------------------------------------------------ routes
@router.get("/health", summary="Liveness (no token needed)")
def health(request: Request) -> dict[str, Any]:
    return {"ok": True, "site_id": api_of(request).identity()}


@router.get("/persona", summary="The shared persona")
def persona_get(request: Request) -> dict[str, Any]:
    api = api_of(request)
    found = api.get_persona_info()  # NeuralSync2 also answers the clock that set it
    if found is None or not found["text"]:
        return {"text": ""}
    return {"text": found["text"], "site_id": api.identity(), "lamport": found["hlc"]}


@router.post("/persona", summary="Set the shared persona")
def persona_set(request: Request, body: PersonaIn) -> dict[str, Any]:
    api_of(request).set_persona(body.text)
    return {"ok": True}


@router.post("/remember", summary="Remember (NeuralSync2 MemoryIn)")
def remember(request: Request, body: MemoryIn, x_tool_name: str | None = Header(default=None)) -> dict[str, Any]:
    api = api_of(request)
    fields: dict[str, Any] = {"content": body.text, "scope": body.scope, "tags": body.tags, "kind": body.kind,
              "tool": body.tool if body.tool is not None else x_tool_name, "metadata": _metadata(body),
              "ttl_ms": body.ttl_ms or None,  # NeuralSync2 read 0 as "no expiry"
              "confidence": body.confidence, "source": body.source or DEFAULT_SOURCE}
    return ns2_item(api.remember_memory(**fields))


@router.post("/recall", summary="Recall with a context preamble (NeuralSync2 RecallIn)")
def recall(request: Request, body: RecallIn) -> dict[str, Any]:
    api = api_of(request)
    scope = None if body.scope == "any" else body.scope
    mode = "hybrid" if body.use_embedding else "text"
    items = [ns2_item(m) for m in api.recall(body.query, scope=scope, top_k=body.top_k, tool=body.tool, mode=mode)]
    return {"items": items, "preamble": preamble(api.get_persona(), items)}


@router.post("/sync/pull", summary="Ops after a log position")
def sync_pull(request: Request, body: PullIn) -> dict[str, Any]:
    return api_of(request).pull_ops(body.since or 0, body.limit)


@router.post("/sync/push", summary="Apply signed ops from a peer")
def sync_push(request: Request, body: PushIn) -> dict[str, Any]:
    return api_of(request).receive_pushed(body.ops)
