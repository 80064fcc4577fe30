"""`neuralsync migrate`: import a NeuralSync2 home, then give its clients the server token (issue 12).

NeuralSync2's clients send a token only from $NS_TOKEN and its server reads ``token:`` from
``~/.neuralsync/config.yaml``; migrating writes both places and says so. (That NeuralSync2's own code reads
the file as written is checked in ``test_ns2_reference_clients``.)"""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from neuralsync.cli import main
from neuralsync.integrations.ns2_setup import read_ns2_config
from neuralsync.server import resolve_token
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI
from neuralsync.utils import now_ms


@pytest.fixture
def user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch $HOME holding a NeuralSync2 install: its config (as its server writes it) and one item."""
    home = tmp_path / "user"
    ns2 = home / ".neuralsync"
    ns2.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("NS_TOKEN", raising=False)
    monkeypatch.setenv("SHELL", "/bin/bash")
    (ns2 / "config.yaml").write_text(
        f"bind_host: 127.0.0.1\nbind_port: 1\ndb_path: {ns2 / 'memory.db'}\noplog_path: {ns2 / 'oplog.jsonl'}\n"
        "site_id: 6b1f0c2e-0000-4000-8000-000000000001\ntoken: ''\nvector_dim: 512\n", encoding="utf-8")
    conn = sqlite3.connect(ns2 / "memory.db")
    conn.executescript("CREATE TABLE items(id TEXT PRIMARY KEY, kind TEXT, text TEXT, scope TEXT, tool TEXT,"
                       " tags TEXT, created_at INTEGER, tombstone INTEGER DEFAULT 0);"
                       "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT);")
    conn.execute("INSERT INTO items(id, kind, text, scope, tags, created_at) VALUES (?, 'fact', ?, 'global', '[]', ?)",
                 (str(uuid.uuid4()), "Migrated with its clients.", now_ms()))
    conn.commit()
    conn.close()
    (ns2 / "oplog.jsonl").write_text(json.dumps({"op": "persona_set", "lamport": 1, "site_id": "s",
                                                 "clock_ts": now_ms() - 10, "payload": {"text": "Terse."}}) + "\n")
    return home


def test_migrate_imports_and_writes_the_token_where_neuralsync2_reads_it(
        user_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    assert main(["--home", str(store), "migrate"]) == 0  # the home comes from its config's db_path
    said = capsys.readouterr().out.splitlines()
    token = resolve_token(MemoryConfig(base_path=store))
    config = user_home / ".neuralsync" / "config.yaml"
    assert read_ns2_config(config)["token"] == token
    assert read_ns2_config(config)["site_id"] == "6b1f0c2e-0000-4000-8000-000000000001"  # the rest is kept
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    profile = user_home / ".bashrc"
    assert token not in profile.read_text()  # the profile reads the 0600 token file; it never holds the token
    exported = subprocess.run(["bash", "-c", f". {profile}; printf %s \"$NS_TOKEN\""], capture_output=True,
                              text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert exported.stdout == token
    assert said[0].startswith("imported 1, skipped 0") and said[1] == "persona: carried from NeuralSync2"
    assert f"token: written to {config}" in said[2] and f"{profile} now exports NS_TOKEN" in said[3]
    with UnifiedMemoryAPI(MemoryConfig(base_path=store)) as api:
        assert api.get_persona() == "Terse." and api.recall("migrated", mode="text")

    assert main(["--home", str(store), "migrate", str(user_home / ".neuralsync")]) == 0  # again: nothing new
    again = capsys.readouterr().out
    assert "imported 0, skipped 1" in again and "already in" in again and "already exports" in again
    assert profile.read_text().count("export NS_TOKEN") == 1


def test_migrate_without_touching_profiles_prints_the_line(user_home: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(tmp_path / "store"), "--json", "migrate", "--no-profile"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["import"]["imported"] == 1 and report["token"] == {"ns2_config": True}
    assert not (user_home / ".bashrc").exists()


def test_migrate_with_ns_token_set_leaves_the_shell_alone(user_home: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NS_TOKEN", "chosen-by-the-user")
    assert main(["--home", str(tmp_path / "store"), "migrate"]) == 0
    assert "NS_TOKEN is set in this shell" in capsys.readouterr().out
    assert read_ns2_config(user_home / ".neuralsync" / "config.yaml")["token"] == "chosen-by-the-user"
    assert not (user_home / ".bashrc").exists()


def test_migrate_without_a_neuralsync2_home_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "nobody"))
    assert main(["--home", str(tmp_path / "store"), "migrate"]) == 2
    assert "no NeuralSync2 home" in capsys.readouterr().err


def test_import_of_a_neuralsync2_home_points_at_migrate(user_home: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(tmp_path / "store"), "import", str(user_home / ".neuralsync")]) == 0
    assert "'neuralsync migrate' sets that up" in capsys.readouterr().err
