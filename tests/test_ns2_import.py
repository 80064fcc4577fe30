"""`neuralsync import` reads a NeuralSync2 home: items, op-log-only items, persona; idempotently."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

from neuralsync.cli import main
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI
from neuralsync.utils import now_ms

NS2_SCHEMA = """
CREATE TABLE items(id TEXT PRIMARY KEY, kind TEXT, text TEXT, scope TEXT, tool TEXT, tags TEXT,
    confidence REAL, benefit REAL, consistency REAL, vector BLOB, created_at INTEGER, updated_at INTEGER,
    ttl_ms INTEGER, expires_at INTEGER, tombstone INTEGER, site_id TEXT, lamport INTEGER, source TEXT, meta TEXT);
CREATE VIRTUAL TABLE items_fts USING fts5(text, content='items', content_rowid='rowid');
CREATE TABLE kv(key TEXT PRIMARY KEY, value TEXT);
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
    conn.execute("INSERT INTO kv VALUES ('persona', 'Terse senior engineer.')")
    conn.commit()
    conn.close()
    only_in_log = str(uuid.uuid4())
    ids["log"] = only_in_log
    log = [
        {"op": "upsert", "id": only_in_log, "lamport": 7, "site_id": "site-c", "clock_ts": now,
         "payload": {"kind": "decision", "text": "Deploys happen on Tuesdays.", "scope": "global", "tags": ["ops"]}},
        {"op": "upsert", "id": "log-deleted", "lamport": 8, "site_id": "site-c", "clock_ts": now,
         "payload": {"text": "Should not appear."}},
        {"op": "delete", "id": "log-deleted", "lamport": 9, "site_id": "site-c", "clock_ts": now, "payload": None},
    ]
    (home / "oplog.jsonl").write_text("\n".join(json.dumps(e) for e in log) + "\nnot json\n", encoding="utf-8")
    return home, ids


def test_import_reads_a_neuralsync2_home_idempotently(tmp_path: Path, capsys: object) -> None:
    ns2, ids = _ns2_home(tmp_path)
    store = tmp_path / "store"
    assert main(["--home", str(store), "--json", "import", str(ns2)]) == 0
    assert main(["--home", str(store), "--json", "import", str(ns2 / "memory.db")]) == 0  # again: nothing new
    with UnifiedMemoryAPI(MemoryConfig(base_path=store)) as api:
        assert api.get_system_stats()["memories"] == 3
        loves = api.get(ids["loves"].replace("-", ""))
        assert (loves.content, loves.kind, loves.tool, loves.tags, loves.confidence) == (
            "Loves minimal elegant code.", "note", "claude-code", ("style",), 0.9)
        assert loves.metadata["lang"] == "en" and loves.metadata["neuralsync2"]["site_id"] == "site-a"
        texts = {m.content for m in api.range_recall(limit=100)}
        assert texts == {"Loves minimal elegant code.", "Uses tabs in Makefiles.", "Deploys happen on Tuesdays."}
        tabs = next(m for m in api.range_recall(limit=100) if m.content.startswith("Uses tabs"))
        assert tabs.kind == "fact" and tabs.scope == "proj"  # an invalid kind falls back; seconds read as such
        assert abs(tabs.created_at - (now_ms() - 86_400_000)) < 5_000
        assert api.get_persona() == "Terse senior engineer."
        assert api.recall("elegant", mode="text")[0].id == loves.id
