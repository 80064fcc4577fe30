"""The hash graph's derived numbers: effective clocks, floors, ancestry, and their backfill."""

from __future__ import annotations

import random
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuralsync.oplog import codec as crdt
from neuralsync.oplog.graph import EFF_CAP, Node, ancestors_among, below, effective_clock, is_ancestor, node
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI


def _api(path: Path) -> UnifiedMemoryAPI:
    return UnifiedMemoryAPI(MemoryConfig(base_path=path, embedder="none"))


def _ops(api: UnifiedMemoryAPI) -> list[crdt.Op]:
    return [op for _, op in api.log.ops_since(0, 100_000)]


def test_effective_clock_grows_along_every_path_and_clamps_absurd_stamps() -> None:
    assert effective_clock(10, []) == 10
    assert effective_clock(10, [Node(1, 50, 1)]) == 51
    assert effective_clock(100, [Node(1, 50, 1), Node(2, 7, 2)]) == 100
    assert effective_clock((1 << 63) - 1, []) == EFF_CAP
    assert effective_clock(5, [Node(1, EFF_CAP, 1)]) == EFF_CAP + 1


def _branches(tmp_path: Path) -> tuple[UnifiedMemoryAPI, list[crdt.Op], list[crdt.Op]]:
    """A store holding its own chain plus a concurrent chain from another replica."""
    a, b = _api(tmp_path / "a"), _api(tmp_path / "b")
    try:
        for i in range(5):
            a.remember(f"a {i}")
            b.remember(f"b {i}")
        ops_a, ops_b = _ops(a), _ops(b)
        a.log.apply_remote(ops_b)
    finally:
        b.close()
    return a, ops_a, ops_b


def test_ancestry_follows_the_graph_not_the_local_order(tmp_path: Path) -> None:
    a, ops_a, ops_b = _branches(tmp_path)
    try:
        conn = a.storage.conn
        tip_a, tip_b = node(conn, ops_a[-1].id), node(conn, ops_b[-1].id)
        assert tip_a is not None and tip_b is not None
        first_a, first_b = node(conn, ops_a[0].id), node(conn, ops_b[0].id)
        assert first_a is not None and first_b is not None
        assert is_ancestor(conn, first_a.seq, [tip_a])
        assert is_ancestor(conn, first_b.seq, [tip_b])
        assert not is_ancestor(conn, first_a.seq, [tip_b])  # applied earlier here, but concurrent
        assert not is_ancestor(conn, tip_a.seq, [tip_b])
        # a merge op built on both heads has every stored op below it
        a.remember("merge")
        merge = node(conn, _ops(a)[-1].id)
        assert merge is not None and merge.floor == merge.seq
        floor, extra = below(conn, [tip_b])
        ancestors = {seq for seq in range(1, merge.seq) if seq <= floor or seq in extra}
        expected = {n.seq for n in (node(conn, op.id) for op in ops_b) if n is not None}
        assert ancestors == expected
    finally:
        a.close()


def test_opening_a_pre_graph_store_backfills_clocks_floors_and_edges(tmp_path: Path) -> None:
    a, _, _ = _branches(tmp_path)
    path = a.storage.path
    conn = a.storage.conn
    before = conn.execute("SELECT seq, eff, floor FROM ops ORDER BY seq").fetchall()
    edges = conn.execute("SELECT op, pred FROM op_preds ORDER BY op, pred").fetchall()
    assert edges  # the received branch is not below the local one
    a.close()
    raw = sqlite3.connect(path)
    with raw:
        raw.execute("UPDATE ops SET eff = NULL, floor = NULL")
        raw.execute("DELETE FROM op_preds")
        raw.execute("DELETE FROM meta WHERE key = 'graph_backfilled'")  # a store from before schema 5 has none
    raw.close()
    reopened = _api(tmp_path / "a")
    try:
        conn = reopened.storage.conn
        assert conn.execute("SELECT seq, eff, floor FROM ops ORDER BY seq").fetchall() == before
        assert conn.execute("SELECT op, pred FROM op_preds ORDER BY op, pred").fetchall() == edges
    finally:
        reopened.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 2), st.booleans()), min_size=1, max_size=24), st.randoms())
def test_one_walk_answers_ancestry_like_the_predecessor_edges(steps: list[tuple[int, bool]],
                                                               rnd: random.Random) -> None:
    """``ancestors_among`` (one walk for many targets, using floors) agrees with the transitive
    closure of the ops' own predecessor lists, on graphs of three replicas that write and exchange
    ops at random, from every op towards random sets of targets."""
    with tempfile.TemporaryDirectory() as tmp:
        apis = [_api(Path(tmp) / f"r{i}") for i in range(3)]
        try:
            for who, share in steps:
                apis[who].remember(f"note from {who}")
                if share:
                    apis[(who + 1) % 3].log.apply_remote(_ops(apis[who]))
            conn = apis[0].storage.conn
            for other in apis[1:]:
                apis[0].log.apply_remote(_ops(other))
            ops = _ops(apis[0])
            seq_of = {op.id: n.seq for op in ops if (n := node(conn, op.id)) is not None}
            closure: dict[int, set[int]] = {}
            for op in ops:  # the log is in apply order: predecessors first
                closure[seq_of[op.id]] = {seq_of[op.id]}.union(*(closure[seq_of[p]] for p in op.preds))
            nodes = [n for n in (node(conn, op.id) for op in ops) if n is not None]
            seqs = [n.seq for n in nodes]
            for start in nodes:
                targets = rnd.sample(seqs, k=rnd.randint(1, len(seqs)))
                assert ancestors_among(conn, targets, [start]) == closure[start.seq].intersection(targets)
                assert all(is_ancestor(conn, t, [start]) == (t in closure[start.seq]) for t in targets)
            assert ancestors_among(conn, seqs, nodes) == set(seqs)
        finally:
            for api in apis:
                api.close()
