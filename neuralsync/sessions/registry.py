"""The session registry: which processes use this store, from which tool, and whether they still live.

Each process registers ``{tool, pid, host, cwd, started, last_seen}``; dead
ones (pid gone on this host, or silent past a timeout on another) are reaped
before listing; servers keep ``last_seen`` fresh from a heartbeat thread.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from typing import Any

from ..store.storage import Storage
from ..utils import Periodic, now_ms, pid_alive

DEFAULT_SESSION_TIMEOUT_MS = 3_600_000
ENDED_RETENTION_MS = 7 * 86_400_000
HEARTBEAT_S = 30.0


class SessionRegistry:
    """The ``sessions`` table of one store."""

    def __init__(self, storage: Storage, session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS) -> None:
        self.storage = storage
        self.host = socket.gethostname()
        self.session_timeout_ms = session_timeout_ms
        self._heartbeat: Periodic | None = None

    def register(self, session_id: str, tool: str | None) -> None:
        """Record this process as a user of the store, reaping dead sessions first."""
        now = now_ms()
        with self.storage.write() as conn:
            self._reap(conn, now)
            conn.execute("INSERT OR REPLACE INTO sessions(id, tool, pid, host, cwd, started, last_seen, ended)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                         (session_id, tool, os.getpid(), self.host, _cwd(), now, now))

    def touch(self, session_id: str) -> None:
        """Update ``last_seen`` (heartbeat)."""
        with self.storage.write() as conn:
            conn.execute("UPDATE sessions SET last_seen = ? WHERE id = ?", (now_ms(), session_id))

    def end(self, session_id: str) -> None:
        """Mark the session ended (normal close)."""
        self.stop_heartbeat()
        with self.storage.write() as conn:
            conn.execute("UPDATE sessions SET ended = ?, last_seen = ? WHERE id = ? AND ended IS NULL",
                         (now_ms(), now_ms(), session_id))

    def start_heartbeat(self, session_id: str, interval: float = HEARTBEAT_S) -> None:
        """Keep ``last_seen`` fresh from a daemon thread (long-running servers)."""
        if self._heartbeat is None:
            self._heartbeat = Periodic("neuralsync-heartbeat", interval, lambda: self.touch(session_id))
            self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat thread if running."""
        if self._heartbeat is not None:
            self._heartbeat.stop()

    def list(self, include_ended: bool = False) -> list[dict[str, Any]]:
        """Sessions, newest first; dead ones are reaped before listing."""
        with self.storage.write() as conn:
            self._reap(conn, now_ms())
        sql = "SELECT id, tool, pid, host, cwd, started, last_seen, ended FROM sessions"
        if not include_ended:
            sql += " WHERE ended IS NULL"
        rows = self.storage.conn.execute(sql + " ORDER BY started DESC").fetchall()
        keys = ("id", "tool", "pid", "host", "cwd", "started", "last_seen", "ended")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def _reap(self, conn: sqlite3.Connection, now: int) -> int:
        """End sessions whose pid is gone (this host) or that fell silent (other hosts)."""
        dead = []
        for sid, pid, host, last_seen in conn.execute(
                "SELECT id, pid, host, last_seen FROM sessions WHERE ended IS NULL").fetchall():
            if (host == self.host and not pid_alive(pid)) or (
                    host != self.host and now - last_seen > self.session_timeout_ms):
                dead.append((now, sid))
        conn.executemany("UPDATE sessions SET ended = ? WHERE id = ?", dead)
        conn.execute("DELETE FROM sessions WHERE ended IS NOT NULL AND ended < ?", (now - ENDED_RETENTION_MS,))
        return len(dead)


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None
