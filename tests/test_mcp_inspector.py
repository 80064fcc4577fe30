"""The MCP Inspector's CLI (from npm, a client nobody here wrote) against a real ``neuralsync mcp``.

``.ci/run`` installs Node 22 and ``@modelcontextprotocol/inspector`` into ``.ci-npm/``; elsewhere point
``NEURALSYNC_NPM_TOOLS`` at a folder holding the same install. Without it these tests skip and say why.
Each call is a new Inspector process starting a new stdio server on a temporary store, as an agent's session
would; the store carries over between calls.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOLS = Path(os.environ.get("NEURALSYNC_NPM_TOOLS", REPO / ".ci-npm"))
INSPECTOR = TOOLS / "node_modules" / ".bin" / "mcp-inspector"
NODE_BIN = TOOLS / "node_modules" / "node" / "bin"
CORE = {"remember", "recall", "get_memory", "update_memory", "forget", "list_recent", "memory_stats"}
TOOL_IS_ERROR = 5  # the Inspector CLI's exit status for a result with isError: true

pytestmark = pytest.mark.skipif(not INSPECTOR.exists(), reason=f"the MCP Inspector is not installed in {TOOLS} "
                                "(.ci/run installs it from npm)")


def _neuralsync() -> str:
    found = shutil.which("neuralsync", path=str(Path(sys.executable).parent))
    assert found, "the neuralsync console script is not installed beside this Python"
    return found


def _inspect(home: Path, *args: str) -> tuple[int, Any]:
    env = {**os.environ, "HOME": str(home), "PATH": f"{NODE_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(INSPECTOR), "--cli", _neuralsync(), "mcp", "-e", f"NEURALSYNC_HOME={home / 'ns'}", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert done.stdout.strip(), (done.returncode, done.stderr)
    return done.returncode, json.loads(done.stdout)


def _call(home: Path, tool: str, **arguments: str) -> tuple[int, Any]:
    pairs = [f"{key}={value}" for key, value in arguments.items()]
    return _inspect(home, "--method", "tools/call", "--tool-name", tool, *(["--tool-arg", *pairs] if pairs else []))


def _payload(result: dict[str, Any]) -> Any:
    (block,) = result["content"]  # one representation: a single text block
    assert block["type"] == "text" and "structuredContent" not in result
    return json.loads(block["text"])


def test_the_inspector_lists_the_core_tools_and_finds_no_portability_error(tmp_path: Path) -> None:
    code, listed = _inspect(tmp_path, "--strict", "--method", "tools/list")
    assert code == 0  # --strict exits 6 on an error-severity schema problem
    assert {tool["name"] for tool in listed["tools"]} == CORE
    assert all(tool["description"] and len(tool["description"]) < 400 for tool in listed["tools"])
    assert len(json.dumps(listed["tools"], separators=(",", ":"))) < 8192


def test_the_inspector_calls_every_tool_with_valid_and_invalid_arguments(tmp_path: Path) -> None:
    code, stored = _call(tmp_path, "remember", content="payments-api ships with helm on Fridays; db password=hunter2",
                         tags="deploy", scope="project:payments-api")
    assert code == 0 and not stored["isError"]
    memory_id = _payload(stored)["id"]

    code, found = _call(tmp_path, "recall", query="how do we release the payments service", limit="3")
    hits = _payload(found)["memories"]
    assert code == 0 and hits[0]["id"] == memory_id and "hunter2" not in json.dumps(found)
    code, changed = _call(tmp_path, "update_memory", memory_id=memory_id, priority="0.9")
    assert code == 0 and not changed["isError"]
    code, got = _call(tmp_path, "get_memory", memory_id=memory_id)
    assert code == 0 and _payload(got)["memory"]["priority"] == 0.9
    code, recent = _call(tmp_path, "list_recent", limit="5")
    assert code == 0 and [m["id"] for m in _payload(recent)["memories"]] == [memory_id]
    code, stats = _call(tmp_path, "memory_stats")
    assert code == 0 and not stats["isError"]
    code, gone = _call(tmp_path, "forget", memory_id=memory_id)
    assert code == 0 and _payload(gone) == {"id": memory_id, "forgotten": True}

    refused = {
        "remember": ({}, "content"),
        "recall": ({"query": "x", "limit": "0"}, "limit"),
        "get_memory": ({"memory_id": "not-an-id"}, "id"),
        "update_memory": ({"memory_id": memory_id, "priority": "5"}, "priority"),
        "forget": ({"memory_id": "0" * 32}, "0" * 32),
        "list_recent": ({"limit": "0"}, "limit"),
    }
    for tool, (arguments, named) in refused.items():
        code, answer = _call(tmp_path, tool, **arguments)
        text = answer["content"][0]["text"]
        assert code == TOOL_IS_ERROR and answer["isError"] and named in text, (tool, text)
    code, after = _call(tmp_path, "list_recent")
    assert code == 0 and _payload(after)["memories"] == []  # the refused calls changed nothing
