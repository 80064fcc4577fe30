"""Signed cuts: what vouches for the ops a compaction truncated.

A truncated op (``codec.stub_body``) no longer verifies on its own: its fields
and signature are gone. Each write transaction that truncates ops records a
*cut*: its number, the ops it truncated (``ops.cut``), and this replica's
Ed25519 signature over a root that commits to each of them - id, the hash of
its stub (tombstone flag and predecessors), kind, record id, clock and author,
in log order. ``check`` recomputes every root and verifies every signature, so
the doctor can tell a truncated row that this replica wrote from one edited
since (a stub made to hide a live memory's create, a flipped tombstone).
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from collections.abc import Iterable, Sequence

import nacl.exceptions
import nacl.signing

from ..utils import now_ms
from . import codec

CUT_DOMAIN = b"neuralsync-cut-v1\x00"
_U64 = struct.Struct(">Q")

# (id, stub body, kind, record id, hlc, author) of one truncated op
CutRow = tuple[bytes, bytes, str, str, int, bytes]


def root_of(number: int, rows: Iterable[CutRow]) -> bytes:
    """The root a cut's signature covers: its number, then each truncated op in log order."""
    digest = hashlib.sha256(CUT_DOMAIN + _U64.pack(number))
    for oid, stub, kind, record_id, hlc, author in rows:
        digest.update(oid + hashlib.sha256(stub).digest() + kind.encode() + b"\x00" + record_id.encode() + b"\x00"
                      + _U64.pack(hlc) + author)
    return digest.digest()


def record(conn: sqlite3.Connection, key: nacl.signing.SigningKey, rows: Sequence[tuple[int, CutRow]]) -> int:
    """Truncate ``rows`` ((seq, cut row) in log order; each stub already computed) in the caller's write
    transaction: their bodies become the stubs, their signatures go, and one signed cut vouches for them.
    Returns the cut's number."""
    number = int(conn.execute("SELECT coalesce(max(n), 0) + 1 FROM log_cuts").fetchone()[0])
    conn.executemany("UPDATE ops SET body = ?, sig = x'', cut = ? WHERE seq = ?",
                     [(row[1], number, seq) for seq, row in rows])
    root = root_of(number, [row for _, row in rows])
    conn.execute("INSERT INTO log_cuts(n, at, signer, ops, root, sig) VALUES (?, ?, ?, ?, ?, ?)",
                 (number, now_ms(), bytes(key.verify_key), len(rows), root,
                  key.sign(CUT_DOMAIN + root).signature))
    return number


def check(conn: sqlite3.Connection, signer: bytes | None) -> list[str]:
    """Problems with the truncated ops: a cut whose rows no longer hash to its root, a bad signature or
    one by another key than ``signer`` (this replica's; None: any), or a truncated row no cut vouches for."""
    problems: list[str] = []
    for number, count, root, sig, who in conn.execute("SELECT n, ops, root, sig, signer FROM log_cuts ORDER BY n"):
        rows = [(bytes(r[0]), bytes(r[1]), r[2], r[3], int(r[4]), bytes(r[5])) for r in conn.execute(
            "SELECT id, body, kind, record_id, hlc, author FROM ops WHERE cut = ? ORDER BY seq", (number,))]
        if len(rows) != count or root_of(number, rows) != root:
            problems.append(f"cut #{number}: its truncated ops do not match what it signed")
        if signer is not None and bytes(who) != signer:
            problems.append(f"cut #{number}: signed by another key")
            continue
        try:
            nacl.signing.VerifyKey(bytes(who)).verify(CUT_DOMAIN + bytes(root), bytes(sig))
        except (nacl.exceptions.BadSignatureError, ValueError):
            problems.append(f"cut #{number}: bad signature")
    loose = conn.execute(f"SELECT count(*) FROM ops WHERE {codec.STUB_SQL.format(column='body')} AND"
                         " (cut IS NULL OR cut NOT IN (SELECT n FROM log_cuts))").fetchone()[0]
    if loose:
        problems.append(f"{loose} truncated ops that no signed cut vouches for")
    return problems
