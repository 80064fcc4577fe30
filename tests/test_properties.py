"""Property tests: the store matches a simple model, rebuilds from its log, and never fails on odd input
except with InvalidInput."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuralsync import validation as v
from neuralsync.errors import InvalidInput, NotFound
from neuralsync.services.doctor import run_doctor
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

words = st.text(alphabet="abcdefgh ", min_size=1, max_size=20).filter(lambda s: s.strip())
tag_sets = st.frozensets(st.sampled_from(["red", "green", "blue", "x y", "ü"]), max_size=4)
actions = st.lists(st.one_of(
    st.tuples(st.just("remember"), words, tag_sets, st.floats(0, 1)),
    st.tuples(st.just("update_content"), st.integers(0, 9), words),
    st.tuples(st.just("update_tags"), st.integers(0, 9), tag_sets),
    st.tuples(st.just("update_priority"), st.integers(0, 9), st.floats(0, 1)),
    st.tuples(st.just("forget"), st.integers(0, 9)),
    st.tuples(st.just("persona"), words),
), min_size=1, max_size=15)
odd_text = st.one_of(st.text(), st.text(st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010)),
                     st.text(alphabet='"*()^:-+ NEARORANDNOT\x00\n\t🎉'))
anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
                     st.binary(max_size=8), st.lists(st.integers(), max_size=3),
                     st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@pytest.fixture(scope="module")
def shared_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnifiedMemoryAPI]:
    api = UnifiedMemoryAPI(MemoryConfig(base_path=str(tmp_path_factory.mktemp("props")), redact_secrets=False,
                                        text_match_budget=5))
    for i in range(30):
        api.remember(f"alpha beta {i} gamma" if i % 3 else f"delta {i}", tags=["even" if i % 2 else "odd"])
    yield api
    api.close()


def _apply(api: UnifiedMemoryAPI, model: dict[str, dict[str, Any]], ids: list[str], action: tuple[Any, ...]) -> None:
    kind = action[0]
    if kind == "remember":
        ids.append(api.remember(action[1], tags=sorted(action[2]), priority=action[3]))
        model[ids[-1]] = {"content": action[1], "tags": tuple(sorted(action[2])), "priority": action[3]}
        return
    if kind == "persona":
        api.set_persona(action[1])
        return
    if not ids:
        return
    target = ids[action[1] % len(ids)]
    if target not in model:
        with pytest.raises(NotFound):
            api.forget(target) if kind == "forget" else api.update(target, priority=0.5)
        return
    if kind == "forget":
        api.forget(target)
        del model[target]
    elif kind == "update_content":
        api.update(target, content=action[2])
        model[target]["content"] = action[2]
    elif kind == "update_tags":
        api.update(target, tags=sorted(action[2]))
        model[target]["tags"] = tuple(sorted(action[2]))
    else:
        api.update(target, priority=action[2])
        model[target]["priority"] = action[2]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions)
def test_store_matches_a_model_and_rebuilds_from_its_log(steps: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as home, \
            UnifiedMemoryAPI(MemoryConfig(base_path=home, redact_secrets=False, dedupe=False)) as api:
        # dedupe off: the model keeps every write apart (the merger has its own tests, test_merger.py)
        model: dict[str, dict[str, Any]] = {}
        ids: list[str] = []
        for step in steps:
            _apply(api, model, ids, step)
        live = {m.id: {"content": m.content, "tags": m.tags, "priority": m.priority} for m in api.range_recall()}
        assert live == model
        heads = api.storage.conn.execute("SELECT count(*) FROM heads").fetchone()[0]
        assert heads == min(1, api.reads.counts()["ops"])  # one local writer: one chain, one head
        report = run_doctor(api.storage)
        assert report.ok, report.to_dict()
        assert report.digest == report.rebuilt_digest


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(odd_text, st.integers(1, 40), st.sampled_from(["hybrid", "text", "semantic"]))
def test_recall_never_fails_on_any_query(shared_api: UnifiedMemoryAPI, query: str, top_k: int, mode: str) -> None:
    try:
        results = shared_api.recall(query, top_k=top_k, mode=mode)
    except InvalidInput as exc:  # acceptable only for text that is not valid unicode
        assert exc.field == "query"
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in query)
        return
    assert len(results) <= top_k
    assert len({m.id for m in results}) == len(results)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["alpha", "beta", "gamma", "delta", "alpha delta", "beta zeta", "zeta"]),
       st.sampled_from([None, "even", "odd"]))
def test_every_recall_hit_contains_a_query_word_and_passes_the_filter(shared_api: UnifiedMemoryAPI, query: str,
                                                                     tag: str | None) -> None:
    results = shared_api.recall(query, tags=[tag] if tag else None, top_k=50, mode="text")
    for memory in results:
        assert set(query.split()) & set(memory.content.split())
        assert tag is None or tag in memory.tags


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(odd_text)
def test_remember_stores_text_exactly_or_rejects_it(shared_api: UnifiedMemoryAPI, text: str) -> None:
    try:
        mid = shared_api.remember(text)
    except InvalidInput as exc:
        assert exc.field == "content"
        return
    assert shared_api.get(mid).content == text
    shared_api.forget(mid)


@given(anything)
def test_unit_values_are_floats_in_range_or_invalid(value: object) -> None:
    try:
        result = v.unit(value, "priority")
    except InvalidInput as exc:
        assert exc.field == "priority"
        return
    assert type(result) is float and 0.0 <= result <= 1.0


@given(st.one_of(anything, odd_text))
def test_timestamps_parse_or_are_invalid(value: object) -> None:
    try:
        result = v.timestamp(value, "since")
    except InvalidInput as exc:
        assert exc.field == "since"
        return
    assert result is None or (type(result) is int and result >= -(1 << 53))


@given(anything, st.integers(0, 5))
def test_tags_are_sorted_unique_strings_or_invalid(value: object, max_tags: int) -> None:
    try:
        result = v.tags(value, max_tags, 16)
    except InvalidInput as exc:
        assert exc.field == "tags"
        return
    assert list(result) == sorted(set(result)) and len(result) <= max_tags
    assert all(isinstance(t, str) and t == t.strip() and t for t in result)


@given(anything)
def test_metadata_is_a_json_dict_or_invalid(value: object) -> None:
    try:
        result = v.metadata(value, 1024)
    except InvalidInput as exc:
        assert exc.field == "metadata"
        return
    assert isinstance(result, dict)

