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

from ..unified_memory_api import UnifiedMemoryAPI


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


def error_response(status: int, kind: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> SafeJSONResponse:
    """The one error shape: ``{"error": {"type", "field", "message"}, "detail": message}``."""
    return SafeJSONResponse({"error": {"type": kind, "field": field, "message": message}, "detail": message},
                            status_code=status, headers=headers)
