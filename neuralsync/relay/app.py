"""The relay over HTTP (FastAPI, under ``/relay/v1``): devices, scopes, push, pull and a live stream.

Every request but ``GET /health`` is signed by a device key (the headers of
``replication/signing.py``, with the relay's own public key as the server key) and every answer is signed
by the relay (``X-Neuralsync-Signature`` over the request's nonce and the answer's body). Nonces are kept in
PostgreSQL, so a request replayed to any relay on the same database is refused. Bodies and batches are
bounded; bad input gets a 4xx whose JSON names the field (``{"error": {"message", "field"}}``).

Live updates: ONE ``LISTEN relay_ops`` connection per relay process (:class:`Fanout`), whose notifications
("scope:seq", sent once per push by the database) wake the subscribers of that scope. A woken subscriber
reads the new ops back *as its own user's role*, so row-level security decides what it gets: a
non-member gets nothing, and a member revoked mid-stream stops getting anything. Clients never LISTEN
(PostgreSQL's channels are not access-controlled).

Stream events (``event: ops``, ``id``: the cursor) carry two data lines: the relay's signature (hex, over
the request's nonce and the second line) and the page as JSON (``{"ops", "cursor", "last_seq"}``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio.to_thread
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from ..errors import InvalidInput, NeuralSyncError, SyncRejected
from ..json_input import parse_json
from ..replication.signing import NONCE_HEADER, SIGNATURE_HEADER, SignedRequest, sign_reply
from .service import MAX_PULL_OPS, PullPage, Relay, scope_of

log = logging.getLogger("neuralsync.relay")
PREFIX = "/relay/v1"
MAX_BODY = 16 << 20  # a push of MAX_PUSH_OPS ops of typical size fits many times over; one op is <= 1 MiB
STREAM_PAGE = 500
KEEPALIVE_S = 15.0
REPOLL_S = 30.0  # a subscriber reads again this often even without a notification (a lost one costs this much)
T = TypeVar("T")


class Fanout:
    """One LISTEN connection for the whole process; wakes the subscribers of the scope a push touched."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self._subscribers: dict[bytes, set[asyncio.Event]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="relay-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def subscribe(self, scope: bytes) -> asyncio.Event:
        event = asyncio.Event()
        self._subscribers.setdefault(scope, set()).add(event)
        return event

    def unsubscribe(self, scope: bytes, event: asyncio.Event) -> None:
        waiting = self._subscribers.get(scope)
        if waiting is not None:
            waiting.discard(event)
            if not waiting:
                del self._subscribers[scope]

    def _wake(self, scope: bytes | None) -> None:
        """On the event loop: wake one scope's subscribers (None: everyone's, after a reconnect)."""
        groups = self._subscribers.values() if scope is None else [self._subscribers.get(scope, set())]
        for group in groups:
            for event in group:
                event.set()

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute("LISTEN relay_ops")
                    self.listening.set()
                    self._post(None)  # anything pushed while we were not listening
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._post(_scope_of_note(note.payload))
            except psycopg.Error as exc:
                self.listening.clear()
                log.warning("relay: the LISTEN connection failed (%s); reconnecting", exc)
                self._stop.wait(1.0)

    def _post(self, scope: bytes | None) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake, scope)


def _scope_of_note(payload: str) -> bytes | None:
    try:
        return bytes.fromhex(payload.partition(":")[0])
    except ValueError:
        return None


def create_app(relay: Relay, listen: bool = True) -> FastAPI:
    """The relay's ASGI app. ``listen``: start the process's LISTEN connection (the stream needs it)."""
    fanout = Fanout(relay.store.conninfo)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if listen:
            fanout.start()
        try:
            yield
        finally:
            fanout.stop()
            relay.store.close()

    app = FastAPI(title="neuralsync relay", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.relay, app.state.fanout = relay, fanout

    @app.exception_handler(NeuralSyncError)
    async def refused(request: Request, exc: NeuralSyncError) -> Response:
        status, field = _status_and_field(exc)
        return _answer(relay, request, {"error": {"message": _message(exc), "field": field}}, status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        field = str((first.get("loc") or ("request",))[-1])
        return _answer(relay, request, {"error": {"message": f"{field}: {first.get('msg', 'invalid')}",
                                                  "field": field}}, 400)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "relay_key": relay.public_key.hex()}

    @app.post(PREFIX + "/devices")
    async def register(request: Request) -> Response:
        signed, body = await _authenticate(relay, request, registered=False)
        data = _object(body)
        user = _hex_field(data, "user", 32)
        certificate = _hex_field(data, "certificate", 64)
        await _blocking(relay.register, user, signed.client_key, certificate)
        return _answer(relay, request, {"device": signed.client_key.hex(), "user": user.hex()})

    @app.get(PREFIX + "/scopes")
    async def scopes(request: Request) -> Response:
        signed, _ = await _authenticate(relay, request)
        return _answer(relay, request, {"scopes": await _blocking(relay.scopes, signed.client_key)})

    @app.post(PREFIX + "/scopes/{scope}/push")
    async def push(scope: str, request: Request) -> Response:
        scope_id = scope_of(scope)
        signed, body = await _authenticate(relay, request)
        ops = _object(body).get("ops")
        if not isinstance(ops, list):
            raise SyncRejected("ops must be a list of ops in wire form", field="ops")
        report = await _blocking(relay.push, signed.client_key, scope_id, ops)
        return _answer(relay, request, report.to_dict())

    @app.get(PREFIX + "/scopes/{scope}/ops")
    async def pull(scope: str, request: Request, after: int = Query(0, ge=0, le=1 << 62),
                   limit: int = Query(1000, ge=1, le=MAX_PULL_OPS)) -> Response:
        scope_id = scope_of(scope)
        signed, _ = await _authenticate(relay, request)
        page = await _blocking(relay.pull, signed.client_key, scope_id, after, limit)
        return _answer(relay, request, page.to_dict())

    @app.get(PREFIX + "/scopes/{scope}/stream")
    async def stream(scope: str, request: Request, after: int = Query(0, ge=0, le=1 << 62)) -> EventSourceResponse:
        scope_id = scope_of(scope)
        signed, _ = await _authenticate(relay, request)
        first = await _blocking(relay.pull, signed.client_key, scope_id, after, STREAM_PAGE)  # a non-member: 403
        nonce = request.headers[NONCE_HEADER]
        events = _events(relay, fanout, signed.client_key, scope_id, nonce, first)
        return EventSourceResponse(events, ping=int(KEEPALIVE_S), sep="\n",
                                   headers={SIGNATURE_HEADER: sign_reply(relay.key, nonce, b"")})

    return app


async def _events(relay: Relay, fanout: Fanout, device: bytes, scope: bytes, nonce: str,
                  page: PullPage) -> AsyncIterator[ServerSentEvent]:
    """Pages of new ops as the device's user reads them, until the client leaves or loses the scope."""
    wake = fanout.subscribe(scope)
    try:
        yield ServerSentEvent(retry=1000)
        cursor = page.cursor
        while True:
            if page.ops:
                cursor = page.cursor
                yield _frame(relay, nonce, page)
                if len(page.ops) == STREAM_PAGE:
                    page = await _blocking(relay.pull, device, scope, cursor, STREAM_PAGE)
                    continue
            try:
                await asyncio.wait_for(wake.wait(), REPOLL_S)
            except asyncio.TimeoutError:
                pass
            wake.clear()
            try:
                page = await _blocking(relay.pull, device, scope, cursor, STREAM_PAGE)
            except SyncRejected as exc:  # revoked meanwhile: the database hides the scope now
                yield ServerSentEvent(json.dumps({"message": str(exc), "field": exc.field}), event="end")
                return
    finally:
        fanout.unsubscribe(scope, wake)


def _frame(relay: Relay, nonce: str, page: PullPage) -> ServerSentEvent:
    payload = json.dumps(page.to_dict(), separators=(",", ":"))
    signature = sign_reply(relay.key, nonce, payload.encode())
    return ServerSentEvent(signature + "\n" + payload, id=str(page.cursor), event="ops")


async def _authenticate(relay: Relay, request: Request, registered: bool = True) -> tuple[SignedRequest, bytes]:
    """The signed headers checked against the body, the device registered (unless registering), the nonce
    spent for every relay on the database; or a 401/403/413/429 naming the header or field at fault."""
    signed = SignedRequest.from_headers(request.headers)
    signed.check_time()
    if registered:
        await _blocking(relay.user_of, signed.client_key)  # a stranger is refused before its body is read
    body = await _read_body(request)
    signed.check(relay.public_key, body)
    await _blocking(relay.use_nonce, signed.client_key, signed.nonce)
    return signed, body


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise SyncRejected(f"request body over {MAX_BODY} bytes", status=413, field="body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise SyncRejected(f"request body over {MAX_BODY} bytes", status=413, field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def _object(body: bytes) -> dict[str, Any]:
    data = parse_json(body or b"{}")
    if not isinstance(data, dict):
        raise SyncRejected("the body must be a JSON object", field="body")
    return data


def _hex_field(data: dict[str, Any], name: str, size: int) -> bytes:
    value = data.get(name)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise SyncRejected(f"{name} must be {size} bytes in hex", field=name)
    return raw


def _answer(relay: Relay, request: Request, payload: dict[str, Any], status: int = 200) -> Response:
    """A JSON answer signed by the relay for the request's nonce (unsigned when the request had none)."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {}
    nonce = request.headers.get(NONCE_HEADER, "")
    if len(nonce) == 32:
        try:
            headers[SIGNATURE_HEADER] = sign_reply(relay.key, nonce, body)
        except ValueError:
            pass  # not hex: the request was refused for it, the answer says why
    return Response(body, status, headers=headers, media_type="application/json")


def _status_and_field(exc: NeuralSyncError) -> tuple[int, str]:
    if isinstance(exc, SyncRejected):
        return exc.status, exc.field
    if isinstance(exc, InvalidInput):
        return 400, exc.field
    return 503, "relay"


def _message(exc: NeuralSyncError) -> str:
    return exc.message if isinstance(exc, InvalidInput) else str(exc)


async def _blocking(call: Callable[..., T], *args: Any) -> T:
    """The store's calls block on PostgreSQL: run them in the thread pool."""
    return await anyio.to_thread.run_sync(call, *args)

