"""A real ``neuralsync`` HTTP server subprocess on a free loopback port, for tests (not collected)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

START_TIMEOUT_S = 20.0


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    home: Path
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            if httpx.get(f"{url}/health", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("server did not start in time")


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> float:
    """Terminate and wait; returns how long the stop took."""
    start = time.monotonic()
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
        raise
    return time.monotonic() - start


@contextmanager
def live_server(home: Path) -> Iterator[Server]:
    """Start ``python -m neuralsync.server.run`` on ``home``; stopped (and waited for) on exit."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("NS_TOKEN", "NS_HOST", "NS_PORT", "NS_ENDPOINT")}
    process = subprocess.Popen(
        [sys.executable, "-m", "neuralsync.server.run", "--home", str(home), "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(process, url)
        token = (home / "server.token").read_text().strip()
        yield Server(process, url, home, token)
    finally:
        if process.poll() is None:
            stop(process)
        if process.stderr:
            process.stderr.close()
