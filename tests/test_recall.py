"""Recall: literal query text, relevance, filters and ordering, including the bounded common-term path."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from neuralsync.errors import InvalidInput
from neuralsync.model import Memory
from neuralsync.search.recall import HALF_LIFE_MS, rerank
from neuralsync.search.text import meaningful, terms
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI
from neuralsync.utils import now_ms

MakeApi = Callable[..., UnifiedMemoryAPI]
BUDGET = 50
MODES = ("hybrid", "text", "semantic")


def _open(factory: pytest.TempPathFactory, **config: object) -> UnifiedMemoryAPI:
    """A store shared by a module's read-only tests."""
    return UnifiedMemoryAPI(MemoryConfig(base_path=str(factory.mktemp("recall")), **config))  # type: ignore[arg-type]


def _contents(memories: list[Memory]) -> list[str]:
    return [m.content for m in memories]


# ---------------------------------------------------------------- query text is literal
SYNTAX_ROWS = [
    "cats AND dogs", "this OR NOT that", "NEAR the a b river", "key a:b value", "content:foo here",
    "^start of line", "-x flag", '"quoted" text', "star * glob", "café crème 日本語 🎉 party",
]


@pytest.fixture(scope="module")
def syntax_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnifiedMemoryAPI]:
    with _open(tmp_path_factory) as api:
        for row in SYNTAX_ROWS:
            api.remember(row)
        for i in range(20):
            api.remember(f"unrelated filler {i}")
        yield api


@pytest.mark.parametrize(("query", "expected"), [
    ("AND", "cats AND dogs"),
    ("OR NOT", "this OR NOT that"),
    ("NEAR(a b", "NEAR the a b river"),
    ("a:b", "key a:b value"),
    ("content:foo", "content:foo here"),
    ("^start", "^start of line"),
    ("-x", "-x flag"),
    ('"quoted', '"quoted" text'),
    ("glob*", "star * glob"),
    ("日本語", "café crème 日本語 🎉 party"),
    ("cafe", "café crème 日本語 🎉 party"),
    ("CRÈME!!", "café crème 日本語 🎉 party"),
])
def test_fts_syntax_in_a_query_is_searched_as_words(syntax_api: UnifiedMemoryAPI, query: str, expected: str) -> None:
    assert _contents(syntax_api.recall(query, top_k=5, mode="text"))[0] == expected
    assert expected in _contents(syntax_api.recall(query, top_k=5))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("query", ['"', "*", "(((", ")", "^", "-", ":", "🎉", "\"'`;--", "NOT", "\x00", "\ud800"])
def test_queries_without_matching_words_do_not_raise(syntax_api: UnifiedMemoryAPI, query: str, mode: str) -> None:
    results = syntax_api.recall(query, top_k=5, mode=mode)
    assert len(results) <= 5


@pytest.mark.parametrize("mode", MODES)
def test_a_lone_surrogate_in_a_query_is_rejected_or_ignored_never_a_crash(syntax_api: UnifiedMemoryAPI,
                                                                         mode: str) -> None:
    try:
        results = syntax_api.recall("cats \ud800 dogs", top_k=5, mode=mode)
    except InvalidInput as exc:
        assert exc.field == "query"
    else:
        assert len(results) <= 5


@pytest.mark.parametrize("mode", MODES)
def test_a_ten_thousand_character_query_works(syntax_api: UnifiedMemoryAPI, mode: str) -> None:
    noise = ("zz(( AND* \"NEAR\" " * 700)[:9_990]
    assert len(syntax_api.recall(noise + " cats", mode=mode)) <= 10
    long_words = " ".join(f"w{i}" for i in range(2000))[:9_990] + " cats"
    assert len(syntax_api.recall(long_words, mode=mode)) <= 10
    if mode == "text":
        assert _contents(syntax_api.recall("cats " + "q" * 9_995, mode=mode))[:1] == ["cats AND dogs"]


# ---------------------------------------------------------------- relevance
@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnifiedMemoryAPI]:
    """A few hundred rows where 'common' is in nearly all, 'filler' in most, with a budget of 50."""
    with _open(tmp_path_factory, text_match_budget=BUDGET) as api:
        with api.batch_operations():
            for i in range(300):
                api.remember(f"common filler line {i} about nothing much")
            for i in range(60):
                api.remember(f"common plain entry {i}")
            api.remember("common zebra sighting in the garden")
            api.remember("common zebra and okapi together")
            api.remember("a lonely okapi")
        yield api


def test_a_rare_word_is_found(corpus: UnifiedMemoryAPI) -> None:
    assert set(_contents(corpus.recall("okapi", mode="text"))) == {"common zebra and okapi together", "a lonely okapi"}
    assert _contents(corpus.recall("lonely", mode="text")) == ["a lonely okapi"]


def test_a_word_in_most_rows_still_returns_top_k_quickly(corpus: UnifiedMemoryAPI) -> None:
    started = time.perf_counter()
    results = corpus.recall("common", top_k=20, mode="text")
    assert time.perf_counter() - started < 1.0
    assert len(results) == 20
    assert all("common" in m.content for m in results)


def test_rows_with_the_rarer_query_words_come_first(corpus: UnifiedMemoryAPI) -> None:
    results = _contents(corpus.recall("common zebra okapi", top_k=5, mode="text"))
    assert results[0] == "common zebra and okapi together"
    assert set(results[1:3]) == {"common zebra sighting in the garden", "a lonely okapi"}


def test_a_common_word_beside_a_rare_one_still_fills_top_k(corpus: UnifiedMemoryAPI) -> None:
    results = _contents(corpus.recall("common zebra", top_k=10, mode="text"))
    assert set(results[:2]) == {"common zebra and okapi together", "common zebra sighting in the garden"}
    assert len(results) == 10
    assert all("common" in r for r in results)


def test_when_all_terms_are_common_rows_with_more_of_them_win(corpus: UnifiedMemoryAPI) -> None:
    results = _contents(corpus.recall("common filler", top_k=10, mode="text"))
    assert len(results) == 10
    assert all("filler" in r for r in results)


def test_between_equal_hits_the_newest_come_first(make_api: MakeApi) -> None:
    api = make_api()
    for i in range(100):
        api.remember(f"identical words {i:03d}")
    newest = [f"identical words {i:03d}" for i in range(99, 94, -1)]
    assert _contents(api.recall("identical", top_k=5, mode="text")) == newest


def test_between_equal_hits_higher_priority_comes_first(api: UnifiedMemoryAPI) -> None:
    api.remember("deploy with the blue button", priority=0.9)
    api.remember("deploy with the red button", priority=0.1)
    api.remember("deploy with the green button", priority=0.5)
    assert _contents(api.recall("deploy button", mode="text")) == [
        "deploy with the blue button", "deploy with the green button", "deploy with the red button"]


def _memory(content: str, priority: float = 0.5, age_ms: int = 0, suffix: str = "0") -> Memory:
    now = now_ms()
    return Memory(id=suffix * 32, content=content, scope="global", kind="fact", tags=(), priority=priority,
                  confidence=0.8, tool=None, source=None, session=None, metadata={}, created_at=now - age_ms,
                  updated_at=now - age_ms, expires_at=None, content_hash="")


def test_recency_orders_otherwise_equal_hits() -> None:
    old = _memory("same words", age_ms=2 * HALF_LIFE_MS, suffix="f")  # larger id: would win a plain tie
    new = _memory("same words", suffix="1")
    ranked = rerank([(old, 5.0), (new, 5.0)], ["same"], 2, now_ms())
    assert [m.id for m in ranked] == [new.id, old.id]
    assert ranked[0].score is not None and ranked[1].score is not None
    assert ranked[0].score > ranked[1].score


def test_priority_outweighs_a_little_age() -> None:
    important = _memory("same words", priority=1.0, age_ms=86_400_000, suffix="1")
    trivial = _memory("same words", priority=0.0, suffix="2")
    ranked = rerank([(trivial, 5.0), (important, 5.0)], ["same"], 2, now_ms())
    assert [m.id for m in ranked] == [important.id, trivial.id]


def test_relevance_outweighs_boosts() -> None:
    relevant = _memory("needle", priority=0.0, age_ms=HALF_LIFE_MS, suffix="1")
    weak = _memory("needle", priority=1.0, suffix="2")
    ranked = rerank([(weak, 1.0), (relevant, 10.0)], ["needle"], 2, now_ms())
    assert ranked[0].id == relevant.id


def test_empty_query_returns_high_priority_then_recent(api: UnifiedMemoryAPI,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    frozen = time.time_ns()
    monkeypatch.setattr(time, "time_ns", lambda: frozen)  # one millisecond: recency ties, ids still grow
    api.remember("old important", priority=1.0)
    api.remember("older plain", priority=0.5)
    api.remember("newer plain", priority=0.5)
    api.remember("newest trivial", priority=0.0)
    assert _contents(api.recall("", top_k=3)) == ["old important", "newer plain", "older plain"]
    assert _contents(api.recall("   ", top_k=1)) == ["old important"]


def test_top_k_bounds_the_result_count(corpus: UnifiedMemoryAPI) -> None:
    assert len(corpus.recall("", top_k=7)) == 7
    assert len(corpus.recall("filler", top_k=1, mode="text")) == 1


def test_query_words_match_content_and_tags_not_the_scope_name(api: UnifiedMemoryAPI) -> None:
    api.remember("apple pie recipe", scope="kitchen")
    api.remember("banana bread", scope="global", tags=["kitchen"])
    assert _contents(api.recall("kitchen", mode="text")) == ["banana bread"]
    assert api.recall("global", mode="text") == []


def test_results_carry_a_score(api: UnifiedMemoryAPI) -> None:
    api.remember("scored result")
    (hit,) = api.recall("scored")
    assert hit.score is not None and hit.score > 0


# ---------------------------------------------------------------- filters
SCOPES = ["proj-a", "proj a", "proj", "PROJ-A", "proj-a-b", "proj_a", "other"]


@pytest.fixture(scope="module")
def scoped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnifiedMemoryAPI]:
    with _open(tmp_path_factory, text_match_budget=BUDGET) as api:
        with api.batch_operations():
            for scope in SCOPES:
                api.remember(f"shared secret word in {scope}", scope=scope)
            for i in range(120):  # make 'shared' common inside another scope
                api.remember(f"shared filler {i}", scope="proj-a-b")
        yield api


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("query", ["shared secret", "shared", "", "word", "proj"])
def test_scope_filter_never_leaks_other_scopes(scoped: UnifiedMemoryAPI, scope: str, query: str, mode: str) -> None:
    results = scoped.recall(query, scope=scope, top_k=50, mode=mode)
    assert all(m.scope == scope for m in results)


@pytest.mark.parametrize("scope", [s for s in SCOPES if s != "proj-a-b"])
@pytest.mark.parametrize("query", ["shared secret", "shared", "", "word"])
def test_scope_filter_finds_the_scope_rows_beside_a_busy_similar_scope(scoped: UnifiedMemoryAPI, scope: str,
                                                                       query: str) -> None:
    # 'shared' is common (> budget) only in scope "proj-a-b", whose words contain most other scope names.
    results = scoped.recall(query, scope=scope, top_k=50, mode="text")
    assert _contents(results) == [f"shared secret word in {scope}"]


@pytest.mark.parametrize("mode", MODES)
def test_no_scope_searches_every_scope(scoped: UnifiedMemoryAPI, mode: str) -> None:
    assert {m.scope for m in scoped.recall("shared secret word", top_k=50, mode=mode)} >= set(SCOPES) - {"proj-a-b"}


@pytest.fixture
def tagged(api: UnifiedMemoryAPI) -> UnifiedMemoryAPI:
    api.remember("note one", tags=["red"], kind="fact")
    api.remember("note two", tags=["red", "blue"], kind="decision")
    api.remember("note three", tags=["blue"], kind="preference")
    api.remember("note four", kind="fact")
    api.remember("note five", tags=["red blue"], kind="fact")
    return api


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("query", ["note", ""])
def test_tag_filters_any_and_all(tagged: UnifiedMemoryAPI, query: str, mode: str) -> None:
    def found(**kw: object) -> set[str]:
        return set(_contents(tagged.recall(query, top_k=10, mode=mode, **kw)))  # type: ignore[arg-type]

    assert found(tags=["red"]) == {"note one", "note two"}
    assert found(tags=["red", "blue"]) == {"note one", "note two", "note three"}
    assert found(tags=["red", "blue"], tag_match="all") == {"note two"}
    assert found(tags=["red blue"]) == {"note five"}
    assert found(tags="blue") == {"note two", "note three"}
    assert found(tags=["green"]) == set()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("query", ["note", ""])
def test_kinds_filter(tagged: UnifiedMemoryAPI, query: str, mode: str) -> None:
    def found(kinds: object) -> set[str]:
        return set(_contents(tagged.recall(query, kinds=kinds, mode=mode)))  # type: ignore[arg-type]

    assert found(["decision", "preference"]) == {"note two", "note three"}
    assert found("fact") == {"note one", "note four", "note five"}
    assert found(["nothing"]) == set()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("query", ["stamp", ""])
def test_since_and_until_bound_creation_time(api: UnifiedMemoryAPI, query: str, mode: str) -> None:
    ids = []
    for i in range(3):
        ids.append(api.remember(f"stamp {i}"))
        time.sleep(0.005)
    times = [api.get(i).created_at for i in ids]
    assert set(_contents(api.recall(query, since=times[1], mode=mode))) == {"stamp 1", "stamp 2"}
    assert set(_contents(api.recall(query, until=times[1], mode=mode))) == {"stamp 0", "stamp 1"}
    assert _contents(api.recall(query, since=times[1], until=times[1], mode=mode)) == ["stamp 1"]
    assert api.recall(query, since="2999-01-01T00:00:00+00:00", mode=mode) == []


# ---------------------------------------------------------------- stop words do not drive the plan
OOM_ANSWER = "Pods killed with OOMKilled: check the container memory limit in the Helm values."
OOM_NOISE = [
    "Where do I find the staging logs? Look in Loki, I think.",
    "I keep getting asked where the runbooks are; do look in the wiki.",
    "Do I need a ticket for this? Where do we keep them? I look it up every time.",
    "Getting started: where do I look first, and what do I read?",
    "Where do I put secrets? I keep them in the vault, do look there.",
    "I do not know where the old pod specs are kept.",
    "Each pod gets a pod name from its deployment; look at the pod labels.",
    "A pod that keeps getting evicted: where do I look? The node pressure pod events.",
]


def test_stop_words_stay_out_of_the_text_plan(api: UnifiedMemoryAPI) -> None:
    api.remember(OOM_ANSWER)
    for row in OOM_NOISE:
        api.remember(row)
    with api.storage.read() as conn:
        plan = api.recaller.text.plan(conn, terms("pod keeps getting OOMKilled, where do I look?"), "")
    assert plan is not None
    assert set(plan.rare_terms) | set(plan.common_terms) == {"pod", "oomkilled"}
    for expr in (plan.ranked, plan.recent, plan.recent_all):
        for word in ("where", "do", "i", "look", "keeps", "getting"):
            assert f'"{word}"' not in (expr or ""), (word, expr)


def test_stop_words_do_not_outrank_the_rare_word(api: UnifiedMemoryAPI) -> None:
    api.remember(OOM_ANSWER)
    for row in OOM_NOISE:
        api.remember(row)
    found = api.recall("pod keeps getting OOMKilled, where do I look?", top_k=3, mode="text")
    assert found and found[0].content == OOM_ANSWER


def test_a_query_of_stop_words_only_still_searches_them(api: UnifiedMemoryAPI) -> None:
    api.remember("where to go from here")
    api.remember("nothing in common")
    with api.storage.read() as conn:
        plan = api.recaller.text.plan(conn, terms("where to"), "")
    assert plan is not None and set(plan.rare_terms) | set(plan.common_terms) == {"where", "to"}
    assert _contents(api.recall("where to", mode="text")) == ["where to go from here"]
    assert meaningful(["how", "do", "i"]) == ["how", "do", "i"]
    assert meaningful(["how", "do", "i", "deploy"]) == ["deploy"]
