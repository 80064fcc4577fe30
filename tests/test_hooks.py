"""``neuralsync hook`` and the hook entries ``install`` writes (issue 16, item 4)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from neuralsync.config import MemoryConfig
from neuralsync.integrations import hookconfig, hooks, jsonctext
from neuralsync.integrations.install import (
    BACKUP_SUFFIX,
    install,
    install_hooks,
    run_cli,
    uninstall,
    uninstall_hooks,
)
from neuralsync.unified_memory_api import UnifiedMemoryAPI

PERSONA = "Terse senior Python engineer."


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store with a persona, project, global and unrelated memories; a repository folder ``acme``."""
    home = tmp_path / "store"
    monkeypatch.setenv("NEURALSYNC_HOME", str(home))
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(home))) as api:
        api.set_persona(PERSONA)
        api.remember("acme builds with make and tests with pytest", scope="acme")
        api.remember("Prefers tabs over spaces", scope="global")
        api.remember("The billing service retries webhooks three times", scope="billing")
    (tmp_path / "acme" / ".git").mkdir(parents=True)
    (tmp_path / "acme" / "src").mkdir()
    return home


def hook(tool: str, event: dict[str, Any] | str, budget: int | None = None) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    raw = event if isinstance(event, str) else json.dumps(event)
    code = hooks.run_hook(tool, budget=budget, stdin=io.StringIO(raw), stdout=out)
    [line] = out.getvalue().splitlines()  # exactly one JSON object, nothing else
    return code, json.loads(line)


def context(answer: dict[str, Any]) -> str:
    return str(answer["hookSpecificOutput"]["additionalContext"])


def test_session_start_gives_the_persona_and_the_folders_memories(store: Path, tmp_path: Path) -> None:
    code, answer = hook("claude-code", {"hook_event_name": "SessionStart", "source": "startup",
                                        "cwd": str(tmp_path / "acme" / "src")})
    assert code == 0 and answer["hookSpecificOutput"]["hookEventName"] == "SessionStart"
    text = context(answer)
    assert f"Persona: {PERSONA}" in text
    assert "acme builds with make" in text and "Prefers tabs" in text
    assert "billing" not in text  # another project's memory is not this folder's
    assert "@remember:" in text  # how to keep something


def test_each_prompt_gets_the_memories_relevant_to_it(store: Path, tmp_path: Path) -> None:
    _, answer = hook("gemini", {"hook_event_name": "BeforeAgent", "prompt": "why do webhooks retry?",
                                "cwd": str(tmp_path / "acme")})
    assert answer["hookSpecificOutput"]["hookEventName"] == "BeforeAgent"
    text = context(answer)
    assert "retries webhooks three times" in text
    assert "tabs" not in text and "Persona" not in text  # relevant ones only; the persona came at the start


def test_gemini_prompt_is_searched_without_the_context_it_carries(store: Path, tmp_path: Path) -> None:
    prompt = "<hook_context>Persona: x. Prefers tabs over spaces</hook_context>\n\nwhy do webhooks retry?"
    _, answer = hook("gemini", {"hook_event_name": "BeforeAgent", "prompt": prompt, "cwd": str(tmp_path / "acme")})
    text = context(answer)
    assert "retries webhooks" in text and "tabs" not in text


def test_context_stays_within_the_budget(store: Path, tmp_path: Path) -> None:
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(store))) as api:
        for i in range(30):
            api.remember(f"acme note {i}: " + "é long detail " * 200, scope="acme")
    _, answer = hook("codex", {"hook_event_name": "SessionStart", "cwd": str(tmp_path / "acme")}, budget=1500)
    text = context(answer)
    assert len(text.encode("utf-8")) <= 1500
    assert PERSONA in text and "acme note" in text and "…" in text  # long memories cut, several shown


def test_no_memory_and_unknown_events_answer_an_empty_object(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURALSYNC_HOME", str(tmp_path / "empty"))
    assert hook("claude-code", {"hook_event_name": "SessionStart", "cwd": str(tmp_path)}) == (0, {})
    assert hook("claude-code", {"hook_event_name": "PreToolUse", "tool_name": "Bash"}) == (0, {})


@pytest.mark.parametrize(("tool", "event"), [("claude-code", "not json"), ("nope", {"hook_event_name": "Stop"}),
                                             ("claude-code", "[1, 2]")])
def test_errors_never_fail_the_session_and_are_logged(tool: str, event: Any, store: Path) -> None:
    assert hook(tool, event) == (0, {})
    log = (store / "logs" / hooks.LOG_FILE).read_text()
    assert len(log.splitlines()) == 1 and (tool in log)


def test_a_broken_budget_setting_is_logged_not_fatal(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURALSYNC_HOOK_BUDGET_BYTES", "lots")
    assert hook("claude-code", {"hook_event_name": "SessionStart"}) == (0, {})
    assert "NEURALSYNC_HOOK_BUDGET_BYTES" in (store / "logs" / hooks.LOG_FILE).read_text()


def test_the_running_server_answers_the_recall(store: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With a server announced, the recall goes to it (hybrid, short timeout), not to a local search."""
    from neuralsync import discovery

    asked: list[tuple[dict[str, Any], float]] = []
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(store))) as api:
        served = api.recall("webhooks", top_k=1, mode="text")

    def fake(home: Path, request: dict[str, Any], timeout: float = 10.0) -> list[Any]:
        asked.append((request, timeout))
        return served

    monkeypatch.setattr(discovery, "recall_via_server", fake)
    monkeypatch.setattr(UnifiedMemoryAPI, "recall", lambda *a, **k: pytest.fail("searched locally"))
    _, answer = hook("claude-code", {"hook_event_name": "UserPromptSubmit", "prompt": "deploy the thing",
                                     "cwd": str(tmp_path / "acme")})
    assert "retries webhooks" in context(answer)  # what the server said, though the prompt does not match it
    assert asked and all(r["mode"] == "hybrid" and t <= hooks.SERVER_TIMEOUT_S for r, t in asked)


def test_end_of_turn_captures_remember_lines(store: Path) -> None:
    answer = "Done.\n@remember: kind=decision scope=acme Release tags are signed\nBye"
    assert hook("claude-code", {"hook_event_name": "Stop", "last_assistant_message": answer}) == (0, {})
    assert hook("gemini", {"hook_event_name": "AfterAgent", "prompt_response": "@remember: Uses uv"}) == (0, {})
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(store))) as api:
        [signed] = api.recall("signed", mode="text")
        [uv] = api.recall("uv", mode="text")
    assert (signed.kind, signed.scope, signed.tool, signed.source) == ("decision", "acme", "claude-code",
                                                                       "neuralsync hook")
    assert uv.tool == "gemini"


def test_session_end_reads_the_claude_transcript(store: Path, tmp_path: Path) -> None:
    transcript = tmp_path / "t.jsonl"
    lines = [{"type": "user", "message": {"role": "user", "content": "hi"}},
             {"type": "assistant", "message": {"role": "assistant", "content": [
                 {"type": "text", "text": "@remember: first turn fact"}]}},
             {"type": "user", "message": {"role": "user", "content": "more"}},
             {"type": "assistant", "message": {"role": "assistant", "content": [
                 {"type": "tool_use", "name": "Bash", "input": {"command": "echo '@remember: not text'"}},
                 {"type": "text", "text": "ok\n@remember: second turn fact"}]}}]
    transcript.write_text("\n".join(json.dumps(x) for x in lines) + "\n{torn")
    assert hooks.answer_text({"hook_event_name": "Stop", "transcript_path": str(transcript)}) == \
        "ok\n@remember: second turn fact"  # a turn's end: that turn only
    hook("claude-code", {"hook_event_name": "SessionEnd", "transcript_path": str(transcript)})
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(store))) as api:
        found = {m.content for m in api.recall("turn fact", mode="text")}
    assert found == {"first turn fact", "second turn fact"}


def test_the_cli_command_prints_json_only(store: Path, tmp_path: Path) -> None:
    event = json.dumps({"hook_event_name": "SessionStart", "cwd": str(tmp_path / "acme")})
    done = subprocess.run([sys.executable, "-m", "neuralsync", "hook", "--tool", "claude-code"], input=event,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NEURALSYNC_HOME": str(store)})
    assert done.returncode == 0 and PERSONA in json.loads(done.stdout)["hookSpecificOutput"]["additionalContext"]
    bad = subprocess.run([sys.executable, "-m", "neuralsync", "hook"], input="", capture_output=True, text=True,
                         timeout=60, env={**os.environ, "NEURALSYNC_HOME": str(store)})
    assert (bad.returncode, bad.stdout) == (0, "{}\n")  # a missing --tool must not block the user's prompt


# ------------------------------------------------------------------ install / uninstall of the hooks
COMMAND = ["/opt/neuralsync/bin/neuralsync", "mcp"]
OTHER_HOOKS = """{
   // my own hooks, hand-formatted
   "model": "opus",
   "hooks": {
      "SessionStart": [ { "hooks": [ { "type": "command", "command": "echo mine" } ] } ],
      "PreToolUse": [
         {"matcher": "Bash", "hooks": [{"type": "command", "command": "~/bin/guard"}]}
      ]
   }
}"""


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CODEX_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    return home


def _groups(path: Path, event: str) -> list[Any]:
    return list(jsonctext.loads(path.read_text())["hooks"][event])


@pytest.mark.parametrize(("tool", "relative"), [("claude-code", ".claude/settings.json"),
                                                ("codex", ".codex/hooks.json")])
@pytest.mark.parametrize("original", [None, "", OTHER_HOOKS, OTHER_HOOKS.replace("\n", "\r\n")])
def test_hooks_round_trip_byte_identical(tool: str, relative: str, original: str | None, fake_home: Path) -> None:
    path = fake_home / relative
    if original is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(original.encode())
    assert install_hooks(tool).action == "installed"
    start, prompt, end = hookconfig.EVENTS[tool]
    for event in (start, prompt, end):
        ours = _groups(path, event)[-1]["hooks"][0]
        assert ours["command"].endswith(f"hook --tool {tool}") and hookconfig.is_ours(ours)
    if original and "mine" in original:
        assert _groups(path, "SessionStart")[0]["hooks"][0]["command"] == "echo mine"  # theirs first, kept
        assert "// my own hooks, hand-formatted" in path.read_text()
    assert install_hooks(tool).action == "already-installed"
    assert uninstall_hooks(tool).action == "uninstalled"
    if original is None:
        assert not path.exists()
    else:
        assert path.read_bytes() == original.encode()
    assert not path.with_name(path.name + BACKUP_SUFFIX).exists()
    assert uninstall_hooks(tool).action == "not-installed"


def test_uninstall_after_the_user_edited_cuts_only_our_hooks(fake_home: Path) -> None:
    path = fake_home / ".claude" / "settings.json"
    path.parent.mkdir()
    path.write_text(OTHER_HOOKS)
    install_hooks("claude-code")
    path.write_text(path.read_text().replace('"opus"', '"sonnet"'))
    uninstall_hooks("claude-code")
    assert path.read_text() == OTHER_HOOKS.replace('"opus"', '"sonnet"')


def test_gemini_hooks_share_the_settings_file_with_the_mcp_server(fake_home: Path) -> None:
    path = fake_home / ".gemini" / "settings.json"
    path.parent.mkdir()
    original = '// mine\n{\n\t"theme": "GitHub",\n\t"hooks": {"BeforeTool": [{"hooks": [{"command": "x"}]}]}\n}\n'
    path.write_text(original)
    result = install("gemini", command=COMMAND, hooks=True)
    assert result.what == "MCP server and hooks" and "hooks" in result.message
    doc = jsonctext.loads(path.read_text())
    assert doc["mcpServers"]["neuralsync"]["command"] == COMMAND[0]
    start = doc["hooks"]["SessionStart"][0]["hooks"][0]
    assert start["name"] == "neuralsync" and start["timeout"] == 10_000  # Gemini counts milliseconds
    assert set(doc["hooks"]) == {"BeforeTool", "SessionStart", "BeforeAgent", "AfterAgent"}
    assert install("gemini", command=COMMAND, hooks=True).action == "already-installed"
    uninstall("gemini")
    assert path.read_text() == original


def test_cli_install_registers_the_hooks_and_no_hooks_leaves_them(fake_home: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run_cli("install", "claude-code")
    settings = fake_home / ".claude" / "settings.json"
    assert (fake_home / ".claude.json").exists() and hookconfig.present(jsonctext.loads(settings.read_text()))
    assert "hooks" in capsys.readouterr().out
    run_cli("uninstall", "claude-code")
    assert not settings.exists() and not (fake_home / ".claude.json").exists()
    run_cli("install", "claude-code", hooks=False)
    assert not settings.exists()


def test_with_config_only_that_file_is_touched(fake_home: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    run_cli("install", "claude-code", config_path=str(tmp_path / "mcp.json"))
    assert (tmp_path / "mcp.json").exists() and not (fake_home / ".claude").exists()
    assert "hooks left alone" in capsys.readouterr().out


def test_project_scope_hooks_name_no_machine_path(fake_home: Path, tmp_path: Path) -> None:
    install_hooks("claude-code", scope="project")
    path = tmp_path / ".claude" / "settings.json"
    commands = {g["hooks"][0]["command"] for g in jsonctext.loads(path.read_text())["hooks"].values() for g in g}
    assert commands == {"neuralsync hook --tool claude-code"}


def test_a_hooks_value_of_the_wrong_shape_is_refused_untouched(fake_home: Path) -> None:
    from neuralsync.integrations.install import InstallError

    path = fake_home / ".claude" / "settings.json"
    path.parent.mkdir()
    path.write_text('{"hooks": {"SessionStart": "echo"}}')
    with pytest.raises(InstallError, match="hooks.SessionStart"):
        install_hooks("claude-code")
    assert path.read_text() == '{"hooks": {"SessionStart": "echo"}}'


@pytest.mark.parametrize("text", ['{"a": []}', '{"a":[1,2]}', '{\n  "a": [\n    1, // one\n    2\n  ]\n}',
                                  '{\r\n\t"a": [ {"x": 1} ]\r\n}', '{"a": [1 /* c */, 2]}'])
def test_an_appended_element_is_cut_back_to_the_same_bytes(text: str) -> None:
    added = jsonctext.append_element(text, ("a",), {"ours": [1]})
    assert jsonctext.loads(added)["a"] == [*jsonctext.loads(text)["a"], {"ours": [1]}]
    index = len(jsonctext.loads(added)["a"]) - 1
    if index:
        assert jsonctext.remove_element(added, ("a",), index) == text


@pytest.mark.parametrize("original", [None, '{\n    "theme": "x" // mine\n}'])
def test_gemini_mcp_and_hooks_round_trip_from_no_file_or_a_commented_one(original: str | None,
                                                                          fake_home: Path) -> None:
    path = fake_home / ".gemini" / "settings.json"
    if original is not None:
        path.parent.mkdir()
        path.write_text(original)
    install("gemini", command=COMMAND, hooks=True)
    assert hookconfig.present(jsonctext.loads(path.read_text()))
    uninstall("gemini")
    assert (path.read_text() if path.exists() else None) == original
