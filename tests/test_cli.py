"""The ``neuralsync`` command line against a real store in ``tmp_path``.

Most tests call ``main([...])`` in-process (fast, output through capsys); a
few run the real console entry point in a subprocess, because start-up cost,
import laziness and stream handling only show there.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from neuralsync.cli import main

Run = Callable[..., tuple[int, str, str]]
REPO = Path(__file__).resolve().parents[1]
MISSING_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh store directory, selected the way a user would: ``$NEURALSYNC_HOME``."""
    store = tmp_path / "store"
    monkeypatch.setenv("NEURALSYNC_HOME", str(store))
    monkeypatch.delenv("TOOL_NAME", raising=False)
    return store


@pytest.fixture
def run(home: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""

    def _run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return _run


def remember(run: Run, *argv: str) -> str:
    code, out, err = run("remember", *argv)
    assert code == 0, err
    return out.strip()


def memory_count(run: Run) -> int:
    return counts(run)[0]


def counts(run: Run) -> tuple[int, int]:
    """(memories, ops): unchanged ops means nothing at all was written."""
    code, out, _ = run("--json", "stats")
    assert code == 0
    stats = json.loads(out)
    return stats["memories"], stats["ops"]


def subprocess_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "NEURALSYNC_HOME": str(home)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# ---------------------------------------------------------------- round trip
def test_remember_recall_get_update_forget_round_trip(run: Run) -> None:
    memory_id = remember(run, "The test suite runs with pytest -x", "--tag", "testing,ci", "--tag", "py")
    assert len(memory_id) == 32

    code, out, _ = run("recall", "test", "suite")
    assert code == 0 and memory_id in out and "pytest -x" in out and "#testing" in out

    code, out, _ = run("get", memory_id)
    assert code == 0 and "ci, py, testing" in out and "pytest -x" in out

    code, out, _ = run("update", memory_id, "--content", "The suite runs with pytest -q", "--priority", "0.9")
    assert code == 0 and "pytest -q" in out and "0.9" in out

    code, out, _ = run("forget", memory_id)
    assert code == 0 and memory_id in out
    code, _, err = run("get", memory_id)
    assert code == 3 and err.startswith("neuralsync: error: not found")


def test_json_output_is_parseable_before_or_after_the_command(run: Run) -> None:
    code, out, _ = run("remember", "--json", "alpha beta", "--scope", "proj", "--metadata", '{"k": [1, 2]}')
    stored = json.loads(out)
    assert code == 0 and stored["scope"] == "proj" and stored["metadata"] == {"k": [1, 2]}

    for argv in (["--json", "recall", "alpha"], ["recall", "alpha", "--json"], ["list", "--json"]):
        code, out, _ = run(*argv)
        assert code == 0
        assert [m["id"] for m in json.loads(out)] == [stored["id"]]
    code, out, _ = run("get", stored["id"], "--json")
    assert json.loads(out)["content"] == "alpha beta"
    code, out, _ = run("stats", "--json")
    assert json.loads(out)["memories"] == 1
    code, out, _ = run("doctor", "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    code, out, _ = run("optimize", "--json")
    assert code == 0 and "actions" in json.loads(out)


def test_remember_reads_stdin_and_splits_tags(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("first line\nsecond line\n"))
    memory_id = remember(run, "-", "--tag", "a, b", "--tag", "c", "--kind", "decision")
    code, out, _ = run("--json", "get", memory_id)
    memory = json.loads(out)
    assert memory["content"] == "first line\nsecond line"
    assert memory["tags"] == ["a", "b", "c"] and memory["kind"] == "decision"


def test_recall_filters(run: Run) -> None:
    both = remember(run, "deploy with docker", "--tag", "ops,docker")
    one = remember(run, "deploy with ansible", "--tag", "ops", "--scope", "infra", "--kind", "howto")
    ids = lambda *argv: [m["id"] for m in json.loads(run("--json", "recall", "deploy", *argv)[1])]  # noqa: E731
    assert set(ids()) == {both, one}
    assert ids("--tag", "docker") == [both]
    assert set(ids("--tag", "ops", "--tag", "docker")) == {both, one}
    assert ids("--tag", "ops", "--tag", "docker", "--all-tags") == [both]
    assert ids("--scope", "infra") == [one]
    assert ids("--kind", "howto") == [one]
    assert ids("-k", "1") in ([both], [one])
    assert set(ids("--since", "1h")) == {both, one}
    assert ids("--until", "2000-01-01T00:00:00Z") == []


def test_update_tag_replaces_and_empty_tag_clears(run: Run) -> None:
    memory_id = remember(run, "tagged", "--tag", "a,b")
    code, out, _ = run("--json", "update", memory_id, "--tag", "c")
    assert json.loads(out)["tags"] == ["c"]
    code, out, _ = run("--json", "update", memory_id, "--tag", "")
    assert json.loads(out)["tags"] == []


def test_list_orders_and_limits(run: Run) -> None:
    ids = [remember(run, f"note number {n}") for n in range(3)]
    code, out, err = run("list")
    assert code == 0 and [line.split()[2] for line in out.splitlines()] == ids[::-1]
    assert "3 memories" in err
    code, out, _ = run("--json", "list", "--oldest-first", "--limit", "2")
    assert [m["id"] for m in json.loads(out)] == ids[:2]
    code, out, _ = run("--json", "list", "--since", "2000-01-01", "--until", "1d")
    assert json.loads(out) == []


def test_stats_doctor_optimize_readable(run: Run, home: Path) -> None:
    remember(run, "something to count")
    code, out, _ = run("stats")
    assert code == 0 and "memories" in out and "1 (0 expired, 0 deleted)" in out
    code, out, _ = run("doctor")
    assert code == 0 and "rebuild matches" in out and "OK" in out
    code, out, _ = run("doctor", "--quick")
    assert code == 0
    with sqlite3.connect(home / "memory.db") as raw:  # the FTS index's structure record gone: unreadable
        raw.execute("DELETE FROM memories_fts_data")
    code, out, _ = run("doctor", "--quick")
    assert code == 1 and "FTS index unreadable" in out and "--repair" in out
    code, out, _ = run("doctor", "--quick", "--repair")
    assert code == 0 and "rebuilt" in out and "OK" in out
    code, out, _ = run("optimize")
    assert code == 0 and "probe before" in out and "probe after" in out


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("argv", [
    ["remember", "x", "--priority", "2"],
    ["remember", "x", "--confidence", "-0.1"],
    ["remember", "   "],
    ["remember", "x", "--metadata", "{not json"],
    ["remember", "x", "--metadata", "[1, 2]"],
    ["remember", "x", "--kind", "has space"],
    ["get", "not-an-id"],
    ["forget", "0123"],
    ["update", "XYZ", "--priority", "0.5"],
    ["recall", "x", "--since", "yesterday-ish"],
    ["list", "--since", "2d", "--until", "3d"],
    ["recall", "-k", "0"],
    ["remember", "x", "--priority", "high"],  # caught by argparse: a usage error, same form and code
])
def test_bad_input_exits_2_with_one_line_and_changes_nothing(run: Run, argv: list[str]) -> None:
    keep = remember(run, "existing memory")
    before = counts(run)
    code, out, err = run(*argv)
    assert code == 2
    assert out == ""
    assert err.startswith("neuralsync: error:") and err.count("\n") == 1
    assert counts(run) == before and run("get", keep)[0] == 0


def test_update_with_bad_field_leaves_memory_unchanged(run: Run) -> None:
    memory_id = remember(run, "original", "--priority", "0.3")
    code, _, err = run("update", memory_id, "--content", "new", "--priority", "7")
    assert code == 2 and err.startswith("neuralsync: error: priority")
    memory = json.loads(run("--json", "get", memory_id)[1])
    assert memory["content"] == "original" and memory["priority"] == 0.3


@pytest.mark.parametrize("argv", [["get", MISSING_ID], ["forget", MISSING_ID], ["delete", MISSING_ID],
                                  ["update", MISSING_ID, "--priority", "0.1"]])
def test_not_found_exits_3(run: Run, argv: list[str]) -> None:
    code, out, err = run(*argv)
    assert code == 3 and out == "" and err == f"neuralsync: error: not found: {MISSING_ID}\n"


def test_json_mode_keeps_errors_off_stdout(run: Run) -> None:
    code, out, err = run("--json", "get", MISSING_ID)
    assert code == 3 and out == "" and err.startswith("neuralsync: error:")


def test_usage_errors_and_version(run: Run) -> None:
    assert run("no-such-command")[0] == 2
    assert run()[0] == 2
    code, out, _ = run("--version")
    assert code == 0 and out.startswith("neuralsync ")


def test_home_option_overrides_environment(run: Run, tmp_path: Path) -> None:
    other = tmp_path / "other"
    remember(run, "in the other store", "--home", str(other))
    assert (other / "memory.db").exists()
    assert memory_count(run) == 0
    assert json.loads(run("--home", str(other), "--json", "stats")[1])["memories"] == 1


def test_no_progress_bar_when_stderr_is_not_a_tty(run: Run, tmp_path: Path) -> None:
    for n in range(5):
        remember(run, f"memory {n}")
    dump = tmp_path / "dump.jsonl"
    for argv in (["export", str(dump)], ["import", str(dump)], ["doctor"]):
        code, _, err = run(*argv)
        assert code == 0
        assert "\r" not in err and "[#" not in err and "[-" not in err


# ---------------------------------------------------------------- real processes
def test_subprocess_round_trip(home: Path) -> None:
    env = subprocess_env(home)
    cli = [sys.executable, "-m", "neuralsync.cli"]
    made = subprocess.run([*cli, "remember", "spoken by a subprocess", "--tag", "proc"],
                          env=env, capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    found = subprocess.run([*cli, "recall", "subprocess", "--json"], env=env, capture_output=True, text=True,
                           check=False)
    assert found.returncode == 0 and found.stderr == ""
    assert [m["id"] for m in json.loads(found.stdout)] == [made.stdout.strip()]
    missing = subprocess.run([*cli, "get", MISSING_ID], env=env, capture_output=True, text=True, check=False)
    assert missing.returncode == 3 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr


def test_help_does_not_import_the_store(home: Path) -> None:
    probe = ("import sys\n"
             "from neuralsync.cli import main\n"
             "code = main(['--help'])\n"
             "heavy = [m for m in ('neuralsync.store.storage', 'neuralsync.oplog.log', 'neuralsync.unified_memory_api',"
             " 'sqlite3', 'nacl')"
             " if m in sys.modules]\n"
             "print('RESULT', code, heavy)\n")
    done = subprocess.run([sys.executable, "-c", probe], env=subprocess_env(home), capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "usage: neuralsync" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "RESULT 0 []"


def test_mcp_without_the_sdk_is_one_clear_line(tmp_path: Path) -> None:
    """A missing optional extra names its pip line; no traceback."""
    code = ("import sys, builtins\n"
            "real = builtins.__import__\n"
            "def fake(name, *a, **k):\n"
            "    if name == 'mcp' or name.startswith('mcp.'):\n"
            "        raise ModuleNotFoundError(\"No module named 'mcp'\")\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = fake\n"
            "from neuralsync.cli import main\n"
            f"sys.exit(main(['--home', {str(tmp_path)!r}, 'mcp']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "pip install 'neuralsync[mcp]'" in done.stderr and done.stderr.count("\n") == 1


def test_remember_json_shows_a_memory_whose_ttl_has_already_passed(run: Run) -> None:
    """Issue 10: the write succeeded, so the answer is the stored memory, not a traceback."""
    code, out, err = run("remember", "short-lived note", "--ttl-ms", "1", "--json")
    assert code == 0, err
    assert "Traceback" not in err
    shown = json.loads(out)
    assert shown["content"] == "short-lived note"
    assert shown["expires_at"] - shown["created_at"] == 1
    code, _, _ = run("get", shown["id"])
    assert code == 3  # expired: gone for readers, as the TTL asked


def test_compact_says_what_it_left_and_why(run: Run, home: Path) -> None:
    from neuralsync.cli.compact import _left_lines
    from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

    with UnifiedMemoryAPI(MemoryConfig(base_path=str(home), embedder="none")) as api:
        api.remember("the build cache lives in /var/cache/ci")
        api.remember("THE BUILD CACHE LIVES IN /VAR/CACHE/CI", merge="off")  # a duplicate from before the merger
    code, out, err = run("compact")
    assert code == 0, err
    # The merge stays undoable for merge_undo_days (30): its ops wait, and the user is told until when.
    days = {time.strftime("%Y-%m-%d", time.localtime(time.time() + 30 * 86_400 + shift)) for shift in (-60, 0)}
    assert any(f"1 merged memories keep their ops for undo until {day}" in out for day in days), out
    code, out, _ = run("--json", "compact", "--strategy", "vacuum")
    assert json.loads(out)["left"]["merges_in_undo_window"] == 1
    # Space only a full rewrite returns is worth a line once it is large, with the command that returns it.
    left = {"rewrite_bytes": 40 << 20, "merges_in_undo_window": 0, "undo_window_ends_at": None}
    assert any("neuralsync compact --strategy rewrite" in line for line in _left_lines(left, 100 << 20, None))
    assert _left_lines(left, 100 << 20, ["rewrite"]) == [] and _left_lines(left, 1 << 30, None) == []
