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
- Work can be deferred within a transaction (:meth:`Storage.defer`) and done
  set-at-a-time: before this thread next takes its connection, or at the end
  of the level; a level that rolls back drops it.
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
from ..stages import COMMIT, LOCK_WAIT, stage

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
    "auto_vacuum": str,
    "wal_autocheckpoint": int,
    "journal_size_limit": int,
    "analysis_limit": int,
}
_IDENT_VALUES = {"wal", "normal", "full", "on", "off", "memory", "incremental"}
BUSY_RETRIES = 3


def pragmas_for(config: MemoryConfig) -> dict[str, object]:
    """The per-connection pragmas a config asks for (journal_mode is per-file but cheap to repeat)."""
    return {
        # Only effective before the file is created (a store keeps the size it was made with). 8 KB: a vector
        # row (384 float32, ~1.57 KB) fits twice in a 4 KB page, which left the embeddings table 23% empty:
        # the 100k default store of bench_compact.py has a 357 MB database with 8 KB pages, 404 MB with 4 KB.
        # Single writes take as long (measured side by side).
        "page_size": 8192,
        "auto_vacuum": "incremental",  # likewise: the compactor frees pages a slice at a time
        "journal_mode": "wal",
        "synchronous": config.durability,
        "busy_timeout": config.busy_timeout_ms,
        "foreign_keys": "on",
        "temp_store": "memory",
        "mmap_size": config.pool_size_mb * 1024 * 1024,
        "cache_size": -config.cache_size_mb * 1024,  # negative = KiB
        "wal_autocheckpoint": 1000,
        "journal_size_limit": 64 * 1024 * 1024,
        # Bounds the ANALYZE that `PRAGMA optimize` runs at every process's close: unbounded, it read the
        # whole memories table again at each CLI call on a 100k store (40-70 ms; 1-3 ms with the bound).
        "analysis_limit": 1000,
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


def make_private(db: Path, home: bool = True) -> None:
    """The database (0600, created empty if absent, so SQLite's WAL and shared-memory files, which take
    its mode, are born private too) and, if ``home``, its directory (0700): memories are the user's alone.

    An existing store is tightened only where this user owns the file, and only by removing group and
    other bits (someone who shares a store on purpose through group bits is told, not overridden, by
    nothing here: a file owned by another user is left as it is)."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    if uid is None:  # no POSIX permissions to speak of
        return
    if home:
        _tighten(db.parent, 0o700, uid)
    if not db.exists():
        try:
            os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:  # another process created it first: tightened below like any other
            pass
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        _tighten(path, 0o600, uid)


def _tighten(path: Path, mode: int, uid: int) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if st.st_uid == uid and st.st_mode & 0o077:
        os.chmod(path, (st.st_mode & 0o7777 & ~0o077) | (mode & 0o700))


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
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            make_private(self.path, home=self.path.parent == config.home)
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
            local.deferred = {}
        elif local.deferred:
            self._run_deferred(conn)
        return conn

    def peek_conn(self) -> sqlite3.Connection:
        """This thread's connection without doing its deferred work first: only for reads that
        account for that work themselves (:meth:`is_deferred`)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid() or self._closed:
            return self.conn
        return conn

    # ------------------------------------------------------------ deferred work
    def defer(self, flush: Callable[[sqlite3.Connection, list[Any]], None], item: Any, key: object = None) -> int:
        """Queue ``item`` for ``flush(conn, items)``, which runs (once for all items queued for it, in
        order) before this thread next takes :attr:`conn`, or at the end of the current transaction
        level; a level that rolls back drops it. Only inside :meth:`write`. ``key`` makes the item
        visible to :meth:`is_deferred`. Returns how many items wait for ``flush``."""
        if not self.in_write:
            raise StoreError("deferred work needs an open write transaction (Storage.write)")
        items, keys = self._local.deferred.setdefault(flush, ([], set()))
        items.append(item)
        if key is not None:
            keys.add(key)
        return len(items)

    def is_deferred(self, flush: Callable[[sqlite3.Connection, list[Any]], None], key: object) -> bool:
        """True if an item with ``key`` waits for ``flush`` on this thread."""
        waiting = getattr(self._local, "deferred", {}).get(flush)
        return waiting is not None and key in waiting[1]

    def flush_deferred(self) -> None:
        """Do this thread's deferred work now."""
        if getattr(self._local, "deferred", None):
            self._run_deferred(self._local.conn)

    def _run_deferred(self, conn: sqlite3.Connection) -> None:
        """Do the deferred work; if it fails half-way, the transaction cannot commit (the enclosing
        level rolls back, as after a failed joined block)."""
        local = self._local
        pending, local.deferred = local.deferred, {}
        try:
            for flush, (items, _) in pending.items():
                flush(conn, items)
        except BaseException as exc:
            local.poisoned, local.tx_cache = True, {}
            if isinstance(exc, sqlite3.Error):
                raise translate(exc) from exc
            raise

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
        # A joined block is no new level: work deferred before it stays deferred.
        conn = self.peek_conn() if not savepoint and self.in_write else self.conn
        local = self._local
        depth = local.depth
        was_poisoned = local.poisoned
        if depth == 0:
            with stage(LOCK_WAIT):  # waiting for another connection's write transaction to end
                self._with_retry(lambda: conn.execute("BEGIN IMMEDIATE"))
            local.poisoned = was_poisoned = False
            local.tx_cache, local.deferred = {}, {}
        elif savepoint:
            conn.execute(f"SAVEPOINT sp{depth}")
        local.depth = depth + 1
        try:
            yield conn
        except BaseException as exc:
            local.depth = depth
            local.tx_cache, local.deferred = {}, {}
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
        if local.deferred and not local.poisoned:
            try:
                self._run_deferred(conn)
            except BaseException as exc:
                local.tx_cache, local.deferred = {}, {}
                self._rollback(conn, depth)
                local.poisoned = was_poisoned
                if isinstance(exc, sqlite3.Error):
                    raise translate(exc) from exc
                raise
        local.deferred = {}
        if local.poisoned and not was_poisoned:  # a failed write inside this level: undo the level alone
            self._rollback(conn, depth)
            local.poisoned, local.tx_cache = was_poisoned, {}
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
