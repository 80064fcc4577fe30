"""`neuralsync import` reads a NeuralSync2 home: items, op-log-only items, persona; idempotently.

The home here is written by hand, in the schema of NeuralSync2's storage code; a home written by its
own server is imported in ``test_ns2_reference_home``."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pytest

from neuralsync.cli import main
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI
from neuralsync.utils import now_ms

NS2_SCHEMA = """
CREATE TABLE items(id TEXT PRIMARY KEY, kind TEXT, text TEXT, scope TEXT, tool TEXT, tags TEXT,
    confidence REAL, benefit REAL, consistency REAL, vector BLOB, created_at INTEGER, updated_at INTEGER,
    ttl_ms INTEGER, expires_at INTEGER, tombstone INTEGER, site_id TEXT, lamport INTEGER, source TEXT, meta TEXT);
CREATE VIRTUAL TABLE items_fts USING fts5(id, text, tokenize='porter');
CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT);
"""


def _ns2_home(root: Path) -> tuple[Path, dict[str, str]]:
    home = root / "ns2"
    home.mkdir()
    conn = sqlite3.connect(home / "memory.db")
    conn.executescript(NS2_SCHEMA)
    now = now_ms()
    ids = {"loves": str(uuid.uuid4()), "gone": str(uuid.uuid4()), "old": "custom-id-7", "expired": str(uuid.uuid4())}
    rows = [
        (ids["loves"], "note", "Loves minimal elegant code.", "global", "claude-code", '["style"]', 0.9, 0.5, 0.7,
         None, now - 5000, now - 4000, None, None, 0, "site-a", 3, "nswrap", '{"lang": "en"}'),
        (ids["gone"], "fact", "A deleted fact.", "global", None, "[]", 0.8, None, None, None, now, now, None, None,
         1, "site-a", 4, None, None),
        (ids["old"], "weird kind!", "Uses tabs in Makefiles.", "proj", "codex", None, 0.6, None, None, None,
         (now - 86_400_000) // 1000, None, None, None, 0, "site-b", 1, None, None),
        (ids["expired"], "fact", "Temporary token note.", "global", None, "[]", 0.8, None, None, None, now - 10_000,
         now - 10_000, 1000, now - 9000, 0, "site-a", 5, None, None),
    ]
    conn.executemany("INSERT INTO items VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    # Its kv row keeps the highest Lamport clock, which restarted at 0 with its server: an older persona.
    conn.execute("INSERT INTO kv VALUES ('persona', json(?))",
                 (json.dumps({"text": "Old persona.", "site_id": "site-a", "lamport": 9}),))
    conn.commit()
    conn.close()
    only_in_log = str(uuid.uuid4())
    ids["log"] = only_in_log
    log = [
        {"op": "persona_set", "lamport": 9, "site_id": "site-a", "clock_ts": now - 60_000,
         "payload": {"text": "Old persona."}},
        {"op": "persona_set", "lamport": 1, "site_id": "site-a", "clock_ts": now - 1000,
         "payload": {"text": "Terse senior engineer."}},
        {"op": "upsert", "id": only_in_log, "lamport": 7, "site_id": "site-c", "clock_ts": now,
         "payload": {"kind": "decision", "text": "Deploys happen on Tuesdays.", "scope": "global", "tags": ["ops"]}},
        {"op": "upsert", "id": "log-deleted", "lamport": 8, "site_id": "site-c", "clock_ts": now,
         "payload": {"text": "Should not appear."}},
        {"op": "delete", "id": "log-deleted", "lamport": 9, "site_id": "site-c", "clock_ts": now, "payload": None},
    ]
    (home / "oplog.jsonl").write_text("\n".join(json.dumps(e) for e in log) + "\nnot json\n", encoding="utf-8")
    return home, ids


def test_import_reads_a_neuralsync2_home_idempotently(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ns2, ids = _ns2_home(tmp_path)
    store = tmp_path / "store"
    assert main(["--home", str(store), "--json", "import", str(ns2)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["imported"], first["persona"]) == (3, "carried")
    with UnifiedMemoryAPI(MemoryConfig(base_path=store)) as api:
        ops = api.counts()["ops"]
    assert main(["--home", str(store), "--json", "import", str(ns2 / "memory.db")]) == 0  # again: nothing new
    again = json.loads(capsys.readouterr().out)
    assert (again["imported"], again["skipped"], again["persona"]) == (0, 3, "kept")
    with UnifiedMemoryAPI(MemoryConfig(base_path=store)) as api:
        assert api.counts()["ops"] == ops
        assert api.get_system_stats()["memories"] == 3  # persona history is no memory
        loves = api.get(ids["loves"].replace("-", ""))
        assert (loves.content, loves.kind, loves.tool, loves.tags, loves.confidence) == (
            "Loves minimal elegant code.", "note", "claude-code", ("style",), 0.9)
        assert loves.metadata["lang"] == "en" and loves.metadata["neuralsync2"]["site_id"] == "site-a"
        texts = {m.content for m in api.range_recall(limit=100)}
        assert texts == {"Loves minimal elegant code.", "Uses tabs in Makefiles.", "Deploys happen on Tuesdays."}
        tabs = next(m for m in api.range_recall(limit=100) if m.content.startswith("Uses tabs"))
        assert tabs.kind == "fact" and tabs.scope == "proj"  # an invalid kind falls back; seconds read as such
        assert abs(tabs.created_at - (now_ms() - 86_400_000)) < 5_000
        assert api.get_persona() == "Terse senior engineer."  # the latest logged, not kv's older one
        assert api.recall("elegant", mode="text")[0].id == loves.id


def _kv_only_home(root: Path, kv_schema: str, row: tuple[str, str] | None) -> Path:
    home = root / "kv-only"
    home.mkdir()
    conn = sqlite3.connect(home / "memory.db")
    conn.executescript(NS2_SCHEMA.split("CREATE TABLE kv")[0] + kv_schema)
    if row is not None:
        conn.execute("INSERT INTO kv VALUES (?, ?)", row)
    conn.commit()
    conn.close()
    return home


def test_persona_from_kv_when_the_log_has_none_and_only_into_a_store_without_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    value = json.dumps({"text": "From kv.", "site_id": "s", "lamport": 3})
    home = _kv_only_home(tmp_path, "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT);", ("persona", value))
    fresh, used = tmp_path / "fresh", tmp_path / "used"
    assert main(["--home", str(fresh), "import", str(home)]) == 0
    with UnifiedMemoryAPI(MemoryConfig(base_path=fresh)) as api:
        assert api.get_persona() == "From kv."
    with UnifiedMemoryAPI(MemoryConfig(base_path=used)) as api:
        api.set_persona("Ours.")
    assert main(["--home", str(used), "import", str(home)]) == 0  # kv carries no time: ours stays
    assert "persona kept" in capsys.readouterr().out
    with UnifiedMemoryAPI(MemoryConfig(base_path=used)) as api:
        assert api.get_persona() == "Ours."


def test_a_persona_set_here_after_neuralsync2s_is_kept(tmp_path: Path) -> None:
    ns2, _ = _ns2_home(tmp_path)
    store = tmp_path / "store"
    with UnifiedMemoryAPI(MemoryConfig(base_path=store)) as api:
        api.set_persona("Set here, later.")
    assert main(["--home", str(store), "import", str(ns2)]) == 0
    with UnifiedMemoryAPI(MemoryConfig(base_path=store)) as api:
        assert api.get_persona() == "Set here, later."


def test_a_kv_table_of_another_shape_is_an_error_not_a_lost_persona(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    home = _kv_only_home(tmp_path, "CREATE TABLE kv(key TEXT PRIMARY KEY, value TEXT);", ("persona", "x"))
    assert main(["--home", str(tmp_path / "store"), "import", str(home)]) == 2
    assert "kv" in capsys.readouterr().err
