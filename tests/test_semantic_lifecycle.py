"""The vector index is a cache and the embedder can change: nothing is lost either way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

pytest.importorskip("usearch")
pytest.importorskip("wordllama")

FACTS = [
    "use pytest -x to execute the test suite",
    "the production database is postgres 15 on host db-1",
    "the user prefers dark mode in every editor",
    "deployments go through the staging cluster first",
] + [f"filler note number {i} about quarterly planning meetings" for i in range(40)]


def _fill(api: UnifiedMemoryAPI) -> dict[str, str]:
    with api.batch_operations():
        return {fact: api.remember(fact) for fact in FACTS}


def test_deleting_the_index_file_loses_nothing_and_it_rebuilds(tmp_path: Path) -> None:
    with UnifiedMemoryAPI(MemoryConfig(base_path=tmp_path)) as api:
        ids = _fill(api)
        report = api.rebuild_vector_index()
        assert report["mode"] == "full" and report["added"] == len(FACTS)
        index_file = api.semantic.path  # type: ignore[union-attr]
        assert index_file.exists()
        index_file.unlink()
        api.semantic._ann_checked = 0.0  # type: ignore[union-attr]  # notice at once, not in 0.5 s
        found = api.semantic_search("how do I run the tests", top_k=3)
        assert found[0].id == ids[FACTS[0]]
        assert api.rebuild_vector_index()["mode"] == "full"
        assert index_file.exists()
    with UnifiedMemoryAPI(MemoryConfig(base_path=tmp_path)) as api:
        assert api.semantic_search("how do I run the tests", top_k=3)[0].id == ids[FACTS[0]]


def test_switching_embedder_requeues_vectors_and_search_keeps_working(tmp_path: Path) -> None:
    with UnifiedMemoryAPI(MemoryConfig(base_path=tmp_path, embedder="hashing", embed_on_write=True)) as api:
        ids = _fill(api)
        assert api.semantic.pending() == 0  # type: ignore[union-attr]
    with UnifiedMemoryAPI(MemoryConfig(base_path=tmp_path, embed_on_write=True)) as api:
        assert api.semantic.pending() == len(FACTS)  # type: ignore[union-attr]
        # Meanwhile text recall still finds everything (a semantic search would
        # itself embed a queue this small before searching).
        assert api.recall("pytest", mode="text")[0].id == ids[FACTS[0]]
        seen: list[tuple[int, int]] = []
        assert api.embed_pending(progress=lambda done, total: seen.append((done, total))) == len(FACTS)
        assert seen and seen[-1] == (len(FACTS), len(FACTS))
        assert api.semantic_search("how do I run the tests", top_k=3)[0].id == ids[FACTS[0]]
    with UnifiedMemoryAPI(MemoryConfig(base_path=tmp_path)) as api:
        assert api.semantic.pending() == 0  # type: ignore[union-attr]  # adopted once, not every open


def test_another_process_new_memory_is_found_by_meaning_without_restart(tmp_path: Path) -> None:
    with UnifiedMemoryAPI(MemoryConfig(base_path=tmp_path)) as api:
        _fill(api)
        api.rebuild_vector_index()
        assert all("kubernetes" not in m.content for m in api.semantic_search("container orchestration", top_k=5))
        script = ("from neuralsync.unified_memory_api import UnifiedMemoryAPI, MemoryConfig\n"
                  f"with UnifiedMemoryAPI(MemoryConfig(base_path={str(tmp_path)!r})) as a:\n"
                  "    a.remember('our services run on a kubernetes cluster managed by the platform team')\n")
        subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
        hits = api.semantic_search("container orchestration platform", top_k=3)
        assert any("kubernetes" in m.content for m in hits)


def test_remember_does_not_wait_for_the_model_and_new_memories_stay_findable(tmp_path: Path) -> None:
    """The default write path queues the vector: a search embeds a small queue first, and a
    long-running process embeds it in the background as soon as the write commits."""
    import time

    with UnifiedMemoryAPI(MemoryConfig(base_path=tmp_path)) as api:
        first = api.remember("the nightly backup job writes to the cold storage bucket")
        assert api.semantic.pending() == 1  # type: ignore[union-attr]  # queued, not embedded in the call
        assert api.semantic_search("where do backups go", top_k=1)[0].id == first
        assert api.semantic.pending() == 0  # type: ignore[union-attr]
        api.start_background_maintenance()
        second = api.remember("release notes are drafted in the docs channel before tagging")
        deadline = time.monotonic() + 10
        while api.semantic.pending() and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.02)
        assert api.semantic.pending() == 0  # type: ignore[union-attr]  # woken by the write, not the interval
        assert api.semantic_search("who writes the changelog for a release", top_k=1)[0].id == second


def test_the_graph_search_widens_as_the_index_grows_unless_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 11: a larger graph reaches fewer true neighbours at the same breadth (at 1M, .955 of exact top-10
    at 192, .984 at 512), so an index file is searched wider as it grows; a breadth set by hand stays."""
    from neuralsync.search import semantic

    assert [semantic.default_breadth(n) for n in (0, 100_000, 500_000, 1_000_000, 10**8)] == [192, 192, 256, 512,
                                                                                               4096]
    with UnifiedMemoryAPI(MemoryConfig(base_path=tmp_path, embedder="hashing")) as api:
        _fill(api)
        api.rebuild_vector_index()
        index = api.semantic
        assert index is not None and index.search_breadth == 192
        monkeypatch.setattr(semantic, "default_breadth", lambda size: 16 * size)  # as if it were 16x larger
        index._ann_stamp, index._ann_checked = None, 0.0  # reopen the file at the next look
        assert index.search_breadth == 16 * len(FACTS)
        before = [m.id for m in api.semantic_search("how do I run the tests", top_k=5)]
        assert index._ann is not None and index._ann.expansion_search == 16 * len(FACTS)  # searched that wide
        assert len(before) == 5
        index.set_search_breadth(300)
        index._ann_stamp, index._ann_checked = None, 0.0
        assert index.search_breadth == 300


def test_a_store_without_an_index_file_keeps_its_exact_rows_between_searches(tmp_path: Path) -> None:
    # With no file, every vector is searched exactly from an in-memory matrix. Looking for the file
    # (twice a second) must not throw that matrix away: reloading it made each query of a 100k store
    # take seconds.
    with UnifiedMemoryAPI(MemoryConfig(base_path=tmp_path, embedder="hashing", embed_on_write=True)) as api:
        ids = _fill(api)
        semantic = api.semantic
        assert semantic is not None and not semantic.path.exists()
        assert api.semantic_search("pytest test suite", top_k=1)[0].id == ids[FACTS[0]]
        matrix = semantic._delta_cache
        assert matrix is not None and len(matrix[0]) == len(FACTS)
        semantic._ann_checked = 0.0  # the next search looks for the file again
        assert api.semantic_search("pytest test suite", top_k=1)[0].id == ids[FACTS[0]]
        assert semantic._delta_cache is matrix
        new = api.remember("the staging cluster is called blue")  # a new row joins the exact rows
        assert api.semantic_search("staging cluster blue", top_k=1)[0].id == new
        assert semantic._delta_cache is not None and len(semantic._delta_cache[0]) == len(FACTS) + 1


def test_incremental_index_updates_add_with_the_configured_expansion_add(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from neuralsync.search import semantic
    from neuralsync.search.vector import AnnIndex

    seen: list[int] = []
    real_add = AnnIndex.add

    def add(self: AnnIndex, keys: object, vectors: object) -> int:
        seen.append(self.expansion_add)
        return real_add(self, keys, vectors)

    monkeypatch.setattr(AnnIndex, "add", add)
    with UnifiedMemoryAPI(MemoryConfig(base_path=tmp_path, embedder="hashing")) as api:
        _fill(api)
        assert api.rebuild_vector_index()["mode"] == "full"
        api.remember("the staging cluster is called blue")
        assert api.rebuild_vector_index()["mode"] == "incremental"  # a copy of the file opened from disk
    assert len(seen) == 2 and set(seen) == {semantic.ANN_SETTINGS["expansion_add"]}
