"""NeuralSync2's routes, as its server has them, for its users' clients, scripts and wrappers (issue 12).

Field names and answers follow NeuralSync2 (``text``, ``meta``, ``benefit``...;
items in :func:`~neuralsync.integrations.ns2_wire.ns2_item`'s shape). Its rules
are kept: a memory stored without a tool matches every ``tool`` filter, a recall
that finds fewer than ``top_k`` is filled with the most recently updated
memories, a write that names no tool stays without one, a malformed body is 422.
Models ignore unknown fields, as NeuralSync2's did, but take JSON types strictly
(``true`` is not a confidence); the facade validates every value. A client's
tool is the body's ``tool``, else the ``X-Tool-Name`` header.

The preamble is NeuralSync2's byte for byte: items numbered from 1, every line
ending in a newline, confidence printed as Python prints a float.

``/sync/pull`` and ``/sync/push`` speak NeuralSync2's ops, so a NeuralSync2
server and this one can exchange ops during a migration; replicas of this
project sync on the signed ``/v1/sync``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, ConfigDict, Field

from ..integrations import ns2_wire
from ..integrations.neuralsync2 import clean_tags
from ..validation import MAX_SEQ
from .common import StrictJSONRoute, api_of

router = APIRouter(tags=["neuralsync2"], route_class=StrictJSONRoute)

PULL_LIMIT = 1000
MAX_PULL_LIMIT = 5000
MAX_PUSH_OPS = 10_000
MAX_RECALL_TOP_K = 1 << 31  # refused beyond (NeuralSync2 failed there); answered up to the store's max_top_k


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
    """NeuralSync2's RecallIn (``query`` required, may be empty); ``scope="any"`` searches every scope,
    ``tool=None`` every tool; ``use_embedding=false`` searches text only (BM25), true fuses text and meaning."""

    query: str
    top_k: int = Field(default=8, ge=0, le=MAX_RECALL_TOP_K)
    scope: str = "any"
    tool: str | None = None
    use_embedding: bool = True


class PersonaIn(_Lax):
    """NeuralSync2's PersonaIn."""

    text: str


class PullIn(_Lax):
    """Ops from position ``since`` on (inclusive, as NeuralSync2's byte offset); ``limit`` is ours."""

    since: int | None = Field(default=0, ge=0, le=MAX_SEQ)
    limit: int = Field(default=PULL_LIMIT, ge=1, le=MAX_PULL_LIMIT)


class PushIn(_Lax):
    """NeuralSync2's ops, wrapped as ``{"pos", "op"}`` (a pull's answer can be pushed as is) or bare.
    Each op is checked on its own: bad ones are refused and listed, the others applied."""

    ops: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_PUSH_OPS)


# The routes whose errors take NeuralSync2's status codes (server.app maps a malformed body to 422 here).
LEGACY_PATHS = frozenset({"/health", "/persona", "/remember", "/recall", "/sync/pull", "/sync/push"})


def preamble(persona: str, items: list[dict[str, Any]]) -> str:
    """NeuralSync2's context preamble, exactly."""
    text = f"Persona: {persona}\n\n" if persona else ""
    for i, item in enumerate(items, 1):
        text += f"[M{i}] ({item['kind']}, {item['scope']}, conf={item['confidence']}) {item['text']}\n"
    return text


# ------------------------------------------------------------------ routes
@router.get("/health", summary="Liveness (no token needed)")
def health(request: Request) -> dict[str, Any]:
    return {"ok": True, "site_id": api_of(request).identity()}


@router.get("/persona", summary="The shared persona")
def persona_get(request: Request) -> dict[str, Any]:
    api = api_of(request)
    found = api.get_persona_info()
    if found is None:
        return {"text": ""}
    return {"text": found["text"], "site_id": api.identity(), "lamport": api.latest_seqs(["persona"]).get("persona", 0)}


@router.post("/persona", summary="Set the shared persona")
def persona_set(request: Request, body: PersonaIn) -> dict[str, Any]:
    api_of(request).set_persona(body.text)
    return {"ok": True}


@router.post("/remember", summary="Remember (NeuralSync2 MemoryIn); answers the stored item")
def remember(request: Request, body: MemoryIn, x_tool_name: str | None = Header(default=None)) -> dict[str, Any]:
    api = api_of(request)
    tool = body.tool if body.tool is not None else x_tool_name
    memory = api.remember_memory(
        body.text, scope=body.scope, tags=clean_tags(body.tags), kind=body.kind, tool=tool or None,
        metadata=ns2_wire.remember_metadata(body.meta, body.tags, body.benefit, body.consistency),
        ttl_ms=body.ttl_ms or None,  # NeuralSync2 read 0 as "no expiry"
        confidence=body.confidence, source=body.source or ns2_wire.DEFAULT_SOURCE)
    return ns2_wire.items_of(api, [memory])[0]


@router.post("/recall", summary="Recall with a context preamble (NeuralSync2 RecallIn)")
def recall(request: Request, body: RecallIn) -> dict[str, Any]:
    api = api_of(request)
    items: list[dict[str, Any]] = []
    if body.top_k > 0:  # NeuralSync2 answers nothing for top_k 0; a top_k over our limit gets the limit
        memories = api.recall(body.query, scope=None if body.scope == "any" else body.scope,
                              top_k=min(body.top_k, api.config.max_top_k), tool=body.tool or None,
                              mode="hybrid" if body.use_embedding else "text", tool_match="or-unset",
                              fill_recent=True)
        items = ns2_wire.items_of(api, memories)
    return {"items": items, "preamble": preamble(api.get_persona(), items)}


@router.post("/sync/pull", summary="NeuralSync2 ops from a log position (inclusive)")
def sync_pull(request: Request, body: PullIn) -> dict[str, Any]:
    return ns2_wire.pull(api_of(request), body.since or 0, body.limit)


@router.post("/sync/push", summary="Apply NeuralSync2 ops as local ops")
def sync_push(request: Request, body: PushIn) -> dict[str, Any]:
    return ns2_wire.apply_ops(api_of(request), body.ops).to_dict()
