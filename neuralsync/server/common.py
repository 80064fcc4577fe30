"""What the route modules share: the server state, request and response helpers.

Kept apart from ``app`` so that the route modules (``v1``, ``compat``,
``feed``) import only this and ``app`` imports them: no import cycles.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from ..errors import InvalidInput
from ..json_input import parse_json
from ..unified_memory_api import UnifiedMemoryAPI
from .websession import WebSessions


class SafeJSONResponse(JSONResponse):
    """JSON that never fails to encode: text with a lone surrogate falls back to ASCII escapes."""

    def render(self, content: Any) -> bytes:
        try:
            return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class BadBody(HTTPException):
    """A request body refused before any route sees it (400), naming the field at fault."""

    kind = "bad_json"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(status_code=400, detail=message)
        self.field = field


class StrictJSONRequest(Request):
    """Request bodies must be JSON as RFC 8259 means it, nested at most ``MAX_JSON_DEPTH`` levels
    (``json_input``: no NaN/Infinity, no lone surrogates). Refusing them here, once, keeps them out of
    every route."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            raw = await self.body()
            try:
                self._json = parse_json(raw)
            except InvalidInput as exc:
                raise BadBody(exc.field, str(exc)) from None
        return self._json


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
    web_sessions: WebSessions = field(default_factory=WebSessions)


def state_of(request: Request) -> ServerState:
    """The app's :class:`ServerState` (set by :func:`create_app`)."""
    return request.app.state.neuralsync


def api_of(request: Request) -> UnifiedMemoryAPI:
    """The facade this app serves."""
    return state_of(request).api


def error_response(status: int, kind: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> SafeJSONResponse:
    """The one error shape: ``{"error": {"type", "field", "message"}, "detail": message}``."""
    return SafeJSONResponse({"error": {"type": kind, "field": field, "message": message}, "detail": message},
                            status_code=status, headers=headers)
