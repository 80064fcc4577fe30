"""Shared scopes on replicas: each a graph of its own, rights from the membership among an op's ancestors.

Ops move between replicas here as a relay moves them: only the shared scope's graph, verified on arrival
(``apply_remote``). The relay itself, on PostgreSQL, is tested in ``test_relay_*``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.signing
import pytest

from neuralsync.errors import InvalidInput
from neuralsync.model import Op
from neuralsync.oplog import codec, team
from neuralsync.unified_memory_api import UnifiedMemoryAPI

MakeApi = Callable[..., UnifiedMemoryAPI]


def graph_ops(api: UnifiedMemoryAPI, graph: bytes) -> list[Op]:
    rows = api.storage.conn.execute("SELECT body, sig FROM ops WHERE graph = ? ORDER BY seq", (graph,)).fetchall()
    return [codec.parse_op(body, sig) for body, sig in rows]


def deliver(source: UnifiedMemoryAPI, target: UnifiedMemoryAPI, graph: bytes) -> Any:
    return target.log.apply_remote(graph_ops(source, graph), source="relay")


def certify(api: UnifiedMemoryAPI, graph: bytes) -> None:
    with api.storage.write() as conn:
        api.teams.add_device(conn, graph)


@pytest.fixture
def pair(make_api: MakeApi, tmp_path: Path) -> tuple[UnifiedMemoryAPI, UnifiedMemoryAPI, bytes]:
    alice = make_api(tmp_path / "alice", embedder="hashing")
    bob = make_api(tmp_path / "bob", embedder="hashing")
    made = alice.team_create("platform")
    return alice, bob, bytes.fromhex(made["id"])


def test_a_shared_scope_is_a_graph_of_its_own(pair: tuple[UnifiedMemoryAPI, UnifiedMemoryAPI, bytes]) -> None:
    alice, _, graph = pair
    private = alice.remember("my salary is confidential", scope="global")
    shared = alice.remember("deploys need two approvals", scope="team:platform", tags=["process"])
    assert shared == team.record_id_for(graph, graph_ops(alice, graph)[-1].fields["id_salt"])
    held = graph_ops(alice, graph)
    assert [op.kind for op in held] == ["team_create", "create"]
    assert all(op.graph == graph for op in held) and private not in {op.record_id for op in held}
    personal = alice.storage.conn.execute("SELECT count(*) FROM ops WHERE graph IS NULL").fetchone()[0]
    assert personal >= 1
    hits = alice.recall("approvals for deploys")
    assert hits[0].id == shared and hits[0].scope == "team:platform"
    [info] = alice.teams_list()
    assert info["role"] == "admin" and info["memories"] == 1 and info["device_certified"]


def test_members_write_non_members_are_refused_everywhere(pair: tuple[UnifiedMemoryAPI, UnifiedMemoryAPI, bytes]
                                                          ) -> None:
    alice, bob, graph = pair
    alice.remember("the staging cluster is eu-west-1", scope="team:platform")
    deliver(alice, bob, graph)
    assert [m.content for m in bob.recall("staging cluster")][:1] == ["the staging cluster is eu-west-1"]
    with pytest.raises(InvalidInput, match="writer"):
        bob.remember("bob was never added", scope="team:platform")
    alice.team_set_member("platform", bob.team_whoami()["user"], "writer")
    deliver(alice, bob, graph)
    certify(bob, graph)
    bobs = bob.remember("the on-call rota is in PagerDuty", scope="team:platform")
    result = deliver(bob, alice, graph)
    assert result.rejected == [] and alice.get(bobs).content == "the on-call rota is in PagerDuty"
    # A signed op by someone nobody added, built on the scope's heads: refused by every member.
    eve = nacl.signing.SigningKey.generate()
    heads = [row[0] for row in alice.storage.conn.execute("SELECT id FROM heads WHERE graph = ?", (graph,))]
    salt = bytes(16)
    forged = codec.make_op(eve, "create", team.record_id_for(graph, salt),
                           {"content": "eve was here", "scope": "team:platform", "kind": "fact", "priority": 0.5,
                            "confidence": 0.5, "id_salt": salt}, 1 << 41, heads, graph=graph)
    for replica in (alice, bob):
        outcome = replica.log.apply_remote([forged], source="relay")
        assert outcome.applied == [] and "writer" in outcome.rejected[0][1]
        assert "eve was here" not in [m.content for m in replica.recall("eve", mode="text")]


def test_removal_is_not_retroactive(pair: tuple[UnifiedMemoryAPI, UnifiedMemoryAPI, bytes]) -> None:
    alice, bob, graph = pair
    alice.team_set_member("platform", bob.team_whoami()["user"], "writer")
    deliver(alice, bob, graph)
    certify(bob, graph)
    deliver(bob, alice, graph)
    alice.team_set_member("platform", bob.team_whoami()["user"], "removed")
    concurrent = bob.remember("written before bob saw his removal", scope="team:platform")
    assert deliver(bob, alice, graph).rejected == []  # it did not descend from the removal: it stands
    assert alice.get(concurrent).content == "written before bob saw his removal"
    deliver(alice, bob, graph)
    with pytest.raises(InvalidInput, match="writer"):
        bob.remember("written after", scope="team:platform")
    assert bob.teams_list()[0]["role"] == "removed"


def test_promote_copies_a_private_memory_with_its_provenance(pair: tuple[UnifiedMemoryAPI, UnifiedMemoryAPI, bytes]
                                                             ) -> None:
    alice, bob, graph = pair
    private = alice.remember("use ruff for linting", scope="project:api", tags=["lint"])
    shared = alice.team_promote(private, "platform")
    memory = alice.get(shared)
    assert memory.scope == "team:platform" and memory.tags == ("lint",)
    assert memory.metadata["promoted_from"]["id"] == private and alice.get(private).scope == "project:api"
    deliver(alice, bob, graph)
    assert bob.get(shared).metadata["promoted_from"]["scope"] == "project:api"
    with pytest.raises(InvalidInput, match="scope"):
        alice.update(shared, scope="global")  # a shared memory stays in its scope
    with pytest.raises(InvalidInput, match="promote"):
        alice.update(private, scope="team:platform")
    with pytest.raises(InvalidInput, match="scope"):
        alice.remember("no such team", scope="team:nowhere")


def test_bad_input_names_the_field_and_changes_nothing(pair: tuple[UnifiedMemoryAPI, UnifiedMemoryAPI, bytes]
                                                       ) -> None:
    alice, _, _ = pair
    ops = alice.counts()["ops"]
    for call, field in ((lambda: alice.team_create("platform"), "name"),
                        (lambda: alice.team_create("bad name!"), "name"),
                        (lambda: alice.team_set_member("platform", "not-hex", "writer"), "user"),
                        (lambda: alice.team_set_member("platform", "ab" * 32, "owner"), "role"),
                        (lambda: alice.team_set_member("nowhere", "ab" * 32, "writer"), "scope")):
        with pytest.raises(InvalidInput) as refused:
            call()
        assert refused.value.field == field
    assert alice.counts()["ops"] == ops


def test_the_team_commands(tmp_path: Path) -> None:
    env = {**os.environ, "NEURALSYNC_HOME": str(tmp_path / "home"), "NEURALSYNC_EMBEDDER": "hashing"}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "neuralsync", *argv], env=env, capture_output=True, text=True,
                              timeout=120, check=False)

    me = json.loads(cli("team", "whoami", "--json").stdout)
    assert len(me["user"]) == 64 and len(me["device"]) == 64
    made = cli("team", "create", "platform")
    assert made.returncode == 0 and "team:platform" in made.stdout
    assert cli("remember", "deploys need two approvals", "--scope", "team:platform").returncode == 0
    found = cli("recall", "approvals for deploys")
    assert "team:platform" in found.stdout and "deploys need two approvals" in found.stdout
    listed = json.loads(cli("team", "list", "--json").stdout)
    assert [(t["scope"], t["role"], t["memories"]) for t in listed] == [("team:platform", "admin", 1)]
    refused = cli("team", "add", "platform", "not-a-key")
    assert refused.returncode == 2 and "user" in refused.stderr
    nowhere = cli("team", "sync", "platform")
    assert nowhere.returncode == 2 and "relay" in nowhere.stderr


def test_a_reader_scan_leaves_the_shared_scope_and_merges_its_own(
        pair: tuple[UnifiedMemoryAPI, UnifiedMemoryAPI, bytes]) -> None:
    alice, bob, graph = pair
    alice.team_set_member("platform", bob.team_whoami()["user"], "reader")
    for _ in range(2):
        alice.remember("deploys need two approvals", scope="team:platform", merge="off")
        bob.remember("bob's own repeated note", merge="off")
    deliver(alice, bob, graph)
    scanned = bob.scan_duplicates(near=False, everything=True)  # a reader cannot merge in the scope
    assert scanned["exact"] == 1 and len(bob.recall("bob's own repeated note", mode="text")) == 1
    assert len([m for m in bob.recall("deploys approvals", mode="text") if m.scope == "team:platform"]) == 2
    assert alice.scan_duplicates(near=False, everything=True)["exact"] == 1  # a writer merges there
