"""Embedder specs (``minilm``, ``wordllama``, ``hashing:128``, ``sentence-transformers:<model>``,
``openai:<model>@<url>``) turned into embedders; an embedder's own ``name`` is a spec too.

The implementations are imported when one is built, not with this module."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ...errors import EmbeddingUnavailable, InvalidInput
from .names import known_name as known_name  # re-exported: the cheap name lookup beside the builder

if TYPE_CHECKING:
    from .base import Embedder

logger = logging.getLogger(__name__)


def _parse_dims(text: str, spec: str) -> int:
    if not text.isdigit():
        raise InvalidInput("embedder", f"bad dims {text!r} in embedder spec {spec!r}")
    return int(text)


def get_embedder(
    spec: str = "minilm",
    *,
    api_key: str | None = None,
    fallback_to_hashing: bool = False,
) -> Embedder:
    """Build an embedder from a config string.

    Accepted specs (an embedder's own ``name`` is accepted too, so the name
    stored with an index can be turned back into an embedder):

    * ``minilm`` (default: all-MiniLM-L6-v2, int8, onnxruntime), ``minilm-l6-v2-q8:384``
    * ``wordllama``, ``wordllama:<dims>``, ``wordllama:l2_supercat:<dims>`` (fast, lower quality)
    * ``hashing``, ``hashing:<dims>``, ``hashing:v1:<dims>``
    * ``sentence-transformers:<model>`` (optionally ``:<dims>``)
    * ``openai:<model>@<base_url>`` (``api_key`` is passed through)

    Unknown specs raise ``InvalidInput("embedder", ...)``. A missing package
    raises :class:`EmbeddingUnavailable`, unless ``fallback_to_hashing`` is set:
    then a warning is logged and a :class:`HashingEmbedder` is returned (its
    different ``name`` makes any existing index rebuild, as it must).
    """
    text = (spec or "").strip() or "minilm"
    try:
        return _build_embedder(text, spec, api_key)
    except EmbeddingUnavailable as exc:
        if not fallback_to_hashing:
            raise
        logger.warning(
            "embedder %r unavailable (%s); falling back to the hashing embedder",
            spec,
            exc,
        )
        from .hashing import HashingEmbedder

        return HashingEmbedder()


def _build_embedder(text: str, spec: str, api_key: str | None) -> Embedder:
    # Each implementation is imported only for its own spec (openai's pulls urllib.request, ~15 ms
    # a fresh `neuralsync recall` with MiniLM never needs).
    kind, _, rest = text.partition(":")
    kind = kind.lower()
    if kind in ("minilm", "minilm-l6-v2-q8", "minilm-l6-v2-int8"):  # the last: the float kernel's old name
        from .minilm import MiniLMEmbedder

        if rest not in ("", str(MiniLMEmbedder.DIMS)):
            raise InvalidInput("embedder", f"bad minilm spec {spec!r}; use 'minilm'")
        return MiniLMEmbedder()
    if kind == "wordllama":
        from .wordllama import WordLlamaEmbedder

        parts = rest.split(":") if rest else []
        if len(parts) == 2 and parts[0] == WordLlamaEmbedder.CONFIG:
            parts = parts[1:]
        if len(parts) > 1:
            raise InvalidInput("embedder", f"bad wordllama spec {spec!r}")
        return WordLlamaEmbedder(_parse_dims(parts[0], spec) if parts else 256)
    if kind == "hashing":
        from .hashing import HashingEmbedder

        parts = rest.split(":") if rest else []
        if len(parts) == 2 and parts[0] == HashingEmbedder.VERSION:
            parts = parts[1:]
        if len(parts) > 1:
            raise InvalidInput("embedder", f"bad hashing spec {spec!r}")
        return HashingEmbedder(_parse_dims(parts[0], spec) if parts else 256)
    if kind in ("sentence-transformers", "sentence_transformers", "st"):
        from .sentence_transformer import SentenceTransformerEmbedder

        model, _, maybe_dims = rest.rpartition(":")
        dims: int | None = None
        if model and maybe_dims.isdigit():
            dims = int(maybe_dims)
        else:
            model = rest
        if not model.strip():
            raise InvalidInput(
                "embedder",
                f"missing model in {spec!r}; use sentence-transformers:<model>",
            )
        return SentenceTransformerEmbedder(model, dims=dims)
    if kind == "openai":
        from .openai_compat import OpenAICompatibleEmbedder

        model, at, base_url = rest.partition("@")
        if not at or not model.strip() or not base_url.strip():
            raise InvalidInput("embedder", f"bad openai spec {spec!r}; use openai:<model>@<base_url>")
        return OpenAICompatibleEmbedder(base_url, model, api_key=api_key)
    raise InvalidInput(
        "embedder",
        f"unknown embedder spec {spec!r}; expected 'minilm', 'wordllama', 'hashing', "
        "'sentence-transformers:<model>' or 'openai:<model>@<base_url>'",
    )
