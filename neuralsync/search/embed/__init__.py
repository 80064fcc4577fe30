"""Text embedders: :class:`Embedder` (the protocol) and the implementations, built from a spec string.

* :class:`MiniLMEmbedder` (default): all-MiniLM-L6-v2 int8 on onnxruntime, offline, no torch.
* :class:`WordLlamaEmbedder`: offline and very fast, lower quality (the ``[wordllama]`` extra).
* :class:`HashingEmbedder`: no dependency at all; tests and last resort.
* :class:`SentenceTransformerEmbedder`, :class:`OpenAICompatibleEmbedder`: optional.

Names are resolved on first use (PEP 562), so importing this package - or
:mod:`.spec` to learn an embedder's name - loads neither numpy nor a model:
a ``neuralsync remember`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "Embedder": "base", "l2_normalize": "base",
    "MiniLMEmbedder": "minilm", "MINILM_PIP": "minilm",
    "WordLlamaEmbedder": "wordllama", "WORDLLAMA_PIP": "wordllama",
    "HashingEmbedder": "hashing",
    "SentenceTransformerEmbedder": "sentence_transformer", "SENTENCE_TRANSFORMERS_PIP": "sentence_transformer",
    "OpenAICompatibleEmbedder": "openai_compat",
    "get_embedder": "spec",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(name)
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
