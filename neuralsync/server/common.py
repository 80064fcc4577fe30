"""What the route modules share: the server state, request and response helpers.

Kept apart from ``app`` so that the route modules (``v1``, ``compat``,
``feed``) import only this and ``app`` imports them: no import cycles.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from ..errors import NotFound
from ..model import Memory
from ..unified_memory_api import UnifiedMemoryAPI
from ..utils import now_ms


class SafeJSONResponse(JSONResponse):
    """JSON that never fails to encode: text with a lone surrogate falls back to ASCII escapes."""

    def render(self, content: Any) -> bytes:
        try:
            return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class StrictJSONRequest(Request):
    """Request bodies must be JSON as RFC 8259 means it: no NaN/Infinity, no lone surrogates.

    Python's parser accepts both; refusing them here, once, keeps them out of
    every route (a lone surrogate cannot be stored or encoded as UTF-8).
    """

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            raw = await self.body()
            try:
                value = json.loads(raw, parse_constant=_refuse_constant)
            except RecursionError:
                raise json.JSONDecodeError("nested too deeply", "", 0) from None
            _check_strings(value)
            self._json = value
        return self._json


def _refuse_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON", "", 0)


def _check_strings(value: Any) -> None:
    """Walk the parsed body (iteratively: it may be deep) and refuse text that is not valid Unicode."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            texts: Any = (item,)
        elif isinstance(item, dict):
            texts = item.keys()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise json.JSONDecodeError("a string contains a lone surrogate", "", 0) from None


class StrictJSONRoute(APIRoute):
    """Routes whose handlers see :class:`StrictJSONRequest`."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Any:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler


@dataclass
class ServerState:
    """What every route needs: the facade, the stop signal for streams, the feed's timing."""

    api: UnifiedMemoryAPI
    owns_api: bool
    stop: threading.Event = field(default_factory=threading.Event)
    poll_interval: float = 0.05
    keepalive_s: float = 15.0


def state_of(request: Request) -> ServerState:
    """The app's :class:`ServerState` (set by :func:`create_app`)."""
    return request.app.state.neuralsync


def api_of(request: Request) -> UnifiedMemoryAPI:
    """The facade this app serves."""
    return state_of(request).api


def just_remembered(api: UnifiedMemoryAPI, memory_id: str, sent: dict[str, Any]) -> Memory:
    """The memory a route has just stored, for the answer.

    ``remember`` returns only the id, so the record is read back; a TTL
    shorter than that round trip has already expired it, and then the answer
    is built from what was sent (the store holds it, unreadable by rule).
    """
    try:
        return api.get(memory_id)
    except NotFound:
        now = now_ms()
        created = now - (sent.get("ttl_ms") or 0)  # keeps expires_at - created_at equal to the TTL sent
        tags = sent.get("tags") or ()
        return Memory(memory_id, sent["content"], sent.get("scope", "global"), sent.get("kind", "fact"),
                      tuple(sorted(set([tags] if isinstance(tags, str) else tags))), sent.get("priority", 0.5),
                      sent.get("confidence", 0.8), sent.get("tool") or api.tool, sent.get("source"),
                      api.session_id, sent.get("metadata") or {}, created, created, now, "")


def error_response(status: int, kind: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> SafeJSONResponse:
    """The one error shape: ``{"error": {"type", "field", "message"}, "detail": message}``."""
    return SafeJSONResponse({"error": {"type": kind, "field": field, "message": message}, "detail": message},
                            status_code=status, headers=headers)
