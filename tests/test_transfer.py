"""JSON Lines export/import: round trips, idempotence, bad lines, streaming, progress."""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuralsync.cli import main, transfer
from neuralsync.cli.progress import Progress
from neuralsync.cli.transfer import export_jsonl, export_record, import_jsonl
from neuralsync.errors import NotFound
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI
from neuralsync.validation import content_fault

# Fields an import must reproduce exactly. updated_at is covered by its own test below.
KEPT = ("id", "content", "scope", "kind", "tags", "priority", "confidence", "tool", "source", "session",
        "metadata", "created_at", "expires_at", "content_hash")


OpenStore = Callable[..., UnifiedMemoryAPI]


@pytest.fixture
def open_store(make_api: OpenStore, tmp_path: Path) -> OpenStore:
    """``open_store("a", **config)``: a named store under ``tmp_path``, closed by ``make_api``."""
    return lambda name, **config: make_api(tmp_path / name, **config)


def fill(api: UnifiedMemoryAPI) -> list[str]:
    return [
        api.remember("plain fact"),
        api.remember("tagged, scoped, with metadata ✓ ünïcode", scope="proj", tags=["b", "a"], kind="decision",
                     priority=0.9, confidence=0.4, tool="codex", source="file.py:3",
                     metadata={"n": 1, "nested": {"x": [1, "two", None]}}),
        api.remember("expires later", ttl_ms=10 ** 9),
    ]


def dump(api: UnifiedMemoryAPI) -> bytes:
    out = io.BytesIO()
    export_jsonl(api, out)
    return out.getvalue()


def kept(api: UnifiedMemoryAPI) -> list[dict[str, object]]:
    return [{k: export_record(m)[k] for k in KEPT} for m in api.reads.iter_memories()]


def jsonl(*records: object) -> list[bytes]:
    return [(r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in records]


# ---------------------------------------------------------------- round trips
def test_export_then_import_gives_identical_memories(open_store: OpenStore) -> None:
    source, target = open_store("a"), open_store("b")
    fill(source)
    data = dump(source)
    assert len(data.splitlines()) == 3
    assert all("score" not in json.loads(line) for line in data.splitlines())
    report = import_jsonl(target, io.BytesIO(data))
    assert (report.imported, report.skipped, report.rejected) == (3, 0, 0)
    assert kept(target) == kept(source)
    assert dump(target) != b"" and target.recall("ünïcode")[0].tags == ("a", "b")


def test_import_twice_is_idempotent(open_store: OpenStore) -> None:
    source, target = open_store("a"), open_store("b")
    fill(source)
    data = dump(source)
    import_jsonl(target, io.BytesIO(data))
    ops = target.reads.counts()["ops"]
    report = import_jsonl(target, io.BytesIO(data))
    assert (report.imported, report.skipped, report.rejected) == (0, 3, 0)
    assert target.reads.counts()["ops"] == ops


def test_forgotten_ids_are_not_resurrected(open_store: OpenStore) -> None:
    api = open_store("a")
    memory_id = fill(api)[0]
    data = dump(api)
    api.forget(memory_id)
    report = import_jsonl(api, io.BytesIO(data))
    assert (report.imported, report.skipped) == (0, 3)
    with pytest.raises(NotFound):
        api.get(memory_id)


def test_import_keeps_updated_at(open_store: OpenStore) -> None:
    api = open_store("a")
    memory_id, updated = "c" * 32, 1_650_000_000_000
    import_jsonl(api, jsonl({"id": memory_id, "content": "edited long ago", "created_at": 1_600_000_000_000,
                             "updated_at": updated}))
    assert api.get(memory_id).updated_at == updated


def test_import_keeps_a_missing_tool_missing(open_store: OpenStore) -> None:
    source, target = open_store("a"), open_store("b", tool="gemini")
    memory_id = source.remember("no tool")
    import_jsonl(target, io.BytesIO(dump(source)))
    assert target.get(memory_id).tool is None


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Any content remember accepts (some text to read, no NUL: validation.content_fault).
@given(contents=st.lists(st.text(min_size=1, max_size=40).filter(lambda t: t.strip() and content_fault(t) is None),
                         min_size=1, max_size=5),
       tags=st.lists(st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True), max_size=3))
def test_round_trip_property(contents: list[str], tags: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with UnifiedMemoryAPI(MemoryConfig.from_env(f"{tmp}/a")) as source, \
                UnifiedMemoryAPI(MemoryConfig.from_env(f"{tmp}/b")) as target:
            for text in contents:
                source.remember(text, tags=tags, metadata={"text": text})
            import_jsonl(target, io.BytesIO(dump(source)))
            assert kept(target) == kept(source)


# ---------------------------------------------------------------- bad lines
def test_bad_lines_are_reported_by_number_and_good_lines_kept(open_store: OpenStore) -> None:
    api = open_store("a")
    good_id, created = "0" * 31 + "1", 1_700_000_000_000
    good = {"id": good_id, "content": "good one", "created_at": created}
    lines = jsonl(good, "", "{broken", [1, 2], {"content": "bad priority", "priority": 2},
                  {"content": "x", "surprise": True}, {"content": ""}, {"content": "good two"})
    lines.insert(2, b"\xff\xfe not utf-8\n")
    report = import_jsonl(api, lines)
    assert (report.imported, report.skipped, report.rejected, report.lines) == (2, 0, 6, 9)
    reasons = dict(report.rejections)
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8]
    assert "UTF-8" in reasons[3] and "invalid JSON" in reasons[4] and reasons[5].startswith("record")
    assert reasons[6].startswith("priority") and reasons[7].startswith("surprise")
    assert reasons[8].startswith("content")
    assert api.get(good_id).created_at == created
    assert api.reads.counts()["ops"] == 2  # nothing of the bad lines was written


def test_a_rejected_record_leaves_nothing_behind(open_store: OpenStore) -> None:
    api = open_store("a")
    bad = {"id": "a" * 32, "content": "valid content", "tags": ["ok", 7]}
    report = import_jsonl(api, jsonl(bad))
    assert report.rejected == 1 and report.rejections[0][1].startswith("tags")
    assert not api.reads.exists("a" * 32) and api.reads.counts()["ops"] == 0


def test_rejection_list_is_capped_but_count_exact(open_store: OpenStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "MAX_LISTED_REJECTIONS", 2)
    report = import_jsonl(open_store("a"), [b"nope\n"] * 5)
    assert report.rejected == 5 and len(report.rejections) == 2 and not report.ok


def test_byte_order_mark_and_duplicates_within_a_file(open_store: OpenStore) -> None:
    api = open_store("a")
    record = {"id": "b" * 32, "content": "once"}
    lines = jsonl(record, record)
    lines[0] = "\ufeff".encode() + lines[0]
    report = import_jsonl(api, lines, batch_size=1)
    assert (report.imported, report.skipped, report.rejected) == (1, 1, 0)


# ---------------------------------------------------------------- streaming
def test_import_streams_in_batches(open_store: OpenStore) -> None:
    api = open_store("a")
    pulled: list[int] = []
    committed_after: list[int] = []

    def lines() -> Iterator[bytes]:
        for n in range(7):
            pulled.append(n)
            yield json.dumps({"content": f"memory {n}"}).encode() + b"\n"

    report = import_jsonl(api, lines(), batch_size=3, progress=lambda _: committed_after.append(len(pulled)))
    assert report.imported == 7
    assert committed_after == [3, 6, 7]  # never more than one batch read ahead of the store


def test_export_streams_with_progress(open_store: OpenStore) -> None:
    api = open_store("a")
    fill(api)
    seen: list[int] = []
    assert export_jsonl(api, io.BytesIO(), seen.append) == 3 and seen == [1, 2, 3]


# ---------------------------------------------------------------- through the CLI
def test_cli_export_import_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, dump_file = str(tmp_path / "a"), str(tmp_path / "b"), tmp_path / "out.jsonl"
    for text in ("one", "two"):
        assert main(["--home", a, "remember", text]) == 0
    assert main(["--home", a, "export", str(dump_file)]) == 0
    assert not (tmp_path / "out.jsonl.partial").exists()
    assert main(["--home", a, "export"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-2:] == dump_file.read_text(encoding="utf-8").splitlines()

    assert main(["--home", b, "import", str(dump_file)]) == 0
    assert "imported 2, skipped 0" in capsys.readouterr().out
    assert main(["--home", b, "--json", "import", str(dump_file)]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 2


def test_cli_import_reports_bad_lines_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data = b'{"content": "fine"}\n\n{oops\n{"content": "also fine"}\n'
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["--home", str(tmp_path / "s"), "import", "-"]) == 1
    out, err = capsys.readouterr()
    assert "imported 2, skipped 0 (already present), rejected 1" in out
    assert "neuralsync: line 3: invalid JSON" in err and "neuralsync: error: 1 line(s) rejected" in err


def test_cli_import_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(tmp_path / "s"), "import", str(tmp_path / "absent.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("neuralsync: error: No such file") and err.count("\n") == 1


# ---------------------------------------------------------------- progress bar
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_is_silent_off_a_tty() -> None:
    stream = io.StringIO()
    with Progress("work", total=10, stream=stream) as bar:
        for n in range(10):
            bar(n + 1)
    assert stream.getvalue() == ""


def test_progress_bar_draws_on_a_tty() -> None:
    stream = _Terminal()
    with Progress("work", total=4, stream=stream, min_interval=0) as bar:
        bar(2)
        assert "work" in stream.getvalue() and " 50%" in stream.getvalue() and "2/4" in stream.getvalue()
    assert stream.getvalue().endswith("\n")


def test_progress_bar_learns_its_total_late_and_counts_bytes() -> None:
    stream = _Terminal()
    with Progress("bytes", unit="B", stream=stream) as bar:
        bar(1024, total=2048)
        bar(2048)
    assert "100%" in stream.getvalue() and "2.00k/2.00k" in stream.getvalue()


def test_a_record_without_id_imported_twice_is_stored_once(open_store: OpenStore) -> None:
    api = open_store("a")
    record = {"content": "no id here", "created_at": 1_700_000_000_000, "scope": "s"}
    assert api.import_memory(dict(record)) is True
    assert api.import_memory(dict(record)) is False
    assert api.reads.counts()["memories"] == 1
