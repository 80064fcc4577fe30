"""``nswrap`` and the ``*-ns`` wrappers: real child processes, a real store in ``tmp_path``."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from neuralsync.integrations.wrap import (
    Recalled,
    RememberLine,
    claude_ns_main,
    format_preamble,
    nswrap_main,
    parse_remember,
)
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

CHILD = r'''
import sys
data = sys.stdin.read()
sys.stdout.write("GOT<<" + data + ">>\n")
print('@remember: kind=note scope=global tag=a "Loves minimal elegant code."')
print("@remember: confidence=abc this line is broken")
print("after the bad line")
sys.stderr.write("child-stderr\n")
sys.exit(3)
'''


def nswrap(args: list[str], home: Path, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "NEURALSYNC_HOME": str(home), **env}
    return subprocess.run([sys.executable, "-m", "neuralsync.integrations.wrap", *args], input=stdin,
                          capture_output=True, text=True, env=full_env, timeout=60)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A store with a persona and one memory."""
    path = tmp_path / "store"
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(path))) as api:
        api.set_persona("Terse senior engineer.")
        api.remember("The project stores memories in SQLite WAL mode.", confidence=0.9)
    return path


def memories(home: Path, query: str) -> list[Any]:
    with UnifiedMemoryAPI(MemoryConfig(base_path=str(home))) as api:
        return api.recall(query, top_k=5, mode="text")


def test_nswrap_injects_preamble_streams_output_and_captures(home: Path) -> None:
    done = nswrap(["--", sys.executable, "-c", CHILD], home, stdin="How is SQLite configured?\n", TOOL_NAME="codex")

    assert done.returncode == 3
    preamble = ("Persona: Terse senior engineer.\n\n"
                "[M1] (fact, global, conf=0.9) The project stores memories in SQLite WAL mode.\n")
    assert done.stdout.startswith("GOT<<" + preamble + "\nHow is SQLite configured?\n>>\n")
    assert '@remember: kind=note scope=global tag=a "Loves minimal elegant code."\n' in done.stdout
    assert done.stdout.endswith("after the bad line\n")
    assert "child-stderr" in done.stderr
    assert "warning" in done.stderr and "confidence must be a number" in done.stderr

    [stored] = memories(home, "minimal elegant")
    assert stored.content == "Loves minimal elegant code."
    assert (stored.kind, stored.scope, stored.tags, stored.tool) == ("note", "global", ("a",), "codex")
    assert memories(home, "broken") == []


def test_query_falls_back_to_command_args_and_empty_store_sends_nothing(tmp_path: Path) -> None:
    child = "import sys; print(repr(sys.stdin.read()))"
    done = nswrap(["--", sys.executable, "-c", child], tmp_path / "empty-store")
    assert (done.returncode, done.stdout) == (0, "''\n")


def test_missing_binary_exits_127(home: Path) -> None:
    done = nswrap(["--", "no-such-tool-xyz", "--flag"], home)
    assert done.returncode == 127
    assert "no-such-tool-xyz" in done.stderr and "not found" in done.stderr


def test_wrapper_names_the_missing_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert claude_ns_main(["-p", "hi"]) == 127
    err = capsys.readouterr().err
    assert err.startswith("claude-ns: error:") and "'claude'" in err


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert nswrap_main(["--tool", "x", "--"]) == 2
    assert nswrap_main(["--bogus", "--", "true"]) == 2


def test_claude_ns_runs_claude_as_claude_code(home: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "claude"
    fake.write_text(f"#!{sys.executable}\nimport os, sys\nsys.stdin.read()\n"
                    "print('tool=' + os.environ['TOOL_NAME'] + ' args=' + ' '.join(sys.argv[1:]))\n"
                    "sys.stdout.write('@remember: tool-less unquoted text, isn\\'t it')\n")
    fake.chmod(0o755)
    code = "import sys; from neuralsync.integrations.wrap import claude_ns_main; sys.exit(claude_ns_main())"
    env = {**os.environ, "NEURALSYNC_HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-c", code, "-p", "hello"], capture_output=True, text=True,
                          env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("tool=claude-code args=-p hello\n")
    [stored] = memories(home, "unquoted")
    assert (stored.content, stored.tool, stored.kind) == ("tool-less unquoted text, isn't it", "claude-code", "fact")


def test_child_killed_by_signal_maps_to_128_plus_n(home: Path) -> None:
    child = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    assert nswrap(["--", sys.executable, "-c", child], home).returncode == 128 + signal.SIGTERM


@pytest.mark.parametrize(("line", "expected"), [
    ('@remember: kind=note scope=global "Loves minimal elegant code."',
     RememberLine("Loves minimal elegant code.", "note", "global")),
    ("@remember: plain words, don't quote", RememberLine("plain words, don't quote")),
    ("  @remember: tag=a tag='b c' tool=gemini confidence=0.5 Uses 'tabs'",
     RememberLine("Uses 'tabs'", tool="gemini", confidence=0.5, tags=("a", "b c"))),
    ('@remember: scope="my project" "unbalanced quote', RememberLine("unbalanced quote", scope="my project")),
    ("@remember: kind=fact two \"quoted\" words", RememberLine('two "quoted" words', "fact")),
    ("not a directive @remember: x", None),
])
def test_parse_remember(line: str, expected: RememberLine | None) -> None:
    assert parse_remember(line) == expected


@pytest.mark.parametrize(("line", "message"), [
    ("@remember: confidence=abc text", "must be a number"),
    ("@remember: confidence=1.5 text", "between 0 and 1"),
    ("@remember: kind=note", "no text"),
    ("@remember:", "no text"),
])
def test_parse_remember_rejects(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_remember(line)


def test_format_preamble() -> None:
    items = [Recalled("fact", "global", 0.8, "a"), Recalled("note", "proj", 1.0, "b")]
    assert format_preamble("", items) == "[M1] (fact, global, conf=0.8) a\n[M2] (note, proj, conf=1.0) b\n"
    assert format_preamble("P", []) == "Persona: P\n\n"
    assert format_preamble("", []) == ""


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None, Any]] = []
    remember_status = 200  # what /remember answers

    def _answer(self, body: Any, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization"), None))
        self._answer({"text": "Remote persona."})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, self.headers.get("Authorization"), body))
        if self.path == "/recall":
            self._answer({"items": [{"kind": "fact", "scope": "global", "confidence": 0.7, "text": "remote"}]})
        elif self.remember_status != 200:
            self._answer({"error": {"type": "x", "field": "kind", "message": "refused here"}, "detail": "refused"},
                         self.remember_status)
        else:
            self._answer({"id": "x", **body})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Recorder.seen = []
    _Recorder.remember_status = 200
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_http_mode_uses_the_neuralsync2_routes(server: str, tmp_path: Path) -> None:
    child = "import sys; sys.stdout.write(sys.stdin.read()); print('@remember: kind=pref tag=x Dark mode')"
    done = nswrap(["--tool", "gemini", "--", sys.executable, "-c", child], tmp_path / "unused",
                  stdin="theme?\n", NS_ENDPOINT=server, NS_TOKEN="t0k")
    assert done.returncode == 0, done.stderr
    preamble = "Persona: Remote persona.\n\n[M1] (fact, global, conf=0.7) remote\n"
    assert done.stdout.startswith(preamble + "\ntheme?\n@remember:")
    paths = [(path, auth) for path, auth, _ in _Recorder.seen]
    assert paths == [("/persona", "Bearer t0k"), ("/recall", "Bearer t0k"), ("/remember", "Bearer t0k")]
    assert _Recorder.seen[1][2]["query"] == "theme?" and _Recorder.seen[1][2]["top_k"] == 3
    remembered = _Recorder.seen[2][2]
    assert (remembered["text"], remembered["kind"], remembered["tags"], remembered["tool"]) == \
        ("Dark mode", "pref", ["x"], "gemini")
    assert not (tmp_path / "unused").exists()


def test_unreachable_server_still_runs_the_child(tmp_path: Path) -> None:
    child = "import sys; sys.stdout.write('ok:' + sys.stdin.read())"
    done = nswrap(["--", sys.executable, "-c", child], tmp_path, stdin="x",
                  NS_ENDPOINT="http://127.0.0.1:9", NS_TOKEN="t")
    assert (done.returncode, done.stdout) == (0, "ok:x")
    assert "no recalled context" in done.stderr


# ------------------------------------------------------------------ issue 12: no capture is lost
CAPTURING = "import sys; sys.stdin.read(); print('@remember: kind=note Keep me, whatever happens.')"


def _spool(home: Path) -> Path:
    return home / "nswrap-spool.jsonl"


def test_a_capture_the_server_cannot_take_is_spooled_then_sent_by_the_next_run(server: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    down = nswrap(["--tool", "codex", "--", sys.executable, "-c", CAPTURING], home,
                  NS_ENDPOINT="http://127.0.0.1:9", NS_TOKEN="t")
    assert down.returncode == 0 and "@remember:" in down.stdout
    [said] = [line for line in down.stderr.splitlines() if "capture" in line]
    assert said.startswith("nswrap: 1 capture(s) not stored now") and "unreachable" in said
    assert str(_spool(home)) in said and stat.S_IMODE(_spool(home).stat().st_mode) == 0o600

    up = nswrap(["--tool", "codex", "--", sys.executable, "-c", "import sys; sys.stdin.read()"], home,
                NS_ENDPOINT=server, NS_TOKEN="t")
    assert up.returncode == 0 and "stored 1 capture(s) spooled by an earlier run" in up.stderr
    sent = [body for path, _, body in _Recorder.seen if path == "/remember"]
    assert [(b["text"], b["kind"], b["tool"]) for b in sent] == [("Keep me, whatever happens.", "note", "codex")]
    assert [path for path, _, _ in _Recorder.seen][:2] == ["/remember", "/persona"]  # sent before the recall
    assert not _spool(home).exists()


def test_a_refused_token_spools_and_says_how_to_fix_it(server: str, tmp_path: Path) -> None:
    _Recorder.remember_status = 401
    done = nswrap(["--", sys.executable, "-c", CAPTURING], tmp_path / "home", NS_ENDPOINT=server, NS_TOKEN="wrong")
    assert "answered 401" in done.stderr and "NS_TOKEN" in done.stderr
    assert "Keep me" in _spool(tmp_path / "home").read_text()


def test_a_capture_the_server_judges_invalid_is_reported_not_retried(server: str, tmp_path: Path) -> None:
    _Recorder.remember_status = 422
    done = nswrap(["--", sys.executable, "-c", CAPTURING], tmp_path / "home", NS_ENDPOINT=server, NS_TOKEN="t")
    assert "1 capture(s) refused as invalid, not stored" in done.stderr and "kind: refused here" in done.stderr
    assert not _spool(tmp_path / "home").exists()


def test_an_unopenable_store_spools_locally_until_it_opens(tmp_path: Path) -> None:
    home = tmp_path / "store"
    home.mkdir()
    (home / "memory.db").write_bytes(b"this is not a database" * 100)
    broken = nswrap(["--", sys.executable, "-c", CAPTURING], home)
    assert broken.returncode == 0 and "memory unavailable" in broken.stderr
    assert "1 capture(s) not stored" in broken.stderr
    (home / "memory.db").unlink()
    fixed = nswrap(["--", sys.executable, "-c", "import sys; print(sys.stdin.read())"], home)
    assert "stored 1 capture(s) spooled by an earlier run" in fixed.stderr
    assert "[M1] (note, global, conf=0.8) Keep me, whatever happens." in fixed.stdout  # recalled in the same run
    [stored] = memories(home, "whatever happens")
    assert stored.kind == "note"


def test_after_one_failure_the_runs_captures_go_straight_to_the_spool(tmp_path: Path) -> None:
    twice = ("import sys; sys.stdin.read(); print('@remember: first capture'); print('@remember: second capture')")
    done = nswrap(["--", sys.executable, "-c", twice], tmp_path / "home", NS_ENDPOINT="http://127.0.0.1:9",
                  NS_TOKEN="t")
    assert [line for line in done.stderr.splitlines() if "capture" in line][0].startswith(
        "nswrap: 2 capture(s) not stored now")
    assert _spool(tmp_path / "home").read_text().count("capture") == 2


def test_a_capture_that_cannot_even_be_spooled_is_named_as_lost(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done = nswrap(["--", sys.executable, "-c", CAPTURING], blocker / "home", NS_ENDPOINT="http://127.0.0.1:9",
                  NS_TOKEN="t")
    assert done.returncode == 0 and "1 capture(s) LOST" in done.stderr and "Keep me" in done.stderr


# ------------------------------------------------------------------ interactive use (issue 16)
def _run_in_pty(argv: list[str], env: dict[str, str], *, stdout_too: bool) -> int:
    """Run ``argv`` with a pseudo-terminal as its stdin (and stdout when ``stdout_too``); its exit code."""
    import pty
    import select

    parent, child = pty.openpty()
    out = child if stdout_too else subprocess.DEVNULL
    proc = subprocess.Popen(argv, stdin=child, stdout=out, stderr=subprocess.DEVNULL, env=env)
    os.close(child)
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([parent], [], [], 0.1)[0]:  # drain what the child writes to the terminal
                try:
                    os.read(parent, 65536)
                except OSError:
                    break
        return proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(parent)


@pytest.mark.parametrize(("wrapper", "binary", "stdout_too"), [("claude_ns_main", "claude", True),
                                                                ("claude_ns_main", "claude", False),
                                                                ("codex_ns_main", "codex", True)])
def test_in_a_terminal_the_tool_keeps_the_terminal_and_gets_context_by_option(
        wrapper: str, binary: str, stdout_too: bool, home: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / binary
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"json.dump({{'stdin_tty': os.isatty(0), 'stdout_tty': os.isatty(1), 'argv': sys.argv[1:]}},"
                    f" open({str(report)!r}, 'w'))\n")
    fake.chmod(0o755)
    code = f"import sys; from neuralsync.integrations.wrap import {wrapper}; sys.exit({wrapper}())"
    env = {**os.environ, "NEURALSYNC_HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    assert _run_in_pty([sys.executable, "-c", code, "SQLite"], env, stdout_too=stdout_too) == 0
    seen = json.loads(report.read_text())
    assert seen["stdin_tty"] is True  # the person's terminal, not a pipe carrying the preamble
    assert seen["stdout_tty"] is stdout_too
    option, value = seen["argv"][:2]
    if binary == "claude":
        assert option == "--append-system-prompt"
    else:
        assert option == "-c" and value.startswith("developer_instructions=")
        value = json.loads(value.split("=", 1)[1])
    assert "Persona: Terse senior engineer." in value and "SQLite WAL mode" in value
    assert seen["argv"][2:] == ["SQLite"]
