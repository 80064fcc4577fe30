"""Bad input: every public entry point raises InvalidInput naming the field and writes nothing."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from neuralsync.errors import ConfigError, InvalidInput
from neuralsync.json_input import MAX_JSON_DEPTH, parse_json
from neuralsync.model import MAX_CONTENT_CHARS
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI
from neuralsync.utils import new_id

MakeApi = Callable[..., UnifiedMemoryAPI]
Snapshot = Callable[[UnifiedMemoryAPI], tuple[int, str]]

LIMITS: dict[str, Any] = {"max_content_chars": 100, "max_tags": 3, "max_tag_chars": 10, "max_metadata_bytes": 100,
                          "max_top_k": 50}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnifiedMemoryAPI]:
    """One store for the module: every test asserts it leaves the store unchanged."""
    api = UnifiedMemoryAPI(MemoryConfig(base_path=str(tmp_path_factory.mktemp("limited")), **LIMITS))
    api.remember("an existing memory", tags=["t"])
    yield api
    api.close()


def _assert_rejected(api: UnifiedMemoryAPI, snapshot: Snapshot, field: str, call: Callable[[], object]) -> None:
    before = snapshot(api)
    with pytest.raises(InvalidInput) as caught:
        call()
    assert caught.value.field == field, str(caught.value)
    assert snapshot(api) == before


BAD_REMEMBER: list[tuple[str, dict[str, Any]]] = [
    ("content", {"content": ""}),
    ("content", {"content": "   \n\t "}),
    ("content", {"content": None}),
    ("content", {"content": 42}),
    ("content", {"content": b"bytes"}),
    ("content", {"content": "x" * 101}),
    ("content", {"content": "lone \ud800 surrogate"}),
    ("priority", {"priority": -0.01}),
    ("priority", {"priority": 1.01}),
    ("priority", {"priority": "high"}),
    ("priority", {"priority": True}),
    ("priority", {"priority": math.nan}),
    ("priority", {"priority": math.inf}),
    ("priority", {"priority": None}),
    ("confidence", {"confidence": -1}),
    ("confidence", {"confidence": 2}),
    ("confidence", {"confidence": "0.5"}),
    ("confidence", {"confidence": False}),
    ("confidence", {"confidence": math.nan}),
    ("tags", {"tags": [1]}),
    ("tags", {"tags": ["ok", None]}),
    ("tags", {"tags": ["a", "b", "c", "d"]}),
    ("tags", {"tags": ["x" * 11]}),
    ("tags", {"tags": [""]}),
    ("tags", {"tags": ["new\nline"]}),
    ("tags", {"tags": {"a": 1}}),
    ("tags", {"tags": 5}),
    ("tags", {"tags": ["\ud800"]}),
    ("metadata", {"metadata": "not a dict"}),
    ("metadata", {"metadata": [1, 2]}),
    ("metadata", {"metadata": {"x": object()}}),
    ("metadata", {"metadata": {"x": {1, 2}}}),
    ("metadata", {"metadata": {1: "int key"}}),
    ("metadata", {"metadata": {"x": math.nan}}),
    ("metadata", {"metadata": {"x": "y" * 200}}),
    ("metadata", {"metadata": {"x": 1 << 64}}),
    ("metadata", {"metadata": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}}),
    ("scope", {"scope": ""}),
    ("scope", {"scope": "  "}),
    ("scope", {"scope": None}),
    ("scope", {"scope": 7}),
    ("scope", {"scope": "a\x00b"}),
    ("scope", {"scope": "s" * 129}),
    ("kind", {"kind": "two words"}),
    ("kind", {"kind": ""}),
    ("kind", {"kind": None}),
    ("ttl_ms", {"ttl_ms": 0}),
    ("ttl_ms", {"ttl_ms": -5}),
    ("ttl_ms", {"ttl_ms": "10"}),
    ("ttl_ms", {"ttl_ms": 1.5}),
    ("ttl_ms", {"ttl_ms": True}),
    ("tool", {"tool": 5}),
    ("tool", {"tool": "t" * 65}),
    ("source", {"source": "s" * 513}),
]


@pytest.mark.parametrize(("field", "kwargs"), BAD_REMEMBER, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_REMEMBER)])
def test_remember_rejects_bad_input(limited: UnifiedMemoryAPI, snapshot: Snapshot, field: str,
                                    kwargs: dict[str, Any]) -> None:
    args = {"content": "valid content", **kwargs}
    _assert_rejected(limited, snapshot, field, lambda: limited.remember(**args))


def test_limits_are_inclusive(make_api: MakeApi) -> None:
    limited = make_api(**LIMITS)
    mid = limited.remember("x" * 100, priority=0, confidence=1, tags=["a", "b", "c" * 10], metadata={"k": "v" * 50})
    m = limited.get(mid)
    assert (len(m.content), m.priority, m.confidence, m.tags) == (100, 0.0, 1.0, ("a", "b", "c" * 10))


def test_rejected_input_is_a_value_error_with_a_message_naming_the_field(limited: UnifiedMemoryAPI) -> None:
    with pytest.raises(ValueError, match="^priority: "):
        limited.remember("x", priority=3)


BAD_IDS: list[object] = ["", "abc", "g" * 32, "A" * 32, new_id() + "0", " " + new_id()[1:], None, 123,
                         "../" + "0" * 29]


@pytest.mark.parametrize("bad_id", BAD_IDS)
@pytest.mark.parametrize("method", ["get", "forget", "update"])
def test_malformed_ids_are_rejected(limited: UnifiedMemoryAPI, snapshot: Snapshot, method: str,
                                    bad_id: object) -> None:
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: limited.get(bad_id),  # type: ignore[arg-type]
        "forget": lambda: limited.forget(bad_id),  # type: ignore[arg-type]
        "update": lambda: limited.update(bad_id, content="new"),  # type: ignore[arg-type]
    }
    _assert_rejected(limited, snapshot, "id", calls[method])


BAD_UPDATES: list[tuple[str, dict[str, Any]]] = [
    ("content", {"content": " "}),
    ("content", {"content": "x" * 101}),
    ("content", {"content": "\udfff"}),
    ("priority", {"priority": math.nan}),
    ("confidence", {"confidence": 1.5}),
    ("tags", {"tags": [3]}),
    ("tags", {"tags": ["a", "b", "c", "d"]}),
    ("metadata", {"metadata": "x"}),
    ("scope", {"scope": ""}),
    ("kind", {"kind": "bad kind"}),
    ("ttl_ms", {"ttl_ms": 0}),
    ("expires_at", {"expires_at": "someday"}),
    ("id", {"id": new_id()}),
    ("created_at", {"created_at": 1}),
    ("session", {"session": "s"}),
]


@pytest.mark.parametrize(("field", "kwargs"), BAD_UPDATES, ids=[f for f, _ in BAD_UPDATES])
def test_update_rejects_bad_input(limited: UnifiedMemoryAPI, snapshot: Snapshot, field: str,
                                  kwargs: dict[str, Any]) -> None:
    mid = limited.range_recall()[0].id
    _assert_rejected(limited, snapshot, field, lambda: limited.update(mid, **kwargs))


BAD_RECALLS: list[tuple[str, dict[str, Any]]] = [
    ("top_k", {"top_k": 0}),
    ("top_k", {"top_k": -1}),
    ("top_k", {"top_k": 51}),
    ("top_k", {"top_k": "5"}),
    ("top_k", {"top_k": 2.5}),
    ("top_k", {"top_k": True}),
    ("top_k", {"top_k": None}),
    ("since", {"since": "yesterday"}),
    ("since", {"since": "2024-13-45"}),
    ("since", {"since": math.nan}),
    ("since", {"since": -1}),
    ("since", {"since": True}),
    ("since", {"since": [2024]}),
    ("until", {"until": "not a time"}),
    ("until", {"until": math.inf}),
    ("query", {"query": None}),
    ("query", {"query": 5}),
    ("tag_match", {"tag_match": "some"}),
    ("kinds", {"kinds": [1]}),
    ("kinds", {"kinds": 5}),
    ("scope", {"scope": ""}),
    ("tags", {"tags": [None]}),
]


@pytest.mark.parametrize(("field", "kwargs"), BAD_RECALLS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_RECALLS)])
def test_recall_rejects_bad_input(limited: UnifiedMemoryAPI, snapshot: Snapshot, field: str,
                                  kwargs: dict[str, Any]) -> None:
    args = {"query": "existing", **kwargs}
    _assert_rejected(limited, snapshot, field, lambda: limited.recall(**args))


@pytest.mark.parametrize(("field", "kwargs"), [
    ("start_time", {"start_time": "garbage"}),
    ("end_time", {"end_time": "2024-02-30"}),
    ("end_time", {"end_time": -10}),
    ("limit", {"limit": 0}),
    ("scope", {"scope": 3}),
])
def test_range_recall_rejects_bad_input(limited: UnifiedMemoryAPI, snapshot: Snapshot, field: str,
                                        kwargs: dict[str, Any]) -> None:
    _assert_rejected(limited, snapshot, field, lambda: limited.range_recall(**kwargs))


@pytest.mark.parametrize("text", [None, 5, "x" * 101])
def test_set_persona_rejects_bad_text(limited: UnifiedMemoryAPI, snapshot: Snapshot, text: object) -> None:
    _assert_rejected(limited, snapshot, "text", lambda: limited.set_persona(text))  # type: ignore[arg-type]


def test_bad_input_inside_a_batch_leaves_the_rest_of_the_batch_intact(make_api: MakeApi) -> None:
    limited = make_api(**LIMITS)
    with limited.batch_operations():
        limited.remember("first in batch")
        with pytest.raises(InvalidInput):
            limited.remember("")
        limited.remember("second in batch")
    assert [m.content for m in limited.range_recall()][-2:] == ["first in batch", "second in batch"]


def test_ttl_beyond_a_century_is_refused_naming_the_field(api: UnifiedMemoryAPI) -> None:
    with pytest.raises(InvalidInput) as info:
        api.remember("x", ttl_ms=101 * 365 * 86_400_000)
    assert info.value.field == "ttl_ms"


@pytest.mark.parametrize(("call", "field"), [
    (lambda api: api.remember("x", priority=10**400), "priority"),
    (lambda api: api.recall("x", since=10**400), "since"),
    (lambda api: api.range_recall(start_time=10**400), "start_time"),
    (lambda api: api.remember("x", kind="fact\n"), "kind"),
    (lambda api: api.remember("x", metadata={"a": {"b": {"c": {"d": {"e": {"f": {}}}}}}}), "metadata"),
    (lambda api: api.import_memory({"content": "x", "created_at": "1969-07-20T20:17:00Z"}), "created_at"),
])
def test_edge_values_found_in_review_are_invalid_input(api: UnifiedMemoryAPI, call: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        call(api)
    assert info.value.field == field


def test_negative_zero_in_metadata_rebuilds_identically(api: UnifiedMemoryAPI) -> None:
    from neuralsync.services.doctor import run_doctor

    api.remember("x", metadata={"v": -0.0})
    assert run_doctor(api.storage).ok


def test_an_update_that_expires_the_memory_is_kept_and_returned(api: UnifiedMemoryAPI) -> None:
    import time

    memory_id = api.remember("expire me")
    updated = api.update(memory_id, expires_at=int(time.time() * 1000) - 1000)
    assert updated.expires_at is not None
    assert api.recall("expire") == [] and api.reads.counts()["ops"] == 2


# ------------------------------------------------------------------ JSON inputs (json_input)
@pytest.mark.parametrize(("raw", "field", "message"), [
    (b'{"query": 5, "a": ' + b"[" * 40 + b"]" * 40 + b"}", "a" + "[0]" * 31, "nested deeper than 32 levels"),
    (b"[" * 100_000, "body", "nested deeper than 32 levels"),
    (b'{"tags": ["ok", "\\ud800"]}', "tags[1]", "lone surrogate"),
    (b'{"metadata": {"x": NaN}}', "metadata.x", "NaN is not JSON"),
    (b'{"x": -Infinity}', "x", "-Infinity is not JSON"),
    (b"{bad", "body", "is not JSON"),
    (b"\xff\xfe{}", "body", "UTF-8"),
])
def test_a_json_input_is_refused_naming_the_field(raw: bytes, field: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)) as refused:
        parse_json(raw)
    assert refused.value.field == field


def test_a_json_input_within_the_bound_parses_and_one_field_paths_start_with_it() -> None:
    nested: object = 1
    for _ in range(MAX_JSON_DEPTH):
        nested = [nested]
    assert parse_json(json.dumps({"a": nested})[6:-1]) == nested
    with pytest.raises(InvalidInput) as refused:
        parse_json('{"a": "\\udfff"}', "metadata", one_field=True)
    assert refused.value.field == "metadata.a"


def test_a_query_over_the_bound_is_refused_before_any_work(limited: UnifiedMemoryAPI) -> None:
    """A 60,000-word query cost seconds of CPU (issue 13); it is refused, naming the field."""
    for mode in ("text", "semantic", "hybrid"):
        with pytest.raises(InvalidInput, match="characters; the limit is") as refused:
            limited.recall("word " * 60_000, mode=mode)
        assert refused.value.field == "query"
    limited.recall("x" * limited.config.max_query_chars)  # at the bound: searched


def test_the_local_content_limit_cannot_exceed_what_every_replica_accepts(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="max_content_chars"):
        MemoryConfig(base_path=str(tmp_path), max_content_chars=MAX_CONTENT_CHARS + 1)
    assert MemoryConfig(base_path=str(tmp_path)).max_content_chars == MAX_CONTENT_CHARS
