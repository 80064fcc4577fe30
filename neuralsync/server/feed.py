"""The change feed over HTTP: a JSON page (``GET /v1/changes``) and server-sent events.

The stream polls ``changes_since`` every ``poll_interval`` (50 ms) from the
thread pool rather than holding a blocking ``subscribe`` iterator per client:
an async loop can be cancelled the moment the client disconnects or the
server stops, and a poll is one indexed read. A change committed by any
process on the store is therefore sent within about one poll interval.

``?alerts=true`` adds ``alert`` events: this server's calls slower than the
target, with the stage that took the time. They carry no ``id`` (a reconnecting
client's cursor stays the last change's) and are not ops: never in the log,
never replicated.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

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


@router.get("/changes/stream", summary="Changes as server-sent events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "events 'change' with id = sequence number, data = the change"}})
async def stream(request: Request, since: int | None = Query(None, ge=0, le=MAX_SEQ, description="default: from now"),
                 last_event_id: str | None = Header(None),
                 alerts: bool = Query(False, description="also send 'alert' events (slow calls of this server)"),
                 ) -> StreamingResponse:
    """``Last-Event-ID`` (a reconnecting client) wins over ``since``; neither means "from now"."""
    state = state_of(request)
    cursor = _start(last_event_id, since)
    if cursor is None:
        cursor = await anyio.to_thread.run_sync(state.api.last_seq)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(state, cursor, alerts), media_type="text/event-stream", headers=headers)


def _start(last_event_id: str | None, since: int | None) -> int | None:
    if last_event_id is None:
        return since
    value = last_event_id.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise InvalidInput("Last-Event-ID", "must be a change sequence number")
    return int(value)


def frame(change: Change) -> bytes:
    """One SSE event for a change."""
    data = json.dumps(asdict(change), separators=(",", ":"))
    return f"id: {change.seq}\nevent: change\ndata: {data}\n\n".encode()


def alert_frame(alert: dict[str, Any]) -> bytes:
    """One SSE event for a slow-call alert (no id: the change cursor is untouched)."""
    return f"event: alert\ndata: {json.dumps(alert, separators=(',', ':'))}\n\n".encode()


async def events(state: ServerState, cursor: int, alerts: bool = False) -> AsyncIterator[bytes]:
    """Events after ``cursor`` until the client goes away (the task is cancelled) or the server stops."""
    raised: deque[dict[str, Any]] = deque(maxlen=100)
    unsubscribe = state.api.on_performance_alert(raised.append) if alerts else None
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        async for chunk in _events(state, cursor, raised):
            yield chunk
    finally:
        if unsubscribe is not None:
            unsubscribe()


async def _events(state: ServerState, cursor: int, raised: deque[dict[str, Any]]) -> AsyncIterator[bytes]:
    quiet_since = time.monotonic()
    while not state.stop.is_set():
        while raised:
            yield alert_frame(raised.popleft())
        batch = await anyio.to_thread.run_sync(_read, state.api, cursor)
        for change in batch:
            cursor = change.seq
            yield frame(change)
        if batch:
            quiet_since = time.monotonic()
            if len(batch) == FEED_BATCH:
                continue  # more are waiting: do not sleep between pages
        elif time.monotonic() - quiet_since >= state.keepalive_s:
            quiet_since = time.monotonic()
            yield b": keep-alive\n\n"
        await anyio.sleep(state.poll_interval)


def _read(api: UnifiedMemoryAPI, cursor: int) -> list[Change]:
    return api.changes_since(cursor, FEED_BATCH)
