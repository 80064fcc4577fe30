"""Who may connect and where: the bind address, the bearer token, the ASGI gate in front of every route.

The default address is loopback (``127.0.0.1:8373``); ``NS_HOST``,
``NS_PORT`` and ``NS_ENDPOINT`` override it, as in NeuralSync2.

The token lives beside the store (``<home>/server.token``, mode 0600) so every
tool that can read the store can also talk to its server, and nobody else on
the machine can. ``NS_TOKEN`` overrides the file, as in NeuralSync2.

:class:`Gate` is plain ASGI (no web framework import) so it also guards routes
the framework does not know (an unknown path answers 401, not 404, to a
client without a token) and can refuse an oversized body before any of it is
parsed.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config import MemoryConfig
from ..errors import ConfigError
from . import websession as web

log = logging.getLogger("neuralsync.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8373


def resolve_address(host: str | None = None, port: int | None = None) -> tuple[str, int]:
    """Where to bind (or connect): arguments, then NS_HOST/NS_PORT, then NS_ENDPOINT, then 127.0.0.1:8373."""
    endpoint = os.environ.get("NS_ENDPOINT")
    try:
        parsed = urlsplit(endpoint if "://" in (endpoint or "") else f"http://{endpoint}") if endpoint else None
        chosen_host = host or os.environ.get("NS_HOST") or (parsed.hostname if parsed else None) or DEFAULT_HOST
        raw_port: Any = port if port is not None else os.environ.get("NS_PORT") or (parsed.port if parsed else None)
        chosen_port = DEFAULT_PORT if raw_port is None else int(raw_port)
    except ValueError:
        raise ConfigError(f"bad port in NS_PORT/NS_ENDPOINT ({os.environ.get('NS_PORT')!r}, {endpoint!r})") from None
    if not 0 <= chosen_port <= 65535:
        raise ConfigError(f"port {chosen_port} is out of range")
    return chosen_host, chosen_port


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


TOKEN_ENV = "NS_TOKEN"
TOKEN_FILE = "server.token"
DEFAULT_MAX_BODY_BYTES = 1 << 20
# Paths that reveal nothing stored: liveness and the API description.
# Only liveness is open: the API's shape and version are for token holders too.
OPEN_PATHS = frozenset({"/health", "/v1/health"})
# Paths that authenticate each request themselves (peer sync: an Ed25519
# signature by a trusted peer's key, see ``neuralsync.peers``), with their own
# body limit. The bearer token is for local tools; peers never hold it.
SIGNED_PATHS: dict[str, int] = {"/v1/sync": 16 << 20}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def token_path(config: MemoryConfig) -> Path:
    """Where the server's token is kept for this store."""
    return config.home / TOKEN_FILE


def load_or_create_token(config: MemoryConfig) -> str:
    """The token in the token file, creating it (mode 0600, random 256 bits) on first use."""
    path = token_path(config)
    try:
        return _read_token(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        # O_EXCL: two servers starting at once must not overwrite each other's token.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token(path)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(token + "\n")
    return token


def _read_token(path: Path) -> str:
    token = path.read_text(encoding="ascii", errors="replace").strip()
    if not token:
        raise ConfigError(f"the token file {path} is empty; delete it to generate a new token")
    return token


def resolve_token(config: MemoryConfig, token: str | None = None) -> str:
    """The token the server will require: the argument, else ``$NS_TOKEN``, else the token file."""
    chosen = token or os.environ.get(TOKEN_ENV) or load_or_create_token(config)
    if not chosen.strip():
        raise ConfigError("the server token must not be empty")
    return chosen.strip()


def token_matches(expected: str, presented: str) -> bool:
    """Constant-time comparison, so response timing leaks nothing about the token."""
    return hmac.compare_digest(expected.encode("utf-8", "surrogatepass"), presented.encode("utf-8", "surrogatepass"))


def error_body(status: int, kind: str, message: str, field: str | None = None) -> bytes:
    """The JSON error document every route answers with (``detail`` kept for FastAPI-style clients)."""
    doc = {"error": {"type": kind, "field": field, "message": message}, "detail": message}
    return json.dumps(doc, ensure_ascii=True).encode("ascii")


async def send_error(send: Send, status: int, kind: str, message: str, field: str | None = None,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer a request with an error document from plain ASGI."""
    body = error_body(status, kind, message, field)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    """The request body passed the configured limit."""


class Gate:
    """Bearer-token check (401 missing, 403 wrong) and request size limit (413), before routing."""

    def __init__(self, app: ASGIApp, token: str, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 sessions: web.WebSessions | None = None) -> None:
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes
        # Signed-in browsers (the dashboard); None: the bearer token is the only way in.
        self.sessions = sessions
        self._told_tokenless = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = SIGNED_PATHS.get(scope["path"], self.max_body_bytes)
        if scope["path"] in SIGNED_PATHS:
            signed_refusal = self.signed_refusal(scope)
            if signed_refusal is not None:
                status, message, field = signed_refusal
                await send_error(send, status, "unauthorized" if status in (401, 403) else "busy", message, field)
                return
        elif scope["path"] in OPEN_PATHS or (self.sessions is not None and web.is_open(scope["path"])):
            pass
        elif (self.sessions is not None and _header(scope, b"authorization") is None
              and web.cookie_admits(scope["path"])):
            if not await self._admit_browser(scope, send):
                return
        else:
            refusal = self._refusal(_header(scope, b"authorization"))
            if refusal is not None and refusal[0] == 401 and not self._told_tokenless:
                self._tell_tokenless(scope["path"])
            if refusal is not None:
                status, kind, message = refusal
                await send_error(send, status, kind, message, "Authorization",
                                 [(b"www-authenticate", b'Bearer realm="neuralsync"')])
                return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await send_error(send, 413, "payload_too_large", f"request body over {limit} bytes", "body")
            return
        try:
            body = await self._read_body(receive, limit)
        except BodyTooLarge:
            await send_error(send, 413, "payload_too_large", f"request body over {limit} bytes", "body")
            return
        await self.app(scope, _replay(body, receive), send)

    async def _admit_browser(self, scope: Scope, send: Send) -> bool:
        """A request with no bearer token to a path the session cookie opens: True to let it through
        (the session is put in ``scope["state"]["web_session"]``), else it has been answered."""
        assert self.sessions is not None
        session = self.sessions.of_request(scope)
        if session is None:
            if scope["method"] in web.SAFE_METHODS and web.is_page(scope["path"]):
                location = web.login_redirect(scope["path"]).encode("latin-1")
                await send({"type": "http.response.start", "status": 303,
                            "headers": [(b"location", location), (b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
            else:
                await send_error(send, 401, "unauthorized", "sign in at /ui/login, or send"
                                 " 'Authorization: Bearer <token>'", "Cookie")
            return False
        if scope["method"] not in web.SAFE_METHODS and not web.csrf_ok(scope, session):
            await send_error(send, 403, "forbidden", "cross-site request refused: a change made with the"
                             " session cookie needs the page's X-CSRF-Token from this origin", "X-CSRF-Token")
            return False
        scope.setdefault("state", {})["web_session"] = session
        return True

    def signed_refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        """(status, reason, header at fault) to refuse a signed request on its headers, before its body
        is read; None to read it. The plain gate knows no peers; the server's app asks its replica."""
        return None

    def _tell_tokenless(self, path: str) -> None:
        """Once per server: NeuralSync2's clients send no token unless $NS_TOKEN is set, and its nswrap
        hides the 401, so their captures would be lost where nobody looks (issue 12)."""
        self._told_tokenless = True
        log.warning("refused %s without a token; NeuralSync2's clients (nsctl, nswrap, *-ns) send one only"
                    " from $NS_TOKEN: run 'neuralsync migrate', or export NS_TOKEN=\"$(neuralsync token)\"", path)

    def _refusal(self, header: str | None) -> tuple[int, str, str] | None:
        if header is None:
            return 401, "unauthorized", "missing 'Authorization: Bearer <token>' header (see 'neuralsync token')"
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return 401, "unauthorized", "the Authorization header must be 'Bearer <token>'"
        if not token_matches(self.token, presented.strip()):
            return 403, "forbidden", "wrong token"
        return None

    async def _read_body(self, receive: Receive, limit: int) -> bytes:
        """Read the whole body, bounded; the routes then parse it from memory."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)  # disconnected: the route will see an empty body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the buffered body once, then the client's later messages (disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
