"""Shared fixtures: every test gets its own store directory and never touches the user's home store."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# onnxruntime before usearch, as the package itself does (search/vector/fileformat.py): usearch loads
# its SIMD library with RTLD_GLOBAL, and an onnxruntime loaded after it crashes the process. Test
# modules import usearch directly (importorskip), so the order is fixed here, before any of them.
if importlib.util.find_spec("onnxruntime") is not None:
    import onnxruntime  # noqa: F401

from neuralsync.services.doctor import run_doctor
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

MakeApi = Callable[..., UnifiedMemoryAPI]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point NEURALSYNC_HOME at a scratch directory so no test reads or writes ~/.neuralsync2."""
    home = tmp_path_factory.mktemp("neuralsync-home")
    monkeypatch.setenv("NEURALSYNC_HOME", str(home))
    # The optimized MiniLM graph (embed/minilm.py): one copy per test session, never in the user's cache.
    monkeypatch.setenv("NEURALSYNC_MODEL_CACHE", str(tmp_path_factory.getbasetemp() / "model-cache"))
    monkeypatch.delenv("TOOL_NAME", raising=False)
    return home


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[MakeApi]:
    """Factory: ``make_api(**config)`` opens an API on a store under ``tmp_path`` (default ``store``).

    Every API it opened is closed at teardown, even when the test failed.
    """
    opened: list[UnifiedMemoryAPI] = []

    def factory(base_path: Path | str | None = None, **overrides: Any) -> UnifiedMemoryAPI:
        config = MemoryConfig(base_path=str(base_path or tmp_path / "store"), **overrides)
        api = UnifiedMemoryAPI(config)
        opened.append(api)
        return api

    yield factory
    for api in opened:
        api.close()


@pytest.fixture
def api(make_api: MakeApi) -> UnifiedMemoryAPI:
    """An API on a fresh store in ``tmp_path``; closed automatically."""
    return make_api()


def _snapshot(api: UnifiedMemoryAPI) -> tuple[int, str]:
    report = run_doctor(api.storage, quick=True)
    return api.reads.counts()["ops"], report.digest


@pytest.fixture
def snapshot() -> Callable[[UnifiedMemoryAPI], tuple[int, str]]:
    """``snapshot(api)`` -> (op count, state digest); equal before and after means nothing was written."""
    return _snapshot
