"""Habits users expect (issue 16): ``python -m neuralsync``, ``recall --mode``, ``--help`` on every
command, shell completion, a config file and ``NEURALSYNC_*`` variables for every setting, the
server's log file, a private store, redaction of passwords and connection strings, access counts.

The CLI runs in a subprocess (``sys.executable -m neuralsync``) on a scratch ``NEURALSYNC_HOME``
where start-up and streams matter; the rest in-process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from neuralsync.cli import main
from neuralsync.cli.app import build_parser
from neuralsync.config import CONFIG_FILE_NAME, MemoryConfig, env_name, resolve, setting_kinds
from neuralsync.errors import ConfigError
from neuralsync.redact import Redactor
from neuralsync.unified_memory_api import UnifiedMemoryAPI


def cli(home: Path, *argv: str, module: str = "neuralsync", **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m <module> ARGV`` on ``home``, with the hashing embedder (no model to load)."""
    environ = {**os.environ, "NEURALSYNC_HOME": str(home), "NEURALSYNC_EMBEDDER": "hashing", **env}
    return subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=120,
                          env=environ, check=False)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ================================================================ python -m neuralsync, --help
def test_python_dash_m_neuralsync_runs_the_command(tmp_path: Path) -> None:
    done = cli(tmp_path / "store", "--version")
    assert done.returncode == 0 and done.stdout.startswith("neuralsync ")
    done = cli(tmp_path / "store", "remember", "the", "deploy", "runs", "on", "fridays")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip()) == 32


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the tree (``("peer", "add")`` for nested ones)."""
    found: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found += _commands(sub, (*prefix, name))
    return found


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _commands(build_parser())
    assert {("recall",), ("config",), ("completion",), ("serve",)} <= set(commands)
    for path in [(), *commands]:
        assert main([*path, "--help"]) == 0, path
        out = capsys.readouterr().out
        assert out.startswith("usage: neuralsync"), path


@pytest.mark.parametrize("module", ["neuralsync", "neuralsync.integrations.wrap", "neuralsync.server.run"])
def test_help_of_each_entry_point(tmp_path: Path, module: str) -> None:
    done = cli(tmp_path / "store", "--help", module=module)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")
    assert not (tmp_path / "store").exists()  # help opens no store


def test_nswrap_options_end_at_the_command(tmp_path: Path) -> None:
    done = cli(tmp_path / "store", "-k", "1", sys.executable, "-c", "print('ran')", "--help",
               module="neuralsync.integrations.wrap")
    assert done.returncode == 0, done.stderr
    assert "ran" in done.stdout


# ================================================================ recall --mode
def test_recall_mode_reaches_the_facade(tmp_path: Path) -> None:
    home = tmp_path / "store"
    assert cli(home, "remember", "alpha bravo charlie").returncode == 0
    text = cli(home, "--json", "recall", "--mode", "text", "zulu")
    semantic = cli(home, "--json", "recall", "--mode", "semantic", "zulu")
    assert text.returncode == 0 and json.loads(text.stdout) == []  # no word matches
    assert semantic.returncode == 0 and len(json.loads(semantic.stdout)) == 1  # nearest by meaning
    bad = cli(home, "recall", "--mode", "fuzzy", "x")
    assert bad.returncode == 2 and "--mode" in bad.stderr


def test_recall_mode_goes_through_the_running_server(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    sent: list[dict[str, Any]] = []

    def fake(home: Path, request: dict[str, Any]) -> list[Any]:
        sent.append(request)
        return []

    monkeypatch.setattr("neuralsync.cli.remote.recall_via_server", fake)
    assert main(["recall", "--mode", "semantic", "anything"]) == 0
    assert main(["recall", "anything"]) == 0
    capsys.readouterr()
    assert [r["mode"] for r in sent] == ["semantic", "hybrid"]


# ================================================================ completion
def test_bash_completion_is_a_valid_static_script(tmp_path: Path) -> None:
    done = cli(tmp_path / "store", "completion", "bash")
    assert done.returncode == 0, done.stderr
    assert "recall" in done.stdout and "--mode" in done.stdout and "completion" in done.stdout
    bash = shutil.which("bash")
    if bash:
        script = tmp_path / "neuralsync.bash"
        script.write_text(done.stdout)
        assert subprocess.run([bash, "-n", str(script)], capture_output=True, timeout=30).returncode == 0
    zsh = cli(tmp_path / "store", "completion", "zsh")
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef neuralsync")
    assert cli(tmp_path / "store", "completion", "fish").returncode == 2


# ================================================================ the config command
def test_config_command_shows_values_and_sources(tmp_path: Path) -> None:
    home = tmp_path / "store"
    _write_config(home, "pool_size_mb = 64\n")
    done = cli(home, "--json", "config", NEURALSYNC_MAX_TAGS="7")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["file"] == str(home / CONFIG_FILE_NAME) and shown["file_exists"] is True
    settings = shown["settings"]
    assert set(settings) == set(setting_kinds())
    assert settings["pool_size_mb"] == {"value": 64, "source": "file", "from": str(home / CONFIG_FILE_NAME)}
    assert settings["max_tags"] == {"value": 7, "source": "env", "from": "NEURALSYNC_MAX_TAGS"}
    assert settings["embedder"]["source"] == "env"  # NEURALSYNC_EMBEDDER, set by cli()
    assert settings["busy_timeout_ms"] == {"value": 10_000, "source": "default"}
    other = tmp_path / "other"
    readable = cli(home, "--home", str(other), "config")
    assert readable.returncode == 0
    assert f"config file: {other / CONFIG_FILE_NAME} (absent)" in readable.stdout
    assert "argument" in next(line for line in readable.stdout.splitlines() if line.startswith("base_path"))
    bad = cli(home, "config", NEURALSYNC_MAX_TAGS="lots")
    assert bad.returncode == 1 and "$NEURALSYNC_MAX_TAGS must be an integer" in bad.stderr



# ================================================================ config file and environment
def _write_config(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / CONFIG_FILE_NAME).write_text(text)


def test_every_setting_has_a_variable_and_a_kind() -> None:
    kinds = setting_kinds()
    assert env_name("base_path") == "NEURALSYNC_HOME"
    assert env_name("pool_size_mb") == "NEURALSYNC_POOL_SIZE_MB"
    assert set(kinds.values()) <= {"bool", "int", "float", "str", "optional_str", "str_list", "table", "path"}
    assert kinds["redact_secrets"] == "bool" and kinds["extra_secret_patterns"] == "str_list"


def test_precedence_argument_over_env_over_file_over_default(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "store"
    _write_config(home, 'pool_size_mb = 64\ncache_size_mb = 32\nmax_tags = 10\ndurability = "full"\n'
                        'extra_secret_patterns = ["corp-[0-9]{6}"]\n[scope_merge_strategies]\nwork = "off"\n')
    monkeypatch.setenv("NEURALSYNC_HOME", str(home))
    monkeypatch.setenv("NEURALSYNC_CACHE_SIZE_MB", "16")
    monkeypatch.setenv("NEURALSYNC_MAX_TAGS", "20")
    monkeypatch.setenv("NEURALSYNC_REDACT_SECRETS", "no")
    config, sources = resolve(None, max_tags=30)
    assert (config.pool_size_mb, sources["pool_size_mb"].source) == (64, "file")
    assert (config.cache_size_mb, sources["cache_size_mb"].source) == (16, "env")
    assert sources["cache_size_mb"].origin == "NEURALSYNC_CACHE_SIZE_MB"
    assert (config.max_tags, sources["max_tags"].source) == (30, "argument")
    assert (config.busy_timeout_ms, sources["busy_timeout_ms"].source) == (10_000, "default")
    assert config.redact_secrets is False and config.durability == "full"
    assert config.extra_secret_patterns == ("corp-[0-9]{6}",)
    assert config.scope_merge_strategies == {"work": "off"}
    assert sources["base_path"].source == "env"
    # The old call shape still works, and reads the same sources.
    legacy = MemoryConfig.from_env(str(home), monitor_publish_s=0)
    assert legacy.pool_size_mb == 64 and legacy.monitor_publish_s == 0 and legacy.cache_size_mb == 16
    assert resolve(str(home))[1]["base_path"].source == "argument"


def test_old_variable_names_still_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURALSYNC_MERGE", "off")
    assert MemoryConfig.from_env().merge_strategy == "off"
    monkeypatch.setenv("NEURALSYNC_MERGE_STRATEGY", "manual")
    assert MemoryConfig.from_env().merge_strategy == "manual"  # the setting's own name wins


@pytest.mark.parametrize(("var", "value", "expected"), [
    ("NEURALSYNC_MAX_TAGS", "many", "$NEURALSYNC_MAX_TAGS must be an integer, not 'many'"),
    ("NEURALSYNC_SEMANTIC_FLOOR", "high", "$NEURALSYNC_SEMANTIC_FLOOR must be a number"),
    ("NEURALSYNC_DEDUPE", "maybe", "$NEURALSYNC_DEDUPE must be true or false"),
    ("NEURALSYNC_EXTRA_SECRET_PATTERNS", "corp-.*", "$NEURALSYNC_EXTRA_SECRET_PATTERNS must be JSON"),
    ("NEURALSYNC_EXTRA_SECRET_PATTERNS", '["("]', "is not a regular expression"),
    ("NEURALSYNC_DURABILITY", "sometimes", "durability must be one of ('normal', 'full'), not 'sometimes' "
                                           "(set by $NEURALSYNC_DURABILITY)"),
])
def test_a_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=None) as caught:
        MemoryConfig.from_env()
    assert expected in str(caught.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("pool_size = 64\n", "unknown setting 'pool_size'"),
    ('pool_size_mb = "64"\n', "pool_size_mb must be an integer, not '64'"),
    ("redact_secrets = 1\n", "redact_secrets must be true or false"),
    ('base_path = "/elsewhere"\n', "base_path cannot be set"),
    ("pool_size_mb = [\n", "is not valid TOML"),
    ('durability = "sometimes"\n', "(set in "),
])
def test_a_bad_file_key_is_named(isolated_home: Path, text: str, expected: str) -> None:
    _write_config(isolated_home, text)
    with pytest.raises(ConfigError) as caught:
        MemoryConfig.from_env()
    assert expected in str(caught.value)
    assert CONFIG_FILE_NAME in str(caught.value)


def test_the_store_uses_the_file(make_api: Any, tmp_path: Path) -> None:
    home = tmp_path / "store"
    _write_config(home, 'extra_secret_patterns = ["corp-[0-9]{6}"]\n')
    with UnifiedMemoryAPI(MemoryConfig.from_env(str(home))) as api:
        memory = api.get(api.remember("badge corp-123456 issued"))
    assert memory.content == "badge [REDACTED:custom_0] issued"


# ================================================================ server log
def test_server_log_file_is_private_and_rotates(tmp_path: Path) -> None:
    from neuralsync.server.run import LOG_FILE, PrivateRotatingFileHandler, log_to_file

    config = MemoryConfig(base_path=str(tmp_path / "store"))
    handler = log_to_file(config)
    try:
        logging.getLogger("neuralsync.test").warning("hello log")
        handler.flush()
        path = config.home / "logs" / LOG_FILE
        assert "hello log" in path.read_text()
        assert mode_of(path) == 0o600 and mode_of(path.parent) == 0o700
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    small = PrivateRotatingFileHandler(tmp_path / "r.log", maxBytes=200, backupCount=2)
    try:
        for i in range(20):
            small.emit(logging.makeLogRecord({"msg": f"line {i} " + "x" * 40}))
    finally:
        small.close()
    files = sorted(tmp_path.glob("r.log*"))
    assert [f.name for f in files] == ["r.log", "r.log.1", "r.log.2"]  # bounded
    assert all(mode_of(f) == 0o600 for f in files)


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
