"""Integrity checks: SQLite, FTS, every op's hash and signature, and a rebuild
of the materialised state from the log into a scratch database.

The state digest covers what replicas must agree on (memories, tags,
tombstones, persona, heads) and nothing local (rowids, access statistics,
apply order), so two replicas holding the same ops report the same digest.
It includes the create-time fields (``session``, ``created_at``): the
materialiser takes them from a memory's first create whatever the arrival
order, so a replica where a later create of the id had rewritten them would
differ both from its peers and from its own rebuild.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import InvalidOp, StoreError
from ..model import Op
from ..oplog import codec, cuts
from ..oplog.graph import pred_nodes
from ..oplog.materialize import apply_op
from ..store.schema import MIGRATIONS
from ..store.storage import Storage

Progress = Callable[[int, int], None]
FTS = "memories_fts"
FTS_SETTINGS = (("pgsz", 4050), ("automerge", 8), ("crisismerge", 32))  # as schema migration 1 sets them
# FTS5 (SQLite 3.40) refuses a structure of more than 2000 levels as corrupt, and its negative 'merge'
# adds one or two levels a round when rows arrive between rounds (reproduced: ~1000 rounds with writes in
# between, as a long compaction beside a writer did). Its own merges keep a few; past this many, doctor warns.
FTS_MAX_LEVELS = 64
_FTS_STRUCTURE_V2 = b"\xff\x00\x00\x01"
MAX_LISTED = 20

_DIGEST_QUERIES = (
    "SELECT id, content, tags, scope, kind, tool, source, session, priority, confidence, metadata,"
    " created_at, updated_at, expires_at, content_hash, archived FROM memories ORDER BY id",
    "SELECT record_id FROM tombstones ORDER BY record_id",
    "SELECT key, value FROM kv ORDER BY key",
    "SELECT id FROM heads ORDER BY id",
)


@dataclass
class DoctorReport:
    """What ``doctor`` found; ``ok`` is True when every check passed."""

    ok: bool = True
    integrity: str = "ok"
    fts: str = "ok"
    ops_checked: int = 0
    bad_ops: list[str] = field(default_factory=list)
    cuts: list[str] = field(default_factory=list)  # truncated ops a valid signed cut does not vouch for
    digest: str = ""
    rebuilt_digest: str = ""
    differences: list[str] = field(default_factory=list)
    memories: int = 0

    def fail(self, message: str, bucket: list[str]) -> None:
        """Record one problem (the list is capped, ``ok`` flips either way)."""
        self.ok = False
        if len(bucket) < MAX_LISTED:
            bucket.append(message)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


def state_digest(conn: sqlite3.Connection) -> str:
    """SHA-256 over the replicated state in canonical order."""
    digest = hashlib.sha256()
    for sql in _DIGEST_QUERIES:
        digest.update(sql.encode())
        for row in conn.execute(sql):
            digest.update(codec.encode(list(row)))
    return digest.hexdigest()


def run_doctor(storage: Storage, progress: Progress | None = None, quick: bool = False,
               signer: bytes | None = None) -> DoctorReport:
    """Check everything; ``quick`` uses ``PRAGMA quick_check`` instead of a full integrity check.
    ``signer``: this replica's key, the only one whose cuts may truncate its log."""
    report = DoctorReport()
    conn = storage.conn
    report.integrity = ", ".join(r[0] for r in conn.execute(
        "PRAGMA quick_check" if quick else "PRAGMA integrity_check"))
    if report.integrity != "ok":
        report.ok = False
    problem = fts_problem(conn)
    if problem is not None:
        report.fts = f"{problem} (`neuralsync doctor --repair` rebuilds it from the memories table)"
        report.ok = False
    with tempfile.TemporaryDirectory(prefix="neuralsync-doctor-") as scratch_dir, storage.read():
        # One read snapshot for replay, digest and diff: writers elsewhere may go on.
        report.memories = conn.execute("SELECT count(*) FROM memories").fetchone()[0]
        for problem in cuts.check(conn, signer):
            report.fail(problem, report.cuts)
        scratch = Storage(replace(storage.config, durability="normal"), Path(scratch_dir) / "rebuild.db")
        try:
            scratch.migrate(MIGRATIONS)
            _replay(storage, scratch, report, progress)
            report.rebuilt_digest = state_digest(scratch.conn)
            report.digest = state_digest(conn)
            if report.digest != report.rebuilt_digest:
                _diff(storage.conn, scratch.conn, report)
        finally:
            scratch.close()
    return report


def fts_levels(conn: sqlite3.Connection) -> int:
    """Levels in the FTS5 structure record (its header: a 4-byte cookie, then a varint), 0 if unreadable."""
    try:
        row = conn.execute(f"SELECT block FROM {FTS}_data WHERE id = 10").fetchone()
    except sqlite3.DatabaseError:  # the shadow table itself is gone or damaged: fts_problem says so
        return 0
    if row is None or not isinstance(row[0], bytes):
        return 0
    block = row[0]
    pos = 8 if block[4:8] == _FTS_STRUCTURE_V2 else 4
    value = 0
    for byte in block[pos:pos + 9]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    return value


def fts_problem(conn: sqlite3.Connection) -> str | None:
    """None when the full-text index opens and matches the memories table, else what is wrong with it."""
    try:
        conn.execute(f"SELECT rowid FROM {FTS} LIMIT 1").fetchall()  # constructs the virtual table
    except sqlite3.DatabaseError as exc:
        return f"FTS index unreadable: {exc}"
    levels = fts_levels(conn)
    if levels > FTS_MAX_LEVELS:
        return (f"FTS index structure has {levels} levels (FTS5 refuses more than 2000; merges with a negative"
                " argument add them)")
    try:
        conn.execute(f"INSERT INTO {FTS}({FTS}, rank) VALUES ('integrity-check', 1)")
    except sqlite3.DatabaseError as exc:
        return f"FTS index does not match the memories table: {exc}"
    return None


def repair_fts(storage: Storage) -> dict[str, Any]:
    """Rebuild the full-text index from the memories table (it is derived data: nothing a replica shows
    changes). When FTS5 cannot even open the index (its shadow tables are damaged: "vtable constructor
    failed"), the shadow tables are first reset to those of a fresh, empty index - a DROP of the virtual
    table would need to open it too. Holds the write lock for the whole rebuild (seconds at a million
    memories): a repair, asked for by a person."""
    started = time.perf_counter()
    reset: list[str] = []
    with storage.write() as conn:
        before = fts_problem(conn)
        if before is not None and before.startswith("FTS index unreadable"):
            reset = _reset_fts_shadows(conn)
        for setting, value in FTS_SETTINGS:
            conn.execute(f"INSERT INTO {FTS}({FTS}, rank) VALUES (?, ?)", (setting, value))
        conn.execute(f"INSERT INTO {FTS}({FTS}) VALUES ('rebuild')")
        after = fts_problem(conn)
    if after is not None:
        raise StoreError(f"the FTS index could not be repaired: {after}")
    return {"found": before or "ok", "shadow_tables_reset": reset, "rebuilt": True,
            "ms": round((time.perf_counter() - started) * 1000, 1)}


def _reset_fts_shadows(conn: sqlite3.Connection) -> list[str]:
    """Give the FTS table the shadow tables (definitions and rows) of a fresh empty index, made in memory
    with the same definition, so that FTS5 opens it again; returns the tables replaced."""
    (ddl,) = conn.execute("SELECT sql FROM sqlite_schema WHERE name = ?", (FTS,)).fetchone()
    fresh = sqlite3.connect(":memory:")
    try:
        fresh.execute(ddl)
        tables = {name: sql for name, sql in fresh.execute(
            "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name LIKE ? ESCAPE '\\'",
            (FTS + "\\_%",))}
        rows = {name: fresh.execute(f"SELECT * FROM {name}").fetchall() for name in tables}
    finally:
        fresh.close()
    for name, sql in tables.items():
        try:
            conn.execute(f"DELETE FROM {name}")
        except sqlite3.DatabaseError:  # missing, or its b-tree is damaged: make it anew
            conn.execute(f"DROP TABLE IF EXISTS {name}")
            conn.execute(sql)
        if rows[name]:
            marks = ", ".join("?" * len(rows[name][0]))
            conn.executemany(f"INSERT INTO {name} VALUES ({marks})", rows[name])
    return sorted(tables)


def _replay(storage: Storage, scratch: Storage, report: DoctorReport, progress: Progress | None) -> None:
    """Verify each op and apply it to the scratch store in log order (by the same rules as sync)."""
    total = storage.conn.execute("SELECT count(*) FROM ops").fetchone()[0]
    last_seq = 0
    while True:
        rows = storage.conn.execute(
            "SELECT seq, id, body, sig, kind, record_id, hlc, author FROM ops WHERE seq > ? ORDER BY seq LIMIT 2000",
            (last_seq,)).fetchall()
        if not rows:
            break
        with scratch.write() as conn:
            for seq, stored_id, body, sig, kind, record_id, hlc, author in rows:
                if codec.is_stub(body):  # truncated: vouched for by its signed cut (checked apart), replayed as is
                    _check_and_apply(conn, seq, stored_id, report, stub=codec.stub_op(
                        stored_id, kind, record_id, hlc, author, body))
                else:
                    _check_and_apply(conn, seq, stored_id, report, body=body, sig=sig)
        last_seq = rows[-1][0]
        if progress:
            progress(report.ops_checked, total)


def _check_and_apply(conn: sqlite3.Connection, seq: int, stored_id: bytes, report: DoctorReport, *,
                     body: bytes = b"", sig: bytes = b"", stub: Op | None = None) -> None:
    report.ops_checked += 1
    try:
        op = stub or codec.parse_op(body, sig, stored=True)  # a compacted op's skeleton verifies too
        if op.id != stored_id:
            raise InvalidOp("stored id is not the hash of the body")
        preds = pred_nodes(conn, op.preds)
        if preds is None:
            raise InvalidOp("a predecessor is not earlier in the log")
        apply_op(conn, op, preds)
    except InvalidOp as exc:
        report.fail(f"op #{seq} {stored_id.hex()[:16]}: {exc}", report.bad_ops)


def _diff(live: sqlite3.Connection, rebuilt: sqlite3.Connection, report: DoctorReport) -> None:
    sql = _DIGEST_QUERIES[0]
    a = {row[0]: row for row in live.execute(sql)}
    b = {row[0]: row for row in rebuilt.execute(sql)}
    for record_id in sorted(a.keys() | b.keys()):
        if a.get(record_id) != b.get(record_id):
            where = "missing from rebuild" if record_id not in b else (
                "missing from store" if record_id not in a else "differs")
            report.fail(f"memory {record_id}: {where}", report.differences)
    if not report.differences:
        report.fail("tombstones, persona or heads differ from the rebuild", report.differences)
