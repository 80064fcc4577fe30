"""Where a running ``neuralsync serve`` announces itself to the other processes of its store.

``<home>/server.json`` (mode 0600) holds the server's pid, its loopback URL and
its embedder's name; the bearer token stays in its own 0600 file
(``server.token``) or ``$NS_TOKEN``. Other processes read it to embed through
the server (one model per machine) or, for a recall, to ask it outright
(``recall_via_server``: no numpy, no index, no model in the asking process).
A stale file (its pid gone) or a non-loopback URL is ignored. Standard library
and base modules only: it is read on the CLI's fast path.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import InvalidInput
from .json_input import parse_json
from .model import Memory
from .utils import pid_alive

SERVER_INFO_FILE = "server.json"
TOKEN_FILE = "server.token"
TOKEN_ENV = "NS_TOKEN"
RECALL_TIMEOUT_S = 10.0  # a server that takes longer is stuck: the asker searches locally


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What a running server says about itself."""

    pid: int
    url: str
    embedder: str
    dims: int


def write_server_info(home: Path, url: str, embedder: str, dims: int) -> Path:
    """Announce this process as the store's server (mode 0600, replaced atomically)."""
    path = home / SERVER_INFO_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"pid": os.getpid(), "url": url, "embedder": embedder, "dims": dims}, out)
    os.replace(tmp, path)
    return path


def remove_server_info(home: Path) -> None:
    """Withdraw the announcement, if it is still this process's."""
    found = read_server_info(home, include_self=True)
    if found is not None and found.pid == os.getpid():
        (home / SERVER_INFO_FILE).unlink(missing_ok=True)


def read_server_info(home: Path, include_self: bool = False) -> ServerInfo | None:
    """The live server of this store (its pid exists, it listens on loopback), or None."""
    try:
        data = json.loads((home / SERVER_INFO_FILE).read_text(encoding="utf-8"))
        info = ServerInfo(int(data["pid"]), str(data["url"]), str(data["embedder"]), int(data["dims"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if info.pid == os.getpid() and not include_self:
        return None  # the server itself works locally
    host = urlsplit(info.url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1") or not pid_alive(info.pid):
        return None
    return info


def server_token(home: Path) -> str | None:
    """The bearer token a local client presents: ``$NS_TOKEN``, else the store's token file."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip() or None
    try:
        return (home / TOKEN_FILE).read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _ask_server(home: Path, method: str, path: str, request: dict[str, Any] | None, timeout: float
                ) -> tuple[int, Any] | None:
    """(status, parsed JSON answer) of one call to the store's announced server; None when no server is
    announced, it cannot be reached or answers no JSON (the caller then uses the store itself)."""
    info = read_server_info(home)
    token = server_token(home) if info is not None else None
    if info is None or token is None:
        return None
    import http.client  # only when a server is announced: ~15 ms of imports a process alone never needs

    parts = urlsplit(info.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"}
    body = None
    if request is not None:
        body, headers["Content-Type"] = json.dumps(request).encode("utf-8"), "application/json"
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        status, raw = response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None  # gone or stuck
    finally:
        conn.close()
    try:
        return status, parse_json(raw)  # one rule for JSON read from a socket, bounded
    except ValueError:  # InvalidInput is one
        return None


def persona_via_server(home: Path, timeout: float = RECALL_TIMEOUT_S) -> str | None:
    """The persona text from the store's running server (``GET /v1/persona``); None when no server is
    announced or it cannot answer (the caller then reads the store itself)."""
    asked = _ask_server(home, "GET", "/v1/persona", None, timeout)
    if asked is None:
        return None
    status, answer = asked
    text = answer.get("text") if status == 200 and isinstance(answer, dict) else None
    return text if isinstance(text, str) else None


def recall_via_server(home: Path, request: dict[str, Any], timeout: float = RECALL_TIMEOUT_S) -> list[Memory] | None:
    """The answer of the store's running server to ``POST /v1/recall`` with ``request`` (the facade's
    ``recall`` arguments, JSON-ready); None when no server is announced or it cannot answer (gone, stuck,
    refusing the token): the caller then searches locally. Input the server refuses as invalid (422)
    raises :class:`InvalidInput`, as a local recall would."""
    asked = _ask_server(home, "POST", "/v1/recall", request, timeout)
    if asked is None:
        return None
    status, answer = asked
    if status == 422 and isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        error = answer["error"]
        raise InvalidInput(str(error.get("field") or "query"), str(error.get("message") or "invalid input"))
    if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("items"), list):
        return None
    try:
        return [Memory(**{**item, "tags": tuple(item["tags"])}) for item in answer["items"]]
    except (TypeError, KeyError):  # a server of another version: its shape is not ours
        return None
