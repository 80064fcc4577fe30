"""The relay's PostgreSQL side on a real PostgreSQL (a throwaway cluster on loopback, ``pgcluster.py``).

What the database itself guarantees, whatever the relay's code does: a non-member reads and writes nothing,
nobody updates or deletes an op, an op pushed twice is stored once, a slow transaction cannot make a reader
skip an op, a push killed mid-batch leaves nothing behind, and an op id squatted in one scope does not
block it in another.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import pytest

psycopg = pytest.importorskip("psycopg")

from neuralsync.errors import SyncRejected  # noqa: E402
from neuralsync.oplog import codec  # noqa: E402
from neuralsync.relay.store import RelayOp, RelayStore, role_name  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import pgcluster  # noqa: E402

pytestmark = pytest.mark.skipif(pgcluster.bindir() is None, reason="PostgreSQL is not installed "
                                "(.ci/run installs Debian's postgresql)")

ALICE, BOB, CAROL = (nacl.signing.SigningKey(bytes([n]) * 32) for n in (1, 2, 3))
TEAM = hashlib.sha256(b"team scope").digest()
OTHER = hashlib.sha256(b"another scope").digest()


@pytest.fixture(scope="module")
def cluster() -> Iterator[pgcluster.Cluster]:
    with pgcluster.cluster() as running:
        yield running


@pytest.fixture
def relay(cluster: pgcluster.Cluster) -> RelayStore:
    store = RelayStore(cluster.new_database())
    assert store.migrate() == 2 and store.migrate() == 0  # numbered, applied once
    for key in (ALICE, BOB, CAROL):
        store.add_user(user(key))
    store.create_scope(TEAM, user(ALICE))
    store.set_member(TEAM, user(BOB), "writer")
    return store


def user(key: nacl.signing.SigningKey) -> bytes:
    return bytes(key.verify_key)


def ops(author: nacl.signing.SigningKey, count: int, graph: bytes = TEAM, start: int = 0) -> list[RelayOp]:
    made = []
    for n in range(start, start + count):
        fields = {"content": f"team fact {n}", "scope": "team", "kind": "fact", "priority": 0.5, "confidence": 0.5}
        op = codec.make_op(author, "create", f"{n:032x}", fields, (1 << 40) + n, (), graph=graph)
        made.append(RelayOp(op.id, op.body, op.sig, op.author))
    return made


def seqs(relay: RelayStore, key: nacl.signing.SigningKey, scope: bytes = TEAM) -> list[int]:
    return [p.seq for p in relay.pull(user(key), scope, 0, 5000)[0]]


def test_an_op_pushed_twice_is_stored_once_and_the_cursor_has_no_hole(relay: RelayStore) -> None:
    batch = ops(ALICE, 5)
    assert relay.push(user(ALICE), TEAM, batch[:3]).stored == 3
    again = relay.push(user(BOB), TEAM, batch + batch[:1])  # repeats, also within the batch
    assert (again.stored, again.duplicates, again.last_seq) == (2, 4, 5)
    pulled, last = relay.pull(user(BOB), TEAM, 0)
    assert [p.seq for p in pulled] == [1, 2, 3, 4, 5] and last == 5
    assert [p.op_id for p in pulled] == [op.op_id for op in batch]
    assert all(codec.parse_op(p.body, p.sig).graph == TEAM for p in pulled)
    assert [p.seq for p in relay.pull(user(ALICE), TEAM, 3)[0]] == [4, 5]


def test_non_members_and_readers_are_refused_by_the_database(relay: RelayStore, cluster: pgcluster.Cluster) -> None:
    relay.push(user(ALICE), TEAM, ops(ALICE, 2))
    with pytest.raises(SyncRejected) as refused:
        relay.pull(user(CAROL), TEAM)
    assert refused.value.status == 403
    with pytest.raises(SyncRejected):
        relay.push(user(CAROL), TEAM, ops(CAROL, 1, start=10))
    relay.set_member(TEAM, user(CAROL), "reader")
    assert seqs(relay, CAROL) == [1, 2]
    with pytest.raises(SyncRejected):
        relay.push(user(CAROL), TEAM, ops(CAROL, 1, start=10))
    # Past the relay's code, straight SQL as the member's role: the policies and grants refuse it.
    op = ops(CAROL, 1, start=11)[0]
    attempts = [
        ("INSERT INTO relay_ops(scope_id, op_id, seq, body, sig, author) VALUES (%s, %s, 99, %s, %s, %s)",
         (TEAM, op.op_id, op.body, op.sig, op.author), role_name(user(CAROL))),
        ("UPDATE relay_ops SET body = %s WHERE scope_id = %s", (b"x", TEAM), role_name(user(ALICE))),
        ("DELETE FROM relay_ops WHERE scope_id = %s", (TEAM,), role_name(user(ALICE))),
        ("UPDATE relay_members SET role = 'admin' WHERE scope_id = %s", (TEAM,), role_name(user(CAROL))),
    ]
    for statement, args, role in attempts:
        with psycopg.connect(relay.conninfo) as conn:
            conn.execute(f'SET ROLE "{role}"')
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement, args)
    with psycopg.connect(relay.conninfo) as conn:
        conn.execute(f'SET ROLE "{role_name(user(CAROL))}"')
        assert conn.execute("SELECT count(*) FROM relay_ops WHERE scope_id = %s", (OTHER,)).fetchone() == (0,)
    assert seqs(relay, ALICE) == [1, 2]


def test_revoking_a_member_stops_their_further_pulls(relay: RelayStore) -> None:
    relay.push(user(ALICE), TEAM, ops(ALICE, 2))
    assert seqs(relay, BOB) == [1, 2]
    relay.remove_member(TEAM, user(BOB))
    relay.push(user(ALICE), TEAM, ops(ALICE, 1, start=5))
    with pytest.raises(SyncRejected):
        relay.pull(user(BOB), TEAM, 2)
    assert relay.scopes_of(user(BOB)) == [] and relay.scopes_of(user(ALICE)) == [(TEAM, "admin", 3)]


def test_an_id_squatted_in_another_scope_does_not_block_the_real_one(relay: RelayStore) -> None:
    relay.create_scope(OTHER, user(BOB))
    real = ops(ALICE, 1)[0]
    assert relay.push(user(BOB), OTHER, [real]).stored == 1  # the same id, pushed first into another scope
    assert relay.push(user(ALICE), TEAM, [real]).stored == 1
    assert [p.op_id for p in relay.pull(user(ALICE), TEAM)[0]] == [real.op_id]


def test_a_slow_transaction_cannot_make_a_reader_skip_an_op(relay: RelayStore) -> None:
    """The slow push takes seq 1 and holds it for a while; the fast one waits for it rather than committing
    seq 2 first. A reader polling throughout only ever sees a gap-free prefix."""
    slow_started, release = threading.Event(), threading.Event()

    def slow() -> None:
        with psycopg.connect(relay.conninfo) as conn, conn.transaction():
            conn.execute(f'SET LOCAL ROLE "{role_name(user(ALICE))}"')
            last = conn.execute("SELECT last_seq FROM relay_scopes WHERE scope_id = %s FOR UPDATE",
                                (TEAM,)).fetchone()[0]
            op = ops(ALICE, 1, start=100)[0]
            conn.execute("INSERT INTO relay_ops(scope_id, op_id, seq, body, sig, author) VALUES (%s,%s,%s,%s,%s,%s)",
                         (TEAM, op.op_id, last + 1, op.body, op.sig, op.author))
            conn.execute("UPDATE relay_scopes SET last_seq = %s WHERE scope_id = %s", (last + 1, TEAM))
            slow_started.set()
            release.wait(10)

    seen: list[list[int]] = []
    slow_thread = threading.Thread(target=slow)
    slow_thread.start()
    assert slow_started.wait(10)
    fast = threading.Thread(target=lambda: relay.push(user(BOB), TEAM, ops(BOB, 3, start=200)))
    fast.start()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        seen.append(seqs(relay, ALICE))
    release.set()
    slow_thread.join(10)
    fast.join(10)
    seen.append(seqs(relay, ALICE))
    assert all(s == list(range(1, len(s) + 1)) for s in seen)  # every view a prefix with no hole
    assert seen[0] == [] and seen[-1] == [1, 2, 3, 4]


KILLED_PUSH = """
import sys, time
from neuralsync.relay.store import RelayStore
import psycopg
conninfo, role, scope = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
with psycopg.connect(conninfo) as conn, conn.transaction():
    conn.execute(f'SET LOCAL ROLE "{role}"')
    last = conn.execute("SELECT last_seq FROM relay_scopes WHERE scope_id = %s FOR UPDATE", (scope,)).fetchone()[0]
    for n in range(3):
        conn.execute("INSERT INTO relay_ops(scope_id, op_id, seq, body, sig, author) VALUES (%s,%s,%s,%s,%s,%s)",
                     (scope, bytes([n]) * 32, last + 1 + n, b"half a batch", bytes(64), bytes(32)))
    print("inserted", flush=True)
    time.sleep(60)
"""


def test_a_push_killed_mid_batch_leaves_nothing_and_is_pushed_again_whole(relay: RelayStore) -> None:
    child = subprocess.Popen([sys.executable, "-c", KILLED_PUSH, relay.conninfo, role_name(user(ALICE)), TEAM.hex()],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "inserted"
    finally:
        child.kill()
        child.wait(10)
    batch = ops(ALICE, 4)
    result = relay.push(user(ALICE), TEAM, batch)  # waits for the server to drop the dead transaction
    assert (result.stored, result.last_seq) == (4, 4)
    assert relay.push(user(ALICE), TEAM, batch).stored == 0
    assert seqs(relay, ALICE) == [1, 2, 3, 4]
