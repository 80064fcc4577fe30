"""Issue 17 end to end: three replicas (two machines of Alice, one of Bob) and a relay on a real PostgreSQL.

Concurrent writes in a shared scope converge everywhere; an op pushed twice is stored once; Bob gets nothing
of a scope he is not in and cannot write there; revoking him stops his further pulls. A malicious database
(SQL as superuser): a tampered body is refused and sync goes on, a non-member's op is refused, a withheld op
is found through another peer (Alice's other machine), an id squatted in another scope does not block it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import nacl.signing
import pytest

psycopg = pytest.importorskip("psycopg")
uvicorn = pytest.importorskip("uvicorn")


from neuralsync.config import MemoryConfig  # noqa: E402
from neuralsync.errors import NotFound, SyncRejected  # noqa: E402
from neuralsync.oplog import codec, team  # noqa: E402
from neuralsync.relay.store import RelayStore  # noqa: E402
from neuralsync.replication.relay_client import RelayClient  # noqa: E402
from neuralsync.unified_memory_api import UnifiedMemoryAPI  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import pgcluster  # noqa: E402
from _relay import serving  # noqa: E402
from _replicas import introduce, signed_transport  # noqa: E402

pytestmark = pytest.mark.skipif(pgcluster.bindir() is None, reason="PostgreSQL is not installed "
                                "(.ci/run installs Debian's postgresql)")
RELAY_KEY = nacl.signing.SigningKey(bytes([77]) * 32)


@pytest.fixture(scope="module")
def cluster() -> Iterator[pgcluster.Cluster]:
    with pgcluster.cluster() as running:
        yield running


def replica(path: Path) -> UnifiedMemoryAPI:
    return UnifiedMemoryAPI(MemoryConfig(base_path=str(path), embedder="hashing", recall_via_server=False))


class World:
    def __init__(self, root: Path, url: str, store: RelayStore, superuser: str) -> None:
        self.url, self.store, self.superuser = url, store, superuser
        self.laptop, self.desktop, self.bob = (replica(root / name) for name in ("alice-laptop", "alice-desktop",
                                                                                   "bob"))
        self.desktop.team_user_key(self.laptop.team_user_key())  # Alice's user key on both her machines
        introduce({"laptop": self.laptop, "desktop": self.desktop})  # her own machines also sync directly

    def close(self) -> None:
        for api in (self.laptop, self.desktop, self.bob):
            api.close()

    def join(self, api: UnifiedMemoryAPI, scope: str) -> None:
        api.team_use_relay(scope, self.url, bytes(RELAY_KEY.verify_key).hex())

    def sync(self, *apis: UnifiedMemoryAPI, rounds: int = 2) -> list[dict[str, Any]]:
        reports: list[dict[str, Any]] = []
        for _ in range(rounds):
            for api in apis:
                reports += api.team_sync()
        return reports

    def team_view(self, api: UnifiedMemoryAPI, name: str = "platform") -> set[tuple[str, str]]:
        rows = api.storage.conn.execute("SELECT id, content FROM memories WHERE scope = ?", (f"team:{name}",))
        return {(r[0], r[1]) for r in rows}

    def sql(self, statement: str, *args: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.superuser, autocommit=True) as conn:
            cursor = conn.execute(statement, args)
            return cursor.fetchall() if cursor.description else []


@pytest.fixture
def world(cluster: pgcluster.Cluster, tmp_path: Path) -> Iterator[World]:
    with serving(cluster, RELAY_KEY) as (url, store):
        made = World(tmp_path, url, store, cluster.superuser(store.conninfo.split("dbname=")[1].split()[0]))
        try:
            yield made
        finally:
            made.close()


def set_up_team(world: World) -> str:
    """Alice creates 'platform' on her laptop, adds Bob; all three replicas join through the relay."""
    scope = world.laptop.team_create("platform")["id"]
    world.join(world.laptop, "platform")
    world.laptop.team_set_member("platform", world.bob.team_whoami()["user"], "writer")
    world.sync(world.laptop, rounds=1)
    world.join(world.bob, scope)
    world.join(world.desktop, scope)
    reports = world.sync(world.bob, world.desktop, world.laptop)
    assert not [r for r in reports[-3:] if r["error"]], reports
    return scope


def test_concurrent_writes_converge_and_private_scopes_stay_private(world: World) -> None:
    scope = set_up_team(world)
    secret = world.laptop.remember("alice's salary review is in March", scope="global")
    writes = [(world.laptop, "the API freeze starts Monday"), (world.desktop, "staging runs on eu-west-1"),
              (world.bob, "the on-call rota lives in PagerDuty")]
    for api, text in writes:
        api.remember(text, scope="team:platform")
    world.sync(world.laptop, world.desktop, world.bob)
    views = [world.team_view(api) for api in (world.laptop, world.desktop, world.bob)]
    assert views[0] == views[1] == views[2] and {text for _, text in views[0]} == {t for _, t in writes}
    heads = [sorted(r[0] for r in api.storage.conn.execute("SELECT id FROM heads WHERE graph = ?",
                                                              (bytes.fromhex(scope),)))
             for api in (world.laptop, world.desktop, world.bob)]
    assert heads[0] == heads[1] == heads[2]
    # The relay holds the scope's ops only, each once however often pushed.
    stored = world.sql("SELECT count(*), count(DISTINCT op_id) FROM relay_ops")[0]
    held = world.laptop.storage.conn.execute("SELECT count(*) FROM ops WHERE graph = ?",
                                             (bytes.fromhex(scope),)).fetchone()[0]
    assert stored == (held, held)
    bodies = b"".join(bytes(cast(bytes, r[0])) for r in world.sql("SELECT body FROM relay_ops"))
    assert b"salary" not in bodies
    with pytest.raises(NotFound):
        world.bob.get(secret)
    assert all("salary" not in m.content for m in world.bob.recall("salary review", mode="text"))
    # Bob's hits carry the scope they came from.
    assert {m.scope for m in world.bob.recall("on-call rota")} >= {"team:platform"}


def test_a_scope_bob_is_not_in_gives_him_nothing_and_revocation_stops_his_pulls(world: World) -> None:
    scope = set_up_team(world)
    own = world.laptop.team_create("alice-only")["id"]
    world.join(world.laptop, "alice-only")
    world.laptop.remember("alice's private team note", scope="team:alice-only")
    world.sync(world.laptop, rounds=1)
    bob_client = RelayClient(world.url, bytes(RELAY_KEY.verify_key), world.bob.log.key, timeout=5)
    with pytest.raises(SyncRejected):
        bob_client.pull(bytes.fromhex(own))
    forged = codec.make_op(world.bob.log.key, "team_member", world.bob.team_whoami()["user"],
                           {"user": bytes.fromhex(world.bob.team_whoami()["user"]), "role": "admin"}, 1 << 41,
                           (), graph=bytes.fromhex(own))
    with pytest.raises(SyncRejected, match="403"):
        bob_client.push_batch(bytes.fromhex(own), [codec.op_to_wire(forged)])
    assert world.sql("SELECT count(*) FROM relay_ops WHERE scope_id = %s", bytes.fromhex(own))[0][0] == 2
    world.laptop.team_set_member("platform", world.bob.team_whoami()["user"], "removed")
    world.sync(world.laptop, rounds=1)
    world.laptop.remember("after bob left", scope="team:platform")
    world.sync(world.laptop, rounds=1)
    [report] = world.bob.team_sync(scope)
    assert report["error"] and "after bob left" not in {t for _, t in world.team_view(world.bob)}


def test_a_malicious_database_cannot_make_replicas_accept_or_lose_anything(world: World) -> None:
    scope = set_up_team(world)
    graph = bytes.fromhex(scope)
    first = world.laptop.remember("the build cache lives on S3", scope="team:platform")
    world.sync(world.laptop, world.desktop, world.bob, rounds=1)
    # 1. The superuser rewrites a stored body: replicas refuse it (it no longer hashes to its id, nor matches
    # its signature) and take what does not depend on it.
    world.desktop.remember("the desktop's note, tampered on the relay", scope="team:platform")
    world.sync(world.desktop, rounds=1)
    world.sql("UPDATE relay_ops SET body = overlay(body placing '\\x58'::bytea from length(body) - 40 for 1)"
              " WHERE seq = (SELECT max(seq) FROM relay_ops WHERE scope_id = %s)", graph)
    second = world.laptop.remember("releases are cut on Thursdays", scope="team:platform")  # concurrent with it
    world.sync(world.laptop, rounds=1)
    [report] = world.bob.team_sync(scope)
    assert any("hash" in r["reason"] or "signature" in r["reason"] for r in report["refused"]), report
    assert second in {i for i, _ in world.team_view(world.bob)}  # sync went on
    # 2. An op signed by someone never added, inserted straight into the table: refused too.
    eve = nacl.signing.SigningKey.generate()
    heads = [r[0] for r in world.laptop.storage.conn.execute("SELECT id FROM heads WHERE graph = ?", (graph,))]
    salt = bytes(range(16))
    planted = codec.make_op(eve, "create", team.record_id_for(graph, salt),
                            {"content": "eve was here", "scope": "team:platform", "kind": "fact", "priority": 0.5,
                             "confidence": 0.5, "id_salt": salt}, 1 << 42, heads, graph=graph)
    world.sql("INSERT INTO relay_ops(scope_id, op_id, seq, body, sig, author) SELECT %s, %s, last_seq + 1, %s, %s,"
              " %s FROM relay_scopes WHERE scope_id = %s", graph, planted.id, planted.body, planted.sig,
              planted.author, graph)
    world.sql("UPDATE relay_scopes SET last_seq = last_seq + 1 WHERE scope_id = %s", graph)
    [report] = world.bob.team_sync(scope)
    assert any("writer" in r["reason"] for r in report["refused"])
    assert second in {i for i, _ in world.team_view(world.bob)}
    assert "eve was here" not in {t for _, t in world.team_view(world.bob)}
    # 3. The relay withholds an op from Alice's desktop; her laptop has it and their direct sync brings it.
    withheld = world.laptop.remember("the VPN config moved to the wiki", scope="team:platform")
    world.laptop.remember("the wiki is behind SSO", scope="team:platform")
    world.sync(world.laptop, rounds=1)
    op_id = world.laptop.storage.conn.execute("SELECT id FROM ops WHERE record_id = ? AND kind = 'create'",
                                              (withheld,)).fetchone()[0]
    world.sql("DELETE FROM relay_ops WHERE op_id = %s", op_id)
    [report] = world.desktop.team_sync(scope)
    assert report["waiting"] >= 1 and withheld not in {i for i, _ in world.team_view(world.desktop)}
    (p2p,) = world.desktop.sync("laptop", transport=lambda _peer: signed_transport(world.desktop, world.laptop,
                                                                                  "laptop"))
    assert p2p.ok and withheld in {i for i, _ in world.team_view(world.desktop)}
    world.desktop.team_sync(scope)
    assert world.team_view(world.desktop) == world.team_view(world.laptop)
    # 4. The real op's id squatted in another scope first does not block it in its own.
    other = world.laptop.team_create("squat")["id"]
    world.join(world.laptop, "squat")
    world.sync(world.laptop, rounds=1)
    late = world.laptop.remember("squatters lose", scope="team:platform")
    late_op = world.laptop.storage.conn.execute("SELECT body, sig, id, author FROM ops WHERE record_id = ?",
                                                (late,)).fetchone()
    world.sql("INSERT INTO relay_ops(scope_id, op_id, seq, body, sig, author) SELECT %s, %s, last_seq + 1, %s, %s,"
              " %s FROM relay_scopes WHERE scope_id = %s", bytes.fromhex(other), late_op[2], late_op[0], late_op[1],
              late_op[3], bytes.fromhex(other))
    world.sync(world.laptop, rounds=1)
    held = world.sql("SELECT count(*) FROM relay_ops WHERE scope_id = %s AND op_id = %s", graph, late_op[2])
    assert held == [(1,)]
    world.desktop.team_sync(scope)  # from the relay alone
    assert late in {i for i, _ in world.team_view(world.desktop)}
    assert first in {i for i, _ in world.team_view(world.bob)}
