"""The hook entries ``install`` writes into each tool's settings, and their removal (issue 16).

All three tools read hooks in one shape: ``{"hooks": {EVENT: [group, ...]}}``, a
group being ``{"hooks": [{"type": "command", "command": ..., "timeout": ...}]}``
(Claude Code in ``~/.claude/settings.json``, Gemini CLI in its ``settings.json``
beside the MCP servers, Codex CLI in ``$CODEX_HOME/hooks.json``). Ours is one
group per event whose command runs ``neuralsync hook``; a group is recognised
as ours by that command alone, so the user's own groups, before and after ours,
are never touched. Edits go through :mod:`.jsonctext`: comments and layout
elsewhere stay byte for byte.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from . import jsonctext

# Per tool: the event that starts a session, the one that carries each prompt, the one that
# ends a turn with the model's answer (where ``@remember:`` lines are captured).
EVENTS: dict[str, tuple[str, str, str]] = {
    "claude-code": ("SessionStart", "UserPromptSubmit", "Stop"),
    "gemini": ("SessionStart", "BeforeAgent", "AfterAgent"),
    "codex": ("SessionStart", "UserPromptSubmit", "Stop"),
}
# Claude Code and Codex count a hook's timeout in seconds, Gemini CLI in milliseconds.
TIMEOUTS: dict[str, int] = {"claude-code": 10, "gemini": 10_000, "codex": 10}
# Ours: `.../neuralsync hook ...` or `python -m neuralsync hook ...`, quoted or not.
_OURS = re.compile(r"""(?:^|[\s/\\"'])neuralsync(?:\.exe)?["']?\s+hook(?:\s|$)"""
                   r"""|-m\s+neuralsync(?:\.cli)?\s+hook(?:\s|$)""")


def hook_file(tool: str, scope: str, mcp_file: Path) -> Path:
    """Where ``tool`` reads hooks: Gemini's are in the MCP file itself."""
    if tool == "gemini":
        return mcp_file
    base = Path.cwd() if scope == "project" else Path.home()
    if tool == "claude-code":
        return base / ".claude" / "settings.json"
    if scope == "user" and os.environ.get("CODEX_HOME"):
        return Path(os.environ["CODEX_HOME"]).expanduser() / "hooks.json"
    return base / ".codex" / "hooks.json"


def hook_command(tool: str, scope: str) -> str:
    """The shell command the tool runs: this machine's absolute path in a user file, the portable
    ``neuralsync`` (found on each user's PATH) in a shared project file."""
    tail = f"hook --tool {tool}"
    if scope == "project":
        return f"neuralsync {tail}"
    script = shutil.which("neuralsync")
    if script:
        return f"{shlex.quote(os.path.abspath(script))} {tail}"
    return f"{shlex.quote(sys.executable)} -m neuralsync {tail}"


def group(tool: str, command: str) -> dict[str, Any]:
    """Our group for one event."""
    hook: dict[str, Any] = {"type": "command", "command": command, "timeout": TIMEOUTS[tool]}
    if tool == "gemini":
        hook = {"name": "neuralsync", **hook}
    return {"hooks": [hook]}


def is_ours(entry: object) -> bool:
    """A group (or a single hook) whose command runs ``neuralsync hook``."""
    if not isinstance(entry, dict):
        return False
    inner = entry.get("hooks")
    hooks = inner if isinstance(inner, list) else [entry]
    return any(isinstance(h, dict) and isinstance(h.get("command"), str) and _OURS.search(h["command"])
               for h in hooks)


def strip_ours(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` without our groups (and the events or ``hooks`` object left empty): for comparing
    everything else before and after an edit."""
    hooks = doc.get("hooks")
    if not isinstance(hooks, dict):
        return doc
    kept: dict[str, Any] = {}
    for event, groups in hooks.items():
        if isinstance(groups, list):
            groups = [g for g in groups if not is_ours(g)]
            if not groups:
                continue
        kept[event] = groups
    rest = {k: v for k, v in doc.items() if k != "hooks"}
    return {**rest, "hooks": kept} if kept else rest


def present(doc: dict[str, Any]) -> bool:
    """Whether any of our groups is in ``doc``."""
    hooks = doc.get("hooks")
    return isinstance(hooks, dict) and any(isinstance(g, list) and any(is_ours(x) for x in g) for g in hooks.values())


def check_shape(doc: dict[str, Any]) -> str | None:
    """Why ``doc``'s hooks cannot be edited (not an object of arrays), or None."""
    hooks = doc.get("hooks", {})
    if not isinstance(hooks, dict):
        return "'hooks' is not an object"
    bad = [event for event, groups in hooks.items() if not isinstance(groups, list)]
    return f"'hooks.{bad[0]}' is not an array" if bad else None


def add(text: str, doc: dict[str, Any], tool: str, command: str) -> str:
    """``text`` with our group last in each of ``tool``'s events (an older one of ours replaced); the
    user's groups keep their bytes."""
    hooks = doc.get("hooks") if isinstance(doc.get("hooks"), dict) else {}
    wanted = group(tool, command)
    for event in EVENTS[tool]:
        current = hooks.get(event) if isinstance(hooks, dict) else None
        if not isinstance(current, list) or not current:
            text = jsonctext.set_member(text, ("hooks", event), [wanted])
            continue
        if current[-1] == wanted and sum(is_ours(g) for g in current) == 1:
            continue
        for index in reversed([i for i, g in enumerate(current) if is_ours(g)]):
            text = jsonctext.remove_element(text, ("hooks", event), index)
        if all(is_ours(g) for g in current):
            text = jsonctext.set_member(text, ("hooks", event), [wanted])
        else:
            text = jsonctext.append_element(text, ("hooks", event), wanted)
    return text


def remove(text: str, doc: dict[str, Any], keep_empty: bool) -> str:
    """``text`` without our groups; an event left empty is cut, and the ``hooks`` object too unless
    ``keep_empty`` (it was there before install)."""
    hooks = doc.get("hooks")
    if not isinstance(hooks, dict):
        return text
    left = dict(hooks)
    for event, groups in hooks.items():
        if not isinstance(groups, list) or not any(is_ours(g) for g in groups):
            continue
        if all(is_ours(g) for g in groups):
            text = jsonctext.remove_member(text, ("hooks", event))
            del left[event]
            continue
        for index in reversed([i for i, g in enumerate(groups) if is_ours(g)]):
            text = jsonctext.remove_element(text, ("hooks", event), index)
    if not left and not keep_empty:
        text = jsonctext.remove_member(text, ("hooks",))
    return text
