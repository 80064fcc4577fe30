"""Where a running ``neuralsync serve`` announces itself to the other processes of its store.

``<home>/server.json`` (mode 0600) holds the server's pid, its loopback URL and
its embedder's name; the bearer token stays in its own 0600 file
(``server.token``) or ``$NS_TOKEN``. Other processes read it to embed through
the server (one model per machine) or, for a CLI recall, to ask it outright
(no imports, no model load). A stale file (its pid gone) or a non-loopback URL
is ignored. Standard library only: it is read on the CLI's fast path.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .utils import pid_alive

SERVER_INFO_FILE = "server.json"
TOKEN_FILE = "server.token"
TOKEN_ENV = "NS_TOKEN"


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
