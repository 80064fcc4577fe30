"""The versioned JSON API under ``/v1``: one route per facade call.

Bodies are pydantic models (strict types, unknown fields refused) so the
OpenAPI document describes them; the facade still validates every value, so
the rules live in one place and the models only catch wrong JSON types early.
List routes always carry a row cap.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..model import Memory
from .common import StrictJSONRoute, api_of

router = APIRouter(prefix="/v1", tags=["v1"], route_class=StrictJSONRoute)

DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
TimeValue = int | float | str | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class MemoryCreate(_Body):
    """A new memory; ``tool`` defaults to the ``X-Tool-Name`` header, else none."""

    content: str
    scope: str = "global"
    priority: float = 0.5
    tags: list[str] | str | None = None
    kind: str = "fact"
    tool: str | None = None
    metadata: dict[str, Any] | None = None
    ttl_ms: int | None = None
    confidence: float = 0.8
    source: str | None = None
    merge: str | None = None


class MergeCreate(_Body):
    """Merge memory ``merged`` into memory ``into`` (``strategy``: default the scope's, else the store's)."""

    into: str
    merged: str
    strategy: str | None = None


class MergeScan(_Body):
    """Find and merge duplicates now: peers' writes, and paraphrases unless ``near`` is false."""

    near: bool = True
    threshold: float | None = None
    everything: bool = False


class MemoryUpdate(_Body):
    """Fields to change; absent fields stay as they are, ``tags`` replaces the tag set."""

    content: str | None = None
    scope: str | None = None
    priority: float | None = None
    tags: list[str] | str | None = None
    kind: str | None = None
    tool: str | None = None
    metadata: dict[str, Any] | None = None
    ttl_ms: int | None = None
    confidence: float | None = None
    source: str | None = None


class RecallRequest(_Body):
    """A search: literal query text (empty = most relevant recent), filters, ``top_k``, and ``mode``
    (``hybrid`` fuses BM25 and meaning; ``text`` or ``semantic`` use one of them)."""

    query: str = ""
    scope: str | None = None
    top_k: int = 10
    tags: list[str] | str | None = None
    tag_match: Literal["any", "all"] = "any"
    kinds: list[str] | str | None = None
    tool: str | None = None
    mode: Literal["hybrid", "text", "semantic"] = "hybrid"
    since: TimeValue = Field(default=None, description="epoch milliseconds or ISO-8601")
    until: TimeValue = Field(default=None, description="epoch milliseconds or ISO-8601")


class PersonaBody(_Body):
    """The persona text shared by every tool (empty clears it)."""

    text: str


class EmbedRequest(_Body):
    """Texts to embed with the store's embedder (processes of this store share the server's model)."""

    texts: list[str] = Field(max_length=256)


class OptimizeRequest(_Body):
    """Maintenance target; the facade's configured target when absent."""

    target_response_time_ms: float | None = None


def memory_json(memory: Memory) -> dict[str, Any]:
    """A memory as the v1 API returns it."""
    return memory.to_dict()


def client_tool(body_tool: str | None, header_tool: str | None) -> str | None:
    """The writing tool: the body's, else the ``X-Tool-Name`` header's, else None."""
    return body_tool if body_tool is not None else header_tool


# ------------------------------------------------------------------ routes
@router.get("/health", summary="Liveness (no token needed)")
def health(request: Request) -> dict[str, Any]:
    """Answers without a token so supervisors can probe it."""
    api = api_of(request)
    return {"ok": True, "site_id": api.identity(), "version": request.app.version}


@router.post("/memories", status_code=201, summary="Remember (a duplicate merges: 200, \"merged\": true)")
def create_memory(request: Request, response: Response, body: MemoryCreate,
                  x_tool_name: str | None = Header(default=None)) -> dict[str, Any]:
    api = api_of(request)
    fields = body.model_dump()
    fields["tool"] = client_tool(body.tool, x_tool_name)
    outcome = api.remember_outcome(**fields)
    if outcome.merged:
        response.status_code = 200  # nothing new was created: the memory it repeats is answered
    return outcome.to_dict()


@router.get("/memories/{memory_id}/provenance", summary="Who wrote what a memory holds (merges included)")
def provenance(request: Request, memory_id: str) -> dict[str, Any]:
    return {"id": memory_id, "provenance": api_of(request).provenance(memory_id)}


@router.get("/merges", summary="Merges, newest first (conflicts=true: sync conflicts too)")
def merges(request: Request, memory_id: str | None = None, conflicts: bool = False,
           limit: int = Query(DEFAULT_LIST_LIMIT, ge=1, le=MAX_LIST_LIMIT)) -> dict[str, Any]:
    api = api_of(request)
    return {"merges": api.audit_trail(limit) if conflicts else api.merges(limit, memory_id)}


@router.post("/merges", status_code=201, summary="Merge one memory into another")
def merge(request: Request, body: MergeCreate) -> dict[str, Any]:
    return api_of(request).merge_memories(body.into, body.merged, body.strategy)


@router.get("/merges/pending", summary="Duplicate pairs the manual strategy kept for a person")
def merges_pending(request: Request, limit: int = Query(DEFAULT_LIST_LIMIT, ge=1, le=MAX_LIST_LIMIT)) -> dict[str, Any]:
    return {"pending": api_of(request).merge_candidates(limit)}


@router.post("/merges/scan", summary="Find and merge duplicates now")
def merges_scan(request: Request, body: MergeScan) -> dict[str, Any]:
    return api_of(request).scan_duplicates(body.near, body.threshold, body.everything)


@router.get("/merges/{merge_id}", summary="One merge: who, when, both values, the rule, the op ids")
def merge_info(request: Request, merge_id: str) -> dict[str, Any]:
    return api_of(request).merge_info(merge_id)


@router.post("/merges/{merge_id}/undo", summary="Undo a merge: both memories back, on every replica")
def merge_undo(request: Request, merge_id: str) -> dict[str, Any]:
    return api_of(request).undo_merge(merge_id)


@router.get("/memories/{memory_id}", summary="Get one memory")
def get_memory(request: Request, memory_id: str) -> dict[str, Any]:
    return memory_json(api_of(request).get(memory_id))


@router.patch("/memories/{memory_id}", summary="Update fields of a memory")
def update_memory(request: Request, memory_id: str, body: MemoryUpdate) -> dict[str, Any]:
    return memory_json(api_of(request).update(memory_id, **body.model_dump(exclude_unset=True)))


@router.delete("/memories/{memory_id}", summary="Forget a memory")
def forget_memory(request: Request, memory_id: str) -> dict[str, Any]:
    api_of(request).forget(memory_id)
    return {"ok": True, "id": memory_id}


@router.post("/recall", summary="Search memories")
def recall(request: Request, body: RecallRequest) -> dict[str, Any]:
    items = api_of(request).recall(**body.model_dump())
    return {"items": [memory_json(m) for m in items], "count": len(items)}


@router.get("/range", summary="Memories created in a time range, oldest first")
def range_recall(request: Request, start: str | None = Query(None, description="epoch ms or ISO-8601"),
                 end: str | None = Query(None, description="epoch ms or ISO-8601"), scope: str | None = None,
                 limit: int = Query(DEFAULT_LIST_LIMIT, ge=1, le=MAX_LIST_LIMIT)) -> dict[str, Any]:
    items = api_of(request).range_recall(_time(start), _time(end), scope, limit)
    return {"items": [memory_json(m) for m in items], "count": len(items)}


def _time(value: str | None) -> int | str | None:
    """Query strings carry text: digits are epoch milliseconds, anything else goes to the ISO parser."""
    if value is not None and value.isascii() and value.isdigit() and len(value) < 17:
        return int(value)
    return value


@router.post("/embed", summary="Embed texts with the store's model (for the store's other processes)")
def embed(request: Request, body: EmbedRequest) -> dict[str, Any]:
    name, dims, raw = api_of(request).embed_texts(body.texts)
    return {"embedder": name, "dims": dims, "vectors": base64.b64encode(raw).decode("ascii")}


@router.get("/stats", summary="Counts, sizes and latency percentiles")
def stats(request: Request) -> dict[str, Any]:
    return api_of(request).get_system_stats()


@router.get("/sessions", summary="Processes registered on this store")
def sessions(request: Request, include_ended: bool = False) -> dict[str, Any]:
    return {"sessions": api_of(request).sessions(include_ended)}


@router.get("/conflicts", summary="Concurrent writes merged by sync, with the values that lost")
def conflicts(request: Request, record_id: str | None = None,
              limit: int = Query(DEFAULT_LIST_LIMIT, ge=1, le=MAX_LIST_LIMIT)) -> dict[str, Any]:
    return {"conflicts": api_of(request).conflicts(record_id, limit)}


@router.get("/peers", summary="Trusted replicas and their last sync")
def peers(request: Request) -> dict[str, Any]:
    return {"identity": api_of(request).identity(), "peers": api_of(request).list_peers()}


@router.get("/growth", summary="Growth per day and quota projection")
def growth(request: Request, days: int = Query(30, ge=1, le=3650)) -> dict[str, Any]:
    return api_of(request).growth(days)


class CompactRequest(_Body):
    """Strategies to run (default: all) and whether to return the plan only."""

    strategies: list[str] | None = None
    dry_run: bool = False


@router.get("/compact", summary="What the store holds that it need not, and what each strategy would reclaim")
def compact_analyze(request: Request) -> dict[str, Any]:
    return api_of(request).compact_analyze()


@router.post("/compact", summary="Reclaim space (dry_run: the plan only)")
def compact(request: Request, body: CompactRequest | None = None) -> dict[str, Any]:
    request_body = body or CompactRequest()
    return api_of(request).compact(request_body.strategies, dry_run=request_body.dry_run)


@router.post("/optimize", summary="Run maintenance and report latency before and after")
def optimize(request: Request, body: OptimizeRequest | None = None) -> dict[str, Any]:
    target = body.target_response_time_ms if body is not None else None
    return api_of(request).optimize_performance(target)


@router.get("/persona", summary="The shared persona text")
def get_persona(request: Request) -> dict[str, Any]:
    return {"text": api_of(request).get_persona()}


@router.put("/persona", summary="Set the shared persona text")
def set_persona(request: Request, body: PersonaBody) -> dict[str, Any]:
    api_of(request).set_persona(body.text)
    return {"ok": True}


@router.get("/seq", summary="The newest change-feed sequence number")
def last_seq(request: Request) -> dict[str, Any]:
    return {"seq": api_of(request).last_seq()}


@router.post("/sync", summary="Peer sync (signed by a trusted peer's key, not the bearer token)",
             responses={200: {"description": "heads, needs, filter and ops for the peer, signed"}})
async def peer_sync(request: Request) -> Response:
    """One round of the replication protocol; see ``neuralsync.replication``."""
    body = await request.body()
    status, answer, headers = await run_in_threadpool(api_of(request).serve_sync, dict(request.headers), body)
    return Response(answer, status_code=status, media_type="application/json", headers=headers)
