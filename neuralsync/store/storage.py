"""SQLite storage: the connection factory, pragmas, transactions and migrations.

Concurrency model, said out loud:
- One connection per thread (``threading.local``), re-opened after ``fork``:
  a connection is never shared across threads or processes.
- WAL journal: readers never block the single writer and vice versa.
- Every write transaction starts with ``BEGIN IMMEDIATE`` so a conflict shows
  at ``BEGIN`` (where waiting is safe), not at the first write. SQLite waits up
  to ``busy_timeout``; if the lock is still held we retry a bounded number of
  times, then raise the typed, transient :class:`StoreBusy`. Nothing is dropped.
- Transactions nest: the outer level is BEGIN/COMMIT, inner levels savepoints;
  any exception rolls back its level.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from ..config import MemoryConfig
from ..errors import StoreBusy, StoreError
from ..stages import COMMIT, stage

# Only these pragmas may be set, and only with these value types: the factory
# formats them into SQL, so nothing caller-controlled reaches the string.
PRAGMA_WHITELIST: dict[str, type] = {
    "journal_mode": str,
    "synchronous": str,
    "busy_timeout": int,
    "foreign_keys": str,
    "temp_store": str,
    "mmap_size": int,
    "cache_size": int,
    "page_size": int,
    "wal_autocheckpoint": int,
    "journal_size_limit": int,
}
_IDENT_VALUES = {"wal", "normal", "full", "on", "off", "memory"}
BUSY_RETRIES = 3


def pragmas_for(config: MemoryConfig) -> dict[str, object]:
    """The per-connection pragmas a config asks for (journal_mode is per-file but cheap to repeat)."""
    return {
        "page_size": 4096,  # only effective before the file is created
        "journal_mode": "wal",
        "synchronous": config.durability,
        "busy_timeout": config.busy_timeout_ms,
        "foreign_keys": "on",
        "temp_store": "memory",
        "mmap_size": config.pool_size_mb * 1024 * 1024,
        "cache_size": -config.cache_size_mb * 1024,  # negative = KiB
        "wal_autocheckpoint": 1000,
        "journal_size_limit": 64 * 1024 * 1024,
    }


def _pragma_sql(name: str, value: object) -> str:
    expected = PRAGMA_WHITELIST.get(name)
    if expected is None or not isinstance(value, expected) or isinstance(value, bool):
        raise StoreError(f"pragma {name}={value!r} is not allowed")
    if isinstance(value, str) and value not in _IDENT_VALUES:
        raise StoreError(f"pragma {name}={value!r} is not allowed")
    return f"PRAGMA {name}={value}"


def _run_pragma(conn: sqlite3.Connection, sql: str) -> list[Any]:
    return conn.execute(sql).fetchall()


def translate(exc: sqlite3.Error) -> Exception:
    """Map a driver error to the package hierarchy (the storage boundary)."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return StoreBusy(f"store is busy: {exc}")
    return StoreError(f"database error: {exc}")


class Storage:
    """Owns the database file: connections, transactions and schema."""

    def __init__(self, config: MemoryConfig, path: Path | None = None) -> None:
        self.config = config
        self.path = path or config.db_path
        self._pragmas = pragmas_for(config)
        self._local = threading.local()
        # (owning thread, connection): a finished thread's connection is closed
        # the next time any thread connects, so short-lived threads leak nothing.
        self._all: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._all_lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store directory {self.path.parent}: {exc}") from exc

    # ------------------------------------------------------------ connections
    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use and after a fork."""
        if self._closed:
            raise StoreError("store is closed")
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            conn = self._connect()
            local.conn, local.pid, local.depth, local.poisoned, local.tx_cache = conn, os.getpid(), 0, False, {}
        return conn

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self.config.busy_timeout_ms / 1000)
            for name, value in self._pragmas.items():
                self._with_retry(partial(_run_pragma, conn, _pragma_sql(name, value)))
        except sqlite3.Error as exc:
            raise translate(exc) from exc
        with self._all_lock:
            alive = []
            for owner, other in self._all:
                if owner() is None or not owner().is_alive():  # type: ignore[union-attr]
                    other.close()
                else:
                    alive.append((owner, other))
            alive.append((weakref.ref(threading.current_thread()), conn))
            self._all = alive
        return conn

    @property
    def cache_size_kib(self) -> int:
        """The page cache of this process's connections, in KiB."""
        return -int(self._pragmas["cache_size"])  # type: ignore[call-overload]

    def set_cache_size(self, kib: int) -> None:
        """Resize the page cache of every connection of this process (and of those opened later)."""
        sql = _pragma_sql("cache_size", -int(kib))
        self._pragmas["cache_size"] = -int(kib)
        with self._all_lock:
            conns = [conn for _, conn in self._all]
        try:
            for conn in conns:
                conn.execute(sql)
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    def close(self) -> None:
        """Close every connection this object opened in this process."""
        self._closed = True
        with self._all_lock:
            conns, self._all = self._all, []
        pid = os.getpid()
        mine = getattr(self._local, "pid", pid) == pid
        for _, conn in conns:
            if mine:
                conn.close()
        self._local = threading.local()

    # ------------------------------------------------------------ transactions
    @contextmanager
    def write(self, savepoint: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``); nested calls become savepoints.

        ``savepoint=False`` joins an enclosing transaction without a savepoint:
        FTS5 flushes its pending index at every savepoint boundary, so the op
        path inside a batch avoids them. A failure inside such a block cannot be
        undone alone, so it poisons the enclosing transaction, which then rolls
        back as a whole - a batch stays all-or-nothing even if the error is caught.
        """
        conn = self.conn
        local = self._local
        depth = local.depth
        was_poisoned = local.poisoned
        if depth == 0:
            self._with_retry(lambda: conn.execute("BEGIN IMMEDIATE"))
            local.poisoned = was_poisoned = False
            local.tx_cache = {}
        elif savepoint:
            conn.execute(f"SAVEPOINT sp{depth}")
        local.depth = depth + 1
        try:
            yield conn
        except BaseException as exc:
            local.depth = depth
            local.tx_cache = {}
            if depth and not savepoint:
                local.poisoned = True
            else:
                self._rollback(conn, depth)
                local.poisoned = was_poisoned
            if isinstance(exc, sqlite3.Error):
                raise translate(exc) from exc
            raise
        local.depth = depth
        if depth and not savepoint:
            return
        if depth == 0 and local.poisoned:
            self._rollback(conn, 0)
            raise StoreError("transaction rolled back: a write inside it failed")
        try:
            with stage(COMMIT):
                conn.execute("COMMIT" if depth == 0 else f"RELEASE sp{depth}")
        except sqlite3.Error as exc:
            self._rollback(conn, depth)
            raise translate(exc) from exc

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read snapshot (``BEGIN`` deferred) unless already in a transaction."""
        conn = self.conn
        if self._local.depth or conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN")
        self._local.depth = 1
        try:
            yield conn
        finally:
            self._local.depth = 0
            if conn.in_transaction:
                conn.execute("COMMIT")

    @property
    def tx_cache(self) -> dict[str, object]:
        """Scratch values valid only inside the current write transaction on this thread.

        Emptied at ``BEGIN`` and whenever any level rolls back, so nothing in it
        can outlive the data it was derived from.
        """
        cache: dict[str, object] = self._local.tx_cache
        return cache

    @property
    def in_write(self) -> bool:
        """True inside a :meth:`write` block on this thread."""
        return getattr(self._local, "depth", 0) > 0

    @staticmethod
    def _rollback(conn: sqlite3.Connection, depth: int) -> None:
        try:
            if depth == 0:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            else:
                conn.execute(f"ROLLBACK TO sp{depth}")
                conn.execute(f"RELEASE sp{depth}")
        except sqlite3.Error:
            pass  # the connection already rolled back (e.g. after a disk error)

    def _with_retry(self, action: Callable[[], object]) -> object:
        """Run ``action``, retrying only on a locked database, then :class:`StoreBusy`."""
        for attempt in range(BUSY_RETRIES + 1):
            try:
                return action()
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if ("locked" not in text and "busy" not in text) or attempt == BUSY_RETRIES:
                    raise translate(exc) from exc
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def sizes(self) -> dict[str, int]:
        """Bytes on disk: database, WAL and total."""
        wal = self.path.with_name(self.path.name + "-wal")
        size = self.path.stat().st_size if self.path.exists() else 0
        wal_size = wal.stat().st_size if wal.exists() else 0
        return {"db_bytes": size, "wal_bytes": wal_size, "total_bytes": size + wal_size}

    # ------------------------------------------------------------ schema
    def migrate(self, migrations: list[tuple[int, str, Callable[[sqlite3.Connection], None]]]) -> int:
        """Apply numbered migrations not yet recorded; returns the schema version."""
        with self.write() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations("
                         "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)")
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, step in sorted(migrations):
                if version in done:
                    continue
                step(conn)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                             (version, name, int(time.time() * 1000)))
            return max(done | {v for v, _, _ in migrations}, default=0)
