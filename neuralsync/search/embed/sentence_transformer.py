"""The optional sentence-transformers embedder (torch), imported lazily."""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import EmbeddingUnavailable, InvalidInput
from .base import as_text_list, empty, is_importable, l2_normalize, require

SENTENCE_TRANSFORMERS_PIP = "pip install sentence-transformers"


class SentenceTransformerEmbedder:
    """Optional embedder on ``sentence-transformers``.

    The package is imported and the model loaded on first use, under a lock.
    Loading may download the model from the Hugging Face hub unless it is
    already cached (set ``HF_HUB_OFFLINE=1`` to forbid that). ``dims`` is read
    from the model unless given; give it to keep ``name``/``dims`` free of a
    model load. ``encode`` on one model instance is safe to call from several
    threads (torch inference, no shared mutable state on our side).
    """

    def __init__(
        self,
        model_name: str,
        *,
        dims: int | None = None,
        device: str | None = "cpu",
        batch_size: int = 32,
        threads: int = 1,
    ) -> None:
        if not model_name or not model_name.strip():
            raise InvalidInput("model_name", "a sentence-transformers model name is required")
        if dims is not None and dims < 1:
            raise InvalidInput("dims", f"dims must be positive, got {dims}")
        if not is_importable("sentence_transformers"):
            raise EmbeddingUnavailable(
                f"sentence-transformers is not installed; install it with: {SENTENCE_TRANSFORMERS_PIP}"
            )
        self.model_name = model_name.strip()
        self.device = device
        self.batch_size = batch_size
        self.threads = max(1, threads)
        self._dims = dims
        self._lock = threading.Lock()
        self._model: Any = None

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder({self.model_name!r})"

    @property
    def dims(self) -> int:
        """Output dimensionality (loads the model if it was not given)."""
        if self._dims is None:
            self._get_model()
        assert self._dims is not None
        return self._dims

    @property
    def name(self) -> str:
        return f"sentence-transformers:{self.model_name}:{self.dims}"

    def _get_model(self) -> Any:
        model = self._model
        if model is not None:
            return model
        with self._lock:
            if self._model is None:
                module = require("sentence_transformers", SENTENCE_TRANSFORMERS_PIP)
                try:
                    loaded = module.SentenceTransformer(self.model_name, device=self.device)
                except Exception as exc:
                    raise EmbeddingUnavailable(
                        f"sentence-transformers model {self.model_name!r} could not be loaded: {exc}"
                    ) from exc
                model_dims = int(loaded.get_sentence_embedding_dimension())
                if self._dims is not None and self._dims != model_dims:
                    raise EmbeddingUnavailable(
                        f"model {self.model_name!r} produces {model_dims}-dim vectors, configured {self._dims}"
                    )
                self._dims = model_dims
                self._model = loaded
                # torch starts a thread per core by default; on a small machine several
                # processes doing that turn a ~20 ms encode into a second under load.
                torch = sys.modules.get("torch")
                if torch is not None:
                    torch.set_num_threads(self.threads)
            return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` into ``(n, dims)`` float32 unit rows."""
        items = as_text_list(texts)
        model = self._get_model()
        if not items:
            return empty(self.dims)
        vectors = model.encode(
            items,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return l2_normalize(np.asarray(vectors, dtype=np.float32).reshape(len(items), -1))
