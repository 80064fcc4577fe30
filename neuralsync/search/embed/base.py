"""What every embedder shares: the :class:`Embedder` protocol and small helpers.

An embedder turns texts into unit-length float32 vectors. Rows that carry no
signal at all (empty text, text made only of unknown tokens) come back as
all-zero rows rather than NaN: their cosine similarity to anything is 0, which
is the honest answer. Optional embedders import their package lazily and raise
:class:`~neuralsync.errors.EmbeddingUnavailable` with the exact ``pip install``
line when it is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Protocol, runtime_checkable

import numpy as np

from ...errors import EmbeddingUnavailable, InvalidInput


@runtime_checkable
class Embedder(Protocol):
    """What the store and the index need from a text embedder.

    ``name`` must change whenever the vectors would change (other model, other
    dims, other preprocessing) because it is persisted with the index and
    compared on open. ``embed`` returns float32 ``(len(texts), dims)`` with
    L2-normalised rows (all-zero rows for texts with no signal), and
    ``(0, dims)`` for empty input.

    Note: on Python < 3.12 ``isinstance(x, Embedder)`` evaluates ``name`` and
    ``dims`` via ``hasattr``; for lazily-sized embedders (sentence-transformers
    or OpenAI-compatible without ``dims=``) that loads the model / probes the
    server. Pass ``dims`` explicitly to keep such checks free.
    """

    @property
    def name(self) -> str: ...

    @property
    def dims(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit length; all-zero rows stay zero (no NaN)."""
    out = np.array(matrix, dtype=np.float32, copy=True)
    if out.ndim != 2:
        raise InvalidInput("matrix", f"expected a 2-D array, got shape {out.shape}")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    out[~np.isfinite(out).all(axis=1)] = 0.0
    return out


def as_text_list(texts: Sequence[str]) -> list[str]:
    """Validate ``texts`` and return it as a list.

    A bare ``str`` is rejected because it is itself a ``Sequence[str]`` and
    would silently be embedded character by character.
    """
    if isinstance(texts, str | bytes):
        raise InvalidInput("texts", "expected a sequence of strings, got a single string")
    items = list(texts)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidInput("texts", f"item {i} is {type(item).__name__}, expected str")
    return items


def empty(dims: int) -> np.ndarray:
    return np.zeros((0, dims), dtype=np.float32)


def is_importable(module: str) -> bool:
    """Availability check that does not import the module.

    Honours ``sys.modules[name] = None`` (how tests simulate a missing package).
    """
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, pip_line: str) -> ModuleType:
    """Import an optional dependency, or raise ``EmbeddingUnavailable`` + pip line."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EmbeddingUnavailable(f"{module} is not installed; install it with: {pip_line}") from exc
