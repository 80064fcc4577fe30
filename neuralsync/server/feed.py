"""The change feed over HTTP: a JSON page (``GET /v1/changes``) and server-sent events.

The stream polls ``changes_since`` every ``poll_interval`` (50 ms) from the
thread pool rather than holding a blocking ``subscribe`` iterator per client:
an async loop can be cancelled the moment the client disconnects or the
server stops, and a poll is one indexed read. A change committed by any
process on the store is therefore sent within about one poll interval.
The wire side (event framing, keep-alive comments, noticing a client that went
away, draining on shutdown) is sse-starlette's, the library the MCP SDK uses
for its own streams.

``?alerts=true`` adds ``alert`` events: this server's calls slower than the
target, with the stage that took the time. They carry no ``id`` (a reconnecting
client's cursor stays the last change's) and are not ops: never in the log,
never replicated.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from ..errors import InvalidInput
from ..model import Change
from ..unified_memory_api import UnifiedMemoryAPI
from ..validation import MAX_SEQ
from .common import ServerState, StrictJSONRoute, api_of, state_of

router = APIRouter(prefix="/v1", tags=["v1"], route_class=StrictJSONRoute)

FEED_BATCH = 500
MAX_PAGE = 1000
RETRY_MS = 1000


@router.get("/changes", summary="Changes after a sequence number (JSON page)")
def changes(request: Request, since: int = Query(0, ge=0, le=MAX_SEQ),
            limit: int = Query(100, ge=1, le=MAX_PAGE)) -> dict[str, Any]:
    api = api_of(request)
    batch = api.changes_since(since, limit)
    return {"changes": [asdict(c) for c in batch], "cursor": batch[-1].seq if batch else since,
            "last_seq": api.last_seq()}


@router.get("/changes/stream", summary="Changes as server-sent events", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "events 'change' with id = sequence number, data = the change"}})
async def stream(request: Request, since: int | None = Query(None, ge=0, le=MAX_SEQ, description="default: from now"),
                 last_event_id: str | None = Header(None),
                 alerts: bool = Query(False, description="also send 'alert' events (slow calls of this server)"),
                 ) -> EventSourceResponse:
    """``Last-Event-ID`` (a reconnecting client) wins over ``since``; neither means "from now"."""
    state = state_of(request)
    cursor = _start(last_event_id, since)
    if cursor is None:
        cursor = await anyio.to_thread.run_sync(state.api.last_seq)
    return EventSourceResponse(events(state, cursor, alerts), ping=state.keepalive_s, sep="\n",
                               ping_message_factory=_keepalive)


def _keepalive() -> ServerSentEvent:
    return ServerSentEvent(comment="keep-alive")


def _start(last_event_id: str | None, since: int | None) -> int | None:
    if last_event_id is None:
        return since
    value = last_event_id.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise InvalidInput("Last-Event-ID", "must be a change sequence number")
    return int(value)


def frame(change: Change) -> ServerSentEvent:
    """One SSE event for a change."""
    data = json.dumps(asdict(change), separators=(",", ":"))
    return ServerSentEvent(data, id=str(change.seq), event="change")


def alert_frame(alert: dict[str, Any]) -> ServerSentEvent:
    """One SSE event for a slow-call alert (no id: the change cursor is untouched)."""
    return ServerSentEvent(json.dumps(alert, separators=(",", ":")), event="alert")


async def events(state: ServerState, cursor: int, alerts: bool = False) -> AsyncIterator[ServerSentEvent]:
    """Events after ``cursor`` until the client goes away (the task is cancelled) or the server stops."""
    raised: deque[dict[str, Any]] = deque(maxlen=100)
    unsubscribe = state.api.on_performance_alert(raised.append) if alerts else None
    try:
        yield ServerSentEvent(retry=RETRY_MS)
        async for event in _events(state, cursor, raised):
            yield event
    finally:
        if unsubscribe is not None:
            unsubscribe()


async def _events(state: ServerState, cursor: int, raised: deque[dict[str, Any]]) -> AsyncIterator[ServerSentEvent]:
    while not state.stop.is_set():
        while raised:
            yield alert_frame(raised.popleft())
        batch = await anyio.to_thread.run_sync(_read, state.api, cursor)
        for change in batch:
            cursor = change.seq
            yield frame(change)
        if len(batch) == FEED_BATCH:
            continue  # more are waiting: do not sleep between pages
        await anyio.sleep(state.poll_interval)


def _read(api: UnifiedMemoryAPI, cursor: int) -> list[Change]:
    return api.changes_since(cursor, FEED_BATCH)
