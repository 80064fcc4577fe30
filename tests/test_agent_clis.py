"""The real agent CLIs run our hooks (issue 16, item 4): Claude Code, Gemini CLI and Codex CLI from npm,
offline but for a fake model on 127.0.0.1, after ``neuralsync install TOOL``.

The CLIs come from ``$NEURALSYNC_AGENT_CLIS`` (an npm prefix; ``.ci/run`` installs
``@anthropic-ai/claude-code``, ``@google/gemini-cli`` and ``@openai/codex`` there), else from PATH;
without one its test skips and says why (the reason ``.ci/run`` left when its install failed, if any).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from _fake_model import FakeModel

from neuralsync.config import MemoryConfig
from neuralsync.integrations import hooks
from neuralsync.integrations.install import run_cli
from neuralsync.unified_memory_api import UnifiedMemoryAPI

CLIS_ENV = "NEURALSYNC_AGENT_CLIS"
PERSONA = "Pragmatic Rust and Python engineer who wants short answers."
PROJECT_FACT = "zephyr deploys through the blue-green pipeline on Fridays"
PROMPT_FACT = "The flaky integration test is test_payment_refund; rerun it with --count=3"
UNRELATED = "The garden needs watering on Tuesdays"
PROMPT = "Which integration test is flaky?"
REPLY = "Noted.\n@remember: kind=decision scope=zephyr Rollbacks go through the same pipeline"
OFFLINE = {"DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_BUG_COMMAND": "1"}


def _cli(binary: str, package: str) -> str:
    prefix = os.environ.get(CLIS_ENV)
    if prefix:
        found = Path(prefix) / "node_modules" / ".bin" / binary
        if found.exists():
            return str(found)
        reason = Path(prefix) / f"install-failed-{binary}.txt"
        if reason.exists():
            pytest.skip(f"{package} could not be installed from npm: {reason.read_text().strip()[-300:]}")
    on_path = shutil.which(binary)
    if on_path is None:
        pytest.skip(f"{binary} is not installed (set {CLIS_ENV} to an npm prefix holding {package}; .ci/run does)")
    return on_path


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """(home, store, project): a scratch $HOME, a store with a persona and memories, a repository."""
    home, store, project = tmp_path / "home", tmp_path / "store", tmp_path / "work" / "zephyr"
    home.mkdir()
    (project / ".git").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NEURALSYNC_HOME", str(store))
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(store))) as api:
        api.set_persona(PERSONA)
        api.remember(PROJECT_FACT, scope="zephyr")
        api.remember(PROMPT_FACT, scope="global")
        api.remember(UNRELATED, scope="garden")
    return home, store, project


def _start_context(tool: str, project: Path) -> str:
    """What our hook answers at session start, computed the way the tool will ask for it."""
    out = io.StringIO()
    hooks.run_hook(tool, stdin=io.StringIO(json.dumps({"hook_event_name": "SessionStart", "cwd": str(project)})),
                   stdout=out)
    return str(json.loads(out.getvalue())["hookSpecificOutput"]["additionalContext"])


def _assert_received_and_captured(sent: str, start_context: str, store: Path, tool: str) -> None:
    assert start_context in sent  # the SessionStart hook's output, as the model received it
    assert PERSONA in sent and PROJECT_FACT in sent  # persona and the folder's memories
    assert PROMPT_FACT in sent  # the prompt's memory (UserPromptSubmit / BeforeAgent)
    assert UNRELATED not in sent
    assert not (store / "logs" / hooks.LOG_FILE).exists()  # no hook failed
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(store))) as api:  # the end-of-turn hook captured the line
        [captured] = api.recall("Rollbacks", mode="text", scope="zephyr")
    assert (captured.kind, captured.tool) == ("decision", tool)


def test_claude_code_runs_the_hooks_install_registered(world: tuple[Path, Path, Path]) -> None:
    claude = _cli("claude", "@anthropic-ai/claude-code")
    _home, store, project = world
    assert run_cli("install", "claude-code") == 0  # the MCP server in ~/.claude.json, hooks in settings.json
    start_context = _start_context("claude-code", project)
    with FakeModel(reply=REPLY) as model:
        env = {**os.environ, **OFFLINE, "ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-ant-test-fake"}
        done = subprocess.run([claude, "-p", PROMPT], cwd=project, env=env, capture_output=True, text=True,
                              timeout=180, stdin=subprocess.DEVNULL)
        sent = model.sent_strings()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Noted." in done.stdout  # the fake model answered
    _assert_received_and_captured(sent, start_context, store, "claude-code")


# The user's own settings, as Gemini CLI needs them offline: an API key, no telemetry or update checks.
GEMINI_SETTINGS = """{
  // mine
  "security": { "auth": { "selectedType": "gemini-api-key" } },
  "general": { "enableAutoUpdate": false, "enableAutoUpdateNotification": false },
  "privacy": { "usageStatisticsEnabled": false },
  "telemetry": { "enabled": false }
}
"""


def test_gemini_cli_runs_the_hooks_install_registered(world: tuple[Path, Path, Path]) -> None:
    gemini = _cli("gemini", "@google/gemini-cli")
    home, store, project = world
    settings = home / ".gemini" / "settings.json"
    settings.parent.mkdir()
    settings.write_text(GEMINI_SETTINGS)
    assert run_cli("install", "gemini") == 0  # the MCP server and the hooks, in the one settings.json
    start_context = _start_context("gemini", project)
    with FakeModel(reply=REPLY) as model:
        env = {**os.environ, "GOOGLE_GEMINI_BASE_URL": model.url, "GEMINI_API_KEY": "fake-key",
               "GEMINI_CLI_TRUST_WORKSPACE": "true", "GEMINI_CLI_NO_RELAUNCH": "true", "NO_BROWSER": "1"}
        # -m: a named model skips the router, whose classifier call wants JSON the fake does not give.
        done = subprocess.run([gemini, "-m", "gemini-2.5-flash", "-p", PROMPT], cwd=project, env=env,
                              capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        sent = model.sent_strings()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Noted." in done.stdout
    _assert_received_and_captured(sent, start_context, store, "gemini")
    assert run_cli("uninstall", "gemini") == 0
    assert settings.read_text() == GEMINI_SETTINGS  # back byte for byte


def _codex_argv(codex: str, url: str) -> list[str]:
    """``codex exec`` against the fake model: a provider of our own (plain HTTPS transport, no websocket)."""
    provider = {"name": '"fake"', "base_url": f'"{url}/v1"', "env_key": '"OPENAI_API_KEY"',
                "wire_api": '"responses"', "supports_websockets": "false"}
    options = [f"model_providers.fake.{key}={value}" for key, value in provider.items()]
    return [codex, "exec", "-c", 'model_provider="fake"', *(x for o in options for x in ("-c", o)), "-m", "gpt-5",
            "--skip-git-repo-check"]


def test_codex_cli_runs_the_hooks_install_registered(world: tuple[Path, Path, Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    codex = _cli("codex", "@openai/codex")
    home, store, project = world
    monkeypatch.setenv("CODEX_HOME", str(home / ".codex"))
    assert run_cli("install", "codex") == 0  # the MCP server in config.toml, the hooks in hooks.json
    start_context = _start_context("codex", project)
    with FakeModel(reply=REPLY) as model:
        env = {**os.environ, "OPENAI_API_KEY": "sk-test-fake"}
        # Codex runs a new hook only once a person has trusted it (/hooks in its TUI); a test is no person.
        done = subprocess.run([*_codex_argv(codex, model.url), "--dangerously-bypass-hook-trust", PROMPT],
                              cwd=project, env=env, capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL)
        sent = model.sent_strings()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Noted." in done.stdout
    _assert_received_and_captured(sent, start_context, store, "codex")


def test_codex_ns_hands_the_preamble_to_the_real_codex(world: tuple[Path, Path, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """What codex-ns passes in a terminal (``-c developer_instructions=...``) reaches the model."""
    from neuralsync.integrations.wrap import context_args

    codex = _cli("codex", "@openai/codex")
    home, _store, project = world
    monkeypatch.setenv("CODEX_HOME", str(home / ".codex"))
    (home / ".codex").mkdir()
    preamble = f"Persona: {PERSONA}\n\n[M1] (fact, zephyr, conf=0.8) {PROJECT_FACT}\n"
    with FakeModel(reply=REPLY) as model:
        done = subprocess.run([*_codex_argv(codex, model.url), *context_args("codex", preamble), PROMPT],
                              cwd=project, env={**os.environ, "OPENAI_API_KEY": "sk-test-fake"},
                              capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        sent = model.sent_strings()
    assert done.returncode == 0, done.stderr[-2000:]
    assert preamble.strip() in sent
