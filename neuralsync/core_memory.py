"""Many processes, one store: the session registry, the change feed, growth tracking.

No daemon or broker: every process opens the same SQLite file. The change feed
is the op log's local sequence number; a follower polls ``PRAGMA data_version``
(which changes only when another connection commits, and costs no I/O) every
``poll_interval`` seconds and reads ``ops WHERE seq > last`` when it moves.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .model import Change
from .storage import read_only_uri
from .store import Store, read_changes
from .utils import Periodic, now_ms

DEFAULT_POLL_INTERVAL = 0.02
FEED_BATCH = 1000
DEFAULT_SESSION_TIMEOUT_MS = 3_600_000
ENDED_RETENTION_MS = 7 * 86_400_000
DAY_MS = 86_400_000


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class CoreMemory:
    """Sessions, change feed and growth for one :class:`Store`."""

    def __init__(self, store: Store, session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS) -> None:
        self.store = store
        self.host = socket.gethostname()
        self.session_timeout_ms = session_timeout_ms
        self._heartbeat: Periodic | None = None

    # ------------------------------------------------------------ sessions
    def register_session(self, session_id: str, tool: str | None) -> None:
        """Record this process as a user of the store, reaping dead sessions first."""
        now = now_ms()
        with self.store.storage.write() as conn:
            self._reap(conn, now)
            conn.execute("INSERT OR REPLACE INTO sessions(id, tool, pid, host, cwd, started, last_seen, ended)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                         (session_id, tool, os.getpid(), self.host, _cwd(), now, now))

    def touch(self, session_id: str) -> None:
        """Update ``last_seen`` (heartbeat)."""
        with self.store.storage.write() as conn:
            conn.execute("UPDATE sessions SET last_seen = ? WHERE id = ?", (now_ms(), session_id))

    def end_session(self, session_id: str) -> None:
        """Mark the session ended (normal close)."""
        self.stop_heartbeat()
        with self.store.storage.write() as conn:
            conn.execute("UPDATE sessions SET ended = ?, last_seen = ? WHERE id = ? AND ended IS NULL",
                         (now_ms(), now_ms(), session_id))

    def start_heartbeat(self, session_id: str, interval: float = 30.0) -> None:
        """Keep ``last_seen`` fresh from a daemon thread (long-running servers)."""
        if self._heartbeat is None:
            self._heartbeat = Periodic("neuralsync-heartbeat", interval, lambda: self.touch(session_id))
            self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat thread if running."""
        if self._heartbeat is not None:
            self._heartbeat.stop()

    def sessions(self, include_ended: bool = False) -> list[dict[str, Any]]:
        """Sessions, newest first; dead ones are reaped before listing."""
        with self.store.storage.write() as conn:
            self._reap(conn, now_ms())
        sql = "SELECT id, tool, pid, host, cwd, started, last_seen, ended FROM sessions"
        if not include_ended:
            sql += " WHERE ended IS NULL"
        rows = self.store.storage.conn.execute(sql + " ORDER BY started DESC").fetchall()
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

    # ------------------------------------------------------------ change feed
    def last_seq(self) -> int:
        """The newest local sequence number (0 for an empty store)."""
        return int(self.store.storage.conn.execute("SELECT coalesce(max(seq), 0) FROM ops").fetchone()[0])

    def subscribe(self, since: int | None = None, timeout: float | None = None,
                  stop: threading.Event | None = None,
                  poll_interval: float = DEFAULT_POLL_INTERVAL) -> Iterator[Change]:
        """Yield every change after ``since`` (default: now) as it is committed by any process.

        Ends when ``stop`` is set or after ``timeout`` seconds (None: never).
        Uses its own read-only connection, closed when the iterator is closed.
        """
        conn = sqlite3.connect(read_only_uri(self.store.storage.path), uri=True, check_same_thread=False)
        try:
            cursor = self.last_seq() if since is None else since
            deadline = None if timeout is None else time.monotonic() + timeout
            version = None
            while not (stop is not None and stop.is_set()):
                current = conn.execute("PRAGMA data_version").fetchone()[0]
                if current != version:
                    version = current
                    while batch := read_changes(conn, cursor, FEED_BATCH):
                        for change in batch:
                            cursor = change.seq
                            yield change
                if deadline is not None and time.monotonic() >= deadline:
                    return
                time.sleep(poll_interval)
        finally:
            conn.close()

    def watch(self, callback: Callable[[Change], None], since: int | None = None) -> threading.Event:
        """Call ``callback`` for each change from a daemon thread; set the returned event to stop."""
        stop = threading.Event()
        start = self.last_seq() if since is None else since

        def run() -> None:
            for change in self.subscribe(since=start, stop=stop):
                callback(change)

        threading.Thread(target=run, name="neuralsync-watch", daemon=True).start()
        return stop

    # ------------------------------------------------------------ growth
    def growth(self, days: int = 30, quota_bytes: int | None = None) -> dict[str, Any]:
        """Memories and estimated bytes per day over the last ``days``, and when ``quota_bytes`` is reached."""
        now = now_ms()
        conn = self.store.storage.conn
        rows = conn.execute("SELECT created_at / ? AS day, count(*) FROM memories WHERE created_at >= ?"
                            " GROUP BY day ORDER BY day", (DAY_MS, now - days * DAY_MS)).fetchall()
        total = conn.execute("SELECT count(*) FROM memories").fetchone()[0]
        size = self.store.sizes()["total_bytes"]
        per_memory = size / total if total else 0.0
        per_day = [{"day": time.strftime("%Y-%m-%d", time.gmtime(day * DAY_MS / 1000)), "memories": n,
                    "bytes": int(n * per_memory)} for day, n in rows]
        daily_bytes = sum(d["bytes"] for d in per_day) / max(1, days)
        result: dict[str, Any] = {"days": days, "per_day": per_day, "total_bytes": size,
                                  "bytes_per_memory": round(per_memory, 1),
                                  "avg_bytes_per_day": round(daily_bytes, 1)}
        if quota_bytes:
            remaining = quota_bytes - size
            result["quota_bytes"] = quota_bytes
            result["days_until_quota"] = (0.0 if remaining <= 0 else
                                          None if daily_bytes == 0 else round(remaining / daily_bytes, 1))
        return result


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None
