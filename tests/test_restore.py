"""Restoring a forgotten memory: a write every replica applies (the dashboard's "restore")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from neuralsync.errors import NotFound
from neuralsync.services.doctor import run_doctor
from neuralsync.unified_memory_api import UnifiedMemoryAPI
from tests._replicas import introduce, signed_transport

MakeApi = Any


def _sync(a: UnifiedMemoryAPI, b: UnifiedMemoryAPI, b_name: str) -> None:
    (report,) = a.sync(b_name, transport=lambda peer: signed_transport(a, b, b_name))
    assert report.ok, report


def test_restore_brings_back_the_memory_as_it_was(api: UnifiedMemoryAPI) -> None:
    mid = api.remember("the build uses uv", tags=["tooling"], priority=0.7)
    api.update(mid, content="the build uses uv and ruff")
    api.forget(mid)
    with pytest.raises(NotFound):
        api.get(mid)
    restored = api.restore(mid)
    assert restored.content == "the build uses uv and ruff"
    assert restored.tags == ("tooling",) and restored.priority == 0.7
    assert api.get(mid).id == mid
    assert [m.id for m in api.recall("ruff", mode="text")] == [mid]
    assert run_doctor(api.storage).ok


def test_restore_refuses_what_was_not_forgotten(api: UnifiedMemoryAPI) -> None:
    mid = api.remember("still here")
    with pytest.raises(NotFound):
        api.restore(mid)
    with pytest.raises(NotFound):
        api.restore("0" * 32)
    api.forget(mid)
    api.restore(mid)
    with pytest.raises(NotFound):  # restored already: live again
        api.restore(mid)


def test_a_restore_replicates_and_both_replicas_agree(make_api: MakeApi, tmp_path: Path) -> None:
    a, b = make_api(tmp_path / "a"), make_api(tmp_path / "b")
    introduce({"a": a, "b": b})
    mid = a.remember("shared fact", tags=["x"])
    _sync(a, b, "b")
    b.forget(mid)
    _sync(b, a, "a")
    with pytest.raises(NotFound):
        a.get(mid)
    a.restore(mid)  # restored on the other replica than the one that forgot it
    _sync(a, b, "b")
    assert b.get(mid).content == "shared fact" and b.get(mid).tags == ("x",)
    ra, rb = run_doctor(a.storage), run_doctor(b.storage)
    assert ra.ok and rb.ok
    assert ra.digest == rb.digest
    b.forget(mid)  # forgetting again after the restore wins again everywhere
    _sync(b, a, "a")
    with pytest.raises(NotFound):
        a.get(mid)
    assert run_doctor(a.storage).digest == run_doctor(b.storage).digest
