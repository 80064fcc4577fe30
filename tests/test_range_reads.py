"""Range reads (issue 14): records built a column at a time equal the row-by-row ones, the range
query returns what a reference query over the same table returns, and SQLite reads it in index order."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

import pytest

from neuralsync.model import Memory
from neuralsync.store import reads
from neuralsync.store.reads import MEMORY_COLUMNS, decode_metadata, range_query, row_to_memory, rows_to_memories
from neuralsync.unified_memory_api import UnifiedMemoryAPI
from neuralsync.utils import now_ms

MakeApi = Callable[..., UnifiedMemoryAPI]
BASE = 1_700_000_000_000
METADATA = [{}, {"file": "src/app.py", "line": 12}, {"nested": {"ok": True, "list": [1, 2.5, None, "x"]}},
            {"unicode": "caf\u00e9 \u2603 \U0001f600", "quote": "a \"b\" \\ c", "empty": {}}, {"n": -3, "f": 1e-9}]
TAGS = [[], ["build"], ["build", "ci"], ["z-last", "a-first", "mid"]]


@pytest.fixture
def varied(make_api: MakeApi) -> UnifiedMemoryAPI:
    """60 imported memories over 30 ms of creation time (pairs share a millisecond), 3 scopes, varied
    tags and metadata; every 7th expired, and a few newer ones that expire only in the future."""
    api = make_api(embedder="none")
    now = now_ms()
    with api.batch_operations():
        for i in range(60):
            api.import_memory({
                "content": f"memory {i}", "scope": ("a", "b", "global")[i % 3], "tags": TAGS[i % len(TAGS)],
                "metadata": METADATA[i % len(METADATA)], "kind": ("fact", "note")[i % 2],
                "source": None if i % 4 else "README.md", "created_at": BASE + i // 2,
                "expires_at": (now - 1000 if i % 7 == 0 else now + 3_600_000) if i % 5 in (0, 2) else None,
            })
    return api


def reference_ids(api: UnifiedMemoryAPI, start: int | None, end: int | None, scope: str | None,
                  limit: int | None, newest_first: bool) -> list[str]:
    """Ids the range should return, by a separate plain connection: filter, sort and cut in Python."""
    with sqlite3.connect(api.config.db_path) as conn:
        rows = conn.execute("SELECT id, scope, created_at, expires_at, rowid FROM memories").fetchall()
    now = now_ms()
    picked = [r for r in rows if (r[3] is None or r[3] > now) and (start is None or r[2] >= start)
              and (end is None or r[2] <= end) and (scope is None or r[1] == scope)]
    picked.sort(key=lambda r: (r[2], r[4]), reverse=newest_first)
    return [r[0] for r in picked[:limit]]


def stored_rows(api: UnifiedMemoryAPI) -> list[tuple[object, ...]]:
    return api.storage.conn.execute(f"SELECT {MEMORY_COLUMNS}, 0.5 FROM memories m ORDER BY m.rowid").fetchall()


# ---------------------------------------------------------------- records
def test_column_built_records_equal_row_built_ones(varied: UnifiedMemoryAPI) -> None:
    rows = stored_rows(varied)  # with a trailing extra column, as recall selects a score after the columns
    built = rows_to_memories(rows)
    assert built == [row_to_memory(r) for r in rows]
    assert all(type(m) is Memory for m in built)
    assert [m.to_dict() for m in built] == [row_to_memory(r).to_dict() for r in rows]
    assert {json.dumps(m.metadata, sort_keys=True) for m in built} == {json.dumps(m, sort_keys=True) for m in METADATA}
    assert {m.tags for m in built} == {tuple(sorted(t)) for t in TAGS}
    assert built[1]._replace(content="changed") == row_to_memory(rows[1])._replace(content="changed")
    assert rows_to_memories([]) == []


def test_records_share_no_metadata_dict(varied: UnifiedMemoryAPI) -> None:
    built = rows_to_memories(stored_rows(varied))
    empty = [m for m in built if m.metadata == {}]
    assert len(empty) > 2
    empty[0].metadata["changed"] = True
    assert all(m.metadata == {} for m in empty[1:])
    assert len({id(m.metadata) for m in built}) == len(built)


def test_metadata_decoded_in_one_parse_equals_one_by_one() -> None:
    texts = [json.dumps(m, sort_keys=True, ensure_ascii=False, separators=(",", ":")) for m in METADATA] + ["{}"]
    assert decode_metadata(texts) == [json.loads(t) for t in texts]


@pytest.mark.parametrize("texts", [
    ['{"a":1}', "[1]"],                   # a value that is not an object: decoded as before
    ['{"a":1}', '{"b":'],                 # a text that is not JSON: raises, as before
    ['{"a":1}', "2,3"],                   # a count that no longer matches
])
def test_damaged_metadata_is_decoded_one_by_one(texts: list[str]) -> None:
    try:
        expected: object = [json.loads(t) for t in texts]
    except ValueError as exc:
        expected = type(exc)
    try:
        got: object = decode_metadata(texts)
    except ValueError as exc:
        got = type(exc)
    assert got == expected


# ---------------------------------------------------------------- range_recall
@pytest.mark.parametrize("newest_first", [False, True])
@pytest.mark.parametrize("scope", [None, "a", "global", "nowhere"])
@pytest.mark.parametrize(("start", "end", "limit"), [
    (None, None, None), (BASE + 3, BASE + 20, None), (BASE + 3, BASE + 20, 7), (BASE + 5, BASE + 5, None),
    (None, BASE + 10, 4), (BASE + 25, None, 100), (BASE + 40, BASE + 50, None),
])
def test_range_equals_a_reference_query(varied: UnifiedMemoryAPI, start: int | None, end: int | None,
                                        scope: str | None, limit: int | None, newest_first: bool) -> None:
    got = varied.range_recall(start, end, scope=scope, limit=limit, newest_first=newest_first)
    expected = reference_ids(varied, start, end, scope, limit, newest_first)
    assert [m.id for m in got] == expected
    assert got == [varied.get(i) for i in expected]  # every field, as the single-row read builds it


def test_range_excludes_expired_memories(varied: UnifiedMemoryAPI) -> None:
    expired = [r[0] for r in varied.storage.conn.execute(
        "SELECT id FROM memories WHERE expires_at <= ?", (now_ms(),))]
    assert len(expired) >= 3
    live = {m.id for m in varied.range_recall()}
    assert live and not live & set(expired)
    assert all(varied.reads.get(i, include_expired=True) is not None for i in expired)
    assert len(live) == varied.counts()["memories"]


def test_newest_first_with_a_limit_keeps_the_most_recent(varied: UnifiedMemoryAPI) -> None:
    oldest_first = varied.range_recall(scope="b")
    newest = varied.range_recall(scope="b", limit=5, newest_first=True)
    assert newest == oldest_first[::-1][:5]
    assert [m.created_at for m in newest] == sorted((m.created_at for m in oldest_first), reverse=True)[:5]


def test_range_of_many_rows_streams_unchanged(make_api: MakeApi) -> None:
    api = make_api(embedder="none")
    with api.batch_operations():
        for i in range(2500):
            api.remember(f"bulk {i}", tags=["t"] if i % 3 else [], metadata={"i": i} if i % 2 else None)
    everything = api.range_recall()
    assert len(everything) == 2500
    assert everything == [api.get(m.id) for m in everything]
    assert sorted(everything, key=lambda m: m.id) == list(api.iter_memories())


# ---------------------------------------------------------------- plans
@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize(("scope", "index"), [(None, "memories_created"), ("a", "memories_scope_created")])
@pytest.mark.parametrize(("start", "end"), [(BASE, BASE + 10), (BASE, None), (None, None)])
def test_range_reads_one_index_in_order_without_sorting(make_api: MakeApi, descending: bool, scope: str | None,
                                                        index: str, start: int | None, end: int | None) -> None:
    api = make_api(embedder="none")
    api.remember("so the planner has a table")
    sql, args = range_query(start, end, scope, 1000, descending, now_ms())
    plan = " | ".join(row[-1] for row in api.storage.conn.execute("EXPLAIN QUERY PLAN " + sql, args))
    assert f"USING INDEX {index}" in plan
    assert "TEMP B-TREE" not in plan


@pytest.mark.parametrize("limit", [None, 6, 7, 14, 15, 100])
def test_a_long_range_is_built_in_chunks_unchanged(varied: UnifiedMemoryAPI, monkeypatch: pytest.MonkeyPatch,
                                                   limit: int | None) -> None:
    monkeypatch.setattr(reads, "RANGE_CHUNK", 7)
    for newest_first in (False, True):
        got = varied.range_recall(limit=limit, newest_first=newest_first)
        assert [m.id for m in got] == reference_ids(varied, None, None, None, limit, newest_first)
    assert len(varied.range_recall()) == varied.counts()["memories"] > 7
