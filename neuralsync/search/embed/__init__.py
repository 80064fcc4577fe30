"""Text embedders: :class:`Embedder` (the protocol) and the implementations, built from a spec string.

* :class:`WordLlamaEmbedder` (default): offline, its model ships in the wheel.
* :class:`HashingEmbedder`: no dependency at all; tests and last resort.
* :class:`SentenceTransformerEmbedder`, :class:`OpenAICompatibleEmbedder`: optional.
"""

from .base import Embedder, l2_normalize
from .hashing import HashingEmbedder
from .openai_compat import OpenAICompatibleEmbedder
from .sentence_transformer import SENTENCE_TRANSFORMERS_PIP, SentenceTransformerEmbedder
from .spec import get_embedder
from .wordllama import WORDLLAMA_PIP, WordLlamaEmbedder

__all__ = ["Embedder", "WordLlamaEmbedder", "HashingEmbedder", "SentenceTransformerEmbedder",
           "OpenAICompatibleEmbedder", "get_embedder", "l2_normalize", "WORDLLAMA_PIP", "SENTENCE_TRANSFORMERS_PIP"]
