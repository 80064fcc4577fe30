"""Reconciliation between replicas: heads/needs rounds with a Bloom-filter shortcut.

After Kleppmann & Howard, "Byzantine Eventual Consistency and the Fundamental
Limits of Peer-to-Peer Databases" (2020):

- Algorithm 1. Each message carries the sender's heads, the op ids it
  ``need``s and ops for the other side. Received ops are delivered as one
  closed batch: in one transaction, each after its predecessors
  (``OpLog.apply_remote``); an op whose predecessors are still unknown waits
  in a bounded buffer while they are asked for. Which ops to send is decided
  from what the other side is known to hold: everything not an ancestor of its
  heads (or of the heads both held at the end of the last sync).
- Algorithm 2. Each side remembers, per peer, the heads both held after the
  last sync, and sends a Bloom filter of the ops it added since. The caller
  pushes those ops in its first request; the answer brings the other side's
  new ops. A typical sync is one round trip; Bloom false positives and
  predecessors that arrive from a third replica cost an extra round.
  The filter is salted per session, so nobody can craft ids that collide in
  everyone's filter.

Everything a peer sends is bounded (op size and predecessors per op in
``crdt``; ops, needs and filter size per message; pending buffer; rounds per
session) and every refusal is logged with the peer and the reason, and
counted. Validity of an op never depends on the peer that sent it.

The engine is transport-free: ``SyncClient.sync(transport)`` drives the rounds
through any callable that delivers a request to ``SyncServer.handle`` and
returns the answer (HTTP in :mod:`.transport`, direct calls in tests). The
messages are :mod:`.wire`; one store's side of the exchange is :mod:`.replica`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InvalidInput, NeuralSyncError, SyncRejected, SyncUnavailable
from ..json_input import parse_json
from ..model import Op
from ..oplog import codec
from ..oplog.graph import node
from ..oplog.log import OpLog
from .peers import Peer, PeerRegistry
from .replica import Replica
from .wire import MAX_NEED, MAX_ROUNDS, MAX_SESSION_S, Message

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- server side
@dataclass
class ServedRound:
    """What answering one request did (for logs and tests)."""

    applied: int = 0
    rejected: int = 0
    sent: int = 0
    junk_needs: int = 0


class SyncServer:
    """Answers sync requests from authenticated peers; stateless between requests except last-sync heads."""

    def __init__(self, oplog: OpLog, registry: PeerRegistry) -> None:
        self.replica = Replica(oplog)
        self.registry = registry
        self.last_round = ServedRound()

    def handle(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """Apply the ops in ``request`` and answer with heads, needs, a filter and the ops the peer lacks."""
        message = Message.from_wire(request)
        outcome = self.replica.receive(message.ops, [], peer.name, message.oversized)
        waiting = {op.id for op in outcome.waiting}
        need = self.replica.unknown([*outcome.needed, *message.heads], waiting)[:MAX_NEED]
        sent_by_peer = [codec.op_id(body) for body, _ in message.ops]  # it holds what it just sent
        ops, more, junk = self.replica.ops_for([*message.heads, *message.last_sync, *sent_by_peer], message.bloom,
                                               message.need)
        if junk:
            self.replica.log_event(peer.name, "junk need", f"{junk} requested ids are not held here")
        with self.replica.storage.read() as conn:
            common = [n for n in message.heads if node(conn, n) is not None]
        if common:
            self.registry.record_sync(peer.key, common)
        # A filter answers a filter: the client sends one in its first request only, so the reply filter
        # (one pass over everything since the last sync) is built once per session, not once per round.
        bloom = self.replica.bloom_since(list(peer.last_sync)) if peer.last_sync and message.bloom else None
        reply = Message(heads=self.replica.heads(), need=need, last_sync=list(peer.last_sync), bloom=bloom,
                        ops=ops, more=more)
        self.last_round = ServedRound(outcome.applied, outcome.rejected, len(ops), junk)
        return reply.to_wire()


# ---------------------------------------------------------------- client side
@dataclass
class SyncReport:
    """What one sync with one peer moved."""

    peer: str
    ok: bool = True
    error: str | None = None
    round_trips: int = 0
    sent: int = 0
    received: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    waiting: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


Transport = Callable[[bytes], bytes]  # request body -> answer body; raises SyncUnavailable / SyncRejected


class SyncClient:
    """Drives a sync session with one peer until both hold the same ops (or a bound stops it)."""

    def __init__(self, oplog: OpLog, registry: PeerRegistry) -> None:
        self.replica = Replica(oplog)
        self.registry = registry

    def sync(self, peer: Peer, transport: Transport, max_rounds: int = MAX_ROUNDS,
             max_seconds: float | None = None) -> SyncReport:
        """One session; every applied batch is committed as it arrives, so an interrupted sync keeps its progress."""
        report = SyncReport(peer.name)
        started = time.monotonic()
        try:
            self._run(peer, transport, report, max_rounds,
                      started + (MAX_SESSION_S if max_seconds is None else max_seconds))
        except (SyncUnavailable, SyncRejected) as exc:
            report.ok, report.error = False, str(exc)
            self.registry.record_sync(peer.key, [], error=str(exc))
            log.info("sync with %s failed: %s", peer.name, exc)
        except NeuralSyncError as exc:  # e.g. the store is busy: this peer fails, the next is still tried
            report.ok, report.error = False, f"{type(exc).__name__}: {exc}"
            log.warning("sync with %s failed: %s", peer.name, report.error)
        except Exception as exc:  # a bug here must not stop the sync with the other peers
            report.ok, report.error = False, f"internal error: {type(exc).__name__}: {exc}"
            log.exception("sync with %s failed", peer.name)
        report.seconds = round(time.monotonic() - started, 3)
        return report

    def _run(self, peer: Peer, transport: Transport, report: SyncReport, max_rounds: int, deadline: float) -> None:
        replica = self.replica
        last_sync = list(peer.last_sync)
        bloom = replica.bloom_since(last_sync) if last_sync else None
        # Algorithm 2: push what we added since the last sync straight away.
        push, _, _ = replica.ops_for(last_sync, None, []) if last_sync else ([], False, 0)
        request = Message(heads=replica.heads(), last_sync=last_sync, bloom=bloom, ops=push)
        waiting: list[Op] = []
        stalled = 0
        last_fingerprint = b""
        their_heads: list[bytes] = []
        for _ in range(max_rounds):
            if time.monotonic() > deadline:
                report.error = "stopped at the session time limit; the next sync goes on from here"
                break
            body = json.dumps(request.to_wire(), separators=(",", ":")).encode()
            answer_body = transport(body)
            report.round_trips += 1
            report.sent += len(request.ops)
            report.bytes_sent += len(body)
            report.bytes_received += len(answer_body)
            try:
                parsed = parse_json(answer_body, "answer")
            except InvalidInput as exc:
                raise SyncRejected(f"the peer's answer is not JSON we accept: {exc}", field=exc.field) from None
            answer = Message.from_wire(parsed)
            their_heads = answer.heads
            report.received += len(answer.ops)
            outcome = replica.receive(answer.ops, waiting, peer.name, answer.oversized)
            report.applied += outcome.applied
            report.duplicates += outcome.duplicates
            report.rejected += outcome.rejected
            waiting = outcome.waiting
            pending_ids = {op.id for op in waiting}
            need = replica.unknown([*outcome.needed, *answer.heads], pending_ids)[:MAX_NEED]
            sent_to_us = [codec.op_id(body) for body, _ in answer.ops]
            ops, more, _ = replica.ops_for([*answer.heads, *answer.last_sync, *sent_to_us], answer.bloom,
                                           answer.need)
            if not (answer.more or need or ops):
                break  # both sides hold what the other has
            fingerprint = hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b, _ in ops)).digest()
            stalled = 0 if outcome.applied or fingerprint != last_fingerprint else stalled + 1
            last_fingerprint = fingerprint
            if stalled >= 2:
                report.error = "stopped: the peer neither supplies what is asked nor accepts what is sent"
                break
            # Later rounds go by heads and needs; the filters did their work in the first exchange.
            request = Message(heads=replica.heads(), need=need, last_sync=last_sync, ops=ops, more=more)
        report.waiting = len(waiting)
        if not report.round_trips:
            return  # nothing was exchanged: what is known of the peer stays as it was
        with replica.storage.read() as conn:
            common = [h for h in their_heads if node(conn, h) is not None]
        self.registry.record_sync(peer.key, common)
