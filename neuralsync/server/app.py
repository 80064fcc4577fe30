"""The HTTP application: one FastAPI app over one ``UnifiedMemoryAPI``.

Layers, outside in: :class:`~neuralsync.server.auth.Gate` (token, body size),
:class:`Guard` (an unexpected exception becomes a generic 500; the traceback
goes to the log, never to the client), then FastAPI with the routes of
``v1`` (the versioned API), ``compat`` (NeuralSync2's routes, unchanged) and
``feed`` (change feed, SSE). Routes are plain ``def`` functions: FastAPI runs
them in its thread pool, and the facade is synchronous and thread-safe.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..config import MemoryConfig
from ..errors import (
    IntegrityError,
    InvalidInput,
    NeuralSyncError,
    NotFound,
    StoreBusy,
    SyncRejected,
)
from ..unified_memory_api import UnifiedMemoryAPI
from . import compat, feed, v1
from .auth import DEFAULT_MAX_BODY_BYTES, Gate, Receive, Scope, Send, resolve_token, send_error
from .common import BadBody, SafeJSONResponse, ServerState, api_of, error_response

log = logging.getLogger("neuralsync.server")

SERVER_TOOL = "http-server"
RETRY_AFTER_S = "1"


def create_app(api_or_config: UnifiedMemoryAPI | MemoryConfig | None = None, token: str | None = None, *,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, poll_interval: float = 0.05,
               keepalive_s: float = 15.0, write_queue: bool = True) -> ServerApp:
    """The ASGI application (gate and guard around FastAPI).

    Given a config, the app opens its own facade (session ``http-server``, with a
    heartbeat; writes that name no tool stay without one) and closes it at shutdown; given a facade, the caller
    keeps owning it. Either way, unless ``write_queue=False``, the facade's write queue is turned on
    (concurrent requests' writes commit together). ``token`` defaults to ``$NS_TOKEN``, else the token file.
    """
    if isinstance(api_or_config, UnifiedMemoryAPI):
        api, owns = api_or_config, False
        required = resolve_token(api.config, token)
    else:
        config = api_or_config or MemoryConfig.from_env()
        required = resolve_token(config, token)  # before opening the store: a bad token leaks nothing
        # The session is the server's; a write carries only the tool its client names (issue 12).
        api, owns = UnifiedMemoryAPI(config, tool=SERVER_TOOL, stamp_tool=False), True
        api.start_background_maintenance()
        if config.sync_interval_s:
            api.start_interval_sync(config.sync_interval_s)
        if config.team_sync_interval_s:
            api.start_team_sync(config.team_sync_interval_s)
    api.forward_recalls = False  # the server answers recalls itself, never sends them to a server
    # Concurrent requests' writes commit together (group commit) instead of queueing on the write lock.
    if write_queue:
        api.start_write_queue()
    state = ServerState(api, owns, poll_interval=poll_interval, keepalive_s=keepalive_s)
    return ServerApp(_fastapi_app(state), state, required, max_body_bytes)


class ServerApp(Gate):
    """The ASGI app handed to uvicorn; ``fastapi`` and ``state`` are exposed for ``serve`` and tests."""

    def __init__(self, fastapi_app: FastAPI, state: ServerState, token: str, max_body_bytes: int) -> None:
        super().__init__(Guard(fastapi_app), token, max_body_bytes, sessions=state.web_sessions)
        # The dashboard's sign-in compares a posted token with this one and opens a session.
        fastapi_app.state.neuralsync_token = token
        fastapi_app.state.neuralsync_sessions = state.web_sessions
        self.fastapi = fastapi_app
        self.state = state

    def signed_refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        try:
            return self.state.api.check_sync_request(headers)
        except NeuralSyncError as exc:  # e.g. the store is busy or closing: the peer retries later
            return 503, f"cannot check the request now: {exc}", "store"


def _fastapi_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.stop.set()
        if state.owns_api:
            state.api.close()

    app = FastAPI(title="neuralsync", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, default_response_class=SafeJSONResponse,
                  description="Persistent memory shared by AI command-line tools. Every route except "
                              "/health needs 'Authorization: Bearer <token>' (see 'neuralsync token'); "
                              "a browser signed in at /ui/login opens these pages, the dashboard and the "
                              "change feed's stream with its session cookie.")
    app.state.neuralsync = state
    _add_error_handlers(app)
    app.include_router(v1.router)
    app.include_router(feed.router)
    app.include_router(compat.router)
    from . import dashboard  # jinja2: the dashboard's templates

    dashboard.install(app)
    app.add_api_route("/metrics", metrics, methods=["GET"], response_class=PlainTextResponse,
                      tags=["operations"], summary="Prometheus metrics")
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated document plus the bearer scheme every non-health route requires."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema


# ------------------------------------------------------------------ errors
def _add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(InvalidInput, _invalid_input)  # type: ignore[arg-type]
    app.add_exception_handler(NotFound, _not_found)  # type: ignore[arg-type]
    app.add_exception_handler(StoreBusy, _busy)  # type: ignore[arg-type]
    app.add_exception_handler(IntegrityError, _invalid_op)  # type: ignore[arg-type]
    app.add_exception_handler(SyncRejected, _invalid_op)  # type: ignore[arg-type]
    app.add_exception_handler(NeuralSyncError, _internal)
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal)


async def _invalid_input(_: Request, exc: InvalidInput) -> SafeJSONResponse:
    return error_response(422, "invalid_input", exc.message, exc.field)


async def _not_found(_: Request, exc: NotFound) -> SafeJSONResponse:
    return error_response(404, "not_found", str(exc), exc.field)


async def _busy(_: Request, exc: StoreBusy) -> SafeJSONResponse:
    return error_response(503, "store_busy", "the store is busy; retry shortly", headers={"Retry-After": RETRY_AFTER_S})


async def _invalid_op(_: Request, exc: NeuralSyncError) -> SafeJSONResponse:
    return error_response(400, "invalid_op", str(exc), getattr(exc, "field", "body"))


async def _internal(request: Request, exc: Exception) -> SafeJSONResponse:
    # Logged here for package errors; unexpected exceptions are re-raised by
    # Starlette after this response and logged once by Guard.
    if isinstance(exc, NeuralSyncError):
        log.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
    return error_response(500, "internal", "internal server error (details are in the server log)")


async def _validation(request: Request, exc: RequestValidationError) -> SafeJSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        status = 422 if request.url.path in compat.LEGACY_PATHS else 400  # NeuralSync2's clients got 422
        reason = first.get("ctx", {}).get("error")
        return error_response(status, "bad_json", f"request body is not valid JSON: {reason}", "body")
    return error_response(422, "invalid_input", str(first.get("msg", "invalid input")), _field(first.get("loc", ())))


def _field(loc: Sequence[Any]) -> str:
    """The field a validation error is about: its location minus the leading part (body, query, path,
    header), so a body field called ``query`` is still named; the part itself when nothing follows."""
    parts = [str(part) for part in loc]
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or "body"


# The part of a request a framework-level refusal is about.
_HTTP_FIELDS = {400: "body", 404: "path", 405: "method", 413: "body", 415: "Content-Type"}


async def _http(request: Request, exc: StarletteHTTPException) -> SafeJSONResponse:
    kinds = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
    detail = exc.detail if isinstance(exc.detail, str) else "request failed"
    field = getattr(exc, "field", None) or _HTTP_FIELDS.get(exc.status_code, "request")
    status = exc.status_code
    if isinstance(exc, BadBody) and request.url.path in compat.LEGACY_PATHS:
        status = 422  # NeuralSync2's clients got 422 for a body that is not JSON
    return error_response(status, getattr(exc, "kind", None) or kinds.get(exc.status_code, "http_error"),
                          detail, field, headers=dict(exc.headers or {}))


class Guard:
    """Last line: an exception escaping the app is logged with its traceback and answered 500 without it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:  # the client gets a generic 500; the log gets the traceback
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not started and scope["type"] == "http":
                await send_error(send, 500, "internal", "internal server error (details are in the server log)")


# ------------------------------------------------------------------ metrics
def metrics(request: Request) -> Response:
    """Prometheus text format (``prometheus_client``): the store, this server's latencies (seconds), stages,
    alerts, every process of the store per tool, and this process's resources."""
    from . import metrics as exposition  # prometheus_client is imported when first scraped

    return Response(exposition.render(api_of(request)), media_type=exposition.CONTENT_TYPE)
