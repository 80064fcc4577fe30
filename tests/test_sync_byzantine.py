"""Byzantine peers at the protocol level: sync messages between replicas, not ``apply_remote`` calls.

Three correct replicas (A, B, C) and one faulty replica F, each with its own
store and key, all trusting each other as peers. F attacks through the real
protocol entry points: signed requests answered by ``Replication.serve`` (what
``POST /v1/sync`` calls), or by playing a faulty *server* that a correct
replica's ``SyncClient`` syncs with. After each attack the correct replicas
sync among themselves through the same signed path and must have made the same
decision: the same ops accepted and refused, identical heads and state digest,
a clean ``doctor``; and each refusal is logged and counted under peer ``f``
with a reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from _replicas import introduce, signed_transport

from neuralsync.errors import InvalidOp, SyncRejected
from neuralsync.oplog import codec as crdt
from neuralsync.oplog.clock import HLC_MAX, hlc_ms, pack
from neuralsync.replication import protocol, replica, wire
from neuralsync.replication.protocol import SyncReport, Transport
from neuralsync.replication.signing import sign_request
from neuralsync.replication.wire import MAX_NEED, MAX_OPS_PER_MESSAGE
from neuralsync.services.doctor import run_doctor, state_digest
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI
from neuralsync.utils import new_id, now_ms

CORRECT = ("a", "b", "c")
EVERYONE = (*CORRECT, "f")
Pair = tuple[bytes, bytes]  # an op as it travels: (signed body, signature)
FIELDS = {"content": "planted by f", "scope": "global", "kind": "fact", "priority": 0.5, "confidence": 0.8}


# ------------------------------------------------------------------ the network
class Net:
    """Four replicas that trust each other; syncs go through signed requests and ``Replication.serve``."""

    def __init__(self, root: Path) -> None:
        self.api: dict[str, UnifiedMemoryAPI] = {}
        for name in EVERYONE:
            self.api[name] = UnifiedMemoryAPI(MemoryConfig(base_path=str(root / name), embedder="none"),
                                              tool=f"tool-{name}")
        introduce(self.api)

    def close(self) -> None:
        for api in self.api.values():
            api.close()

    def __getitem__(self, name: str) -> UnifiedMemoryAPI:
        return self.api[name]

    # -- transports
    def transport(self, caller: str, target: str) -> Transport:
        return signed_transport(self.api[caller], self.api[target], target)

    def sync(self, caller: str, target: str) -> SyncReport:
        """One session of ``caller``'s client against ``target``'s server."""
        (report,) = self.api[caller].sync(target, transport=lambda _peer: self.transport(caller, target))
        return report

    def sync_via(self, caller: str, peer: str, channel: Transport) -> SyncReport:
        """One session of ``caller``'s client against an arbitrary (faulty) server."""
        (report,) = self.api[caller].sync(peer, transport=lambda _peer: channel)
        return report

    def send(self, target: str, request: object, caller: str = "f") -> tuple[int, dict[str, Any]]:
        """One signed request from ``caller`` to ``target``'s sync endpoint: (status, answer)."""
        body = json.dumps(request).encode()
        dst = self.api[target]
        headers = sign_request(self.api[caller].log.key, dst.log.author, body)
        status, answer, _ = dst.replication.serve(headers, body)
        return status, json.loads(answer)

    def push(self, target: str, ops: Sequence[Pair], **extra: Any) -> dict[str, Any]:
        """F sends ``ops`` to ``target`` in one well-formed message; the answer must be a 200."""
        status, answer = self.send(target, message(ops, **extra))
        assert status == 200, answer
        return answer

    def converge(self, names: Sequence[str] = CORRECT, passes: int = 6) -> None:
        """Sync every pair until a whole pass moves nothing (bounded)."""
        for _ in range(passes):
            moved = 0
            for caller in names:
                for target in names:
                    if caller != target:
                        report = self.sync(caller, target)
                        assert report.ok, report.error
                        moved += report.applied
            if not moved:
                return
        raise AssertionError(f"{names} still moving ops after {passes} passes")


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    network = Net(tmp_path)
    try:
        yield network
    finally:
        network.close()


# ------------------------------------------------------------------ crafting ops and messages
def key_of(net: Net, name: str = "f") -> Any:
    return net[name].log.key


def signed(body: bytes, signer: Any) -> Pair:
    """``body`` with ``signer``'s signature over its id (the op signature rule)."""
    return body, signer.sign(crdt.SIG_DOMAIN + crdt.op_id(body)).signature


def craft(signer: Any, kind: str, record_id: str, fields: dict[str, Any], preds: Sequence[bytes] = (),
          hlc: int | None = None, author: bytes | None = None) -> Pair:
    """An op body built with ``crdt.op_body`` (so any preds count and author are possible), signed by ``signer``."""
    body = crdt.op_body(kind, record_id, fields, pack(now_ms()) if hlc is None else hlc,
                        bytes(signer.verify_key) if author is None else author, preds)
    return signed(body, signer)


def oid(pair: Pair) -> bytes:
    return crdt.op_id(pair[0])


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def message(ops: Sequence[Pair] = (), heads: Sequence[bytes] = (), need: Sequence[bytes] = (),
            **extra: Any) -> dict[str, Any]:
    """A well-formed sync message (wire form)."""
    return {"v": 1, "heads": [h.hex() for h in heads], "need": [n.hex() for n in need],
            "have": {"last_sync": [], "bloom": None}, "ops": [[b64(b), b64(s)] for b, s in ops],
            "more": False, **extra}


def log_pairs(api: UnifiedMemoryAPI) -> list[Pair]:
    """Every op in a store's log, oldest first, as it would travel."""
    return [(bytes(b), bytes(s)) for b, s in api.storage.conn.execute("SELECT body, sig FROM ops ORDER BY seq")]


def heads_of(api: UnifiedMemoryAPI) -> list[bytes]:
    return sorted(r[0] for r in api.storage.conn.execute("SELECT id FROM heads"))


def op_ids(api: UnifiedMemoryAPI) -> set[bytes]:
    return {r[0] for r in api.storage.conn.execute("SELECT id FROM ops")}


def rejected(api: UnifiedMemoryAPI) -> set[bytes]:
    return {r[0] for r in api.storage.conn.execute("SELECT id FROM rejected_ops")}


def snapshot(api: UnifiedMemoryAPI) -> tuple[set[bytes], list[bytes], str]:
    """Everything a refused attack must leave alone: the log, the heads, the replicated state."""
    return op_ids(api), heads_of(api), state_digest(api.storage.conn)


def refusals(api: UnifiedMemoryAPI, peer: str = "f") -> dict[str, int]:
    """The refusal counters of ``peer`` as the facade reports them."""
    return dict(api.get_system_stats()["sync"]["refusals"].get(peer, {}))


def events(api: UnifiedMemoryAPI, peer: str = "f") -> list[dict[str, Any]]:
    return [e for e in api.get_system_stats()["sync"]["recent_refusals"] if e["peer"] == peer]


def assert_agree(net: Net, names: Sequence[str] = CORRECT) -> None:
    """Same ops, same refusals, same heads, same replicated state, and doctor finds nothing."""
    first = net[names[0]]
    for name in names:
        api = net[name]
        report = run_doctor(api.storage)
        assert report.ok, (name, report.to_dict())
        assert op_ids(api) == op_ids(first), name
        assert rejected(api) == rejected(first), name
        assert heads_of(api) == heads_of(first), name
        assert state_digest(api.storage.conn) == state_digest(first.storage.conn), name


def assert_refused(net: Net, reason: str, times: int = 1, names: Sequence[str] = CORRECT) -> None:
    """Each replica counted ``times`` refusals of ``reason`` from peer f and logged them."""
    for name in names:
        counts = refusals(net[name])
        assert counts.get(reason) == times, (name, counts)
        assert any(e["reason"] == reason for e in events(net[name])), (name, events(net[name]))


def spread(net: Net) -> None:
    """Everyone (F included) holds everyone's ops, so F's crafted ops can name real heads."""
    net.converge(EVERYONE)


# ------------------------------------------------------------------ forged ops
def test_bad_signature_is_refused_alike_and_does_not_poison_the_op_id(net: Net) -> None:
    net["a"].remember("honest memory on a")
    net.converge()
    before = {n: snapshot(net[n]) for n in CORRECT}
    record = new_id()
    good = craft(key_of(net), "create", record, FIELDS)
    bad = (good[0], bytes([good[1][0] ^ 1]) + good[1][1:])
    for name in CORRECT:
        net.push(name, [bad])
        assert net[name].replication._server.last_round.rejected == 1
        assert snapshot(net[name]) == before[name]
    assert_refused(net, "bad signature")
    net.converge()
    assert_agree(net)
    assert all(not net[n].reads.exists(record) for n in CORRECT)
    # The id is the hash of the body, not of the signature: the same op, properly
    # signed, is still accepted (a corrupted copy must not get it banned).
    net.push("a", [good])
    net.converge()
    assert_agree(net)
    assert all(net[n].reads.exists(record) for n in CORRECT)


def test_forged_author_is_refused_everywhere(net: Net) -> None:
    """The body names A's key as author, but F signed it."""
    net["a"].remember("a's real memory")
    net.converge()
    before = {n: snapshot(net[n]) for n in CORRECT}
    forged = craft(key_of(net), "create", new_id(), {**FIELDS, "content": "a never said this"},
                   preds=heads_of(net["a"]), author=net["a"].log.author)
    for name in CORRECT:
        answer = net.push(name, [forged])
        assert oid(forged).hex() not in answer["heads"]
        assert snapshot(net[name]) == before[name]
    assert_refused(net, "bad signature")
    net.converge()
    assert_agree(net)
    assert all(snapshot(net[n]) == before[n] for n in CORRECT)


def test_payload_tampered_after_signing_is_refused(net: Net) -> None:
    record = new_id()
    body, sig = craft(key_of(net), "create", record, {**FIELDS, "content": "pay alice 10"})
    tampered = body.replace(b"pay alice 10", b"pay carol 99")  # same length: still a well-formed encoding
    assert tampered != body and len(tampered) == len(body)
    crdt.decode(tampered)  # structurally valid, only the signature no longer matches
    before = {n: snapshot(net[n]) for n in CORRECT}
    for name in CORRECT:
        net.push(name, [(tampered, sig)])
        assert snapshot(net[name]) == before[name]
    assert_refused(net, "bad signature")
    net.converge()
    assert_agree(net)
    assert all(not net[n].reads.exists(record) for n in CORRECT)


def test_an_op_built_on_another_graphs_heads_is_refused(net: Net) -> None:
    """A shared scope's op whose predecessors are personal ops (or the reverse) is refused alike everywhere."""
    net["a"].remember("a personal fact")
    net.converge()
    key = key_of(net)
    team_op = crdt.make_op(key, "create", new_id(), {**FIELDS, "content": "a team fact"}, 1 << 40,
                           heads_of(net["a"]), graph=hashlib.sha256(b"some team").digest())
    before = {n: snapshot(net[n]) for n in CORRECT}
    for name in CORRECT:
        net.push(name, [(team_op.body, team_op.sig)])
        assert snapshot(net[name]) == before[name]
    assert_refused(net, "cross-graph preds")
    net.converge()
    assert_agree(net)


# ------------------------------------------------------------------ the graph
def test_dangling_predecessors_wait_and_are_never_applied(net: Net) -> None:
    net["a"].remember("something to sync")
    net.converge()
    before = {n: snapshot(net[n]) for n in CORRECT}
    ghost = secrets.token_bytes(32)  # an op id nobody will ever hold
    orphan = craft(key_of(net), "create", new_id(), FIELDS, preds=[ghost])
    for name in CORRECT:
        answer = net.push(name, [orphan], heads=[oid(orphan)])
        assert ghost.hex() in answer["need"]  # asked for, not applied
        assert snapshot(net[name]) == before[name]
        assert oid(orphan) not in rejected(net[name])  # waiting is not refusing

    # A faulty server that keeps offering the orphan and never its predecessor:
    # the session ends by its bounds, the orphan still waits, nothing changes.
    served = 0

    def orphan_server(body: bytes) -> bytes:
        nonlocal served
        served += 1
        return json.dumps(message([orphan], heads=[oid(orphan)])).encode()

    report = net.sync_via("a", "f", orphan_server)
    assert report.ok
    assert served == report.round_trips <= wire.MAX_ROUNDS
    assert report.applied == 0 and report.rejected == 0
    assert report.waiting >= 1
    assert snapshot(net["a"]) == before["a"]
    net.converge()
    assert_agree(net)
    assert all(oid(orphan) not in op_ids(net[n]) for n in CORRECT)


def test_the_waiting_buffer_holds_each_op_once(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two distinct orphans wait, under a bound of three; the peer re-offers one of them every round.
    Neither may be evicted, and two ops wait, not one per copy received."""
    monkeypatch.setattr(replica, "MAX_PENDING", 3)
    first, second = (craft(key_of(net), "create", new_id(), FIELDS, preds=[secrets.token_bytes(32)])
                     for _ in range(2))
    offers = [[first, second]]

    def re_offering_server(body: bytes) -> bytes:
        ops = offers.pop() if offers else [second]
        return json.dumps(message(ops, heads=[oid(p) for p in ops])).encode()

    report = net.sync_via("a", "f", re_offering_server)
    assert report.round_trips >= 3
    assert "pending buffer full" not in refusals(net["a"]), refusals(net["a"])
    assert report.waiting == 2, f"2 distinct ops wait, {report.waiting} reported after {report.round_trips} rounds"


def test_pending_buffer_is_bounded(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    """F answers every round with fresh ops whose predecessors never come: nothing is applied and
    the buffer of waiting ops stays under its bound (lowered here to keep the test fast)."""
    monkeypatch.setattr(replica, "MAX_PENDING", 100)
    net["a"].remember("a's memory")
    before = snapshot(net["a"])
    signer = key_of(net)
    rounds = 0
    per_round = 60

    def flooding_server(body: bytes) -> bytes:
        nonlocal rounds
        rounds += 1
        request = json.loads(body)
        assert len(request["need"]) <= MAX_NEED
        ops = [craft(signer, "create", new_id(), FIELDS, preds=[secrets.token_bytes(32)]) for _ in range(per_round)]
        return json.dumps(message(ops, heads=[oid(p) for p in ops], need=[secrets.token_bytes(32)],
                                  more=True)).encode()

    report = net.sync_via("a", "f", flooding_server)
    assert rounds == report.round_trips <= wire.MAX_ROUNDS
    assert rounds * per_round > 100  # the bound was reached
    assert report.applied == 0
    assert 0 < report.waiting <= 100
    assert snapshot(net["a"]) == before
    assert refusals(net["a"]).get("pending buffer full", 0) >= 1
    net.converge()
    assert_agree(net)


def test_replayed_ops_are_duplicates_and_change_nothing(net: Net) -> None:
    for text in ("one", "two", "three"):
        net["f"].remember(f"f's honest memory {text}")
    assert net.sync("f", "a").ok  # F's own client against A's server
    net.converge()
    assert_agree(net)
    pairs = log_pairs(net["f"])
    assert len(pairs) == 3
    before = {n: snapshot(net[n]) for n in CORRECT}
    for name in CORRECT:
        for batch in (pairs, pairs[::-1], pairs + pairs, [pairs[1]] * 50):
            net.push(name, batch)
            served = net[name].replication._server.last_round
            assert (served.applied, served.rejected) == (0, 0)
        assert snapshot(net[name]) == before[name]
        assert refusals(net[name]) == {}  # a duplicate is not a refusal
    for name in CORRECT:  # and a full session with F moves nothing either way
        report = net.sync("f", name)
        assert report.ok and report.applied == 0
    net.converge()
    assert_agree(net)
    assert all(snapshot(net[n]) == before[n] for n in CORRECT)


def test_equivocation_both_versions_are_applied_everywhere(net: Net) -> None:
    """F signs two different updates on the same predecessors and shows each to a different replica."""
    record = net["f"].remember("f's memory")
    spread(net)
    base = heads_of(net["f"])
    hlc = pack(now_ms())
    one = craft(key_of(net), "update", record, {"content": "version one"}, preds=base, hlc=hlc)
    two = craft(key_of(net), "update", record, {"content": "version two"}, preds=base, hlc=hlc)
    net.push("a", [one])
    net.push("b", [two])
    assert net["a"].get(record).content == "version one"
    assert net["b"].get(record).content == "version two"
    net.converge()
    net.converge(EVERYONE)
    assert_agree(net, EVERYONE)
    for name in EVERYONE:
        assert {oid(one), oid(two)} <= op_ids(net[name])
    # Same clock and author: the larger op id wins, on every replica.
    winner = "version one" if oid(one) > oid(two) else "version two"
    for name in CORRECT:
        assert net[name].get(record).content == winner
        assert any(c["field"] == "content" for c in net[name].conflicts(record)), name
    assert all(refusals(net[n]) == {} for n in CORRECT)  # equivocation is not invalid


def test_tag_remove_naming_a_foreign_add_is_refused_alike(net: Net) -> None:
    first = net["a"].remember("first", tags=["x"])
    second = net["a"].remember("second", tags=["x"])
    net["a"].update(first, tags=["x", "y"])
    spread(net)

    def op_of(kind: str, record: str) -> bytes:
        row = net["a"].storage.conn.execute(
            "SELECT id FROM ops WHERE kind = ? AND record_id = ?", (kind, record)).fetchone()
        return bytes(row[0])

    heads = heads_of(net["f"])
    other_memory = craft(key_of(net), "tag_remove", first, {"tag": "x", "removes": [op_of("create", second)]},
                         preds=heads)
    other_tag = craft(key_of(net), "tag_remove", first, {"tag": "x", "removes": [op_of("tag_add", first)]},
                      preds=heads)
    before = {n: snapshot(net[n]) for n in CORRECT}
    for name in CORRECT:
        net.push(name, [other_memory])
        net.push(name, [other_tag])
        assert snapshot(net[name]) == before[name]
        assert {oid(other_memory), oid(other_tag)} <= rejected(net[name])
    assert_refused(net, "bad remove", times=2)
    net.converge()
    assert_agree(net)
    assert all(set(net[n].get(first).tags) == {"x", "y"} for n in CORRECT)
    assert all(rejected(net[n]) == rejected(net["a"]) for n in CORRECT)
    # The rule refuses only foreign adds: removing the add it names correctly is accepted everywhere.
    fair = craft(key_of(net), "tag_remove", first, {"tag": "x", "removes": [op_of("create", first)]}, preds=heads)
    net.push("b", [fair])
    net.converge()
    assert_agree(net)
    assert all(set(net[n].get(first).tags) == {"y"} for n in CORRECT)
    assert all(set(net[n].get(second).tags) == {"x"} for n in CORRECT)


def test_an_op_descending_from_a_refused_op_is_refused_everywhere(net: Net) -> None:
    signer = key_of(net)
    # Invalid by rule: an update of a memory whose create is not among its ancestors.
    bad = craft(signer, "update", new_id(), {"content": "no create"})
    child = craft(signer, "create", new_id(), FIELDS, preds=[oid(bad)])  # valid on its own
    grandchild = craft(signer, "create", new_id(), FIELDS, preds=[oid(child)])
    before = {n: snapshot(net[n]) for n in CORRECT}
    # A gets the whole family in one message; B gets it one op at a time, parents first;
    # C gets the children first (they wait and their parent is asked for), then the parent.
    net.push("a", [grandchild, child, bad])
    for pair in (bad, child, grandchild):
        net.push("b", [pair])
    answer = net.push("c", [grandchild, child])
    assert oid(bad).hex() in answer["need"]
    net.push("c", [bad])
    net.push("c", [child, grandchild])
    family = {oid(bad), oid(child), oid(grandchild)}
    for name in CORRECT:
        assert snapshot(net[name]) == before[name]
        assert rejected(net[name]) == family, name
        counts = refusals(net[name])
        assert counts.get("no create in ancestry") == 1, (name, counts)
        assert counts.get("descends from rejected", 0) >= 2, (name, counts)
    net.converge()
    assert_agree(net)
    # Once refused, the family is not asked for again, whoever offers it.
    answer = net.push("a", [], heads=[oid(grandchild)])
    assert answer["need"] == []


# ------------------------------------------------------------------ bounds on one op
def test_huge_predecessor_fanout_is_refused(net: Net) -> None:
    preds = [secrets.token_bytes(32) for _ in range(crdt.MAX_PREDS + 1)]
    wide = craft(key_of(net), "create", new_id(), FIELDS, preds=preds)
    before = {n: snapshot(net[n]) for n in CORRECT}
    for name in CORRECT:
        answer = net.push(name, [wide])
        assert answer["need"] == []  # refused outright: none of its 65 predecessors is asked for
        assert snapshot(net[name]) == before[name]
    assert_refused(net, "bad preds")
    net.converge()
    assert_agree(net)


def test_oversized_op_is_refused(net: Net) -> None:
    signer = key_of(net)
    overhead = len(crdt.op_body("create", new_id(), {**FIELDS, "content": ""}, pack(now_ms()),
                                bytes(signer.verify_key), []))
    just_over = craft(signer, "create", new_id(), {**FIELDS, "content": "x" * (crdt.MAX_OP_BYTES + 1 - overhead)})
    far_over = craft(signer, "create", new_id(), {**FIELDS, "content": "é" * crdt.MAX_OP_BYTES})
    assert len(just_over[0]) == crdt.MAX_OP_BYTES + 1 and len(far_over[0]) > 2 * crdt.MAX_OP_BYTES
    with pytest.raises(InvalidOp):
        crdt.make_op(signer, "create", new_id(), {**FIELDS, "content": "x" * crdt.MAX_OP_BYTES}, pack(now_ms()), [])
    before = {n: snapshot(net[n]) for n in CORRECT}
    for name in CORRECT:
        net.push(name, [just_over])  # decoded, then refused by size
        net.push(name, [far_over])  # dropped unread by the message parser
        assert net[name].replication._server.last_round.rejected == 1
        assert snapshot(net[name]) == before[name]
    assert_refused(net, "oversized op", times=2)
    net.converge()
    assert_agree(net)


def _with_hlc_bytes(body: bytes, replacement: bytes) -> bytes:
    """``body`` (built with hlc = HLC_MAX) with the hlc value's encoding replaced."""
    encoded = b"s" + struct.pack(">I", 3) + b"hlc" + b"i" + struct.pack(">q", HLC_MAX)
    assert body.count(encoded) == 1
    return body.replace(encoded, b"s" + struct.pack(">I", 3) + b"hlc" + replacement)


def test_timestamp_2_63_cannot_be_encoded_and_is_refused(net: Net) -> None:
    signer = key_of(net)
    record = new_id()
    with pytest.raises(InvalidOp, match="64-bit"):
        crdt.make_op(signer, "create", record, FIELDS, 1 << 63, [])
    body, _ = craft(signer, "create", record, FIELDS, hlc=HLC_MAX)
    # What a careless encoder would send for 2**63: the unsigned bytes (read back as -2**63),
    # or a float. Both are validly signed, and both are refused by the clock rule.
    unsigned = signed(_with_hlc_bytes(body, b"i" + (1 << 63).to_bytes(8, "big")), signer)
    as_float = signed(_with_hlc_bytes(body, b"f" + struct.pack(">d", float(1 << 63))), signer)
    before = {n: snapshot(net[n]) for n in CORRECT}
    for name in CORRECT:
        net.push(name, [unsigned, as_float])
        assert net[name].replication._server.last_round.rejected == 2
        assert snapshot(net[name]) == before[name]
    assert_refused(net, "bad clock", times=2)
    net.converge()
    assert_agree(net)
    assert all(not net[n].reads.exists(record) for n in CORRECT)


def test_timestamp_2_63_minus_1_is_applied_alike_and_does_not_drag_clocks(net: Net) -> None:
    record = net["a"].remember("written today")
    spread(net)
    future = craft(key_of(net), "update", record, {"content": "from the end of time"},
                   preds=heads_of(net["f"]), hlc=HLC_MAX)
    net.push("a", [future])
    net.converge()
    assert_agree(net)
    for name in CORRECT:
        assert net[name].get(record).content == "from the end of time"
        assert refusals(net[name]) == {}
    for name in CORRECT:
        api = net[name]
        seen = heads_of(api)
        assert name != "a" or seen == [oid(future)]
        api.update(record, content=f"corrected on {name}")
        (mine,) = [op for _, op in api.log.ops_since(0, 10**6) if op.fields.get("content") == f"corrected on {name}"]
        assert abs(hlc_ms(mine.hlc) - now_ms()) < 10 * 60 * 1000, "the local clock was dragged to the future"
        assert list(mine.preds) == seen  # built on the far-future op (or on corrections that were)
        assert api.get(record).content == f"corrected on {name}"  # causally later: it wins
        later = api.remember(f"a new memory on {name}")
        assert abs(api.get(later).created_at - now_ms()) < 60 * 1000
        net.converge()
    assert_agree(net)
    final = net["a"].get(record).content
    assert final == "corrected on c"  # each correction saw the previous one
    assert all(net[n].get(record).content == final for n in CORRECT)


# ------------------------------------------------------------------ bounds on one message
def test_junk_need_requests_are_answered_bounded_and_counted(net: Net) -> None:
    net["a"].remember("a's memory")
    net.converge()
    before = {n: snapshot(net[n]) for n in CORRECT}
    junk = [secrets.token_bytes(32) for _ in range(MAX_NEED)]
    for name in CORRECT:
        answer = net.push(name, [], need=junk)
        assert net[name].replication._server.last_round.junk_needs == MAX_NEED
        assert len(answer["ops"]) == 1  # its one op (F holds nothing), none of the junk
        status, refused = net.send(name, message(need=[*junk, secrets.token_bytes(32)]))
        assert status == 400
        assert "need" in refused["error"]["message"] and str(MAX_NEED) in refused["error"]["message"]
        with pytest.raises(SyncRejected, match="need"):
            net[name].replication._server.handle(net[name].replication.registry.get("f"),
                                                 message(need=[*junk, junk[0]]))
        assert snapshot(net[name]) == before[name]
        counts = refusals(net[name])
        assert counts.get("junk need") == 1 and counts.get("bad message") == 1, (name, counts)
    net.converge()
    assert_agree(net)


MALFORMED: list[tuple[str, Callable[[dict[str, Any]], object], str]] = [
    ("wrong version", lambda m: {**m, "v": 2}, "version"),
    ("no version", lambda m: {k: v for k, v in m.items() if k != "v"}, "version"),
    ("version true", lambda m: {**m, "v": True}, "version"),  # == 1 in Python, not in the protocol
    ("version 1.0", lambda m: {**m, "v": 1.0}, "version"),
    ("bloom hashes true", lambda m: {**m, "have": {"last_sync": [], "bloom": {
        "salt": b64(bytes(8)), "bits": b64(bytes(8)), "hashes": True}}}, "have.bloom"),
    ("not an object", lambda m: [m], "object"),
    ("heads not hex", lambda m: {**m, "heads": ["zz" * 32]}, "heads"),
    ("heads too short", lambda m: {**m, "heads": ["ab"]}, "heads"),
    ("heads not a list", lambda m: {**m, "heads": "ab" * 32}, "heads"),
    ("need not hex", lambda m: {**m, "need": ["g" * 64]}, "need"),
    ("last_sync not hex", lambda m: {**m, "have": {"last_sync": [1], "bloom": None}}, "have.last_sync"),
    ("bloom not base64", lambda m: {**m, "have": {"last_sync": [], "bloom": {"salt": "!", "bits": "!",
                                                                             "hashes": 7}}}, "have.bloom"),
    ("bloom without salt", lambda m: {**m, "have": {"last_sync": [], "bloom": {"bits": b64(bytes(8)),
                                                                               "hashes": 7}}}, "have.bloom"),
    ("ops not base64", lambda m: {**m, "ops": [["not base64!", "AAAA"]]}, "ops[0]"),
    ("op not a pair", lambda m: {**m, "ops": [["AAAA"]]}, "ops[0]"),
    ("ops not a list", lambda m: {**m, "ops": {"a": 1}}, "ops"),
    ("too many ops", lambda m: {**m, "ops": [["AAAA", "AAAA"]] * (MAX_OPS_PER_MESSAGE + 1)}, "ops"),
]


def test_malformed_messages_are_refused_naming_the_field(net: Net) -> None:
    net["a"].remember("a's memory")
    net.converge()
    base = message([craft(key_of(net), "create", new_id(), FIELDS)])
    server = net["a"].replication._server
    before = snapshot(net["a"])
    for label, mutate, named in MALFORMED:
        bad = mutate(base)
        with pytest.raises(SyncRejected, match=re.escape(named)):
            server.handle(net["a"].replication.registry.get("f"), bad)  # type: ignore[arg-type]
        status, answer = net.send("a", bad)
        assert status == 400, label
        assert named in answer["error"]["message"], (label, answer)
        field = {"version": "v", "object": "body"}.get(named, named)
        assert answer["error"]["field"] == field, (label, answer)  # every 4xx names the field (issue 13)
    assert snapshot(net["a"]) == before  # not even the valid op of the message was applied
    assert refusals(net["a"]).get("bad message") == len(MALFORMED)
    body = b"{not json"
    headers = sign_request(key_of(net), net["a"].log.author, body)
    status, raw, _ = net["a"].replication.serve(headers, body)
    assert status == 400 and b"not JSON" in raw
    net.converge()
    assert_agree(net)


@pytest.mark.parametrize(("label", "answer", "named"), [
    ("heads not hex", {"v": 1, "heads": ["xyz"]}, "heads"),
    ("wrong version", {"v": 7}, "version"),
    ("too many ops", {"v": 1, "ops": [["AAAA", "AAAA"]] * (MAX_OPS_PER_MESSAGE + 1)}, "ops"),
    ("not json", None, "not JSON"),
])
def test_a_faulty_servers_malformed_answer_ends_the_session(net: Net, label: str, answer: object,
                                                            named: str) -> None:
    net["a"].remember("a's memory")
    before = snapshot(net["a"])

    def faulty(body: bytes) -> bytes:
        return b"<html>" if answer is None else json.dumps(answer).encode()

    report = net.sync_via("a", "f", faulty)
    assert not report.ok and report.error is not None and named in report.error, (label, report)
    assert snapshot(net["a"]) == before
    assert named in (next(p for p in net["a"].list_peers() if p["name"] == "f")["last_error"] or "")


def test_ops_of_a_refused_message_can_come_again_in_a_good_one(net: Net) -> None:
    """A malformed message is refused as a whole, and remembers nothing about the ops it carried."""
    pair = craft(key_of(net), "create", new_id(), FIELDS)
    status, _ = net.send("a", {**message([pair]), "heads": ["nope"]})
    assert status == 400
    net.push("a", [pair])
    net.converge()
    assert_agree(net)
    assert all(oid(pair) in op_ids(net[n]) for n in CORRECT)


# ------------------------------------------------------------------ ops and answers that break the engine
def unmaterialisable(net: Net) -> Pair:
    """A validly signed create whose metadata holds bytes: the op encoding carries them, and
    ``check_fields`` lets any dict through as metadata, but the materialiser writes metadata as JSON."""
    return craft(key_of(net), "create", new_id(), {**FIELDS, "metadata": {"blob": b"\x00\x01"}})


def test_a_signed_op_the_materialiser_cannot_store_is_decided_alike_and_answered(net: Net) -> None:
    poison = unmaterialisable(net)
    honest = craft(key_of(net), "create", new_id(), FIELDS)
    for name in CORRECT:
        status, answer = net.send(name, message([honest, poison]))
        assert status == 200, answer
    net.converge()
    assert_agree(net)
    assert all(oid(honest) in op_ids(net[n]) for n in CORRECT)  # the honest op is not held hostage
    if oid(poison) not in op_ids(net["a"]):  # refused (the likely fix): then logged and counted everywhere
        assert all(sum(refusals(net[n]).values()) == 1 and events(net[n]) for n in CORRECT)


def test_a_faulty_peer_cannot_stop_a_sync_with_the_other_peers(net: Net) -> None:
    # On A, C is listed after F (peers are synced in name order).
    net["a"].remove_peer("c")
    net["a"].add_peer("zc", "http://c.invalid:8373", net["c"].identity())
    from_c = net["c"].remember("news from c")
    poison = unmaterialisable(net)

    def poisoned_server(body: bytes) -> bytes:
        return json.dumps(message([poison], heads=[oid(poison)])).encode()

    routes = {"b": net.transport("a", "b"), "f": poisoned_server, "zc": net.transport("a", "c")}
    reports = net["a"].sync(transport=lambda peer: routes[peer.name])
    assert [r.peer for r in reports] == ["b", "f", "zc"]
    assert reports[0].ok and reports[2].ok
    assert net["a"].reads.exists(from_c)


def test_a_deeply_nested_request_is_refused_as_bad_json(net: Net) -> None:
    body = b"[" * 100_000
    status, answer, _ = net["a"].replication.serve(sign_request(key_of(net), net["a"].log.author, body), body)
    assert status == 400 and b"JSON" in answer


def test_a_deeply_nested_answer_ends_the_session_with_an_error(net: Net) -> None:
    report = net.sync_via("a", "f", lambda body: b"[" * 100_000)
    assert not report.ok and report.error is not None and "JSON" in report.error


def test_an_unexpected_error_with_one_peer_does_not_stop_the_others(net: Net) -> None:
    net["a"].remove_peer("c")
    net["a"].add_peer("zc", "http://c.invalid:8373", net["c"].identity())
    from_c = net["c"].remember("news from c")

    def broken(body: bytes) -> bytes:
        raise TypeError("a bug met on the way")

    routes = {"b": net.transport("a", "b"), "f": broken, "zc": net.transport("a", "c")}
    reports = net["a"].sync(transport=lambda peer: routes[peer.name])
    assert [(r.peer, r.ok) for r in reports] == [("b", True), ("f", False), ("zc", True)]
    assert reports[1].error is not None and "internal error: TypeError" in reports[1].error
    assert net["a"].reads.exists(from_c)


def test_a_session_that_keeps_trickling_stops_at_its_time_limit(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    """F answers slowly, one applicable op per round and 'more to come': progress every round, so
    only the session's time limit ends it, and what arrived is kept."""
    monkeypatch.setattr(protocol, "MAX_SESSION_S", 0.6)
    signer = key_of(net)

    def trickling_server(body: bytes) -> bytes:
        time.sleep(0.2)
        op = craft(signer, "create", new_id(), FIELDS)
        return json.dumps(message([op], heads=[oid(op)], more=True)).encode()

    report = net.sync_via("a", "f", trickling_server)
    assert report.ok and report.error is not None and "time limit" in report.error
    assert 2 <= report.round_trips <= 5 and report.applied == report.round_trips


def test_the_pending_buffer_is_bounded_in_bytes_too(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica, "MAX_PENDING_BYTES", 50_000)
    signer = key_of(net)
    big = {**FIELDS, "content": "x" * 10_000}

    def orphans_server(body: bytes) -> bytes:
        ops = [craft(signer, "create", new_id(), big, preds=[secrets.token_bytes(32)]) for _ in range(4)]
        return json.dumps(message(ops, heads=[oid(p) for p in ops], more=True)).encode()

    report = net.sync_via("a", "f", orphans_server)
    assert 0 < report.waiting <= 4  # 4 ops of ~10 KB fit in 50 KB; 5 would not
    assert refusals(net["a"]).get("pending buffer full", 0) >= 1


@pytest.mark.parametrize("chained", [True, False], ids=["a-long-chain-of-adds", "many-concurrent-adds"])
def test_a_flood_of_adds_cannot_make_a_tag_unremovable(net: Net, chained: bool) -> None:
    """F adds the same tag to a shared memory 150 times, one after another or all concurrently
    (150 heads, more than an op may have predecessors). An honest user still removes the tag: the
    remove is split into ops that each name few enough adds to have them among their ancestors."""
    shared = net["a"].remember("a shared memory", tags=["x"])
    net.converge(EVERYONE)
    signer, base = key_of(net), heads_of(net["f"])
    adds, preds = [], base
    for i in range(150):
        adds.append(craft(signer, "tag_add", shared, {"tag": "x"}, preds=preds, hlc=pack(now_ms()) + i))
        preds = [oid(adds[-1])] if chained else base
    net.push("a", adds)
    net.converge()
    assert len(net["b"].reads.tag_adds(shared, "x")) == 151

    assert net["b"].update(shared, tags=["y"]).tags == ("y",)
    net.converge()
    assert_agree(net)
    assert all(net[n].get(shared).tags == ("y",) for n in CORRECT)
