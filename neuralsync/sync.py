"""Reconciliation between replicas: heads/needs rounds with a Bloom-filter shortcut.

After Kleppmann & Howard, "Byzantine Eventual Consistency and the Fundamental
Limits of Peer-to-Peer Databases" (2020):

- Algorithm 1. Each message carries the sender's heads, the op ids it
  ``need``s and ops for the other side. Received ops are delivered as one
  closed batch: in one transaction, each after its predecessors
  (``Store.apply_remote``); an op whose predecessors are still unknown waits
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
returns the answer (HTTP in ``http_transport.HttpTransport``, direct calls in tests).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import crdt
from .errors import InvalidOp, NeuralSyncError, SyncRejected, SyncUnavailable
from .graph import Node, below, node
from .model import Op
from .peers import Peer, PeerRegistry
from .store import ApplyResult, Store
from .utils import now_ms

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_OPS_PER_MESSAGE = 2000
MAX_MESSAGE_BYTES = 16 << 20  # the HTTP body limit of the sync route
OP_BYTE_BUDGET = 8 << 20  # ops per message stop here (one op may be up to crdt.MAX_OP_BYTES)
MAX_NEED = 2000
MAX_HEADS = 1000
MAX_PENDING = 20_000  # ops waiting for predecessors, per peer and session
MAX_ROUNDS = 500
MAX_SESSION_S = 900.0  # a session stops here (progress is kept; the next sync goes on from it)
MAX_PENDING_BYTES = 64 << 20  # bytes of ops waiting for predecessors, per peer and session
MAX_BLOOM_ENTRIES = 200_000
MAX_BLOOM_BITS = 16 * MAX_BLOOM_ENTRIES
BLOOM_BITS_PER_ENTRY = 10
BLOOM_HASHES = 7
MAX_EVENTS = 1000  # rows kept in the sync_events log


# ---------------------------------------------------------------- Bloom filter
class Bloom:
    """A salted Bloom filter of op ids (10 bits per entry, 7 hashes: about 1% false positives)."""

    def __init__(self, salt: bytes, bits: bytearray, hashes: int = BLOOM_HASHES) -> None:
        self.salt = salt
        self.bits = bits
        self.size = len(bits) * 8
        self.hashes = hashes

    @classmethod
    def of(cls, ids: Iterable[bytes], count: int, salt: bytes | None = None) -> Bloom:
        """A filter holding ``ids`` (``count`` of them)."""
        size = max(64, math.ceil(count * BLOOM_BITS_PER_ENTRY / 8) * 8)
        bloom = cls(salt or secrets.token_bytes(16), bytearray(size // 8))
        for oid in ids:
            for index in bloom._indexes(oid):
                bloom.bits[index >> 3] |= 1 << (index & 7)
        return bloom

    def _indexes(self, oid: bytes) -> list[int]:
        digest = hashlib.blake2b(oid, key=self.salt, digest_size=16).digest()
        first, second = int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big") | 1
        return [(first + i * second) % self.size for i in range(self.hashes)]

    def __contains__(self, oid: bytes) -> bool:
        return all(self.bits[i >> 3] & (1 << (i & 7)) for i in self._indexes(oid))

    def to_wire(self) -> dict[str, Any]:
        """JSON form."""
        return {"salt": base64.b64encode(self.salt).decode(), "hashes": self.hashes,
                "bits": base64.b64encode(bytes(self.bits)).decode()}

    @classmethod
    def from_wire(cls, data: object) -> Bloom:
        """Parse a peer's filter, bounded."""
        if not isinstance(data, dict):
            raise SyncRejected("have.bloom must be an object")
        try:
            salt = base64.b64decode(str(data.get("salt", "")), validate=True)
            raw_bits = str(data.get("bits", ""))
            if len(raw_bits) > MAX_BLOOM_BITS // 6 + 8:
                raise SyncRejected("have.bloom is too large")
            bits = bytearray(base64.b64decode(raw_bits, validate=True))
        except (ValueError, binascii.Error):
            raise SyncRejected("have.bloom is not valid base64") from None
        hashes = data.get("hashes")
        if not 8 <= len(salt) <= 64 or not isinstance(hashes, int) or not 1 <= hashes <= 16 or len(bits) < 8:
            raise SyncRejected("have.bloom needs an 8-64 byte salt, 1-16 hashes and at least 64 bits")
        return cls(salt, bits, hashes)


# ---------------------------------------------------------------- messages
@dataclass
class Message:
    """One sync message, either direction."""

    heads: list[bytes] = field(default_factory=list)
    need: list[bytes] = field(default_factory=list)
    last_sync: list[bytes] = field(default_factory=list)
    bloom: Bloom | None = None
    ops: list[tuple[bytes, bytes]] = field(default_factory=list)  # (body, sig), unparsed
    more: bool = False
    oversized: int = 0  # ops dropped unread for their size (refused by rule, logged by the receiver)

    def to_wire(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "v": PROTOCOL_VERSION,
            "heads": [h.hex() for h in self.heads],
            "need": [n.hex() for n in self.need],
            "have": {"last_sync": [h.hex() for h in self.last_sync],
                     "bloom": None if self.bloom is None else self.bloom.to_wire()},
            "ops": [[base64.b64encode(b).decode(), base64.b64encode(s).decode()] for b, s in self.ops],
            "more": self.more,
        }

    @classmethod
    def from_wire(cls, data: object) -> Message:
        """Parse and bound a message; :class:`SyncRejected` names what is wrong."""
        if not isinstance(data, dict):
            raise SyncRejected("a sync message must be a JSON object")
        if data.get("v") != PROTOCOL_VERSION:
            raise SyncRejected(f"unsupported sync protocol version {data.get('v')!r} (this replica speaks 1)")
        have = data.get("have") or {}
        if not isinstance(have, dict):
            raise SyncRejected("have must be an object")
        message = cls(
            heads=_ids(data.get("heads", []), "heads", MAX_HEADS),
            need=_ids(data.get("need", []), "need", MAX_NEED),
            last_sync=_ids(have.get("last_sync", []), "have.last_sync", MAX_HEADS),
            bloom=None if have.get("bloom") is None else Bloom.from_wire(have["bloom"]),
            more=data.get("more") is True,
        )
        ops = data.get("ops", [])
        if not isinstance(ops, list) or len(ops) > MAX_OPS_PER_MESSAGE:
            raise SyncRejected(f"ops must be a list of at most {MAX_OPS_PER_MESSAGE}")
        for index, pair in enumerate(ops):
            if (not isinstance(pair, list) or len(pair) != 2
                    or not all(isinstance(x, str) for x in pair)):
                raise SyncRejected(f"ops[{index}] must be [body, signature] in base64")
            if len(pair[0]) > crdt.MAX_OP_BYTES * 4 // 3 + 4:
                message.oversized += 1
                continue
            try:
                message.ops.append((base64.b64decode(pair[0], validate=True), base64.b64decode(pair[1], validate=True)))
            except (ValueError, binascii.Error):
                raise SyncRejected(f"ops[{index}] is not valid base64") from None
        return message


def _ids(value: object, name: str, limit: int) -> list[bytes]:
    if not isinstance(value, list) or len(value) > limit:
        raise SyncRejected(f"{name} must be a list of at most {limit} op ids")
    out = []
    for item in value:
        if not isinstance(item, str) or len(item) != 64:
            raise SyncRejected(f"{name} holds something that is not a 64-hex-digit op id")
        try:
            out.append(bytes.fromhex(item))
        except ValueError:
            raise SyncRejected(f"{name} holds something that is not a 64-hex-digit op id") from None
    return out


# ---------------------------------------------------------------- the engine
@dataclass
class Outcome:
    """What one batch of received ops did."""

    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    waiting: list[Op] = field(default_factory=list)
    needed: list[bytes] = field(default_factory=list)


class Replica:
    """One store's side of the protocol: what to send, what to apply, what to log."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- what we hold
    def heads(self) -> list[bytes]:
        """Current heads (the newest ``MAX_HEADS`` if a flood of concurrent ops left more), sorted.

        Heads are hints: fewer of them only makes the other side send a few ops
        we hold; what it lacks is still found from its own heads."""
        rows = self.store.storage.conn.execute(
            "SELECT h.id, o.seq FROM heads h CROSS JOIN ops o ON o.id = h.id").fetchall()
        if len(rows) > MAX_HEADS:
            rows = sorted(rows, key=lambda r: r[1])[-MAX_HEADS:]
        return sorted(r[0] for r in rows)

    def known_nodes(self, conn: sqlite3.Connection, ids: Iterable[bytes]) -> list[Node]:
        """Nodes of the ids stored here (others are ignored)."""
        return [n for n in (node(conn, i) for i in ids) if n is not None]

    def ops_since(self, conn: sqlite3.Connection, base: Iterable[bytes]) -> tuple[list[bytes], int]:
        """Ids of stored ops that are not ancestors of ``base`` (the ones known to the other side), capped."""
        floor, extra = below(conn, self.known_nodes(conn, base))
        ids = [r[0] for r in conn.execute("SELECT id, seq FROM ops WHERE seq > ? ORDER BY seq LIMIT ?",
                                          (floor, MAX_BLOOM_ENTRIES + len(extra) + 1)) if r[1] not in extra]
        return ids[:MAX_BLOOM_ENTRIES], len(ids)

    def bloom_since(self, base: list[bytes]) -> Bloom | None:
        """A fresh-salted filter of the ops added since ``base`` (None when there are too many to filter)."""
        with self.store.storage.read() as conn:
            ids, total = self.ops_since(conn, base)
        if total > MAX_BLOOM_ENTRIES:
            return None
        return Bloom.of(ids, len(ids))

    def ops_for(self, known: Iterable[bytes], bloom: Bloom | None, need: Iterable[bytes]
                ) -> tuple[list[tuple[bytes, bytes]], bool, int]:
        """Ops the other side lacks, bounded: ours that are not ancestors of ``known`` and not in its
        filter, oldest first (so each arrives after its predecessors), then the ones it asked for that
        the scan did not send. Returns (ops, more to come, asked-for ids not held here)."""
        out: list[tuple[bytes, bytes]] = []
        budget = OP_BYTE_BUDGET
        sent: set[bytes] = set()
        unknown = 0
        more = False
        with self.store.storage.read() as conn:
            floor, extra = below(conn, self.known_nodes(conn, known))
            cursor = conn.execute("SELECT seq, id, body, sig FROM ops WHERE seq > ? ORDER BY seq", (floor,))
            for seq, oid, body, sig in cursor:
                if seq in extra:
                    continue
                if bloom is not None and oid in bloom and not sent.intersection(crdt.decode(body)["preds"]):
                    continue  # it has this one (or a false positive: then it asks, or a predecessor is sent)
                if len(out) >= MAX_OPS_PER_MESSAGE or budget - len(body) - len(sig) < 0 < len(out):
                    more = True
                    break
                out.append((body, sig))
                sent.add(oid)
                budget -= len(body) + len(sig)
            for oid in need:
                row = conn.execute("SELECT seq, body, sig FROM ops WHERE id = ?", (oid,)).fetchone()
                if row is None:
                    unknown += 1  # asked for something not held here: ignored, counted as junk
                    continue
                in_scan = row[0] > floor and row[0] not in extra and (bloom is None or oid not in bloom)
                if oid in sent or (more and in_scan):
                    continue  # sent now, or coming in order with the rest of the scan
                if len(out) >= MAX_OPS_PER_MESSAGE or budget <= 0:
                    more = True
                    break
                out.append((row[1], row[2]))
                sent.add(oid)
                budget -= len(row[1]) + len(row[2])
        return out, more, unknown

    # -- what we receive
    def receive(self, raw_ops: list[tuple[bytes, bytes]], waiting: list[Op], peer: str, oversized: int = 0
                ) -> Outcome:
        """Verify and deliver received ops (with those still waiting) as one closed batch."""
        outcome = Outcome(rejected=oversized)
        for _ in range(oversized):
            self.log_rejection(peer, "invalid op", f"op too large (over {crdt.MAX_OP_BYTES} bytes)", "-")
        by_id: dict[bytes, Op] = {op.id: op for op in waiting}
        for body, sig in raw_ops:
            oid = crdt.op_id(body)
            if oid in by_id:
                continue  # sent again while it waits: held once
            try:
                by_id[oid] = crdt.parse_op(body, sig)
            except InvalidOp as exc:
                outcome.rejected += 1
                self.log_rejection(peer, "invalid op", str(exc), oid.hex())
        ops = list(by_id.values())
        if not ops:
            return outcome
        result = self._apply(ops, peer)
        outcome.applied = len(result.applied)
        outcome.duplicates = result.duplicates
        for refused, reason in result.rejected:
            outcome.rejected += 1
            self.log_rejection(peer, "rejected op", reason, refused)
        still = set(result.missing)
        waiting = [op for op in ops if op.id.hex() in still]
        outcome.waiting = _newest_within(waiting, MAX_PENDING, MAX_PENDING_BYTES)
        if len(outcome.waiting) < len(waiting):
            self.log_event(peer, "pending buffer full",
                           f"dropped {len(waiting) - len(outcome.waiting)} ops waiting for predecessors")
        outcome.needed = [bytes.fromhex(h) for h in result.needed][:MAX_NEED]
        return outcome

    def _apply(self, ops: list[Op], peer: str) -> ApplyResult:
        """Deliver a batch; should a well-formed op still break the materialiser (a bug here, which a
        faulty peer could otherwise use to block every batch holding it), the ops go one by one and
        the ones that fail are refused - the same way on every replica running this version."""
        try:
            return self.store.apply_remote(ops, source=peer)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
            log.error("sync: a batch from %s could not be stored (%s: %s); applying op by op", peer,
                      type(exc).__name__, exc)
        merged = ApplyResult()
        for op in ops:
            try:
                one = self.store.apply_remote([op], source=peer)
            except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
                reason = f"cannot be stored ({type(exc).__name__})"
                with self.store.storage.write() as conn:
                    conn.execute("INSERT OR IGNORE INTO rejected_ops(id, reason, peer, at) VALUES (?, ?, ?, ?)",
                                 (op.id, reason, peer, now_ms()))
                merged.rejected.append((op.id.hex(), reason))
                continue
            merged.applied += one.applied
            merged.duplicates += one.duplicates
            merged.missing += one.missing
            merged.needed += [n for n in one.needed if n not in merged.needed]
            merged.rejected += one.rejected
        return merged

    def unknown(self, ids: Iterable[bytes], also_have: set[bytes]) -> list[bytes]:
        """Ids neither stored, nor waiting, nor rejected here (worth asking for)."""
        conn = self.store.storage.conn
        out = []
        for oid in ids:
            if oid in also_have or node(conn, oid) is not None:
                continue
            if conn.execute("SELECT 1 FROM rejected_ops WHERE id = ?", (oid,)).fetchone() is None:
                out.append(oid)
        return out

    # -- the log
    def log_rejection(self, peer: str, kind: str, reason: str, oid: str) -> None:
        """Log and count one refused op."""
        log.warning("sync: %s from peer %s refused: %s (op %s)", kind, peer, reason, oid[:16])
        self.log_event(peer, reason_key(reason), f"op {oid}: {reason}")

    def log_event(self, peer: str, reason: str, detail: str) -> None:
        """Append to the bounded sync log and count by (peer, reason)."""
        with self.store.storage.write() as conn:
            conn.execute("INSERT INTO sync_events(at, peer, kind, detail) VALUES (?, ?, ?, ?)",
                         (now_ms(), peer, reason, detail[:1000]))
            conn.execute("INSERT INTO sync_counts(peer, reason, n) VALUES (?, ?, 1)"
                         " ON CONFLICT(peer, reason) DO UPDATE SET n = n + 1", (peer, reason))
            conn.execute("DELETE FROM sync_events WHERE seq <= (SELECT max(seq) FROM sync_events) - ?",
                         (MAX_EVENTS,))


def _newest_within(ops: list[Op], count: int, size: int) -> list[Op]:
    """The last ``ops`` that fit in ``count`` ops and ``size`` bytes, in their order."""
    kept: list[Op] = []
    for op in reversed(ops):
        size -= len(op.body) + len(op.sig)
        if len(kept) >= count or size < 0:
            break
        kept.append(op)
    return kept[::-1]


def reason_key(reason: str) -> str:
    """A short, stable counter name for a refusal reason."""
    lowered = reason.lower()
    for needle, key in (("signature", "bad signature"), ("too large", "oversized op"), ("preds", "bad preds"),
                        ("descends from a rejected", "descends from rejected"), ("tag_remove", "bad remove"),
                        ("create is not among", "no create in ancestry"), ("integer outside", "out-of-range value"),
                        ("hlc", "bad clock")):
        if needle in lowered:
            return key
    return "invalid op"


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

    def __init__(self, store: Store, registry: PeerRegistry) -> None:
        self.replica = Replica(store)
        self.registry = registry
        self.last_round = ServedRound()

    def handle(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """Apply the ops in ``request`` and answer with heads, needs, a filter and the ops the peer lacks."""
        message = Message.from_wire(request)
        outcome = self.replica.receive(message.ops, [], peer.name, message.oversized)
        waiting = {op.id for op in outcome.waiting}
        need = self.replica.unknown([*outcome.needed, *message.heads], waiting)[:MAX_NEED]
        sent_by_peer = [crdt.op_id(body) for body, _ in message.ops]  # it holds what it just sent
        ops, more, junk = self.replica.ops_for([*message.heads, *message.last_sync, *sent_by_peer], message.bloom,
                                               message.need)
        if junk:
            self.replica.log_event(peer.name, "junk need", f"{junk} requested ids are not held here")
        with self.replica.store.storage.read() as conn:
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

    def __init__(self, store: Store, registry: PeerRegistry) -> None:
        self.replica = Replica(store)
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
                parsed = json.loads(answer_body)
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise SyncRejected("the peer's answer is not JSON") from None
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
            sent_to_us = [crdt.op_id(body) for body, _ in answer.ops]
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
        with replica.store.storage.read() as conn:
            common = [h for h in their_heads if node(conn, h) is not None]
        self.registry.record_sync(peer.key, common)
