"""One model per machine: embed through the ``neuralsync serve`` running on the same store.

Every agent session starts its own MCP server, and every CLI call is a fresh
process; loading the model in each costs a third of a second and a hundred
megabytes. A running server announces itself (see :mod:`neuralsync.discovery`);
other processes on the same home embed through its ``POST /v1/embed`` instead
of loading the model. When the server is gone, refuses or answers
badly, the caller falls back to its own local model (and tries the server
again after a pause), so embedding never fails because of the server.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ...discovery import ServerInfo, read_server_info, server_token
from ...errors import EmbeddingUnavailable
from ...json_input import parse_json
from .base import Embedder, as_text_list, empty

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0
RETRY_AFTER_S = 30.0  # after a failure, the local model serves this long before the server is tried again
MAX_REQUEST_CHARS = 200_000  # texts per request stay well under the server's 1 MiB body limit
MAX_REQUEST_TEXTS = 256


class ServerEmbedder:
    """Embeds through the store's server, falling back to ``local()`` (built on first need)."""

    def __init__(self, info: ServerInfo, token: str, local: Callable[[], Embedder],
                 timeout: float = TIMEOUT_S) -> None:
        self.info = info
        self.name = info.embedder
        self.dims = info.dims
        self._token = token
        self._local_factory = local
        self._local: Embedder | None = None
        self._timeout = timeout
        self._down_until = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ServerEmbedder({self.info.url!r}, {self.name!r})"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors from the server; from the local model when the server cannot give them."""
        items = as_text_list(texts)
        if not items:
            return empty(self.dims)
        if time.monotonic() >= self._down_until:
            try:
                return np.vstack([self._request(chunk) for chunk in _chunks(items)])
            except (OSError, http.client.HTTPException, ValueError, EmbeddingUnavailable) as exc:
                self._down_until = time.monotonic() + RETRY_AFTER_S
                log.info("embedding through the server at %s failed (%s); using the local model", self.info.url, exc)
        return self._fallback().embed(items)

    def _fallback(self) -> Embedder:
        with self._lock:
            if self._local is None:
                self._local = self._local_factory()
            return self._local

    def _request(self, texts: list[str]) -> np.ndarray:
        parts = urlsplit(self.info.url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=self._timeout)
        try:
            conn.request("POST", "/v1/embed", body=json.dumps({"texts": texts}).encode("utf-8"),
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._token}"})
            response = conn.getresponse()
            body = response.read()
        except TimeoutError as exc:
            raise EmbeddingUnavailable(f"no answer within {self._timeout:g} s") from exc
        finally:
            conn.close()
        if response.status != 200:
            raise EmbeddingUnavailable(f"the server answered {response.status}")
        answer: dict[str, Any] = parse_json(body)  # one rule for JSON read from a socket, bounded
        if answer.get("embedder") != self.name or answer.get("dims") != self.dims:
            raise EmbeddingUnavailable(f"the server now embeds with {answer.get('embedder')!r}, not {self.name!r}")
        matrix = np.frombuffer(base64.b64decode(answer["vectors"]), dtype="<f4")
        if matrix.size != len(texts) * self.dims:
            raise EmbeddingUnavailable("the server sent vectors of the wrong size")
        return matrix.reshape(len(texts), self.dims).astype(np.float32)


def _chunks(items: list[str]) -> list[list[str]]:
    """Requests of at most ``MAX_REQUEST_TEXTS`` texts and about ``MAX_REQUEST_CHARS`` characters."""
    out: list[list[str]] = [[]]
    size = 0
    for text in items:
        if out[-1] and (len(out[-1]) >= MAX_REQUEST_TEXTS or size + len(text) > MAX_REQUEST_CHARS):
            out.append([])
            size = 0
        out[-1].append(text)
        size += len(text)
    return out


def server_embedder(home: Path, spec_name: str, local: Callable[[], Embedder]) -> ServerEmbedder | None:
    """A :class:`ServerEmbedder` when a live server of this store embeds with ``spec_name``'s model."""
    info = read_server_info(home)
    if info is None or info.embedder != spec_name:
        return None
    token = server_token(home)
    return None if not token else ServerEmbedder(info, token, local)
