"""The relay's PostgreSQL side: numbered migrations, users as roles, pushes and pulls under row-level security.

Every request of a user runs in a transaction as that user's own role (``SET LOCAL ROLE``), so the database
itself refuses a non-member's read or write (the policies in ``migrations/0001_relay.sql``), whatever the
relay's code does. The owner connection (the one that runs migrations and keeps the membership from
verified membership ops) never reads ops for a user.

Cursors are per scope and gap-free: a push takes the scope row's lock for its transaction and numbers its
ops after the row's ``last_seq``, so pushes commit in the order of their numbers and a reader that has seen
seq *n* has seen every op below it. An op already stored in the scope is skipped before numbering (pushed
twice, stored once, no hole); a push cut off mid-batch rolls back whole.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import DependencyMissing, SyncRejected

if TYPE_CHECKING:
    import psycopg

    Conn = psycopg.Connection[tuple[Any, ...]]

ROLES = ("reader", "writer", "admin")
ROLE_PREFIX = "nsu_"
MAX_PULL = 5000
MAX_IDLE = 8  # idle connections kept per store (one per thread-pool worker that is busy at once)


@dataclass(frozen=True, slots=True)
class RelayOp:
    """One op as the relay keeps it: its id (checked by the caller against the body), body and signature."""

    op_id: bytes
    body: bytes
    sig: bytes
    author: bytes


@dataclass(frozen=True, slots=True)
class Pulled:
    seq: int
    op_id: bytes
    body: bytes
    sig: bytes


@dataclass(frozen=True, slots=True)
class PushResult:
    stored: int
    duplicates: int
    last_seq: int


def role_name(user_key: bytes) -> str:
    """The PostgreSQL role a user's requests run as (160 bits of the key: names are at most 63 bytes)."""
    if len(user_key) != 32:
        raise SyncRejected("a user key is 32 bytes", field="user_key")
    return ROLE_PREFIX + user_key.hex()[:40]


def migrations() -> list[tuple[int, str, str]]:
    """(number, name, SQL) of every migration shipped in the package, in order."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def _psycopg() -> ModuleType:
    try:
        import psycopg
    except ImportError:
        raise DependencyMissing("the relay needs psycopg: pip install 'neuralsync[team]'") from None
    return psycopg


class RelayStore:
    """The relay's tables through one owner connection string (a role with CREATEROLE, not a superuser)."""

    def __init__(self, conninfo: str, max_idle: int = MAX_IDLE) -> None:
        self.conninfo = conninfo
        self._pg = _psycopg()
        self._idle: list[Conn] = []
        self._max_idle = max_idle
        self._lock = threading.Lock()

    @contextmanager
    def _connection(self) -> Iterator[Conn]:
        """A connection from the idle ones (a new backend costs ~10 ms), returned after use if it is clean:
        out of any transaction (so the role is the owner's again: ``SET LOCAL`` ends with its transaction)."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._pg.connect(self.conninfo, autocommit=False)
        try:
            yield conn
        finally:
            clean = not conn.closed and conn.info.transaction_status == self._pg.pq.TransactionStatus.IDLE
            with self._lock:
                keep = clean and len(self._idle) < self._max_idle
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def close(self) -> None:
        """Close the idle connections (those in use close when returned)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    @contextmanager
    def _owner(self) -> Iterator[Conn]:
        with self._connection() as conn, conn.transaction():
            yield conn

    @contextmanager
    def _as_user(self, user_key: bytes) -> Iterator[Conn]:
        """A transaction running as the user's role: row-level security applies to everything in it."""
        role = role_name(user_key)
        with self._connection() as conn, conn.transaction():
            conn.execute(self._pg.sql.SQL("SET LOCAL ROLE {}").format(self._pg.sql.Identifier(role)))
            yield conn

    # -- schema
    def migrate(self) -> int:
        """Apply the shipped migrations not yet applied (each in its transaction, one relay at a time)."""
        applied = 0
        with self._owner() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('neuralsync relay migrations'))")
            conn.execute("CREATE TABLE IF NOT EXISTS relay_migrations (number integer PRIMARY KEY, name text NOT NULL,"
                         " sha256 text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            done = {row[0]: row[1] for row in conn.execute("SELECT number, sha256 FROM relay_migrations")}
            for number, name, text in migrations():
                digest = hashlib.sha256(text.encode()).hexdigest()
                if number in done:
                    if done[number] != digest:
                        raise SyncRejected(f"migration {name} differs from the one applied", field="migrations")
                    continue
                conn.execute(text)
                conn.execute("INSERT INTO relay_migrations(number, name, sha256) VALUES (%s, %s, %s)",
                             (number, name, digest))
                applied += 1
        return applied

    def version(self) -> int:
        with self._owner() as conn:
            row = conn.execute("SELECT coalesce(max(number), 0) FROM relay_migrations").fetchone()
        return int(row[0]) if row else 0

    # -- users, devices, scopes, members (the owner, from verified ops)
    def add_user(self, user_key: bytes) -> str:
        """The user's role, created with no privileges beyond ``relay_user``'s (idempotent)."""
        role = role_name(user_key)
        sql = self._pg.sql
        with self._owner() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('neuralsync relay roles'))")
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN IN ROLE relay_user").format(sql.Identifier(role)))
            conn.execute(sql.SQL("GRANT {} TO current_user").format(sql.Identifier(role)))
            conn.execute("INSERT INTO relay_users(user_key, role_name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                         (user_key, role))
        return role

    def add_device(self, device_key: bytes, user_key: bytes, certificate: bytes) -> None:
        with self._owner() as conn:
            conn.execute("INSERT INTO relay_devices(device_key, user_key, certificate) VALUES (%s, %s, %s)"
                         " ON CONFLICT (device_key) DO NOTHING", (device_key, user_key, certificate))

    def user_of_device(self, device_key: bytes) -> bytes | None:
        with self._owner() as conn:
            row = conn.execute("SELECT user_key FROM relay_devices WHERE device_key = %s", (device_key,)).fetchone()
        return None if row is None else bytes(row[0])

    def create_scope(self, scope_id: bytes, admin: bytes) -> None:
        with self._owner() as conn:
            conn.execute("INSERT INTO relay_scopes(scope_id) VALUES (%s) ON CONFLICT DO NOTHING", (scope_id,))
            conn.execute("INSERT INTO relay_members(scope_id, user_key, role) VALUES (%s, %s, 'admin')"
                         " ON CONFLICT DO NOTHING", (scope_id, admin))

    def set_member(self, scope_id: bytes, user_key: bytes, role: str) -> None:
        if role not in ROLES:
            raise SyncRejected(f"role must be one of {', '.join(ROLES)}", field="role")
        with self._owner() as conn:
            conn.execute("INSERT INTO relay_members(scope_id, user_key, role) VALUES (%s, %s, %s)"
                         " ON CONFLICT (scope_id, user_key) DO UPDATE SET role = excluded.role",
                         (scope_id, user_key, role))

    def remove_member(self, scope_id: bytes, user_key: bytes) -> None:
        """Stops the user's further reads and writes; what they already pulled stays theirs."""
        with self._owner() as conn:
            conn.execute("DELETE FROM relay_members WHERE scope_id = %s AND user_key = %s", (scope_id, user_key))

    def scope_exists(self, scope_id: bytes) -> bool:
        with self._owner() as conn:
            return conn.execute("SELECT 1 FROM relay_scopes WHERE scope_id = %s", (scope_id,)).fetchone() is not None

    def role_in(self, scope_id: bytes, user_key: bytes) -> str | None:
        """The user's role in the scope as the relay's table has it (None: not a member)."""
        with self._owner() as conn:
            row = conn.execute("SELECT role FROM relay_members WHERE scope_id = %s AND user_key = %s",
                               (scope_id, user_key)).fetchone()
        return None if row is None else str(row[0])

    def apply_member(self, scope_id: bytes, user_key: bytes, role: str, hlc: int, op_id: bytes) -> bool:
        """Set (or, for ``removed``, drop) a member from a membership op, unless a later op already did:
        the latest per user by (hlc, op id) wins, whatever order the ops arrive in. True if it changed."""
        if role not in (*ROLES, "removed"):
            raise SyncRejected(f"role must be one of {', '.join(ROLES)} or removed", field="role")
        with self._owner() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('neuralsync relay members'))")
            row = conn.execute("SELECT hlc, op_id FROM relay_member_clock WHERE scope_id = %s AND user_key = %s",
                               (scope_id, user_key)).fetchone()
            if row is not None and (int(row[0]), bytes(row[1])) >= (hlc, op_id):
                return False
            conn.execute("INSERT INTO relay_member_clock(scope_id, user_key, hlc, op_id) VALUES (%s, %s, %s, %s)"
                         " ON CONFLICT (scope_id, user_key) DO UPDATE SET hlc = excluded.hlc, op_id = excluded.op_id",
                         (scope_id, user_key, hlc, op_id))
            if role == "removed":
                conn.execute("DELETE FROM relay_members WHERE scope_id = %s AND user_key = %s", (scope_id, user_key))
            else:
                conn.execute("INSERT INTO relay_members(scope_id, user_key, role) VALUES (%s, %s, %s)"
                             " ON CONFLICT (scope_id, user_key) DO UPDATE SET role = excluded.role",
                             (scope_id, user_key, role))
        return True

    def use_nonce(self, device_key: bytes, nonce: bytes, at_ms: int, now_ms: int, window_ms: int,
                  max_per_device: int) -> None:
        """Record a request's nonce for every relay on this database, or refuse a replay (401) or a flood (429)."""
        with self._owner() as conn:
            conn.execute("DELETE FROM relay_nonces WHERE at_ms < %s", (now_ms - window_ms,))
            (count,) = conn.execute("SELECT count(*) FROM relay_nonces WHERE device_key = %s",
                                    (device_key,)).fetchone() or (0,)
            if int(count) >= max_per_device:
                raise SyncRejected("too many requests from this device in the last 10 minutes; retry later",
                                   status=429, field="X-Neuralsync-Key")
            fresh = conn.execute("INSERT INTO relay_nonces(device_key, nonce, at_ms) VALUES (%s, %s, %s)"
                                 " ON CONFLICT DO NOTHING RETURNING 1", (device_key, nonce, now_ms)).fetchone()
            if fresh is None:
                raise SyncRejected("replayed request (nonce already used)", status=401, field="X-Neuralsync-Nonce")

    # -- what members do
    def push(self, user_key: bytes, scope_id: bytes, ops: Sequence[RelayOp]) -> PushResult:
        """Append the ops not yet in the scope, numbered after its cursor, as one transaction."""
        with self._as_user(user_key) as conn:
            row = conn.execute("SELECT last_seq FROM relay_scopes WHERE scope_id = %s FOR UPDATE",
                               (scope_id,)).fetchone()
            if row is None:  # hidden by the policy: not a writer here (or no such scope)
                raise SyncRejected("not a writer of this scope", status=403, field="scope")
            last = int(row[0])
            ids = [op.op_id for op in ops]
            held = {bytes(r[0]) for r in conn.execute(
                "SELECT op_id FROM relay_ops WHERE scope_id = %s AND op_id = ANY(%s)", (scope_id, ids))}
            fresh: dict[bytes, RelayOp] = {}
            for op in ops:
                if op.op_id not in held and op.op_id not in fresh:
                    fresh[op.op_id] = op
            rows = [(scope_id, op.op_id, last + n, op.body, op.sig, op.author)
                    for n, op in enumerate(fresh.values(), start=1)]
            if rows:  # one statement: one round trip, and one notification for the whole batch
                columns = list(zip(*rows, strict=True))
                conn.execute("INSERT INTO relay_ops(scope_id, op_id, seq, body, sig, author)"
                             " SELECT %s, * FROM unnest(%s::bytea[], %s::bigint[], %s::bytea[], %s::bytea[],"
                             " %s::bytea[])", (scope_id, *(list(c) for c in columns[1:])))
                conn.execute("UPDATE relay_scopes SET last_seq = %s WHERE scope_id = %s", (last + len(rows), scope_id))
        return PushResult(len(rows), len(ops) - len(rows), last + len(rows))

    def pull(self, user_key: bytes, scope_id: bytes, after: int = 0, limit: int = 1000) -> tuple[list[Pulled], int]:
        """(ops after the cursor in cursor order, the scope's last seq) as the user sees them."""
        limit = max(1, min(limit, MAX_PULL))
        with self._as_user(user_key) as conn:
            row = conn.execute("SELECT last_seq FROM relay_scopes WHERE scope_id = %s", (scope_id,)).fetchone()
            if row is None:
                raise SyncRejected("not a member of this scope", status=403, field="scope")
            found = conn.execute("SELECT seq, op_id, body, sig FROM relay_ops WHERE scope_id = %s AND seq > %s"
                                 " ORDER BY seq LIMIT %s", (scope_id, after, limit)).fetchall()
        return [Pulled(int(s), bytes(i), bytes(b), bytes(g)) for s, i, b, g in found], int(row[0])

    def scopes_of(self, user_key: bytes) -> list[tuple[bytes, str, int]]:
        """(scope, role, last seq) of every scope the user is a member of."""
        with self._as_user(user_key) as conn:
            found = conn.execute(
                "SELECT s.scope_id, m.role, s.last_seq FROM relay_scopes s JOIN relay_members m USING (scope_id)"
                " JOIN relay_users u ON u.user_key = m.user_key WHERE u.role_name = current_user").fetchall()
        return [(bytes(s), str(r), int(n)) for s, r, n in found]
