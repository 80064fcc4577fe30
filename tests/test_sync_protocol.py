"""The reconciliation protocol between correct replicas: what a sync costs, not only that it converges.

Two replicas talk through the signed path that ``POST /v1/sync`` uses
(``Replication.serve``), minus the socket. The checks are on the report a user
sees: round trips, ops moved each way, and that nothing is sent twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _replicas import introduce, signed_transport

from neuralsync.replication import replica, wire
from neuralsync.replication.protocol import SyncReport
from neuralsync.services.doctor import state_digest
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI


class Pair:
    """Replicas ``a`` and ``b`` that trust each other."""

    def __init__(self, root: Path) -> None:
        self.api = {name: UnifiedMemoryAPI(MemoryConfig(base_path=str(root / name), embedder="none"),
                                           tool=f"tool-{name}") for name in ("a", "b")}
        introduce(self.api)

    def close(self) -> None:
        for api in self.api.values():
            api.close()

    def sync(self, caller: str = "a", target: str = "b") -> SyncReport:
        channel = signed_transport(self.api[caller], self.api[target], target)
        (report,) = self.api[caller].sync(target, transport=lambda _peer: channel)
        assert report.ok, report.error
        return report

    def write(self, name: str, count: int, label: str) -> None:
        api = self.api[name]
        with api.batch_operations():
            for i in range(count):
                api.remember(f"{label} note {i}", scope=f"project:{label}")

    def assert_same(self) -> None:
        a, b = (self.api[name].storage.conn for name in ("a", "b"))
        heads = "SELECT id FROM heads ORDER BY id"
        assert a.execute(heads).fetchall() == b.execute(heads).fetchall()
        assert state_digest(a) == state_digest(b)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    replicas = Pair(tmp_path)
    try:
        yield replicas
    finally:
        replicas.close()


def test_incremental_sync_after_a_common_history_moves_only_the_new_ops(pair: Pair) -> None:
    pair.write("a", 300, "common")
    first = pair.sync()
    assert (first.sent, first.applied) == (300, 0)  # a pushes its history to b
    pair.write("a", 20, "a-side")
    pair.write("b", 20, "b-side")

    report = pair.sync()

    # Algorithm 2: the push of what was added since the last sync plus the filters settle it in one
    # exchange; a Bloom false positive (about 1 in 100 filtered ops) may cost a second one, never more.
    assert report.round_trips <= 2, report
    assert (report.sent, report.applied, report.duplicates) == (20, 20, 0), report
    pair.assert_same()
    assert pair.sync().applied == 0


def test_two_diverged_histories_converge_without_sending_any_op_twice(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica, "MAX_OPS_PER_MESSAGE", 150)  # many rounds from a small history
    pair.write("a", 50, "common")
    pair.sync()
    pair.write("a", 700, "a-side")
    pair.write("b", 500, "b-side")

    report = pair.sync()

    assert report.round_trips >= 5  # the caps really split the session
    assert (report.sent, report.received, report.applied, report.duplicates) == (700, 500, 500, 0), report
    pair.assert_same()


def test_the_reply_filter_is_built_once_per_session_not_once_per_round(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica, "MAX_OPS_PER_MESSAGE", 100)
    pair.write("b", 30, "common")
    pair.sync()
    pair.write("b", 1000, "b-side")  # a stream of 10+ answers to a that had synced before
    built: list[int] = []
    original = replica.Replica.bloom_since

    def counting(self: replica.Replica, base: list[bytes]) -> wire.Bloom | None:
        built.append(len(base))
        return original(self, base)

    monkeypatch.setattr(replica.Replica, "bloom_since", counting)

    report = pair.sync()

    assert report.round_trips >= 10 and report.applied == 1000
    assert len(built) <= 2, f"{len(built)} filters built in {report.round_trips} rounds"  # client's + server's
    pair.assert_same()
