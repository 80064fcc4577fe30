"""The real agent CLIs run our hooks (issue 16, item 4): Claude Code from npm, offline but for a fake
model on 127.0.0.1, after ``neuralsync install claude-code``.

The CLI comes from ``$NEURALSYNC_AGENT_CLIS`` (an npm prefix; ``.ci/run`` installs
``@anthropic-ai/claude-code`` there), else ``claude`` on PATH; without it the test skips and says
why (the reason ``.ci/run`` left when its install failed, if any).
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
REPLY = "Noted.\n@remember: kind=decision scope=zephyr Rollbacks go through the same pipeline"
OFFLINE = {"DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_BUG_COMMAND": "1"}


def _claude() -> str:
    prefix = os.environ.get(CLIS_ENV)
    if prefix:
        found = Path(prefix) / "node_modules" / ".bin" / "claude"
        if found.exists():
            return str(found)
        reason = Path(prefix) / "install-failed.txt"
        if reason.exists():
            pytest.skip(f"Claude Code could not be installed from npm: {reason.read_text().strip()[-300:]}")
    on_path = shutil.which("claude")
    if on_path is None:
        pytest.skip(f"Claude Code is not installed (set {CLIS_ENV} to an npm prefix holding "
                    "@anthropic-ai/claude-code; .ci/run does)")
    return on_path


def test_claude_code_runs_the_hooks_install_registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    claude = _claude()
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
    assert run_cli("install", "claude-code") == 0  # the MCP server in ~/.claude.json, hooks in settings.json
    prompt = "Which integration test is flaky?"
    # What our hook answers at session start, computed the way Claude Code will ask for it.
    out = io.StringIO()
    hooks.run_hook("claude-code", stdin=io.StringIO(json.dumps({"hook_event_name": "SessionStart",
                                                                "cwd": str(project)})), stdout=out)
    start_context = json.loads(out.getvalue())["hookSpecificOutput"]["additionalContext"]

    with FakeModel(reply=REPLY) as model:
        env = {**os.environ, **OFFLINE, "ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-ant-test-fake"}
        done = subprocess.run([claude, "-p", prompt], cwd=project, env=env, capture_output=True, text=True,
                              timeout=180, stdin=subprocess.DEVNULL)
        sent = model.sent_strings()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Noted." in done.stdout  # the fake model answered
    assert start_context in sent  # the SessionStart hook's output, as the model received it
    assert PERSONA in sent and PROJECT_FACT in sent  # persona and the folder's memories
    assert PROMPT_FACT in sent  # the prompt's memory (UserPromptSubmit)
    assert UNRELATED not in sent
    assert not (store / "logs" / hooks.LOG_FILE).exists()  # no hook failed
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(store))) as api:  # the Stop hook captured the answer's line
        [captured] = api.recall("Rollbacks", mode="text", scope="zephyr")
    assert (captured.kind, captured.tool) == ("decision", "claude-code")
