"""Habits users expect (issue 16): ``python -m neuralsync``, ``recall --mode``, ``--help`` on every
command, shell completion, a config file and ``NEURALSYNC_*`` variables for every setting, the
server's log file, a private store, redaction of passwords and connection strings, access counts.

The CLI runs in a subprocess (``sys.executable -m neuralsync``) on a scratch ``NEURALSYNC_HOME``
where start-up and streams matter; the rest in-process.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from neuralsync.config import MemoryConfig
from neuralsync.redact import Redactor
from neuralsync.unified_memory_api import UnifiedMemoryAPI


def cli(home: Path, *argv: str, module: str = "neuralsync.cli", **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m <module> ARGV`` on ``home``, with the hashing embedder (no model to load)."""
    environ = {**os.environ, "NEURALSYNC_HOME": str(home), "NEURALSYNC_EMBEDDER": "hashing", **env}
    return subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=120,
                          env=environ, check=False)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ================================================================ a private store
@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_a_new_store_is_private(tmp_path: Path) -> None:
    home = tmp_path / "store"
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(home))) as api:
        api.remember("private by default")
        assert mode_of(home) == 0o700
        for name in ("memory.db", "memory.db-wal", "memory.db-shm"):
            assert mode_of(home / name) == 0o600, name


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_an_existing_store_is_tightened_on_open(tmp_path: Path) -> None:
    home = tmp_path / "store"
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(home))) as api:
        api.remember("was world-readable")
    home.chmod(0o755)
    (home / "memory.db").chmod(0o644)
    stray = home / "memory.db-shm"
    stray.touch()
    stray.chmod(0o666)
    done = cli(home, "list")
    assert done.returncode == 0, done.stderr
    assert mode_of(home) == 0o700
    assert mode_of(home / "memory.db") == 0o600
    assert all(mode_of(p) == 0o600 for p in home.glob("memory.db-*"))


# ================================================================ redaction
@pytest.mark.parametrize(("text", "expected"), [
    ("password=hunter2", "password=[REDACTED:secret_assignment]"),
    ('PASSWORD: "x"', "PASSWORD: [REDACTED:secret_assignment]"),
    ("export DB_PASSWORD='p@ss word' && run", "export DB_PASSWORD=[REDACTED:secret_assignment] && run"),
    ("secret=abc123 then", "secret=[REDACTED:secret_assignment] then"),
    ("api_key=zzz", "api_key=[REDACTED:secret_assignment]"),
    ('{"client_secret": "abc", "x": 1}', '{"client_secret": [REDACTED:secret_assignment], "x": 1}'),
    ("db:\n  password: hunter2\n  user: bob", "db:\n  password: [REDACTED:secret_assignment]\n  user: bob"),
    ("GET /cb?access_token=abc&state=1", "GET /cb?access_token=[REDACTED:secret_assignment]&state=1"),
    ("postgres://user:pass@host/db", "postgres://user:[REDACTED:connection_password]@host/db"),
    ("mysql://root:s3cr3t@127.0.0.1:3306/app", "mysql://root:[REDACTED:connection_password]@127.0.0.1:3306/app"),
    ("mongodb+srv://admin:Pa55w0rd@cluster0.example.net/test",
     "mongodb+srv://admin:[REDACTED:connection_password]@cluster0.example.net/test"),
    ("redis://:pass@localhost:6379/0", "redis://:[REDACTED:connection_password]@localhost:6379/0"),
])
def test_passwords_and_connection_strings_are_redacted(text: str, expected: str) -> None:
    assert Redactor().redact(text) == expected


@pytest.mark.parametrize("text", [
    "password: rotate it monthly",
    "the password is stored in the vault; the secret is patience",
    "if password == user_input:",
    "def login(password: str, api_key: Optional[str] = None) -> None:",
    "see https://example.com:8080/path and ssh://git@github.com/o/r",
    "max_tokens=100 and PWD=/home/me",
])
def test_prose_and_code_about_passwords_is_untouched(text: str) -> None:
    assert Redactor().redact(text) == text


def test_a_password_never_reaches_the_disk(api: UnifiedMemoryAPI) -> None:
    mid = api.remember("staging db is postgres://app:Tr0ub4dor@db.internal/app and password=hunter2",
                       metadata={"env": "REDIS_URL=redis://:s3cretpass@cache:6379"})
    memory = api.get(mid)
    for secret in ("Tr0ub4dor", "hunter2", "s3cretpass"):
        assert secret not in memory.content and secret not in json.dumps(memory.metadata)
    api.close()
    raw = b"".join(p.read_bytes() for p in api.config.home.glob("memory.db*"))
    for secret in (b"Tr0ub4dor", b"hunter2", b"s3cretpass"):
        assert secret not in raw


# ================================================================ access statistics
def test_get_shows_the_recorded_accesses(api: UnifiedMemoryAPI) -> None:
    mid = api.remember("counted reads")
    first = api.get(mid)
    assert (first.access_count, first.accessed_at) == (0, None)
    api.recall("counted", mode="text")
    second = api.get(mid)  # one get and one recall before it, not yet written
    assert second.access_count == 2 and second.accessed_at is not None
    api.access.flush()
    third = api.get(mid)
    assert third.access_count == 3 and third.accessed_at >= second.accessed_at
    assert all(m.access_count == 0 for m in api.range_recall())  # range stays one table


def test_cli_get_shows_access_count(tmp_path: Path) -> None:
    home = tmp_path / "store"
    mid = cli(home, "remember", "seen twice").stdout.strip()
    assert json.loads(cli(home, "--json", "get", mid).stdout)["access_count"] == 0
    shown = json.loads(cli(home, "--json", "get", mid).stdout)
    assert shown["access_count"] == 1 and shown["accessed_at"] is not None
    assert "accessed    2 times, last " in cli(home, "get", mid).stdout
