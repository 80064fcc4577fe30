"""``neuralsync install|uninstall``: real-shaped config files edited in ``tmp_path``."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from neuralsync.errors import DependencyMissing, InvalidInput
from neuralsync.integrations import jsonctext
from neuralsync.integrations.install import (
    BACKUP_SUFFIX,
    InstallError,
    config_file,
    install,
    run_cli,
    server_entry,
    uninstall,
)

COMMAND = ["/opt/neuralsync/bin/neuralsync", "mcp"]

CLAUDE: dict[str, Any] = {
    "numStartups": 42,
    "installMethod": "npm",
    "autoUpdates": True,
    "tipsHistory": {"new-user-warmup": 7, "memory-command": 3},
    "userID": "9f1c0a",
    "projects": {
        "/home/zoë/café-app": {
            "allowedTools": [],
            "history": [{"display": "fix ünïcode ✓ 日本語", "pastedContents": {}}],
            "mcpServers": {},
            "lastCost": 0.1234,
            "lastTotalInputTokens": 12345678901234567,
        },
    },
    "mcpServers": {
        "github": {"type": "stdio", "command": "npx", "args": ["-y", "@modelcontextprotocol/server-github"],
                   "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_example"}},
        "sentry": {"type": "http", "url": "https://mcp.sentry.dev/mcp"},
    },
    "hasCompletedOnboarding": True,
    "lastReleaseNotesSeen": "2.0.14",
}

GEMINI: dict[str, Any] = {
    "theme": "GitHub",
    "selectedAuthType": "oauth-personal",
    "general": {"vimMode": True, "preferredEditor": "code"},
    "ui": {"hideBanner": True, "customWittyPhrases": ["Thinking…", "¿Qué pasa?"]},
    "contextFileName": ["GEMINI.md", "AGENTS.md"],
}

CODEX = '''\
# Codex configuration — personal (ünïcode kept)
model = "gpt-5-codex"
model_reasoning_effort = "high"   # trailing comment stays
approval_policy = "on-request"

[model_providers.azure]
name = "Azure"
base_url = "https://example.openai.azure.com/openai"
env_key = "AZURE_OPENAI_API_KEY"

# Servers I use every day
[mcp_servers.other]
command = "npx"
args = [
  "-y",
  "@example/server", # why: pinned by the team
]
startup_timeout_sec = 20

[mcp_servers.other.env]
API_KEY = "sk-example"

# Profiles below
[profiles.fast]
model = "gpt-5-mini"
matrix = [
  [1, 2],
  [3, 4],
]
notes = """
[mcp_servers.neuralsync]
a string that only looks like a table
"""
'''

ORIGINALS = {  # ~/.claude.json has no final newline, as Claude Code writes it
    "claude-code": (".claude.json", json.dumps(CLAUDE, indent=2, ensure_ascii=False)),
    "gemini": (".gemini/settings.json", json.dumps(GEMINI, indent=2, ensure_ascii=False) + "\n"),
    "codex": (".codex/config.toml", CODEX),
}


def parse(tool: str, text: str) -> dict[str, Any]:
    return tomllib.loads(text) if tool == "codex" else json.loads(text)


def servers(tool: str, doc: dict[str, Any]) -> dict[str, Any]:
    return doc.get("mcp_servers" if tool == "codex" else "mcpServers", {})


def without_ours(tool: str, doc: dict[str, Any]) -> dict[str, Any]:
    key = "mcp_servers" if tool == "codex" else "mcpServers"
    rest = {k: v for k, v in servers(tool, doc).items() if k != "neuralsync"}
    out = {k: v for k, v in doc.items() if k != key}
    return {**out, key: rest} if rest else out


@pytest.fixture(autouse=True)
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CODEX_HOME", raising=False)
    return home


def write_original(home: Path, tool: str, mode: int = 0o640) -> Path:
    relative, text = ORIGINALS[tool]
    path = home / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    path.chmod(mode)
    return path


@pytest.mark.parametrize("tool", ["claude-code", "codex", "gemini"])
def test_install_reinstall_uninstall_round_trip(tool: str, fake_home: Path) -> None:
    path = write_original(fake_home, tool)
    original = path.read_bytes()
    store_home = os.environ["NEURALSYNC_HOME"]

    result = install(tool, command=COMMAND)
    assert (result.action, result.changed, result.path) == ("installed", True, path)
    doc = parse(tool, path.read_text("utf-8"))
    expected = {"command": COMMAND[0], "args": ["mcp"], "env": {"NEURALSYNC_HOME": store_home}}
    if tool == "claude-code":
        expected = {"type": "stdio", **expected}
    assert servers(tool, doc)["neuralsync"] == expected
    assert without_ours(tool, doc) == parse(tool, original.decode())  # every other setting intact
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    assert result.backup == backup and backup.read_bytes() == original
    installed = path.read_bytes()

    again = install(tool, command=COMMAND)
    assert (again.action, again.changed) == ("already-installed", False)
    assert "already installed" in again.message
    assert path.read_bytes() == installed

    preview = uninstall(tool, dry_run=True)
    assert preview.action == "uninstalled" and "-" in preview.diff and "neuralsync" in preview.diff
    assert path.read_bytes() == installed

    removed = uninstall(tool)
    assert removed.action == "uninstalled"
    assert path.read_bytes() == original  # byte-identical to before install
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert uninstall(tool).action == "not-installed"
    assert sorted(p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")) == []


def test_codex_edit_is_surgical(fake_home: Path) -> None:
    path = write_original(fake_home, "codex")
    install("codex", command=COMMAND)
    text = path.read_text("utf-8")
    block = ('[mcp_servers.neuralsync]\ncommand = "/opt/neuralsync/bin/neuralsync"\nargs = ["mcp"]\n'
             f'env = {{ NEURALSYNC_HOME = {json.dumps(os.environ["NEURALSYNC_HOME"])} }}\n')
    # Grouped after the other server's tables, before the comment that belongs to the next table.
    assert text == CODEX.replace("\n# Profiles below", "\n" + block + "\n# Profiles below")


@pytest.mark.parametrize("tool", ["claude-code", "codex", "gemini"])
def test_dry_run_shows_diff_and_writes_nothing(tool: str, fake_home: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = write_original(fake_home, tool)
    original = path.read_bytes()
    result = install(tool, dry_run=True, command=COMMAND)
    assert result.dry_run and result.action == "installed" and result.backup is None
    assert result.diff.startswith(f"--- {path}\n+++ {path}")
    assert any(line.startswith("+") and "neuralsync" in line for line in result.diff.splitlines())
    assert path.read_bytes() == original
    assert not path.with_name(path.name + BACKUP_SUFFIX).exists()

    assert run_cli("install", tool, dry_run=True) == 0
    out = capsys.readouterr().out
    assert "@@" in out and "dry run: would install" in out
    assert path.read_bytes() == original


@pytest.mark.parametrize(("tool", "bad"), [
    ("claude-code", '{"numStartups": 3,,}'),
    ("gemini", "{'theme': 'single quotes are not JSON'}"),
    ("gemini", '["an", "array"]'),
    ("gemini", '{"mcpServers": ["not", "an", "object"]}'),
    ("codex", 'model = "gpt-5"\n[mcp_servers.other\ncommand = "x"\n'),
    ("codex", 'mcp_servers = "not a table"\n'),
])
def test_invalid_existing_config_is_refused_untouched(tool: str, bad: str, fake_home: Path) -> None:
    path = fake_home / ORIGINALS[tool][0]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(bad, "utf-8")
    with pytest.raises(InstallError, match="nothing was changed"):
        install(tool, command=COMMAND)
    with pytest.raises(InstallError):
        uninstall(tool)
    assert path.read_text("utf-8") == bad
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


@pytest.mark.parametrize("tool", ["claude-code", "codex", "gemini"])
def test_missing_file_and_directories_are_created_private(tool: str, fake_home: Path) -> None:
    result = install(tool, command=COMMAND)
    path = fake_home / ORIGINALS[tool][0]
    assert (result.path, result.action, result.backup) == (path, "installed", None)
    if path.parent != fake_home:
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert servers(tool, parse(tool, path.read_text()))["neuralsync"]["command"] == COMMAND[0]
    assert install(tool, command=COMMAND).action == "already-installed"
    assert uninstall(tool).note == "the file install created is deleted"
    assert not path.exists() and sorted(p.name for p in path.parent.iterdir()) == []  # as before: no file


def test_update_keeps_user_keys_and_first_backup(fake_home: Path) -> None:
    path = write_original(fake_home, "gemini")
    original = path.read_bytes()
    install("gemini", command=["/old/neuralsync", "mcp"])
    doc = json.loads(path.read_text())
    doc["mcpServers"]["neuralsync"]["trust"] = True  # the user's own tweak to our entry
    path.write_text(json.dumps(doc, indent=2) + "\n")

    result = install("gemini", command=COMMAND)
    assert result.action == "updated"
    entry = json.loads(path.read_text())["mcpServers"]["neuralsync"]
    assert entry["command"] == COMMAND[0] and entry["trust"] is True
    assert path.with_name(path.name + BACKUP_SUFFIX).read_bytes() == original  # not the modified file


def test_codex_existing_table_and_env_subtable_are_replaced(fake_home: Path) -> None:
    path = fake_home / ".codex" / "config.toml"
    path.parent.mkdir()
    path.write_text('model = "o3"\n\n[mcp_servers.neuralsync]\ncommand = "/old"\nargs = ["mcp"]\n'
                    'tool_timeout_sec = 30\n\n[mcp_servers.neuralsync.env]\nNEURALSYNC_HOME = "/old/home"\n\n'
                    '[history]\npersistence = "none"\n')
    assert install("codex", command=COMMAND).action == "updated"
    doc = tomllib.loads(path.read_text())
    assert doc["mcp_servers"]["neuralsync"] == {"command": COMMAND[0], "args": ["mcp"], "tool_timeout_sec": 30,
                                                "env": {"NEURALSYNC_HOME": os.environ["NEURALSYNC_HOME"]}}
    assert doc["model"] == "o3" and doc["history"] == {"persistence": "none"}
    uninstall("codex")
    assert path.read_text() == 'model = "o3"\n\n[history]\npersistence = "none"\n'


def test_codex_inline_definition_is_refused(fake_home: Path) -> None:
    path = fake_home / ".codex" / "config.toml"
    path.parent.mkdir()
    text = '[mcp_servers]\nneuralsync = { command = "/old", args = [] }\n'
    path.write_text(text)
    with pytest.raises(InstallError, match="by hand"):
        install("codex", command=COMMAND)
    assert path.read_text() == text


def test_compact_json_keeps_every_value(fake_home: Path) -> None:
    path = fake_home / ".claude.json"
    path.write_text(json.dumps(CLAUDE, separators=(",", ":")))
    install("claude-code", command=COMMAND)
    uninstall("claude-code")
    assert json.loads(path.read_text()) == CLAUDE  # reformatted with indent 2, values equal


def test_symlinked_config_stays_a_symlink(fake_home: Path, tmp_path: Path) -> None:
    target = tmp_path / "dotfiles" / "settings.json"
    target.parent.mkdir()
    target.write_text(json.dumps(GEMINI, indent=2) + "\n")
    link = fake_home / ".gemini" / "settings.json"
    link.parent.mkdir()
    link.symlink_to(target)
    install("gemini", command=COMMAND)
    assert link.is_symlink() and "neuralsync" in json.loads(target.read_text())["mcpServers"]


def test_env_only_when_neuralsync_home_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEURALSYNC_HOME")
    assert server_entry("gemini", COMMAND) == {"command": COMMAND[0], "args": ["mcp"]}
    assert server_entry("codex", COMMAND) == {"command": COMMAND[0], "args": ["mcp"]}
    assert server_entry("claude-code", COMMAND)["env"] == {}


def test_default_command_prefers_the_console_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "neuralsync"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    entry = server_entry("codex")
    assert (entry["command"], entry["args"]) == (str(script), ["mcp"])
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    entry = server_entry("codex")
    assert (entry["command"], entry["args"]) == (sys.executable, ["-m", "neuralsync.cli", "mcp"])


def test_paths_and_scopes(fake_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_file("claude-code") == fake_home / ".claude.json"
    monkeypatch.setenv("CODEX_HOME", str(tmp_path / "codex-home"))
    assert config_file("codex") == tmp_path / "codex-home" / "config.toml"
    monkeypatch.chdir(tmp_path)
    assert install("claude-code", scope="project", command=COMMAND).path == tmp_path / ".mcp.json"
    assert "neuralsync" in json.loads((tmp_path / ".mcp.json").read_text())["mcpServers"]
    with pytest.raises(InvalidInput):
        install("cursor")
    with pytest.raises(InvalidInput):
        install("gemini", scope="system")


# ------------------------------------------------------------------ the user's file kept as it was (issue 16)
JSONC = """// Gemini settings, hand-edited
{
\t"theme": "GitHub", /* the dark one hurts */
\t"general": {
\t\t\t"vimMode": true, // odd indentation on purpose
\t\t\t"url": "http://example.com/a//b", "note": "/* not a comment */"
\t},
\t"mcpServers": {
\t\t"other": { "command": "npx", "args": ["-y", "other"] } // keep me
\t}
}
"""
CLAUDE_ODD = '{\r\n   "numStartups": 3,\r\n   /* block\r\n      comment */\r\n   "projects": {}\r\n}'
CODEX_ODD = """# top comment
model = "o3"   # why
  [history]   # indented header
    persistence = "none"
"""
LAYOUTS = {
    "gemini": (".gemini/settings.json", JSONC),
    "claude-code": (".claude.json", CLAUDE_ODD),
    "codex": (".codex/config.toml", CODEX_ODD),
}


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("tool", ["claude-code", "codex", "gemini"])
def test_round_trip_with_comments_and_odd_indentation_is_byte_identical(tool: str, fake_home: Path) -> None:
    relative, text = LAYOUTS[tool]
    path = fake_home / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    install(tool, command=COMMAND)
    installed = path.read_text("utf-8")
    kept = {line.replace(",", "") for line in installed.splitlines()}  # the last member before ours gains a comma
    for line in text.splitlines():
        assert line.replace(",", "") in kept, line  # every line kept: comments, indentation, order
    assert _files(path.parent).count(path.name + BACKUP_SUFFIX) == 1
    install(tool, command=["/moved/neuralsync", "mcp"])  # an update: still one backup, the original
    assert path.with_name(path.name + BACKUP_SUFFIX).read_bytes() == text.encode()
    uninstall(tool)
    assert path.read_bytes() == text.encode()
    assert path.name + BACKUP_SUFFIX not in _files(path.parent)  # the backup goes when uninstall restores


@pytest.mark.parametrize("tool", ["claude-code", "codex", "gemini"])
def test_uninstall_after_other_edits_cuts_only_our_entry(tool: str, fake_home: Path) -> None:
    """Settings changed since install: the backup is stale, so our entry alone is cut, the rest byte for byte."""
    relative, text = LAYOUTS[tool]
    path = fake_home / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    install(tool, command=COMMAND)
    old, new = {"gemini": ('"GitHub"', '"Dracula"'), "claude-code": ("3", "4"), "codex": ('"o3"', '"o4"')}[tool]
    path.write_bytes(path.read_bytes().replace(old.encode(), new.encode(), 1))
    assert uninstall(tool).action == "uninstalled"
    assert path.read_bytes() == text.replace(old, new, 1).encode()
    assert path.name + BACKUP_SUFFIX not in _files(path.parent)


@pytest.mark.parametrize("tool", ["claude-code", "gemini"])
def test_a_key_install_created_is_removed_and_the_rest_left_byte_identical(tool: str, fake_home: Path) -> None:
    path = fake_home / ORIGINALS[tool][0]
    path.parent.mkdir(parents=True, exist_ok=True)
    text = '{\n    "theme": "x", // mine\n    "n": [1, 2]\n}\n'
    path.write_text(text)
    install(tool, command=COMMAND)
    assert '"mcpServers": {\n        "neuralsync": {' in path.read_text()  # the file's own four spaces
    path.with_name(path.name + BACKUP_SUFFIX).unlink()  # even without the backup
    uninstall(tool)
    assert path.read_text() == text


def test_jsonc_comments_are_blanked_outside_strings_only() -> None:
    text = '{"a": "x // y /* z */ \\" q", // c\n /* d\n e */ "b": 1}'
    blanked = jsonctext.blank_comments(text)
    assert len(blanked) == len(text) and blanked.count("\n") == text.count("\n")
    assert jsonctext.loads(text) == {"a": 'x // y /* z */ " q', "b": 1}
    with pytest.raises(ValueError, match="unterminated"):
        jsonctext.loads('{"a": 1 /* open')
    with pytest.raises(ValueError):
        jsonctext.loads("{'a': 1}")  # JSON with comments, not JSON5


@pytest.mark.parametrize(("text", "expected"), [
    ('{"a":1}', '{"a":1,"mcpServers":{"neuralsync":{"command":"c"}}}'),
    ('{ "a": 1 }', '{ "a": 1, "mcpServers": {"neuralsync": {"command": "c"}} }'),
    ('{}', '{\n  "mcpServers": {\n    "neuralsync": {\n      "command": "c"\n    }\n  }\n}'),
    ('{\n  "mcpServers": {\n    // none yet\n  }\n}\n',
     '{\n  "mcpServers": {\n    "neuralsync": {\n      "command": "c"\n    }\n    // none yet\n  }\n}\n'),
])
def test_jsonc_member_added_in_the_files_style_and_cut_back(text: str, expected: str) -> None:
    added = jsonctext.set_member(text, ("mcpServers", "neuralsync"), {"command": "c"})
    assert added == expected
    back = jsonctext.remove_member(added, ("mcpServers", "neuralsync"))
    if "mcpServers" not in jsonctext.loads(text):
        back = jsonctext.remove_member(back, ("mcpServers",))
    assert back == text


# ------------------------------------------------------------------ scopes, transports, refusal
@pytest.mark.parametrize("tool", ["claude-code", "codex", "gemini"])
def test_project_scope_writes_a_portable_command_and_no_machine_path(tool: str, fake_home: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    result = install(tool, scope="project")
    text = result.path.read_text()
    entry = servers(tool, parse(tool, text))["neuralsync"]
    assert (entry["command"], entry["args"]) == ("neuralsync", ["mcp"])
    assert not entry.get("env")
    for machine in (str(tmp_path), sys.executable, os.environ["NEURALSYNC_HOME"], str(fake_home)):
        assert machine not in text
    uninstall(tool, scope="project")
    assert not result.path.exists()


@pytest.mark.parametrize("tool", ["claude-code", "codex", "gemini"])
def test_http_transport_with_its_header(tool: str, fake_home: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    url = "http://127.0.0.1:9999/mcp"
    user = install(tool, transport="http", url=url, token="tok-123")
    entry = servers(tool, parse(tool, user.path.read_text()))["neuralsync"]
    expected: dict[str, Any] = {
        "claude-code": {"type": "http", "url": url, "headers": {"Authorization": "Bearer tok-123"}},
        "gemini": {"httpUrl": url, "headers": {"Authorization": "Bearer tok-123"}},
        "codex": {"url": url, "bearer_token_env_var": "NEURALSYNC_TOKEN"},  # Codex takes no token in the file
    }[tool]
    assert entry == expected
    assert ("NEURALSYNC_TOKEN" in user.message) == (tool == "codex")
    assert install(tool, command=COMMAND).action == "updated"  # back to stdio: the http keys go
    entry = servers(tool, parse(tool, user.path.read_text()))["neuralsync"]
    assert "url" not in entry and "httpUrl" not in entry and "headers" not in entry
    monkeypatch.chdir(tmp_path)
    shared = install(tool, scope="project", transport="http", token="tok-123")
    text = shared.path.read_text()
    assert "tok-123" not in text and "NEURALSYNC_TOKEN" in text and "http://127.0.0.1:8374/mcp" in text
    with pytest.raises(InvalidInput, match="transport"):
        install(tool, transport="sse")


def test_install_refuses_when_the_server_could_not_start(fake_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "mcp" or n.startswith("mcp.")] + ["mcp"]:
        monkeypatch.setitem(sys.modules, name, None)  # what an install without the [mcp] extra looks like
    monkeypatch.delitem(sys.modules, "neuralsync.mcp.server", raising=False)
    for tool in ("claude-code", "codex", "gemini"):
        with pytest.raises(DependencyMissing, match=r"pip install 'neuralsync\[mcp\]'"):
            run_cli("install", tool)
    assert _files(fake_home) == []  # nothing written


def test_cli_install_without_the_mcp_extra_exits_with_one_line(fake_home: Path, tmp_path: Path) -> None:
    import subprocess

    code = ("import builtins, sys\n"
            "real = builtins.__import__\n"
            "def fake(name, *a, **k):\n"
            "    if name == 'mcp' or name.startswith('mcp.'):\n"
            "        raise ModuleNotFoundError(\"No module named 'mcp'\")\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = fake\n"
            "from neuralsync.cli import main\n"
            "sys.exit(main(['install', 'gemini']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env={**os.environ, "HOME": str(fake_home)})
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "pip install 'neuralsync[mcp]'" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert _files(fake_home) == []


def test_a_dry_run_never_shows_the_token(fake_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("install", "gemini", dry_run=True, transport="http", token="tok-secret-9") == 0
    out = capsys.readouterr().out
    assert "Bearer <token>" in out and "tok-secret-9" not in out
    assert _files(fake_home) == []
