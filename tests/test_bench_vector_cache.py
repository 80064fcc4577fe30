"""The bench's vector cache (``bench/vector_cache.py``, issue 11) must hand the store exactly the vectors the
embedder would have made, so that figures measured through it are the model's."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from neuralsync.search.embed import HashingEmbedder

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "vector_cache.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vector_cache", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("vector_cache", module)
    spec.loader.exec_module(module)
    return module


class Counting:
    """A real embedder that counts the texts it is asked for."""

    def __init__(self) -> None:
        self.inner = HashingEmbedder(dims=64)
        self.name, self.dims, self.asked = self.inner.name, self.inner.dims, 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.asked += len(texts)
        return self.inner.embed(texts)


def test_cached_vectors_are_the_embedders_and_survive_a_reopen(tmp_path: Path) -> None:
    vc = _module()
    texts = [f"memory number {i} about deploys and tests" for i in range(50)]
    first = Counting()
    cached = vc.CachedEmbedder(first, tmp_path)
    out = cached.embed(texts[:30])
    np.testing.assert_array_equal(out, first.inner.embed(texts[:30]))
    mixed = cached.embed(texts[20:50])  # 10 cached, 20 new, in the caller's order
    np.testing.assert_array_equal(mixed, first.inner.embed(texts[20:50]))
    assert first.asked == 50 and cached.hits == 10
    again = Counting()
    reopened = vc.CachedEmbedder(again, tmp_path)  # a later run: every text from disk, none embedded
    np.testing.assert_array_equal(reopened.embed(texts[::-1]), first.inner.embed(texts[::-1]))
    assert again.asked == 0 and len(reopened.cache) == 50
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # parts are renamed into place whole
    other = vc.CachedEmbedder(Counting(), tmp_path)
    other.name = "another-model"
    assert vc.model_id(other) != vc.model_id(first)  # another model, another cache
