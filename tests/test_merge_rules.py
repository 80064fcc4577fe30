"""Merge rules of the replicated op log, tested as behaviour.

Every correct replica must make the same decision about the same set of ops,
whatever order, batching or duplication they arrive in: scalar fields by
causal order then ``(effective clock, author, op id)``, tags as an
observed-remove set, deletes that only remove what they observed, and the
ancestry rules that reject ops (and their descendants) alike everywhere.

The unit tests deliver ops crafted by a "faulty" author (a bare signing key)
to three correct replicas in different arrangements and require the same
decision and the same state digest on all three; the property test does the
same for random multi-replica histories written through the public API.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuralsync.errors import InvalidOp
from neuralsync.model import Op
from neuralsync.oplog import codec as crdt
from neuralsync.oplog.clock import HLC_MAX, hlc_ms, pack
from neuralsync.oplog.graph import EFF_CAP
from neuralsync.oplog.log import OpLog
from neuralsync.services.doctor import run_doctor, state_digest
from neuralsync.store.reads import Reader
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI
from neuralsync.utils import new_id, now_ms

MakeApi = Callable[..., UnifiedMemoryAPI]
Batches = list[list[Op]]

T0 = pack(1_700_000_000_000)  # a plausible stamped clock for crafted ops
CREATED = 1_700_000_000_000
BASE = {"content": "original", "scope": "global", "kind": "fact", "priority": 0.5, "confidence": 0.8,
        "created_at": CREATED}


# ------------------------------------------------------------------ helpers
def key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


def wire(op: Op) -> Op:
    """The op as a peer receives it: JSON wire form, parsed and verified."""
    return crdt.op_from_wire(crdt.op_to_wire(op))


def craft(signer: nacl.signing.SigningKey, kind: str, record_id: str, fields: dict[str, Any], hlc: int,
          preds: Sequence[Op] = ()) -> Op:
    """A signed op by ``signer`` that passes every check a peer runs on the wire."""
    return wire(crdt.make_op(signer, kind, record_id, fields, hlc, [p.id for p in preds]))


def create(signer: nacl.signing.SigningKey, record_id: str, hlc: int = T0, preds: Sequence[Op] = (),
           **fields: Any) -> Op:
    return craft(signer, "create", record_id, {**BASE, **fields}, hlc, preds)


def open_store(path: Path) -> OpLog:
    return OpLog.open(MemoryConfig(base_path=str(path), embedder="none"))


def state(store: OpLog) -> Reader:
    """What a replica shows (memories, persona, tags)."""
    return Reader(store.storage)


def digest(store: OpLog) -> str:
    return state_digest(store.storage.conn)


def log_of(store: OpLog) -> list[Op]:
    return [op for _, op in store.ops_since(0, 10**9)]


def op_count(store: OpLog) -> int:
    return int(store.storage.conn.execute("SELECT count(*) FROM ops").fetchone()[0])


def eff_of(store: OpLog, op: Op) -> int:
    return int(store.storage.conn.execute("SELECT eff FROM ops WHERE id = ?", (op.id,)).fetchone()[0])


def conflicts(store: OpLog, record_id: str, field_name: str) -> list[tuple[bytes, bytes, Any, Any, bytes, bytes]]:
    """(winner op, loser op, winner value, loser value, winner author, loser author) rows of the audit trail."""
    rows = store.storage.conn.execute(
        "SELECT winner_op, loser_op, winner_value, loser_value, winner_author, loser_author FROM conflicts"
        " WHERE record_id = ? AND field = ? ORDER BY id", (record_id, field_name)).fetchall()
    return [(r[0], r[1], json.loads(r[2]), json.loads(r[3]), r[4], r[5]) for r in rows]


def rejected_ids(store: OpLog) -> set[bytes]:
    return {r[0] for r in store.storage.conn.execute("SELECT id FROM rejected_ops")}


def lww_key(op: Op) -> tuple[int, bytes, bytes]:
    """The concurrent-write order when the op's effective clock is its stamped one."""
    return op.hlc, op.author, op.id


@dataclass
class Outcome:
    """What a replica did with everything delivered to it (ids as bytes)."""

    applied: set[bytes] = field(default_factory=set)
    rejected: set[bytes] = field(default_factory=set)
    missing: set[bytes] = field(default_factory=set)
    needed: set[bytes] = field(default_factory=set)
    duplicates: int = 0


def deliver(store: OpLog, batches: Sequence[Sequence[Op]]) -> Outcome:
    """Feed ``batches`` through ``apply_remote`` like a sync loop: ops reported missing are
    re-sent with the next batch, and again at the end until nothing more can be applied."""
    out = Outcome()
    known = {op.id: op for batch in batches for op in batch}
    waiting: dict[bytes, Op] = {}

    def feed(ops: list[Op]) -> None:
        nonlocal waiting
        result = store.apply_remote(ops)
        out.applied.update(bytes.fromhex(h) for h in result.applied)
        out.rejected.update(bytes.fromhex(h) for h, _ in result.rejected)
        out.duplicates += result.duplicates
        out.needed = {bytes.fromhex(h) for h in result.needed}
        waiting = {bytes.fromhex(h): known[bytes.fromhex(h)] for h in result.missing
                   if bytes.fromhex(h) not in out.rejected}

    for batch in batches:
        feed([*batch, *waiting.values()])
    while waiting:
        before = set(waiting)
        feed(list(waiting.values()))
        if set(waiting) == before:
            break
    out.missing = set(waiting)
    return out


def arrangements(ops: Sequence[Op]) -> list[Batches]:
    """Three deliveries of the same (topologically ordered) ops: one batch as given, one batch
    reversed, and one op at a time in reverse order (every op waits for its predecessors)."""
    return [[list(ops)], [list(reversed(ops))], [[op] for op in reversed(ops)]]


def converge(stores: Sequence[OpLog], plans: Sequence[Batches]) -> list[Outcome]:
    """Deliver one plan per replica; every replica must decide alike and hold the same state."""
    outcomes = [deliver(store, plan) for store, plan in zip(stores, plans, strict=True)]
    first = outcomes[0]
    for store, outcome in zip(stores, outcomes, strict=True):
        assert outcome.rejected == first.rejected
        assert outcome.applied == first.applied
        assert outcome.missing == set()
        assert rejected_ids(store) == first.rejected
        assert digest(store) == digest(stores[0])
        report = run_doctor(store.storage)
        assert report.ok, report.to_dict()
    return outcomes


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[list[OpLog]]:
    """Three correct replicas, each a real store on disk."""
    stores = [open_store(tmp_path / f"replica-{i}") for i in range(3)]
    yield stores
    for store in stores:
        store.close()


@pytest.fixture
def faulty() -> nacl.signing.SigningKey:
    """The key of an author that crafts its ops by hand (no store, no clock, no checks)."""
    return key()


# ------------------------------------------------------------------ property: any order, one state
WORDS = ("alpha", "beta", "gamma", "delta")
TAGS = ("red", "green", "blue")
SHARED = ("0" * 31 + "a", "0" * 31 + "b")  # ids imported on several replicas: creates of one record

replica_ix = st.integers(0, 2)
target = st.integers(0, 7)
remember = st.tuples(st.just("remember"), replica_ix, st.sampled_from(WORDS), st.frozensets(st.sampled_from(TAGS)))
# First a few memories every replica receives, so that what follows edits shared records concurrently.
prelude = st.lists(remember, min_size=1, max_size=3)
actions = st.lists(st.one_of(
    remember,
    st.tuples(st.just("import"), replica_ix, st.sampled_from(range(len(SHARED))), st.sampled_from(WORDS),
              st.frozensets(st.sampled_from(TAGS)), st.integers(0, 3)),
    st.tuples(st.just("content"), replica_ix, target, st.sampled_from(WORDS)),
    st.tuples(st.just("priority"), replica_ix, target, st.sampled_from([0.0, 0.25, 0.5, 1.0])),
    st.tuples(st.just("scope"), replica_ix, target, st.sampled_from(["global", "work", "home"])),
    st.tuples(st.just("tags"), replica_ix, target, st.frozensets(st.sampled_from(TAGS))),
    st.tuples(st.just("tags"), replica_ix, target, st.frozensets(st.sampled_from(TAGS))),  # twice: more tag races
    st.tuples(st.just("forget"), replica_ix, target),
    st.tuples(st.just("persona"), replica_ix, st.sampled_from(WORDS)),
    # A partial exchange: a random subset (p) of one replica's log, not necessarily causally closed.
    st.tuples(st.just("sync"), replica_ix, replica_ix, st.sampled_from([0.3, 0.7, 1.0]), st.integers(0, 2**16)),
), min_size=2, max_size=12)


def _act(apis: list[UnifiedMemoryAPI], records: list[str], step: tuple[Any, ...]) -> None:
    kind, api = step[0], apis[step[1] % len(apis)]
    if kind == "remember":
        records.append(api.remember(step[2], tags=sorted(step[3])))
    elif kind == "import":
        record_id = SHARED[step[2]]
        api.import_memory({"id": record_id, "content": step[3], "tags": sorted(step[4]),
                           "created_at": CREATED + step[5], "priority": 0.1 * step[5]})
        if record_id not in records:
            records.append(record_id)
    elif kind == "persona":
        api.set_persona(step[2])
    elif kind == "sync":
        # A partial, possibly non-closed exchange: a random subset of the source's log.
        source, rng = apis[step[2] % len(apis)], random.Random(step[4])
        ops = [op for op in log_of(source.log) if rng.random() < step[3]]
        assert api.log.apply_remote(ops).rejected == []
    elif records:
        record_id = records[step[2] % len(records)]
        if api.reads.get(record_id) is None:
            return  # not live on this replica (not received, or deleted here)
        if kind == "forget":
            api.forget(record_id)
        elif kind == "tags":
            api.update(record_id, tags=sorted(step[3]))
        else:
            api.update(record_id, **{kind: step[3]})


def _linear_extension(ops: Sequence[Op], rng: random.Random) -> list[Op]:
    """A random topological order of ``ops`` (every op after its predecessors)."""
    by_id = {op.id: op for op in ops}
    children: dict[bytes, list[bytes]] = {}
    blockers = {op.id: 0 for op in ops}
    for op in ops:
        for pred in op.preds:
            if pred in by_id:
                children.setdefault(pred, []).append(op.id)
                blockers[op.id] += 1
    ready = [oid for oid, n in blockers.items() if n == 0]
    order: list[Op] = []
    while ready:
        oid = ready.pop(rng.randrange(len(ready)))
        order.append(by_id[oid])
        for child in children.get(oid, ()):
            blockers[child] -= 1
            if blockers[child] == 0:
                ready.append(child)
    assert len(order) == len(ops)
    return order


def _split(ops: Sequence[Op], rng: random.Random, max_size: int) -> Batches:
    batches: Batches = []
    i = 0
    while i < len(ops):
        size = rng.randint(1, max_size)
        batches.append(list(ops[i:i + size]))
        i += size
    return batches


def _with_duplicates(batches: Batches, rng: random.Random) -> Batches:
    """Re-send some earlier ops inside later batches (and repeat some within their own batch)."""
    sent: list[Op] = []
    out: Batches = []
    for batch in batches:
        extra = rng.sample(sent, min(len(sent), rng.randint(0, 3)))
        repeat = rng.sample(batch, min(len(batch), rng.randint(0, 1)))
        mixed = [*batch, *extra, *repeat]
        if rng.random() < 0.5:
            rng.shuffle(mixed)
        out.append(mixed)
        sent.extend(batch)
    return out


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(prelude, actions, st.integers(2, 3), st.integers(0, 2**32))
def test_any_delivery_of_the_same_ops_gives_the_same_state(setup: list[tuple[Any, ...]],
                                                           steps: list[tuple[Any, ...]], n: int, seed: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="ns-merge-") as home:
        root = Path(home)
        apis = [UnifiedMemoryAPI(MemoryConfig(base_path=str(root / f"r{i}"), embedder="none"), tool=f"t{i}")
                for i in range(n)]
        fresh: list[OpLog] = []
        try:
            records: list[str] = []
            for step in setup:
                _act(apis, records, step)
            shared = [op for api in apis for op in log_of(api.log)]
            for api in apis:
                api.log.apply_remote(shared)
            for step in steps:
                _act(apis, records, step)
            union = list({op.id: op for api in apis for op in log_of(api.log)}.values())

            # Full exchange: every original replica ends up with every op and the same state.
            for api in apis:
                result = api.log.apply_remote(rng.sample(union, len(union)))
                assert (result.rejected, result.missing, result.needed) == ([], [], [])
            expected = digest(apis[0].log)
            for api in apis:
                assert op_count(api.log) == len(union)
                assert digest(api.log) == expected
                report = run_doctor(api.storage, quick=True)
                assert report.ok, report.to_dict()

            # Fresh replicas: the union in different topological orders, batch splits and duplicates,
            # and one in a completely random order (ops wait for their predecessors and are re-sent).
            plans: list[Batches] = [
                _with_duplicates(_split(_linear_extension(union, rng), rng, 4), rng),
                [[op] for op in _linear_extension(union, rng)],
                _with_duplicates(_split(rng.sample(union, len(union)), rng, 3), rng),
            ]
            for i, plan in enumerate(plans):
                store = open_store(root / f"fresh{i}")
                fresh.append(store)
                outcome = deliver(store, plan)
                assert outcome.rejected == set() and outcome.missing == set()
                assert outcome.applied == {op.id for op in union}
                assert digest(store) == expected
                report = run_doctor(store.storage, quick=True)
                assert report.ok, report.to_dict()
                replay = store.apply_remote(union)
                assert (replay.applied, replay.duplicates) == ([], len(union))
                assert digest(store) == expected
        finally:
            for store in fresh:
                store.close()
            for api in apis:
                api.close()


# ------------------------------------------------------------------ scalar fields
@pytest.mark.parametrize("same_clock", [True, False], ids=["tie-broken-by-author", "larger-clock"])
def test_concurrent_updates_the_largest_clock_author_id_wins_everywhere(trio: list[OpLog],
                                                                       faulty: nacl.signing.SigningKey,
                                                                       same_clock: bool) -> None:
    rid = new_id()
    c = create(faulty, rid)
    u1 = craft(key(), "update", rid, {"content": "one", "priority": 0.1}, T0 + 10, [c])
    u2 = craft(key(), "update", rid, {"content": "two", "priority": 0.9}, T0 + (10 if same_clock else 11), [c])
    winner, loser = sorted([u1, u2], key=lww_key, reverse=True)
    if not same_clock:
        assert winner is u2
    converge(trio, [[[c], [u1], [u2]], [[c], [u2], [u1]], [[u2, c, u1]]])
    for store in trio:
        memory = state(store).get(rid)
        assert memory is not None
        assert (memory.content, memory.priority) == (winner.fields["content"], winner.fields["priority"])
        for name in ("content", "priority"):
            assert conflicts(store, rid, name) == [(winner.id, loser.id, winner.fields[name], loser.fields[name],
                                                    winner.author, loser.author)]


def test_a_causally_later_update_wins_whatever_clock_it_was_stamped_with(trio: list[OpLog],
                                                                         faulty: nacl.signing.SigningKey) -> None:
    rid = new_id()
    c = create(key(), rid)
    early = craft(key(), "update", rid, {"content": "early, stamped far ahead"}, T0 + 10**9, [c])
    late = craft(faulty, "update", rid, {"content": "later, stamped at 1"}, 1, [early])
    # Concurrent with both, stamped far above the later op's clock, but below its effective clock.
    rival = craft(key(), "update", rid, {"content": "concurrent"}, T0 + 10**9, [c])
    ops = [c, early, late, rival]
    converge(trio, [[ops], [[c], [rival], [early], [late]], [[op] for op in reversed(ops)]])
    for store in trio:
        assert eff_of(store, late) == early.hlc + 1
        assert eff_of(store, rival) == rival.hlc
        assert state(store).get(rid).content == "later, stamped at 1"  # type: ignore[union-attr]
        assert any(row[1] == rival.id for row in conflicts(store, rid, "content"))


def test_no_conflict_is_recorded_for_causally_ordered_updates(trio: list[OpLog]) -> None:
    rid, writer = new_id(), key()
    c = create(writer, rid)
    u1 = craft(writer, "update", rid, {"content": "v1"}, T0 + 1, [c])
    u2 = craft(key(), "update", rid, {"content": "v2"}, T0 + 2, [u1])
    converge(trio, arrangements([c, u1, u2]))
    for store in trio:
        assert state(store).get(rid).content == "v2"  # type: ignore[union-attr]
        assert conflicts(store, rid, "content") == []


def test_the_persona_merges_like_a_scalar_field(trio: list[OpLog], faulty: nacl.signing.SigningKey) -> None:
    first = craft(key(), "persona", "persona", {"text": "terse"}, T0)
    rivals = [craft(key(), "persona", "persona", {"text": f"rival {i}"}, T0 + 5, [first]) for i in range(2)]
    later = craft(faulty, "persona", "persona", {"text": "after both, stamped at 1"}, 1, rivals)
    winner, loser = sorted(rivals, key=lww_key, reverse=True)
    converge(trio, [[[first], rivals], [[first], rivals[::-1]], [[r] for r in rivals] + [[first]]])
    for store in trio:
        assert state(store).persona() is not None and state(store).persona()[0] == winner.fields["text"]
        assert conflicts(store, "persona", "text") == [(winner.id, loser.id, winner.fields["text"],
                                                       loser.fields["text"], winner.author, loser.author)]
    converge(trio, [[[later]]] * 3)
    for store in trio:
        assert state(store).persona()[0] == "after both, stamped at 1"  # type: ignore[index]  # causally later, whatever its stamp
        assert len(conflicts(store, "persona", "text")) == 1


# ------------------------------------------------------------------ tags: observed-remove set
def test_a_concurrent_tag_add_survives_a_remove_that_did_not_observe_it(trio: list[OpLog],
                                                                        faulty: nacl.signing.SigningKey) -> None:
    rid = new_id()
    c = create(key(), rid, tags=["t", "keep"])
    add = craft(key(), "tag_add", rid, {"tag": "t"}, T0 + 5, [c])
    remove = craft(faulty, "tag_remove", rid, {"tag": "t", "removes": [c.id]}, T0 + 9, [c])
    converge(trio, [[[c], [add], [remove]], [[c], [remove], [add]], [[remove, add, c]]])
    for store in trio:
        assert state(store).get(rid).tags == ("keep", "t")  # type: ignore[union-attr]
        assert state(store).tag_adds(rid, "t") == [add.id]

    # A remove that observed both adds removes the tag everywhere.
    final = craft(faulty, "tag_remove", rid, {"tag": "t", "removes": [add.id]}, T0 + 10, [add, remove])
    converge(trio, [[[final]], [[final]], [[final]]])
    for store in trio:
        assert state(store).get(rid).tags == ("keep",)  # type: ignore[union-attr]
        assert state(store).tag_adds(rid, "t") == []


def _foreign_add(case: str, rid: str, c: Op) -> tuple[list[Op], Op]:
    """(ops to deliver first, the add a faulty remove of tag 't' on ``rid`` names) for one way of lying."""
    other = key()
    if case == "other-record":
        rid2 = new_id()
        c2 = create(other, rid2, tags=["t"])
        add = craft(other, "tag_add", rid2, {"tag": "t"}, T0 + 3, [c, c2])
        return [c2, add], add
    if case == "other-tag":
        add = craft(other, "tag_add", rid, {"tag": "u"}, T0 + 3, [c])
        return [add], add
    if case == "create-without-the-tag":  # a second create of the same record, without the tag
        # (stamped at its created_at, so hlc_ms adds nothing to updated_at)
        c2 = create(other, rid, hlc=T0 + 3, tags=["u"])
        return [c2], c2
    if case == "not-an-add":
        update = craft(other, "update", rid, {"content": "t"}, T0 + 3, [c])
        return [update], update
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["other-record", "other-tag", "create-without-the-tag", "not-an-add"])
def test_a_remove_naming_a_foreign_add_is_rejected_with_its_descendants(trio: list[OpLog], tmp_path: Path,
                                                                        faulty: nacl.signing.SigningKey,
                                                                        case: str) -> None:
    rid = new_id()
    c = create(key(), rid, tags=["t"])
    before, named = _foreign_add(case, rid, c)
    bad = craft(faulty, "tag_remove", rid, {"tag": "t", "removes": [c.id, named.id]}, T0 + 9, [c, *before])
    child = craft(key(), "update", rid, {"content": "built on the bad remove"}, T0 + 10, [bad])
    honest = [c, *before]
    # The state every replica must reach is the one without the bad op and its descendant.
    reference = open_store(tmp_path / "reference")
    try:
        deliver(reference, [honest])
        outcomes = converge(trio, arrangements([*honest, bad, child]))
        assert outcomes[0].rejected == {bad.id, child.id}
        for store in trio:
            assert digest(store) == digest(reference)
            assert "t" in state(store).get(rid).tags  # type: ignore[union-attr]
            # Remembered: sent again, they are rejected at once, not re-examined or applied.
            again = store.apply_remote([child, bad])
            assert again.applied == [] and {r[0] for r in again.rejected} == {bad.id.hex(), child.id.hex()}
    finally:
        reference.close()


@pytest.mark.parametrize("named", ["concurrent-add", "unknown-op"])
def test_a_remove_naming_an_add_outside_its_ancestry_is_rejected(trio: list[OpLog],
                                                                 faulty: nacl.signing.SigningKey,
                                                                 named: str) -> None:
    rid = new_id()
    c = create(key(), rid)
    add = craft(key(), "tag_add", rid, {"tag": "t"}, T0 + 3, [c])
    target_id = add.id if named == "concurrent-add" else os.urandom(32)
    bad = wire(crdt.make_op(faulty, "tag_remove", rid, {"tag": "t", "removes": [target_id]}, T0 + 9, [c.id]))
    outcomes = converge(trio, [[[c], [add], [bad]], [[c, bad, add]], [[bad], [add], [c]]])
    assert outcomes[0].rejected == {bad.id}
    for store in trio:
        assert state(store).get(rid).tags == ("t",)  # type: ignore[union-attr]


# ------------------------------------------------------------------ writes need their create
@pytest.mark.parametrize("kind", ["update", "tag_add", "tag_remove", "delete"])
def test_a_write_without_its_create_among_its_ancestors_is_rejected(trio: list[OpLog],
                                                                    faulty: nacl.signing.SigningKey,
                                                                    kind: str) -> None:
    rid, elsewhere = new_id(), new_id()
    c = create(key(), rid)
    unrelated = create(key(), elsewhere, hlc=T0 + 1)
    by_kind: dict[str, dict[str, Any]] = {"update": {"content": "hijack"}, "tag_add": {"tag": "x"},
                                          "tag_remove": {"tag": "x", "removes": []}, "delete": {}}
    fields = by_kind[kind]
    orphan = craft(faulty, kind, rid, fields, T0 + 5, [unrelated])  # the create exists, but is not an ancestor
    rootless = craft(faulty, kind, rid, fields, T0 + 6)  # no predecessors at all
    child = craft(key(), "update", rid, {"content": "descendant"}, T0 + 7, [c, orphan])
    outcomes = converge(trio, arrangements([c, unrelated, orphan, rootless, child]))
    assert outcomes[0].rejected == {orphan.id, rootless.id, child.id}
    for store in trio:
        memory = state(store).get(rid)
        assert memory is not None and memory.content == "original" and memory.tags == ()


# ------------------------------------------------------------------ creates of an existing id
FORGED = {"content": "forged", "scope": "stolen", "kind": "forged", "priority": 1.0, "confidence": 1.0,
          "tool": "forger", "source": "forger", "session": "forged-session", "metadata": {"forged": True},
          "created_at": 1, "expires_at": 2}


def _provenance(memory: Any) -> tuple[Any, ...]:
    return (memory.content, memory.scope, memory.kind, memory.priority, memory.confidence, memory.tool,
            memory.source, memory.session, memory.metadata, memory.created_at, memory.expires_at)


def test_a_create_that_saw_the_memory_cannot_rewrite_what_its_first_create_set(
        trio: list[OpLog], faulty: nacl.signing.SigningKey) -> None:
    rid = new_id()
    c = create(key(), rid, session="honest-session", tool="claude", tags=["t"])
    # Built on the memory's heads like any local write, stamped later: it saw the create.
    forged = craft(faulty, "create", rid, {**FORGED, "tags": ["extra"]}, T0 + 10, [c])
    converge(trio, arrangements([c, forged]))
    for store in trio:
        memory = state(store).get(rid)
        assert memory is not None
        assert _provenance(memory) == ("original", "global", "fact", 0.5, 0.8, "claude", None,
                                       "honest-session", {}, CREATED, None)
        assert memory.tags == ("extra", "t")  # its tags are adds, like any tag_add
        assert [row[:2] for row in conflicts(store, rid, "session")] == [(c.id, forged.id)]


def test_of_concurrent_creates_the_first_sets_the_fields_in_any_order(trio: list[OpLog],
                                                                     faulty: nacl.signing.SigningKey) -> None:
    rid = new_id()
    c = create(key(), rid, session="honest-session")
    rival = craft(faulty, "create", rid, FORGED, T0 + 10)  # concurrent (no preds), stamped later
    u = craft(key(), "update", rid, {"priority": 0.25}, T0 + 5, [c])
    converge(trio, [[[c], [rival], [u]], [[rival], [c, u]], [[u, rival, c]]])
    for store in trio:
        memory = state(store).get(rid)
        assert memory is not None
        assert (memory.session, memory.created_at, memory.content, memory.tool) == (
            "honest-session", CREATED, "original", None)
        assert memory.priority == 0.25  # an update wins over every create, the first included


def test_an_earlier_concurrent_create_takes_the_create_fields_but_not_what_updates_wrote(
        trio: list[OpLog], faulty: nacl.signing.SigningKey) -> None:
    rid = new_id()
    c = create(key(), rid, session="second")
    u = craft(key(), "update", rid, {"content": "edited"}, T0 + 5, [c])
    earlier = create(faulty, rid, hlc=T0 - 10, session="first", created_at=CREATED - 10, kind="note")
    converge(trio, [[[c, u], [earlier]], [[earlier], [c], [u]], [[u, c, earlier]]])
    for store in trio:
        memory = state(store).get(rid)
        assert memory is not None
        assert (memory.session, memory.created_at, memory.kind, memory.content) == (
            "first", CREATED - 10, "note", "edited")


# ------------------------------------------------------------------ delete: update wins
@pytest.mark.parametrize("write", ["update", "tag_add", "tag_remove"])
def test_a_delete_keeps_a_memory_with_a_write_it_had_not_seen_in_either_arrival_order(
        trio: list[OpLog], faulty: nacl.signing.SigningKey, write: str) -> None:
    rid = new_id()
    c = create(key(), rid, tags=["t"])
    by_kind: dict[str, dict[str, Any]] = {"update": {"content": "edited"}, "tag_add": {"tag": "new"},
                                          "tag_remove": {"tag": "t", "removes": [c.id]}}
    fields = by_kind[write]
    w = craft(key(), write, rid, fields, T0 + 5, [c])
    d = craft(faulty, "delete", rid, {}, T0 + 5, [c])
    converge(trio, [[[c], [w], [d]], [[c], [d], [w]], [[d, w, c]]])
    for store in trio:
        memory = state(store).get(rid)
        assert memory is not None
        assert (memory.content, memory.tags) == {"update": ("edited", ("t",)), "tag_add": ("original", ("new", "t")),
                                                 "tag_remove": ("original", ())}[write]
        assert store.storage.conn.execute("SELECT count(*) FROM tombstones").fetchone()[0] == 0
        rows = conflicts(store, rid, "_deleted")
        assert rows and all(row[0] == w.id and row[1] == d.id for row in rows)

    # A delete that observed the write removes the memory everywhere.
    d2 = craft(faulty, "delete", rid, {}, T0 + 6, [w, d])
    converge(trio, [[[d2]], [[d2]], [[d2]]])
    for store in trio:
        assert state(store).get(rid) is None and not state(store).exists(rid) and state(store).known(rid)


def test_a_delete_that_observed_every_write_removes_the_memory(trio: list[OpLog],
                                                               faulty: nacl.signing.SigningKey) -> None:
    rid = new_id()
    c = create(key(), rid, tags=["t"])
    u = craft(key(), "update", rid, {"content": "edited"}, T0 + 5, [c])
    d1 = craft(faulty, "delete", rid, {}, T0 + 6, [u])
    d2 = craft(key(), "delete", rid, {}, T0 + 6, [u])  # two concurrent deletes, both saw every write
    converge(trio, arrangements([c, u, d1, d2]))
    for store in trio:
        assert state(store).get(rid) is None and state(store).known(rid)
        assert conflicts(store, rid, "_deleted") == []


# ------------------------------------------------------------------ clocks
def test_an_op_at_the_largest_clock_is_applied_and_does_not_drag_the_local_clock(
        make_api: MakeApi, tmp_path: Path, faulty: nacl.signing.SigningKey) -> None:
    apis = [make_api(base_path=tmp_path / f"api-{i}", embedder="none") for i in range(3)]
    rid = apis[0].remember("original")
    (c,) = [wire(op) for op in log_of(apis[0].log)]
    far = craft(faulty, "update", rid, {"content": "from the far future"}, HLC_MAX, [c])
    # Replica 0 wrote the create itself; the other two receive it with the far op, in either order.
    assert deliver(apis[0].log, [[far]]).applied == {far.id}
    converge([apis[1].log, apis[2].log], [[[far, c]], [[far], [c]]])
    for api in apis:
        assert digest(api.log) == digest(apis[0].log)
        assert eff_of(api.log, far) == EFF_CAP
        assert api.get(rid).content == "from the far future"

    # The next local op is stamped near now, yet it follows the far op and wins over it.
    apis[1].update(rid, content="local and later")
    mine = log_of(apis[1].log)[-1]
    assert mine.preds == (far.id,)
    skew = apis[1].log.clock.max_skew_ms
    assert now_ms() - 60_000 <= hlc_ms(mine.hlc) <= now_ms() + skew
    assert eff_of(apis[1].log, mine) == EFF_CAP + 1
    others = [apis[0].log, apis[2].log]
    converge(others, [[[wire(mine)]], [[wire(mine)]]])
    for api in apis:
        assert digest(api.log) == digest(apis[0].log)
        assert api.get(rid).content == "local and later"


def test_a_clock_of_2_63_cannot_be_made_or_parsed(faulty: nacl.signing.SigningKey) -> None:
    rid = new_id()
    with pytest.raises(InvalidOp):
        crdt.make_op(faulty, "create", rid, dict(BASE), HLC_MAX + 1, ())
    # Hand-built: the largest valid op, with its 8 clock bytes replaced by 2**63 and signed anew.
    body = crdt.op_body("create", rid, dict(BASE), HLC_MAX, bytes(faulty.verify_key), ())
    encoded = b"i" + HLC_MAX.to_bytes(8, "big")
    assert body.count(encoded) == 1
    forged = body.replace(encoded, b"i" + (1 << 63).to_bytes(8, "big"))
    sig = faulty.sign(crdt.SIG_DOMAIN + crdt.op_id(forged)).signature
    with pytest.raises(InvalidOp, match="hlc"):
        crdt.parse_op(forged, sig)
    assert crdt.parse_op(body, faulty.sign(crdt.SIG_DOMAIN + crdt.op_id(body)).signature).hlc == HLC_MAX


# ------------------------------------------------------------------ ops refused at parse
def _signed(signer: nacl.signing.SigningKey, body: bytes) -> bytes:
    return signer.sign(crdt.SIG_DOMAIN + crdt.op_id(body)).signature


def test_more_than_max_preds_is_refused_at_parse(faulty: nacl.signing.SigningKey) -> None:
    author = bytes(faulty.verify_key)
    for count, ok in ((crdt.MAX_PREDS, True), (crdt.MAX_PREDS + 1, False)):
        preds = [os.urandom(32) for _ in range(count)]
        body = crdt.op_body("update", new_id(), {"content": "x"}, T0, author, preds)
        if ok:
            assert len(crdt.parse_op(body, _signed(faulty, body)).preds) == count
        else:
            with pytest.raises(InvalidOp, match="preds"):
                crdt.parse_op(body, _signed(faulty, body))


def test_a_forged_author_or_a_tampered_body_is_refused_at_parse(faulty: nacl.signing.SigningKey) -> None:
    victim = key()
    body = crdt.op_body("create", new_id(), dict(BASE), T0, bytes(victim.verify_key), ())
    with pytest.raises(InvalidOp, match="signature"):
        crdt.parse_op(body, _signed(faulty, body))  # claims to be the victim, signed by the faulty key
    good = crdt.make_op(faulty, "create", new_id(), dict(BASE), T0, ())
    tampered = bytearray(good.body)
    tampered[good.body.index(b"original")] ^= 0x01  # still decodes: "nriginal"
    assert crdt.decode(bytes(tampered))["fields"]["content"] == "nriginal"
    with pytest.raises(InvalidOp, match="signature"):
        crdt.parse_op(bytes(tampered), good.sig)
    with pytest.raises(InvalidOp, match="signature"):  # the right body, signed by someone else
        crdt.parse_op(good.body, victim.sign(crdt.SIG_DOMAIN + good.id).signature)


# ------------------------------------------------------------------ delivery
def test_a_replayed_op_is_a_duplicate_and_changes_nothing(trio: list[OpLog], faulty: nacl.signing.SigningKey) -> None:
    rid = new_id()
    c = create(faulty, rid, tags=["t"])
    u1 = craft(key(), "update", rid, {"content": "a"}, T0 + 1, [c])
    u2 = craft(key(), "update", rid, {"content": "b"}, T0 + 1, [c])
    d = craft(faulty, "delete", rid, {}, T0 + 2, [u1])
    ops = [c, u1, u2, d]
    converge(trio, arrangements(ops))
    for store in trio:
        before = (digest(store), op_count(store), len(conflicts(store, rid, "content")),
                  len(conflicts(store, rid, "_deleted")))
        result = store.apply_remote([*ops, *ops])
        assert (result.applied, result.duplicates, result.missing, result.rejected) == ([], len(ops), [], [])
        assert (digest(store), op_count(store), len(conflicts(store, rid, "content")),
                len(conflicts(store, rid, "_deleted"))) == before


def test_equivocating_ops_on_the_same_preds_are_both_applied_everywhere(trio: list[OpLog],
                                                                         faulty: nacl.signing.SigningKey) -> None:
    rid = new_id()
    c = create(key(), rid)
    e1 = craft(faulty, "update", rid, {"content": "told to replica 0"}, T0 + 5, [c])
    e2 = craft(faulty, "update", rid, {"content": "told to replica 1"}, T0 + 5, [c])
    assert e1.preds == e2.preds and e1.id != e2.id
    deliver(trio[0], [[c, e1]])
    deliver(trio[1], [[c, e2]])
    deliver(trio[2], [[c]])
    assert state(trio[0]).get(rid).content == "told to replica 0"  # type: ignore[union-attr]
    assert state(trio[1]).get(rid).content == "told to replica 1"  # type: ignore[union-attr]
    assert digest(trio[0]) != digest(trio[1])
    # Exchange everything: both are kept, the larger op id wins (same clock, same author), one state.
    everything = [c, e1, e2]
    for store in trio:
        deliver(store, [everything])
    winner = max(e1, e2, key=lambda op: op.id)
    for store in trio:
        assert digest(store) == digest(trio[0])
        assert {e1.id, e2.id} <= {op.id for op in log_of(store)}
        assert state(store).get(rid).content == winner.fields["content"]  # type: ignore[union-attr]
        heads = {h for (h,) in store.storage.conn.execute("SELECT id FROM heads")}
        assert heads == {e1.id, e2.id}
        assert run_doctor(store.storage).ok


def test_an_op_whose_predecessor_never_arrives_waits_and_changes_nothing(trio: list[OpLog],
                                                                         faulty: nacl.signing.SigningKey) -> None:
    rid = new_id()
    c = create(key(), rid)
    u = craft(faulty, "update", rid, {"content": "waiting"}, T0 + 1, [c])
    v = craft(key(), "update", rid, {"content": "waiting too"}, T0 + 2, [u])
    other = create(key(), new_id())
    for store in trio:
        deliver(store, [[other]])
    for store, batch in zip(trio, ([u, v], [v, u], [v]), strict=True):
        before = (digest(store), op_count(store))
        for _ in range(2):  # asking again changes nothing either
            result = store.apply_remote(batch)
            assert result.applied == [] and result.rejected == [] and result.duplicates == 0
            assert result.missing == sorted(op.id.hex() for op in batch)
            assert result.needed == sorted({c.id.hex()} if u in batch else {u.id.hex()})
            assert (digest(store), op_count(store)) == before
            assert rejected_ids(store) == set()
        assert state(store).get(rid) is None and not state(store).known(rid)
    # Once the predecessor arrives, the same ops apply, alike everywhere.
    converge(trio, [[[c], [u, v]], [[v, u, c]], [[c], [u], [v]]])
    for store in trio:
        assert state(store).get(rid).content == "waiting too"  # type: ignore[union-attr]


# ------------------------------------------------------------------ regressions found by these tests
def test_the_same_record_imported_with_tags_on_two_replicas_converges(make_api: MakeApi, tmp_path: Path) -> None:
    a = make_api(base_path=tmp_path / "a", embedder="none")
    b = make_api(base_path=tmp_path / "b", embedder="none")
    assert a.import_memory({"id": SHARED[0], "content": "same fact", "tags": ["red"], "created_at": CREATED})
    assert b.import_memory({"id": SHARED[0], "content": "same fact", "created_at": CREATED})
    ops_a, ops_b = [wire(op) for op in log_of(a.log)], [wire(op) for op in log_of(b.log)]
    a.log.apply_remote(ops_b)
    b.log.apply_remote(ops_a)
    assert a.get(SHARED[0]).tags == b.get(SHARED[0]).tags == ("red",)
    assert a.get(SHARED[0]).updated_at == b.get(SHARED[0]).updated_at  # b: hlc_ms of a's create, a: CREATED


def test_two_creates_of_one_id_converge_when_the_winner_omits_created_at(trio: list[OpLog]) -> None:
    rid = new_id()
    fields = {k: v for k, v in BASE.items() if k != "created_at"}
    first = craft(key(), "create", rid, fields, T0)  # no created_at: hlc_ms(T0) on first create
    later = create(key(), rid, hlc=T0 + 10, created_at=5)
    for store, plan in zip(trio, [[[later], [first]], [[first], [later]], [[first, later]]], strict=True):
        deliver(store, plan)
    # The first create sets every field it carries; created_at should be its hlc_ms(T0) everywhere.
    assert [state(store).get(rid).created_at for store in trio] == [hlc_ms(first.hlc)] * 3  # type: ignore[union-attr]
    assert len({digest(store) for store in trio}) == 1


def test_two_creates_of_one_id_converge_when_the_winner_has_null_metadata(trio: list[OpLog]) -> None:
    rid = new_id()
    first = create(key(), rid, hlc=T0, metadata=None)
    later = create(key(), rid, hlc=T0 + 10, metadata={"x": 1})
    for store, plan in zip(trio, [[[later], [first]], [[first], [later]], [[first, later]]], strict=True):
        deliver(store, plan)
    # Applied first: 'null' stored as '{}'; applied second and winning: the same '{}'.
    assert len({repr(state(store).get(rid).metadata) for store in trio}) == 1  # type: ignore[union-attr]
    assert len({digest(store) for store in trio}) == 1


def test_a_local_update_works_with_more_heads_than_max_preds(make_api: MakeApi, tmp_path: Path) -> None:
    api = make_api(base_path=tmp_path / "many-heads", embedder="none")
    creates = [create(key(), new_id(), hlc=T0 + i) for i in range(crdt.MAX_PREDS + 1)]
    result = api.log.apply_remote(creates)
    assert len(result.applied) == len(creates)
    for op in creates:
        api.update(op.record_id, content="edited locally")
        assert api.get(op.record_id).content == "edited locally"


def test_a_rejected_op_is_not_also_reported_missing(trio: list[OpLog], faulty: nacl.signing.SigningKey) -> None:
    rid = new_id()
    c = create(key(), rid)
    bad = craft(faulty, "update", new_id(), {"content": "no create"}, T0 + 1, [c])
    child = craft(key(), "update", rid, {"content": "child"}, T0 + 2, [c, bad])
    result = trio[0].apply_remote([c, bad, child])
    assert {r[0] for r in result.rejected} == {bad.id.hex(), child.id.hex()}
    assert result.missing == [] and result.needed == []

