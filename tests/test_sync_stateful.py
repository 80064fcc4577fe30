"""Replicas that edit, sync over a faulty network, get partitioned and crash still converge.

A Hypothesis state machine drives 3-5 real replicas (each a ``UnifiedMemoryAPI`` on its own
directory) through local writes, sync sessions over an in-process transport that drops,
duplicates, replays, reorders and truncates messages, partitions and heals, and crash/reopen.
At the end every partition heals, a perfect network runs sessions until nothing moves, and every
replica must hold the same ops, heads and state digest, each rebuildable from its log (doctor).
"""

from __future__ import annotations

import copy
import gc
import json
import random
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from neuralsync.errors import NotFound, SyncRejected, SyncUnavailable
from neuralsync.replication.protocol import SyncClient, SyncReport, SyncServer
from neuralsync.services.doctor import run_doctor, state_digest
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

PEER_URL = "http://127.0.0.1:1"
MAX_FINAL_PASSES = 6
FAULTY_MAX_ROUNDS = 60  # a session over a lossy network stops here at the latest (the default is 500)
FAULTS = ("drop_request", "drop_answer", "duplicate", "replay", "reorder_request", "reorder_answer",
          "truncate_request", "truncate_answer")

contents = st.text(alphabet="abcdefgh ", min_size=1, max_size=12).filter(lambda s: s.strip())
tag_names = st.sampled_from(["red", "green", "blue", "x y", "ü"])
tag_sets = st.frozensets(tag_names, max_size=3)
priorities = st.sampled_from([0.0, 0.25, 0.5, 1.0])
write_kinds = st.sampled_from(["content", "tags", "priority", "forget"])
# Choices that depend on what a replica holds are drawn as a plain index and reduced modulo the
# choices, and the network's faults come from a seeded Random rather than from Hypothesis: sessions
# are not fully deterministic (fresh Bloom salts, clock-based ids), and draws whose shape depended
# on their outcome would make Hypothesis report the test's data generation as flaky.
pick = st.integers(0, 1 << 16)
seeds = st.integers(0, (1 << 32) - 1)


def open_api(path: Path) -> UnifiedMemoryAPI:
    return UnifiedMemoryAPI(MemoryConfig(base_path=str(path), embedder="none"))


def name_of(index: int) -> str:
    return f"r{index}"


def introduce(apis: list[UnifiedMemoryAPI]) -> None:
    """Every replica trusts every other one."""
    for i, api in enumerate(apis):
        for j, other in enumerate(apis):
            if i != j:
                api.replication.registry.add(name_of(j), PEER_URL, other.log.author.hex())


def heads(api: UnifiedMemoryAPI) -> list[bytes]:
    return [r[0] for r in api.storage.conn.execute("SELECT id FROM heads ORDER BY id")]


def op_ids(api: UnifiedMemoryAPI) -> set[bytes]:
    return {r[0] for r in api.storage.conn.execute("SELECT id FROM ops")}


def live_ids(api: UnifiedMemoryAPI) -> list[str]:
    return sorted(m.id for m in api.reads.iter_memories())


def rejected_count(api: UnifiedMemoryAPI) -> int:
    return api.storage.conn.execute("SELECT count(*) FROM rejected_ops").fetchone()[0]


class Network:
    """The in-process transport from one client to one server, with faults drawn from ``rnd``.

    Each call delivers the request to ``SyncServer.handle`` (signatures are the HTTP layer's
    business, not tested here). With probability ``p`` per call and per fault kind in ``faults``:
    drop the request, drop the answer after the server applied the request, deliver the request
    twice and return either answer, first replay an old request of this client to this server,
    shuffle or drop some of the ops of the request or of the answer.
    """

    def __init__(self, client: UnifiedMemoryAPI, client_name: str, server: UnifiedMemoryAPI,
                 faults: frozenset[str] = frozenset(), p: float = 0.0, rnd: random.Random | None = None,
                 history: list[dict[str, Any]] | None = None, partitioned: bool = False) -> None:
        self.client_name = client_name
        self.server_api = server
        self.server = SyncServer(server.log, server.replication.registry)
        self.faults = faults
        self.p = p
        self.rnd = rnd or random.Random(0)
        self.history = history if history is not None else []
        self.partitioned = partitioned
        self.server_applied = 0
        self.server_rejected = 0
        self.server_errors: list[str] = []

    def _hit(self, fault: str) -> bool:
        return fault in self.faults and self.rnd.random() < self.p

    def _handle(self, request: dict[str, Any]) -> dict[str, Any]:
        peer = self.server_api.replication.registry.get(self.client_name)  # fresh: last_sync moves
        try:
            answer = self.server.handle(peer, copy.deepcopy(request))
        except SyncRejected as exc:  # an honest client's message must never be refused
            self.server_errors.append(str(exc))
            raise
        self.server_applied += self.server.last_round.applied
        self.server_rejected += self.server.last_round.rejected
        return answer

    def _lose_some(self, ops: list[Any]) -> list[Any]:
        return [op for op in ops if self.rnd.random() < 0.5]

    def __call__(self, body: bytes) -> bytes:
        if self.partitioned:
            raise SyncUnavailable(f"{self.client_name} cannot reach the server: partitioned")
        request = json.loads(body)
        if self.history and self._hit("replay"):
            self._handle(self.rnd.choice(self.history))
        self.history.append(copy.deepcopy(request))
        del self.history[:-8]
        if self._hit("drop_request"):
            raise SyncUnavailable("request lost")
        if self._hit("reorder_request"):
            self.rnd.shuffle(request["ops"])
        if self._hit("truncate_request"):
            request["ops"] = self._lose_some(request["ops"])
        answer = self._handle(request)
        if self._hit("duplicate"):
            answer = self.rnd.choice([answer, self._handle(request)])
        if self._hit("drop_answer"):
            raise SyncUnavailable("answer lost")
        if self._hit("reorder_answer"):
            self.rnd.shuffle(answer["ops"])
        if self._hit("truncate_answer"):
            answer["ops"] = self._lose_some(answer["ops"])
        return json.dumps(answer, separators=(",", ":")).encode()


def run_session(client: UnifiedMemoryAPI, server_name: str, network: Network,
                max_rounds: int | None = None) -> SyncReport:
    """One sync session of ``client`` with the peer it calls ``server_name``."""
    peer = client.replication.registry.get(server_name)  # fresh: last_sync moves
    sync_client = SyncClient(client.log, client.replication.registry)
    if max_rounds is None:
        return sync_client.sync(peer, network)
    return sync_client.sync(peer, network, max_rounds=max_rounds)


def perfect_session(apis: list[UnifiedMemoryAPI], c: int, s: int) -> int:
    """A session over a perfect network; checks it ended clean with both sides holding the same ops.
    Returns how many ops it applied on either side."""
    network = Network(apis[c], name_of(c), apis[s])
    report = run_session(apis[c], name_of(s), network)
    assert report.ok and report.error is None, report
    assert report.rejected == 0 and network.server_rejected == 0, report
    assert report.waiting == 0, report
    assert heads(apis[c]) == heads(apis[s]), f"{name_of(c)} -> {name_of(s)} ended unconverged: {report}"
    return report.applied + network.server_applied


def converge(apis: list[UnifiedMemoryAPI]) -> int:
    """Perfect sessions over every ordered pair until a whole pass moves nothing; returns the passes run."""
    for passes in range(1, MAX_FINAL_PASSES + 1):
        moved = 0
        for c in range(len(apis)):
            for s in range(len(apis)):
                if c != s:
                    moved += perfect_session(apis, c, s)
        if moved == 0:
            return passes
    raise AssertionError(f"still moving ops after {MAX_FINAL_PASSES} full passes")


def assert_converged(apis: list[UnifiedMemoryAPI]) -> None:
    """Same ops, heads and state digest everywhere, and each state equals a rebuild from its log."""
    first = apis[0]
    for i, api in enumerate(apis):
        assert op_ids(api) == op_ids(first), f"{name_of(i)} holds other ops than r0"
        assert heads(api) == heads(first), f"{name_of(i)} has other heads than r0"
        assert state_digest(api.storage.conn) == state_digest(first.storage.conn), name_of(i)
        assert rejected_count(api) == 0, name_of(i)
        report = run_doctor(api.storage, quick=True)
        assert report.ok, (name_of(i), report.to_dict())


class SyncMachine(RuleBasedStateMachine):
    """Replicas editing, syncing over a faulty network, partitioned and crashing."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="neuralsync-stateful-")
        self.apis: list[UnifiedMemoryAPI] = []
        self.partitions: set[frozenset[int]] = set()
        self.history: dict[tuple[int, int], list[dict[str, Any]]] = {}
        self.created: set[str] = set()
        self.forgotten: set[str] = set()

    def path(self, index: int) -> Path:
        return Path(self.tmp.name) / name_of(index)

    @initialize(count=st.integers(3, 5))
    def open_replicas(self, count: int) -> None:
        self.apis = [open_api(self.path(i)) for i in range(count)]
        introduce(self.apis)

    def replica(self, data: st.DataObject) -> int:
        return data.draw(st.integers(0, len(self.apis) - 1), label="replica")

    def pair(self, data: st.DataObject) -> tuple[int, int]:
        a = self.replica(data)
        b = data.draw(st.integers(0, len(self.apis) - 2), label="other")
        return a, b + (b >= a)

    def held(self, data: st.DataObject, index: int) -> str | None:
        """A memory live on this replica, or None when it holds none. The draw has the same shape
        whatever the replica holds (see ``pick``)."""
        choice = data.draw(pick, label="memory")
        ids = live_ids(self.apis[index])
        return ids[choice % len(ids)] if ids else None

    # ------------------------------------------------------------ local writes
    @rule(data=st.data(), content=contents, tags=tag_sets, priority=priorities)
    def create(self, data: st.DataObject, content: str, tags: frozenset[str], priority: float) -> None:
        i = self.replica(data)
        self.created.add(self.apis[i].remember(content, tags=sorted(tags), priority=priority))

    @rule(data=st.data(), fields=st.fixed_dictionaries(
        {}, optional={"content": contents, "priority": priorities, "tags": tag_sets.map(sorted)}))
    def update(self, data: st.DataObject, fields: dict[str, Any]) -> None:
        i = self.replica(data)
        record_id = self.held(data, i)
        if record_id is None:
            return
        try:
            self.apis[i].update(record_id, **(fields or {"priority": 0.75}))
        except NotFound:
            pass

    @rule(data=st.data(), add=tag_sets, remove=tag_sets)
    def edit_tags(self, data: st.DataObject, add: frozenset[str], remove: frozenset[str]) -> None:
        i = self.replica(data)
        record_id = self.held(data, i)
        if record_id is None:
            return
        api = self.apis[i]
        try:
            api.update(record_id, tags=sorted((set(api.get(record_id).tags) | add) - remove))
        except NotFound:
            pass

    @rule(data=st.data())
    def forget(self, data: st.DataObject) -> None:
        i = self.replica(data)
        record_id = self.held(data, i)
        if record_id is None:
            return
        try:
            self.apis[i].forget(record_id)
        except NotFound:
            return
        self.forgotten.add(record_id)

    @rule(data=st.data(), which=pick, plans=st.lists(st.tuples(write_kinds, contents, priorities, tag_sets),
                                                       min_size=2, max_size=3))
    def concurrent_writes(self, data: st.DataObject, which: int,
                          plans: list[tuple[str, str, float, frozenset[str]]]) -> None:
        """Several replicas holding the same memory write to it before they sync: the merge cases.
        When no memory is shared yet, one is created and synced over a perfect network first."""
        a, b = self.pair(data)
        holders: dict[str, list[int]] = {}
        for i, api in enumerate(self.apis):
            for record_id in live_ids(api):
                holders.setdefault(record_id, []).append(i)
        shared = sorted(record_id for record_id, where in holders.items() if len(where) >= 2)
        if shared:
            record_id = shared[which % len(shared)]
        elif frozenset((a, b)) in self.partitions:
            return
        else:
            record_id = self.apis[a].remember(plans[0][1], tags=["shared"])
            self.created.add(record_id)
            perfect_session(self.apis, a, b)
            holders[record_id] = [a, b]
        where = holders[record_id]
        writers = [where[(which + k) % len(where)] for k in range(min(len(plans), len(where)))]
        for i, (kind, content, priority, tags) in zip(writers, plans, strict=False):
            api = self.apis[i]
            if kind == "forget":
                api.forget(record_id)
                self.forgotten.add(record_id)
            elif kind == "tags":
                api.update(record_id, tags=sorted(tags))
            elif kind == "content":
                api.update(record_id, content=content)
            else:
                api.update(record_id, priority=priority)
        kinds = [kind for kind, *_ in plans[:len(writers)]]
        event("concurrent writes, " + ("some to the same field" if len(set(kinds)) < len(kinds) else "distinct fields"))

    @rule(data=st.data(), text=contents)
    def set_persona(self, data: st.DataObject, text: str) -> None:
        self.apis[self.replica(data)].set_persona(text)

    # ------------------------------------------------------------ network
    def session(self, c: int, s: int, faults: frozenset[str], p: float, rnd: random.Random) -> None:
        """One session from ``c`` to ``s``: checked to converge the pair over a perfect, connected network;
        over a faulty one it may fail or stop early, but never refuses an honest op."""
        partitioned = frozenset((c, s)) in self.partitions
        if not faults and not partitioned:
            perfect_session(self.apis, c, s)
            event("perfect sync")
            return
        network = Network(self.apis[c], name_of(c), self.apis[s], faults, p, rnd,
                          self.history.setdefault((c, s), []), partitioned)
        report = run_session(self.apis[c], name_of(s), network, max_rounds=FAULTY_MAX_ROUNDS)
        assert not network.server_errors, network.server_errors
        assert report.rejected == 0 and network.server_rejected == 0, report
        if partitioned:
            assert not report.ok and network.server_applied == 0
            event("sync across a partition")
            return
        event("faulty sync " + ("failed" if not report.ok else "stopped" if report.error else "ended clean"))
        event(f"faulty sync moved ops: {report.applied + network.server_applied > 0}")

    @rule(data=st.data(), faults=st.frozensets(st.sampled_from(FAULTS), max_size=3),
          p=st.sampled_from([0.2, 0.5, 1.0]), seed=seeds)
    def sync(self, data: st.DataObject, faults: frozenset[str], p: float, seed: int) -> None:
        self.session(*self.pair(data), faults, p, random.Random(seed))

    @rule(data=st.data())
    def sync_perfect(self, data: st.DataObject) -> None:
        self.session(*self.pair(data), frozenset(), 0.0, random.Random(0))

    @rule(data=st.data(), sessions=st.integers(2, 6), faults=st.frozensets(st.sampled_from(FAULTS), max_size=2),
          p=st.sampled_from([0.2, 0.5]), seed=seeds)
    def gossip(self, data: st.DataObject, sessions: int, faults: frozenset[str], p: float,
               seed: int) -> None:
        """Several sessions between random pairs over the same (possibly faulty) network."""
        rnd = random.Random(seed)
        for _ in range(sessions):
            self.session(*self.pair(data), faults, p, rnd)

    @rule(data=st.data())
    def partition(self, data: st.DataObject) -> None:
        self.partitions.add(frozenset(self.pair(data)))

    @rule(data=st.data())
    def heal(self, data: st.DataObject) -> None:
        self.partitions.discard(frozenset(self.pair(data)))

    # ------------------------------------------------------------ crashes
    @rule(data=st.data(), clean=st.booleans())
    def reopen(self, data: st.DataObject, clean: bool) -> None:
        """Close (or abandon without closing, as a crashed process would) and open again."""
        i = self.replica(data)
        before = (heads(self.apis[i]), state_digest(self.apis[i].storage.conn))
        if clean:
            self.apis[i].close()
        event(f"reopen, clean={clean}")
        self.apis[i] = open_api(self.path(i))  # the abandoned object is garbage: its connections close with it
        gc.collect()
        assert (heads(self.apis[i]), state_digest(self.apis[i].storage.conn)) == before

    # ------------------------------------------------------------ invariants
    @invariant()
    def heads_track_the_log(self) -> None:
        for api in self.apis:
            conn = api.storage.conn
            has_ops = conn.execute("SELECT EXISTS (SELECT 1 FROM ops)").fetchone()[0]
            has_heads = conn.execute("SELECT EXISTS (SELECT 1 FROM heads)").fetchone()[0]
            assert has_ops == has_heads
            assert rejected_count(api) == 0  # every op here is honest: nothing is ever refused

    def teardown(self) -> None:
        try:
            if self.apis:
                self.partitions.clear()
                converge(self.apis)
                assert_converged(self.apis)
                for record_id in sorted(self.created - self.forgotten):  # never deleted: live everywhere
                    assert all(api.reads.get(record_id) is not None for api in self.apis), record_id
        finally:
            for api in self.apis:
                api.close()
            self.apis = []
            gc.collect()
            self.tmp.cleanup()


TestSyncMachine = SyncMachine.TestCase
TestSyncMachine.settings = settings(max_examples=25, stateful_step_count=30, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- concurrent edits of one memory
def test_concurrent_edits_of_one_memory_converge_in_a_ring(tmp_path: Path) -> None:
    apis = [open_api(tmp_path / name_of(i)) for i in range(4)]
    try:
        introduce(apis)
        shared = apis[0].remember("original", tags=["base"], priority=0.5)
        doomed = apis[0].remember("to be deleted and kept", tags=["keep"])
        converge(apis)
        assert all(api.reads.get(shared) is not None and api.reads.get(doomed) is not None for api in apis)

        # Concurrent: every replica rewrites the shared memory's content and tags; r0 also drops "base".
        versions = {f"version {i}" for i in range(4)}
        for i, api in enumerate(apis):
            tags = [f"t{i}"] if i == 0 else ["base", f"t{i}"]
            api.update(shared, content=f"version {i}", tags=tags, priority=i / 4)
        # Concurrent: r1 forgets the other memory while r2 updates it.
        apis[1].forget(doomed)
        apis[2].update(doomed, content="updated on r2", tags=["keep", "r2"])

        for _ in range(2):  # a ring: r0 -> r1 -> r2 -> r3 -> r0, twice
            for i in range(4):
                network = Network(apis[i], name_of(i), apis[(i + 1) % 4])
                report = run_session(apis[i], name_of((i + 1) % 4), network)
                assert report.ok and report.error is None and report.rejected == 0, report
        assert_converged(apis)

        final = apis[0].reads.get(shared)
        assert final is not None and final.content in versions
        assert set(final.tags) == {"t0", "t1", "t2", "t3"}  # r0's remove saw only the original "base" add
        kept = apis[0].reads.get(doomed)  # update wins over the concurrent delete
        assert kept is not None and kept.content == "updated on r2" and set(kept.tags) == {"keep", "r2"}
        for i, api in enumerate(apis):
            assert api.reads.get(shared) == final and api.reads.get(doomed) == kept
            content_conflicts = [c for c in api.conflicts(shared) if c["field"] == "content"]
            assert content_conflicts, f"{name_of(i)} merged concurrent content writes but recorded no conflict"
            assert {c["winner_value"] for c in content_conflicts} | {c["loser_value"] for c in content_conflicts} \
                <= versions
            assert final.content in {c["winner_value"] for c in content_conflicts}
        assert any(c["field"] == "_deleted" for api in apis for c in api.conflicts(doomed))
    finally:
        for api in apis:
            api.close()
