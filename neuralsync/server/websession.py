"""Browser sign-in: the token exchanged for a session cookie, and what that cookie may open.

A browser cannot send ``Authorization: Bearer`` on a page load, an ``EventSource``
or a link to ``/docs``, so the dashboard signs in once: the token is posted to
``/ui/login`` and exchanged for a random session id in a cookie that is
``HttpOnly`` (no script reads it) and ``SameSite=Strict`` (no other site's page
makes the browser send it). Sessions live in this process only (a restart
signs everyone out) and expire after :data:`SESSION_TTL_S` idle seconds.

The cookie opens the dashboard (``/ui/...``), the API's documentation
(``/docs``, ``/redoc``, ``/openapi.json``) and the change feed's stream; the
rest of the API keeps requiring the bearer token. A state-changing request
made with the cookie must also carry the session's CSRF token in the
``X-CSRF-Token`` header (the dashboard's pages hold it; another site cannot
read it), and its ``Origin`` / ``Sec-Fetch-Site``, when the browser sends
them, must say the request comes from this origin.

Standard library only: :class:`~neuralsync.server.auth.Gate` uses this before routing.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

COOKIE_PREFIX = "ns_session_"
CSRF_HEADER = b"x-csrf-token"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 256
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOGIN_PATH = "/ui/login"
# Open without any credential: the sign-in page and the static assets (nothing stored is in them).
OPEN_PREFIXES = ("/ui/static/",)
OPEN_WEB_PATHS = frozenset({LOGIN_PATH})
# What the cookie admits besides /ui: the API's documentation and the change feed a page listens to.
COOKIE_PATHS = frozenset({"/docs", "/redoc", "/openapi.json", "/v1/changes/stream"})
# Pages a browser loads: without a session they redirect to the sign-in page instead of answering 401.
PAGE_PATHS = frozenset({"/docs", "/redoc"})

Scope = MutableMapping[str, Any]


@dataclass
class WebSession:
    """One signed-in browser: its id (the cookie's value), its CSRF token and when it expires."""

    id: str
    csrf: str
    expires: float


def cookie_name(scope: Scope) -> str:
    """The cookie's name carries the server's port: two stores' servers on one host keep apart sessions."""
    server = scope.get("server") or ("", 0)
    return f"{COOKIE_PREFIX}{server[1] if len(server) > 1 and server[1] else 0}"


def is_open(path: str) -> bool:
    """Paths of the dashboard anyone may load: the sign-in page and the static assets."""
    return path in OPEN_WEB_PATHS or path.startswith(OPEN_PREFIXES)


def cookie_admits(path: str) -> bool:
    """Paths a session cookie opens (everything else needs the bearer token)."""
    return path == "/ui" or path.startswith("/ui/") or path in COOKIE_PATHS


def is_page(path: str) -> bool:
    """A page a browser navigates to (redirected to sign-in) rather than a resource a script fetches."""
    return path in PAGE_PATHS or path == "/ui" or path.startswith("/ui/")


def login_redirect(path: str) -> str:
    """Where a browser without a session is sent: the sign-in page, coming back to ``path`` after."""
    return f"{LOGIN_PATH}?next={quote(path, safe='/')}"


def safe_next(value: str | None) -> str:
    """A place to go after sign-in: only a path of this server (no scheme, no host, no ``//``)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value and cookie_admits(
            value.split("?", 1)[0]):
        return value
    return "/ui/"


class WebSessions:
    """The signed-in browsers of one server (thread-safe; in memory only)."""

    def __init__(self, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._sessions: dict[str, WebSession] = {}
        self._lock = threading.Lock()

    def create(self) -> WebSession:
        """A new session (the caller has checked the token); the oldest goes when there are too many."""
        now = time.monotonic()
        session = WebSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now + self.ttl_s)
        with self._lock:
            self._reap(now)
            while len(self._sessions) >= self.max_sessions:
                oldest = min(self._sessions.values(), key=lambda s: s.expires)
                del self._sessions[oldest.id]
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> WebSession | None:
        """The live session with this id (its idle timer restarts), or None."""
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            found = self._sessions.get(session_id)
            if found is None or found.expires < now:
                self._sessions.pop(session_id, None)
                return None
            found.expires = now + self.ttl_s
            return found

    def drop(self, session_id: str | None) -> None:
        """Sign a browser out."""
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def _reap(self, now: float) -> None:
        for sid in [sid for sid, s in self._sessions.items() if s.expires < now]:
            del self._sessions[sid]

    def of_request(self, scope: Scope) -> WebSession | None:
        """The session named by the request's cookie, if it is live."""
        return self.get(read_cookie(scope, cookie_name(scope)))


def read_cookie(scope: Scope, name: str) -> str | None:
    """The value of cookie ``name`` in the request's Cookie header(s)."""
    for key, value in scope.get("headers", ()):
        if key.lower() != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            key_text, _, val = part.strip().partition("=")
            if key_text == name:
                return val
    return None


def same_origin(scope: Scope) -> bool:
    """False when the browser says the request comes from another site (``Origin`` or ``Sec-Fetch-Site``);
    requests that say nothing (not a browser, or an old one) pass: the CSRF token still guards them."""
    headers = {k.lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
    site = headers.get(b"sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = headers.get(b"origin")
    if origin is None:
        return True
    host = headers.get(b"host", "")
    return origin in (f"http://{host}", f"https://{host}")


def csrf_ok(scope: Scope, session: WebSession) -> bool:
    """A state-changing request made with the cookie: same origin and the session's CSRF token."""
    if not same_origin(scope):
        return False
    for key, value in scope.get("headers", ()):
        if key.lower() == CSRF_HEADER:
            return hmac.compare_digest(value, session.csrf.encode("ascii"))
    return False


def set_cookie_header(scope: Scope, session: WebSession | None) -> tuple[bytes, bytes]:
    """The ``Set-Cookie`` header that signs a browser in (or out, with ``None``)."""
    name = cookie_name(scope)
    if session is None:
        value = f"{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
    else:
        value = f"{name}={session.id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_TTL_S}"
    return b"set-cookie", value.encode("latin-1")
