"""Issue 11: a process beside the store's running server sends its recalls to it (every mode), gets the
same answer as a local search, loads none of numpy, onnxruntime, usearch or the model for them, and
searches locally again once the server is gone. The server itself never forwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from _live import live_server

from neuralsync.discovery import persona_via_server
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
QUERIES = ("deploy pipeline rollback", "python testing habits", "database migration", "")
MODES = ("text", "semantic", "hybrid")
HEAVY = ("numpy", "onnxruntime", "usearch", "tokenizers")


def _store(home: Path) -> None:
    """60 memories with vectors and an index file; the hashing embedder (no model) for every process."""
    home.mkdir(parents=True)
    (home / "config.toml").write_text('embedder = "hashing"\nmerge_strategy = "off"\n', encoding="utf-8")
    topics = ("deploy pipeline", "python testing", "database migration", "release notes", "code review")
    with UnifiedMemoryAPI(MemoryConfig.from_env(home)) as api:
        with api.batch_operations():
            for i in range(60):
                api.remember(f"{topics[i % 5]} fact {i}: rollback step {i % 7} for service {i % 11}",
                             scope="global" if i % 3 else "project:x", tags=[f"t{i % 4}"], merge="off")
        api.embed_pending()
        api.rebuild_vector_index()


def _recalls(api: UnifiedMemoryAPI) -> list[list[tuple[str, float | None]]]:
    out = []
    for mode in MODES:
        for query in QUERIES:
            out.append([(m.id, m.score) for m in api.recall(query, top_k=8, mode=mode)])
        out.append([(m.id, m.score) for m in api.recall("deploy", scope="global", tags=["t1", "t2"], mode=mode)])
    out.append([(m.id, m.score) for m in api.semantic_search("rollback of a deploy", top_k=5)])
    return out


def _same(got: list[list[tuple[str, float | None]]], expected: list[list[tuple[str, float | None]]]) -> bool:
    """Same ids in the same order; scores equal but for recency, which moves with the clock (1e-4)."""
    return [[i for i, _ in hits] for hits in got] == [[i for i, _ in hits] for hits in expected] and all(
        (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-4)
        for g, e in zip(got, expected, strict=True) for (_, a), (_, b) in zip(g, e, strict=True))


def test_recalls_beside_a_server_are_answered_by_it_identically(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "store"
    _store(home)
    monkeypatch.delenv("NS_TOKEN", raising=False)
    with UnifiedMemoryAPI(MemoryConfig.from_env(home, recall_via_server=False)) as local:
        expected = _recalls(local)
    assert all(expected[:-1]) and expected[-1]
    with live_server(home):
        asked: list[dict[str, object]] = []
        import neuralsync.unified_memory_api as facade

        real = facade.recall_via_server

        def spy(where: Path, request: dict[str, object]) -> object:
            asked.append(request)
            answer = real(where, request)
            assert answer is not None, "the running server did not answer"
            return answer

        monkeypatch.setattr(facade, "recall_via_server", spy)
        with UnifiedMemoryAPI(MemoryConfig.from_env(home)) as api:
            assert _same(_recalls(api), expected)
            assert len(asked) == len(expected)
            with pytest.raises(ValueError, match="mode"):
                api.recall("x", mode="fuzzy")  # refused here, as before
            api.forward_recalls = False  # what a server does for itself: nothing is asked
            asked.clear()
            assert _same(_recalls(api), expected)
            assert asked == []
        monkeypatch.setattr(facade, "recall_via_server", real)
        with UnifiedMemoryAPI(MemoryConfig.from_env(home)) as api:
            api.set_persona("terse; British spelling")
        assert persona_via_server(home) == "terse; British spelling"  # the hooks read it this way
    assert persona_via_server(home) is None  # no server announced: the caller reads the store
    with UnifiedMemoryAPI(MemoryConfig.from_env(home)) as api:  # the server is gone: searched here
        assert _same(_recalls(api), expected)


def test_a_process_beside_a_server_loads_no_numpy_index_or_model(tmp_path: Path) -> None:
    home = tmp_path / "store"
    _store(home)
    code = ("import json, sys\n"
            "from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI\n"
            f"with UnifiedMemoryAPI(MemoryConfig.from_env({str(home)!r})) as api:\n"
            "    hits = [len(api.recall(q, mode=m)) for m in ('text', 'semantic', 'hybrid') for q in ('deploy', '')]\n"
            "    hits.append(len(api.semantic_search('deploy')))\n"
            f"print(json.dumps([hits, sorted(m for m in {HEAVY!r} if m in sys.modules)]))\n")
    env = {k: v for k, v in os.environ.items() if k != "NS_TOKEN"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)

    def run() -> list[object]:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              env=env, check=True)
        return list(json.loads(done.stdout))

    with live_server(home):
        hits, loaded = run()
    assert all(hits) and loaded == []
    hits_alone, loaded_alone = run()  # no server: the same process loads what a local search needs
    assert hits_alone == hits and "numpy" in loaded_alone


def test_the_server_answers_recalls_itself(tmp_path: Path) -> None:
    from neuralsync.server.app import create_app

    with UnifiedMemoryAPI(MemoryConfig(base_path=tmp_path / "s", embedder="hashing")) as api:
        assert api.forward_recalls
        create_app(api, token="t" * 32, write_queue=False)
        assert not api.forward_recalls


# ---------------------------------------------------------------- a fresh process alone (no server)
def test_warm_up_gives_the_same_hits_and_leaves_no_thread(tmp_path: Path) -> None:
    home = tmp_path / "store"
    _store(home)
    config = MemoryConfig.from_env(home, recall_via_server=False)
    with UnifiedMemoryAPI(config) as api:
        expected = _recalls(api)
    with UnifiedMemoryAPI(config) as api:
        api.warm_up("text")
        assert api.semantic is not None and api.semantic._warming is None  # a text recall needs no model
        api.warm_up("hybrid")
        warming = api.semantic._warming
        assert warming is not None
        assert _same(_recalls(api), expected)
    assert not warming.is_alive()  # close waited for it: no model load runs into interpreter shutdown


def test_close_bounds_the_analyze_of_pragma_optimize(tmp_path: Path) -> None:
    with UnifiedMemoryAPI(MemoryConfig(base_path=tmp_path / "s", embedder="none")) as api:
        assert api.storage.conn.execute("PRAGMA analysis_limit").fetchone()[0] == 1000
