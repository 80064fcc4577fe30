"""NeuralSync2's real clients against ``neuralsync serve`` (issue 12): its ``nsctl``, its ``nswrap`` and its
``claude-ns``/``codex-ns``/``gemini-ns`` laid out as its installer does, around stand-in tools that record the
preamble they are given and print ``@remember:`` lines. Skipped, saying why, without its source tree
(``$NEURALSYNC2_SRC``) or a Python with its pins (``$NEURALSYNC2_PYTHON``); see ``tests/_ns2ref.py``."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("uvicorn")

from _live import Server, live_server
from _ns2ref import (
    Reference,
    client_env,
    install_layout,
    last_input,
    reference,
    run,
    stand_in_tools,
)

pytestmark = pytest.mark.slow
CAPTURE = '@remember: kind=note scope=global "Loves minimal elegant code."'


@dataclass
class Setup:
    ref: Reference
    server: Server
    bin: Path
    logs: Path
    user_home: Path

    def env(self, **extra: str) -> dict[str, str]:
        return client_env(self.bin, int(self.server.url.rsplit(":", 1)[1]), self.server.token, self.user_home,
                          **extra)

    def v1(self, method: str, path: str, body: object = None) -> Any:
        response = httpx.request(method, self.server.url + path, json=body, headers=self.server.auth, timeout=30)
        assert response.status_code < 300, response.text
        return response.json()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One ``neuralsync serve`` for the module; NeuralSync2's scripts and the stand-in tools on PATH."""
    ref = reference()
    root = tmp_path_factory.mktemp("ns2-clients")
    bin_dir = install_layout(ref, root / "bin")
    stand_in_tools(bin_dir, root / "logs")
    with live_server(root / "store") as server:
        yield Setup(ref, server, bin_dir, root / "logs", root / "user")


def nsctl(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    done = run(["nsctl", *args], setup.env())
    assert done.returncode == 0, (args, done.stderr)
    return done


def test_a_capture_in_claude_ns_is_in_the_next_session_of_every_wrapper(setup: Setup) -> None:
    nsctl(setup, "persona", "set", "--text", "Direct, concise senior engineer persona.")
    first = run(["claude-ns", "-p", "start a session"], setup.env(STANDIN_SAY=CAPTURE))
    assert first.returncode == 0, first.stderr
    assert "claude ran" in first.stdout and CAPTURE in first.stdout

    [stored] = [m for m in setup.v1("POST", "/v1/recall", {"query": "minimal elegant", "mode": "text"})["items"]
                if m["content"] == "Loves minimal elegant code."]
    assert (stored["kind"], stored["scope"], stored["tool"], stored["source"]) == ("note", "global", None, "nswrap")

    for wrapper, tool in (("claude-ns", "claude"), ("codex-ns", "codex"), ("gemini-ns", "gemini")):
        done = run([wrapper, "-p", "next session"], setup.env())
        assert done.returncode == 0, (wrapper, done.stderr)
        given = last_input(setup.logs, tool)
        assert given.startswith("-p next session\nPersona: Direct, concise senior engineer persona.\n\n"), wrapper
        assert "(note,global,conf=0.8) Loves minimal elegant code." in given, (wrapper, given)


def test_the_wrappers_fixed_query_gets_memories_where_text_search_finds_few(setup: Setup) -> None:
    """nswrap always recalls with query "" and top_k 3: only the tool rule and the fill give it context."""
    for i in range(3):
        setup.v1("POST", "/v1/memories", {"content": f"a note every tool should see, number {i}"})
    for i in range(4):
        setup.v1("POST", "/v1/memories", {"content": f"codex-only detail {i}", "tool": "codex"})
    assert run(["gemini-ns", "-p", "x"], setup.env()).returncode == 0
    gemini_given = last_input(setup.logs, "gemini")
    assert gemini_given.count("\n[M") == 3 and "codex-only" not in gemini_given  # other tools' memories stay out
    assert "a note every tool should see, number 2" in gemini_given
    assert run(["codex-ns", "do it"], setup.env()).returncode == 0
    assert "codex-only detail 3" in last_input(setup.logs, "codex")

    setup.v1("POST", "/v1/memories", {"content": "Uses the zygote pattern for workers"})
    few = json.loads(nsctl(setup, "recall", "zygote", "-k", "5", "--no-preamble").stdout)
    assert len(few) == 5 and few[0]["text"] == "Uses the zygote pattern for workers"  # one match, filled


def test_every_nsctl_command_works(setup: Setup) -> None:
    health = json.loads(nsctl(setup, "health").stdout)
    assert health["ok"] is True and health["site_id"] == setup.v1("GET", "/v1/health")["site_id"]
    assert nsctl(setup, "persona", "set", "--text", "Prefers small diffs.").stdout.strip() == "OK"
    assert nsctl(setup, "persona", "get").stdout.strip() == "Prefers small diffs."

    item = json.loads(nsctl(setup, "remember", "--text", "Runs tests with pytest -x", "--kind", "preference",
                            "--scope", "proj", "--tool", "codex", "--tag", "testing", "--tag", "ci",
                            "--confidence", "0.9", "--ttl-ms", "86400000", "--benefit", "0.7",
                            "--consistency", "0.6", "--source", "script").stdout)
    assert (item["text"], item["kind"], item["scope"], item["tool"], item["confidence"]) == (
        "Runs tests with pytest -x", "preference", "proj", "codex", 0.9)
    assert (item["tags"], item["meta"], item["benefit"], item["consistency"], item["source"]) == (
        '["testing", "ci"]', "{}", 0.7, 0.6, "script")
    assert item["ttl_ms"] == 86_400_000 and item["expires_at"] == item["created_at"] + 86_400_000
    defaults = json.loads(nsctl(setup, "remember", "-x", "A plain fact").stdout)
    assert (defaults["kind"], defaults["scope"], defaults["tool"], defaults["source"]) == (
        "fact", "global", None, "nsctl")

    preamble = nsctl(setup, "recall", "pytest", "-k", "1", "--scope", "proj", "--tool", "codex").stdout
    assert preamble == ("Persona: Prefers small diffs.\n\n"
                        "[M1] (preference, proj, conf=0.9) Runs tests with pytest -x\n\n")
    items = json.loads(nsctl(setup, "recall", "pytest", "--scope", "proj", "--no-preamble").stdout)
    assert [i["id"] for i in items] == [item["id"]]
    for_gemini = json.loads(nsctl(setup, "recall", "pytest", "--tool", "gemini", "--no-preamble").stdout)
    assert for_gemini and {i["tool"] for i in for_gemini} <= {None, "gemini"}  # a codex memory never answers


def test_migrate_gives_neuralsync2s_clients_the_token(setup: Setup, tmp_path: Path) -> None:
    """Its clients send a token only from $NS_TOKEN: after `neuralsync migrate`, a new shell has it, and
    its own config loader reads the token written into its config."""
    user = tmp_path / "user"
    data = user / ".neuralsync"
    data.mkdir(parents=True)
    (data / "config.yaml").write_text(f"db_path: {data / 'memory.db'}\nsite_id: s\ntoken: ''\n", encoding="utf-8")
    sqlite3.connect(data / "memory.db").executescript("CREATE TABLE items(id TEXT, text TEXT); CREATE TABLE kv"
                                                      " (k TEXT PRIMARY KEY, v TEXT);")
    env = {**setup.env(), "HOME": str(user), "SHELL": "/bin/bash"}
    env.pop("NS_TOKEN")
    migrated = subprocess.run([sys.executable, "-m", "neuralsync.cli", "--home", str(setup.server.home), "migrate"],
                              env=env,
                              capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    assert "now exports NS_TOKEN" in migrated.stdout

    loaded = subprocess.run([str(setup.ref.python), "-c", "from neuralsync.config import load_config;"
                             " print(load_config().token)"], cwd=setup.ref.src, env=env, capture_output=True,
                            text=True, timeout=60)
    assert loaded.stdout.strip() == setup.server.token, loaded.stderr
    shell = subprocess.run(["bash", "-c", f". {user / '.bashrc'}; nsctl remember -x 'Said through a new shell'"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert shell.returncode == 0 and '"text": "Said through a new shell"' in shell.stdout, shell.stderr
    tokenless = run(["nsctl", "persona", "get"], env)  # the same client without the token is refused
    assert tokenless.returncode != 0 or tokenless.stdout.strip() == ""


def test_its_smoke_script_works_against_neuralsync_serve(setup: Setup) -> None:
    """The steps of its tests/smoke.sh (persona set with --text: the script itself lacks it)."""
    nsctl(setup, "health")
    nsctl(setup, "persona", "set", "--text", "Direct, concise senior engineer persona.")
    nsctl(setup, "remember", "--text", "User prefers remote/hybrid roles until ankle fully heals.", "--kind", "fact",
          "--scope", "global", "--confidence", "0.9")
    recalled = nsctl(setup, "recall", "ankle surgery", "-k", "3").stdout
    assert "(fact, global, conf=0.9) User prefers remote/hybrid roles until ankle fully heals." in recalled
    piped = run(["nswrap", "--", "cat"], setup.env(),
                stdin='@remember: kind=note scope=global "Smoke-tested minimal elegant code."\n')
    assert piped.returncode == 0, piped.stderr
    found = setup.v1("POST", "/v1/recall", {"query": "Smoke-tested", "mode": "text"})["items"]
    assert [(m["content"], m["kind"], m["tool"]) for m in found] == [("Smoke-tested minimal elegant code.", "note",
                                                                      None)]
