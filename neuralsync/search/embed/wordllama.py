"""The wordllama embedder: a token table shipped in its wheel, mean pooled; fully offline."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ...errors import EmbeddingUnavailable, InvalidInput
from .base import as_text_list, empty, is_importable, l2_normalize, require

WORDLLAMA_PIP = "pip install wordllama==0.4.0.post1"


def _import_without_logging_side_effects(module: str, pip_line: str) -> ModuleType:
    """Import ``module`` and undo a ``logging.basicConfig()`` it runs at import time.

    wordllama 0.4.0.post1 calls ``logging.basicConfig(level=logging.INFO)`` in
    two of its modules, which installs a stderr handler on the *root* logger of
    the host application. A library must not do that, so handlers added to the
    root logger during the import are removed and the root level is restored.
    """
    if module in sys.modules and sys.modules[module] is not None:
        return sys.modules[module]
    root = logging.getLogger()
    handlers_before = list(root.handlers)
    level_before = root.level
    try:
        return require(module, pip_line)
    finally:
        for handler in list(root.handlers):
            if handler not in handlers_before:
                root.removeHandler(handler)
        root.setLevel(level_before)


def _length_batches(texts: Sequence[str], max_items: int, max_chars: int) -> Iterator[np.ndarray]:
    """Yield index arrays of texts grouped by length.

    wordllama pads every batch to its longest text, so mixing one long note
    with 63 short ones costs 64 long rows of work and memory. Sorting by length
    and capping ``rows * longest`` keeps both bounded.
    """
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    order = np.argsort(lengths, kind="stable")
    start = 0
    for pos in range(len(order)):
        rows = pos - start + 1
        longest = max(int(lengths[order[pos]]), 1)
        if pos > start and (rows > max_items or rows * longest > max_chars):
            yield order[start:pos]
            start = pos
    if start < len(order):
        yield order[start:]


class WordLlamaEmbedder:
    """Default offline embedder: wordllama's ``l2_supercat`` token table, mean pooled.

    Quality sits between bag-of-words and small sentence transformers, at
    ~0.04 ms per sentence on one core, with no network and a ~33 MB wheel.
    ``dims`` may be 256 (native), 128 or 64 (Matryoshka truncation of the same
    table; only the 256-dim file ships in the wheel).

    Thread safety: the model is loaded lazily, exactly once, under a lock;
    afterwards ``embed`` only reads shared state and may be called from many
    threads at once (the tokenizer is a read-only Rust object).
    """

    CONFIG = "l2_supercat"
    NATIVE_DIMS = 256
    SUPPORTED_DIMS = (64, 128, 256)

    def __init__(self, dims: int = 256, *, batch_size: int = 64, max_batch_chars: int = 262_144) -> None:
        if dims not in self.SUPPORTED_DIMS:
            raise InvalidInput(
                "dims",
                f"wordllama dims must be one of {self.SUPPORTED_DIMS}, got {dims}",
            )
        if batch_size < 1 or max_batch_chars < 1:
            raise InvalidInput("batch_size", "batch_size and max_batch_chars must be positive")
        if not is_importable("wordllama"):
            raise EmbeddingUnavailable(f"wordllama is not installed; install it with: {WORDLLAMA_PIP}")
        self.dims = dims
        self.name = f"wordllama:{self.CONFIG}:{dims}"
        self.batch_size = batch_size
        self.max_batch_chars = max_batch_chars
        self._lock = threading.Lock()
        self._model: Any = None

    def __repr__(self) -> str:
        return f"WordLlamaEmbedder(dims={self.dims})"

    def load(self) -> None:
        """Load the model now (else the first ``embed`` does). Idempotent."""
        self._get_model()

    def _get_model(self) -> Any:
        model = self._model
        if model is not None:
            return model
        with self._lock:
            if self._model is None:
                self._model = _load_wordllama(self.CONFIG, self.NATIVE_DIMS, self.dims)
            return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` into ``(n, dims)`` float32 unit rows (zero rows if empty)."""
        items = as_text_list(texts)
        if not items:
            return empty(self.dims)
        model = self._get_model()
        out = np.empty((len(items), self.dims), dtype=np.float32)
        for idx in _length_batches(items, self.batch_size, self.max_batch_chars):
            chunk = [items[i] for i in idx]
            # norm=False: wordllama's own normalisation divides by zero on empty text.
            out[idx] = model.embed(chunk, norm=False, batch_size=len(chunk))
        return l2_normalize(out)


def _load_wordllama(config: str, native_dims: int, dims: int) -> Any:
    """Load the wheel-bundled wordllama model without any chance of a download.

    wordllama 0.4.0.post1 looks for tokenizers in ``<package>/tokenizer/``
    (singular) while the wheel ships them in ``<package>/tokenizers/``; the
    weights lookup (``<package>/weights/``) is right. With default arguments it
    therefore misses the bundled tokenizer and downloads it from the Hugging
    Face hub into ``~/.cache/wordllama`` (fails offline). Its second lookup is
    ``<cache_dir>/tokenizers/``, so pointing ``cache_dir`` at the package
    directory itself finds the bundled file; ``disable_download=True`` turns any
    remaining miss into ``FileNotFoundError`` instead of a network request. This
    also keeps working if a later release fixes the folder name.
    """
    wordllama = _import_without_logging_side_effects("wordllama", WORDLLAMA_PIP)
    if not wordllama.__file__:
        raise EmbeddingUnavailable(f"wordllama has no package directory; reinstall it with: {WORDLLAMA_PIP}")
    package_dir = Path(wordllama.__file__).resolve().parent
    trunc_dim = None if dims == native_dims else dims
    try:
        return wordllama.WordLlama.load(
            config=config,
            cache_dir=package_dir,
            dim=native_dims,
            trunc_dim=trunc_dim,
            disable_download=True,
        )
    except Exception as exc:  # FileNotFoundError, ValueError, safetensors/tokenizers errors
        version = getattr(wordllama, "__version__", "?")
        raise EmbeddingUnavailable(
            f"wordllama {version} is installed but its bundled {config} model "
            f"could not be loaded offline ({exc}); reinstall it with: {WORDLLAMA_PIP}"
        ) from exc
