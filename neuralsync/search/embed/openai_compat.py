"""Embeddings from any server speaking OpenAI's ``POST /v1/embeddings`` (stdlib HTTP only)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import EmbeddingUnavailable, InvalidInput
from .base import as_text_list, empty, l2_normalize


def _embeddings_url(base_url: str) -> str:
    """Accept ``http://host:port``, ``.../v1`` or the full ``.../v1/embeddings``."""
    url = base_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise InvalidInput("base_url", f"expected an http(s) URL, got {base_url!r}")
    if url.endswith("/embeddings"):
        return url
    if url.endswith("/v1"):
        return url + "/embeddings"
    return url + "/v1/embeddings"


class OpenAICompatibleEmbedder:
    """Embeddings from any server speaking OpenAI's ``POST /v1/embeddings``.

    Works with OpenAI, vLLM, llama.cpp's server, Ollama and similar.

    Stdlib only (``urllib``), so it has no extra to install. ``name`` is
    ``openai:<model>:<dims>``: the server address is deliberately left out
    because the model, not the host serving it, defines the vector space.
    If ``dims`` is not given, the first access of ``dims``/``name`` sends one
    probe request. Network and HTTP failures raise :class:`EmbeddingUnavailable`
    (never with the API key in the message). Thread-safe: each call is an
    independent request; the lazily probed ``dims`` is guarded by a lock.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        dims: int | None = None,
        *,
        timeout: float = 30.0,
        batch_size: int = 256,
        send_dimensions: bool = False,
    ) -> None:
        if not model or not model.strip():
            raise InvalidInput("model", "an embedding model name is required")
        if dims is not None and dims < 1:
            raise InvalidInput("dims", f"dims must be positive, got {dims}")
        if batch_size < 1:
            raise InvalidInput("batch_size", "batch_size must be positive")
        self.endpoint = _embeddings_url(base_url)
        self.model = model.strip()
        self.timeout = timeout
        self.batch_size = batch_size
        self.send_dimensions = send_dimensions and dims is not None
        self._api_key = api_key
        self._dims = dims
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAICompatibleEmbedder({self.endpoint!r}, {self.model!r})"

    @property
    def dims(self) -> int:
        """Output dimensionality (one probe request if it was not given)."""
        if self._dims is None:
            with self._lock:
                if self._dims is None:
                    self._dims = int(self._request(["dimension probe"]).shape[1])
        return self._dims

    @property
    def name(self) -> str:
        return f"openai:{self.model}:{self.dims}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` (``batch_size`` per request) into ``(n, dims)`` unit rows."""
        items = as_text_list(texts)
        if not items:
            return empty(self.dims)
        parts = [self._request(items[i : i + self.batch_size]) for i in range(0, len(items), self.batch_size)]
        out = np.concatenate(parts, axis=0)
        if out.shape[1] != self.dims:
            raise EmbeddingUnavailable(
                f"embedding server returned {out.shape[1]}-dim vectors for {self.model!r}, expected {self.dims}"
            )
        return l2_normalize(out)

    def _request(self, batch: list[str]) -> np.ndarray:
        payload: dict[str, Any] = {
            "model": self.model,
            "input": batch,
            "encoding_format": "float",
        }
        if self.send_dimensions:
            payload["dimensions"] = self._dims
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(
            self.endpoint,
            data=json.dumps(payload).encode("utf-8"),
            headers=headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise EmbeddingUnavailable(f"embedding server {self.endpoint} answered HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise EmbeddingUnavailable(f"embedding server {self.endpoint} unreachable: {exc}") from exc
        return _parse_embeddings(body, len(batch), self.endpoint)


def _parse_embeddings(body: bytes, expected: int, endpoint: str) -> np.ndarray:
    """Parse an OpenAI embeddings response, ordering rows by their ``index`` field."""
    try:
        data = json.loads(body)["data"]
        rows = sorted(data, key=lambda item: int(item.get("index", 0)))
        matrix = np.array([row["embedding"] for row in rows], dtype=np.float32)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EmbeddingUnavailable(f"embedding server {endpoint} sent a malformed response: {exc}") from exc
    if matrix.ndim != 2 or matrix.shape[0] != expected:
        raise EmbeddingUnavailable(
            f"embedding server {endpoint} returned "
            f"{matrix.shape[0] if matrix.ndim else 0} vectors "
            f"for {expected} inputs"
        )
    return matrix
