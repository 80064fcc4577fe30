"""NeuralSync2's real code, run by the compatibility suite (``test_ns2_reference_*``; not collected).

``$NEURALSYNC2_SRC`` names NeuralSync2's source tree (``.ci/run`` sets it) and
``$NEURALSYNC2_PYTHON`` a Python holding its pinned dependencies (``.ci/run``
builds one in ``.venv-ns2``); without them the suite skips, saying which is
missing (the clients need only ``requests`` and ``typer``). Nothing of NeuralSync2
is copied into the project: its scripts are laid out in a scratch directory as
its installer lays them out, and run from there.

Its server reads ``~/.neuralsync/config.yaml``, so every NeuralSync2 process
gets a scratch ``$HOME``; the 512 MiB ``memory.db.mmap`` it writes at first
start is created sparse beforehand (same size, no disk, no 15 s wait).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from _live import free_port, stop

SRC_ENV = "NEURALSYNC2_SRC"
PYTHON_ENV = "NEURALSYNC2_PYTHON"
PINNED = ("fastapi==0.115.0 'uvicorn[standard]==0.30.6' pydantic==2.8.2 typer==0.12.5 click==8.1.7 numpy==2.0.1"
          " PyYAML==6.0.2 requests==2.32.3 psutil")
MMAP_BYTES = 512 << 20
START_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 60.0
WRAPPERS = {"claude-ns": "claude-ns-fixed", "codex-ns": "codex-ns-fixed", "gemini-ns": "gemini-ns-fixed"}


@dataclass(frozen=True)
class Reference:
    """NeuralSync2's source tree and a Python that runs it."""

    src: Path
    python: Path


def reference(server: bool = False) -> Reference:
    """The reference, or skip saying what is missing (``server``: its server's dependencies too)."""
    src_text = os.environ.get(SRC_ENV)
    if not src_text:
        pytest.skip(f"${SRC_ENV} is not set: point it at NeuralSync2's source tree to run its code against ours")
    src = Path(src_text).resolve()
    if not (src / "nsctl").is_file() or not (src / "neuralsync" / "server.py").is_file():
        pytest.skip(f"${SRC_ENV}={src} is not NeuralSync2's source tree (no nsctl, neuralsync/server.py)")
    python = Path(os.environ.get(PYTHON_ENV) or shutil.which("python3") or sys.executable)
    modules = "requests, typer" + (", fastapi, uvicorn, numpy, yaml, psutil" if server else "")
    probe = subprocess.run([str(python), "-c", f"import {modules}"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"{python} lacks NeuralSync2's dependencies ({modules}); set ${PYTHON_ENV} to a Python with"
                    f" its pins: pip install {PINNED}")
    return Reference(src, python)


def install_layout(ref: Reference, bin_dir: Path) -> Path:
    """``nswrap``, ``nsctl`` and the fixed wrappers as its installer lays them out (``~/.local/bin``), with
    ``python3`` there being the reference Python (their shebang is ``/usr/bin/env python3``)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, source in {"nswrap": "nswrap", "nsctl": "nsctl",
                         **{k: f"bin/{v}" for k, v in WRAPPERS.items()}}.items():
        shutil.copy2(ref.src / source, bin_dir / name)
        (bin_dir / name).chmod(0o755)
    shim = bin_dir / "python3"  # a script, not a symlink: a symlinked venv python forgets its venv
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(str(ref.python))} \"$@\"\n", encoding="utf-8")
    shim.chmod(0o755)
    return bin_dir


def stand_in_tools(bin_dir: Path, log_dir: Path) -> None:
    """``claude``, ``codex``, ``gemini`` that record what they read on stdin (the preamble) and print the
    lines of ``$STANDIN_SAY`` (``@remember:`` captures) - the real tools, as the wrappers see them."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for name in ("claude", "codex", "gemini"):
        script = bin_dir / name
        script.write_text(
            f"#!{sys.executable}\n"
            "import os, sys, time\n"
            "data = sys.stdin.read()\n"
            f"path = os.path.join({str(log_dir)!r}, {name!r} + '-' + str(time.time_ns()) + '.txt')\n"
            "open(path, 'w', encoding='utf-8').write(' '.join(sys.argv[1:]) + '\\n' + data)\n"
            f"print({name!r} + ' ran')\n"
            "for line in os.environ.get('STANDIN_SAY', '').splitlines():\n"
            "    print(line)\n", encoding="utf-8")
        script.chmod(0o755)


def last_input(log_dir: Path, tool: str) -> str:
    """What the stand-in ``tool`` read on stdin in its latest run (its arguments on the first line)."""
    runs = sorted(log_dir.glob(f"{tool}-*.txt"))
    assert runs, f"{tool} never ran"
    return runs[-1].read_text(encoding="utf-8")


def client_env(bin_dir: Path, port: int, token: str | None, home: Path, **extra: str) -> dict[str, str]:
    """The environment NeuralSync2's clients run in: its scripts first on PATH, our server's port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NS_", "NEURALSYNC", "TOOL_NAME"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", HOME=str(home), NS_HOST="127.0.0.1",
               NS_PORT=str(port), **extra)
    if token:
        env["NS_TOKEN"] = token
    return env


def run(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run one of its scripts (bounded in time), stdin closed unless given."""
    return subprocess.run(args, env=env, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


# ------------------------------------------------------------------ its server
@dataclass
class Ns2Server:
    """A running NeuralSync2 server on a scratch $HOME."""

    process: subprocess.Popen[bytes]
    url: str
    home: Path
    token: str

    @property
    def data(self) -> Path:
        """Its home directory (``~/.neuralsync``): memory.db, oplog.jsonl, config.yaml."""
        return self.home / ".neuralsync"

    def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        response = httpx.request(method, self.url + path, json=body, headers=headers, timeout=30)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()


def write_config(home: Path, port: int, token: str = "", site_id: str = "ns2-reference-site") -> Path:
    """``~/.neuralsync/config.yaml`` as its ``save_config`` writes it (PyYAML ``safe_dump``, sorted keys)."""
    data = home / ".neuralsync"
    data.mkdir(parents=True, exist_ok=True)
    config = data / "config.yaml"
    config.write_text(f"bind_host: 127.0.0.1\nbind_port: {port}\ndb_path: {data / 'memory.db'}\n"
                      f"oplog_path: {data / 'oplog.jsonl'}\nsite_id: {site_id}\ntoken: '{token}'\n"
                      "vector_dim: 512\n", encoding="utf-8")
    return config


@contextmanager
def ns2_server(ref: Reference, home: Path, token: str = "", port: int | None = None) -> Iterator[Ns2Server]:
    """``uvicorn neuralsync.server:app`` from its source tree, on 127.0.0.1; stopped (and waited for) on exit."""
    port = port or free_port()
    config = home / ".neuralsync" / "config.yaml"
    if not config.exists():
        write_config(home, port, token)
    mmap = home / ".neuralsync" / "memory.db.mmap"
    if not mmap.exists():
        with open(mmap, "wb") as handle:
            handle.truncate(MMAP_BYTES)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NS_", "NEURALSYNC", "PYTHON"))}
    env["HOME"] = str(home)
    process = subprocess.Popen([str(ref.python), "-m", "uvicorn", "neuralsync.server:app", "--host", "127.0.0.1",
                                "--port", str(port), "--log-level", "warning"], cwd=ref.src, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = Ns2Server(process, f"http://127.0.0.1:{port}", home, token)
    try:
        _wait_until_up(server)
        yield server
    finally:
        if process.poll() is None:
            stop(process)
        if process.stderr:
            process.stderr.close()


def _wait_until_up(server: Ns2Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            err = server.process.stderr.read().decode(errors="replace") if server.process.stderr else ""
            raise AssertionError(f"NeuralSync2's server exited early: {err[-2000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("NeuralSync2's server did not start in time")


def bridge(source: str, source_token: str, target: str, target_token: str,
           since: int = 0) -> tuple[int, dict[str, Any]]:
    """One round of a migration bridge: pull from ``source`` from ``since``, push it all to ``target``;
    (the cursor to pull from next, the push's answer)."""
    pulled = httpx.post(f"{source}/sync/pull", json={"since": since},
                        headers={"Authorization": f"Bearer {source_token}"}, timeout=30)
    assert pulled.status_code == 200, pulled.text
    answer = pulled.json()
    pushed = httpx.post(f"{target}/sync/push", content=json.dumps({"ops": answer["ops"]}),
                        headers={"Authorization": f"Bearer {target_token}", "Content-Type": "application/json"},
                        timeout=30)
    assert pushed.status_code == 200, pushed.text
    return answer["cursor"], pushed.json()
