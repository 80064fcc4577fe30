"""Replication as a service: trusted peers, syncing with them, answering them, and what it left behind.

Ties :mod:`.peers` (who may talk to us), :mod:`.signing` (how each request
proves it) and :mod:`.protocol` (the rounds) to one store's op log:
``sync_with`` reaches peers over HTTP, ``serve`` answers a signed request,
``start_interval`` keeps replicas in step from a server, and ``conflicts`` /
``stats`` read the merge audit trail and the refusal counters. Replicas meet
only here (``/v1/sync``): the legacy ``/sync/*`` routes speak NeuralSync2's ops,
which become local ops through the facade (issue 12).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import InvalidInput, SyncRejected
from ..json_input import parse_json
from ..oplog.log import OpLog
from ..utils import Periodic
from .peers import Peer, PeerRegistry
from .protocol import SyncClient, SyncReport, SyncServer, Transport
from .replica import Replica
from .signing import NONCE_HEADER, SIGNATURE_HEADER, RequestVerifier, sign_reply

log = logging.getLogger(__name__)

MAX_CONFLICTS_LISTED = 1000
TransportFactory = Callable[[Peer], Transport]


class Replication:
    """One store's replication: peers, client and server sides, interval sync."""

    def __init__(self, oplog: OpLog) -> None:
        self.log = oplog
        self.storage = oplog.storage
        self.registry = PeerRegistry(oplog.storage, oplog.author)
        self.verifier = RequestVerifier(oplog.author, oplog.storage)
        self._server = SyncServer(oplog, self.registry)
        self._client = SyncClient(oplog, self.registry)
        self._replica = Replica(oplog)
        self._lock = threading.Lock()  # one session at a time from this process
        self._interval: Periodic | None = None

    # ------------------------------------------------------------ peers
    def add_peer(self, name: str, url: str, key: str) -> dict[str, Any]:
        """Trust a replica: its name, URL and public key."""
        return self.registry.add(name, url, key).to_dict()

    def remove_peer(self, name: str) -> None:
        """Stop trusting a replica."""
        self.registry.remove(name)

    def peers(self) -> list[dict[str, Any]]:
        """Every trusted replica."""
        return [p.to_dict() for p in self.registry.all()]

    # ------------------------------------------------------------ client side
    def sync_with(self, name: str | None = None, transport: TransportFactory | None = None,
                  timeout: float = 30.0) -> list[SyncReport]:
        """Sync with one peer (by name) or every peer; a failing peer is reported, not raised."""
        peers = [self.registry.get(name)] if name is not None else self.registry.all()
        reports = []
        for peer in peers:
            channel = transport(peer) if transport else _http(self.log.key, peer, timeout)
            with self._lock:
                reports.append(self._client.sync(peer, channel))
        return reports

    def start_interval(self, seconds: float) -> None:
        """Sync with every peer every ``seconds`` on a daemon thread (a failing peer is logged, retried)."""
        if seconds <= 0:
            raise InvalidInput("sync_interval", "must be a positive number of seconds")
        if self._interval is None:
            self._interval = Periodic("neuralsync-sync", seconds, self._sync_all_logged)
            self._interval.start()

    def _sync_all_logged(self) -> None:
        for report in self.sync_with():
            if not report.ok:
                log.warning("sync with %s failed: %s", report.peer, report.error)
            else:
                log.info("sync with %s: %d received, %d sent, %d rejected, %d round trips", report.peer,
                         report.applied, report.sent, report.rejected, report.round_trips)

    def stop(self) -> None:
        """Stop interval sync (bounded wait)."""
        if self._interval is not None:
            self._interval.stop()
            self._interval = None

    # ------------------------------------------------------------ server side
    def precheck(self, headers: Mapping[str, str]) -> tuple[int, str, str] | None:
        """Refuse a sync request on its headers alone (status, reason, header at fault), or None to read
        its body."""
        try:
            self.verifier.precheck({k.lower(): v for k, v in headers.items()}, self.registry)
        except SyncRejected as exc:
            return exc.status, str(exc), exc.field
        return None

    def serve(self, headers: Mapping[str, str], body: bytes) -> tuple[int, bytes, dict[str, str]]:
        """Answer one signed sync request: (status, JSON body, headers incl. the answer's signature)."""
        lowered = {k.lower(): v for k, v in headers.items()}
        try:
            peer = self.verifier.verify(lowered, body, self.registry)
        except SyncRejected as exc:
            return exc.status, _error(str(exc), exc.field), {}
        try:
            request = parse_json(body)
            answer = json.dumps(self._server.handle(peer, request), separators=(",", ":")).encode()
            status = 200
        except InvalidInput as exc:
            self._replica.log_event(peer.name, "bad message", f"the sync request is not JSON we accept: {exc}")
            status, answer = 400, _error(f"the sync request is not JSON we accept: {exc}", exc.field)
        except SyncRejected as exc:
            self._replica.log_event(peer.name, "bad message", str(exc))
            status, answer = exc.status, _error(str(exc), exc.field)
        return status, answer, {SIGNATURE_HEADER: sign_reply(self.log.key, lowered[NONCE_HEADER], answer)}

    # ------------------------------------------------------------ audit
    def conflicts(self, record_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Losing values of concurrent writes, newest first."""
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_CONFLICTS_LISTED:
            raise InvalidInput("limit", f"must be an integer from 1 to {MAX_CONFLICTS_LISTED}")
        sql = ("SELECT id, record_id, field, winner_op, loser_op, winner_value, loser_value, winner_author,"
               " loser_author, resolution, at FROM conflicts")
        args: list[Any] = []
        if record_id is not None:
            sql += " WHERE record_id = ?"
            args.append(record_id)
        rows = self.storage.conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [{"id": r[0], "record_id": r[1], "field": r[2], "winner_op": r[3].hex(), "loser_op": r[4].hex(),
                 "winner_value": json.loads(r[5]) if r[5] is not None else None,
                 "loser_value": json.loads(r[6]) if r[6] is not None else None,
                 "winner_author": r[7].hex(), "loser_author": r[8].hex(), "resolution": r[9], "at": r[10]}
                for r in rows]

    def stats(self) -> dict[str, Any]:
        """Peers, refusal counts by peer and reason, the latest refusals, conflicts recorded."""
        conn = self.storage.conn
        counts: dict[str, dict[str, int]] = {}
        for peer, reason, n in conn.execute("SELECT peer, reason, n FROM sync_counts ORDER BY peer, reason"):
            counts.setdefault(peer or "-", {})[reason] = n
        recent = [{"at": at, "peer": peer, "reason": kind, "detail": detail} for at, peer, kind, detail in
                  conn.execute("SELECT at, peer, kind, detail FROM sync_events ORDER BY seq DESC LIMIT 20")]
        return {
            "peers": len(self.registry.all()),
            "rejected_ops": conn.execute("SELECT count(*) FROM rejected_ops").fetchone()[0],
            "refusals": counts,
            "recent_refusals": recent,
            "conflicts": conn.execute("SELECT count(*) FROM conflicts").fetchone()[0],
        }


def _error(message: str, field: str) -> bytes:
    return json.dumps({"error": {"type": "sync_rejected", "field": field, "message": message},
                       "detail": message}).encode()


def _http(key: Any, peer: Peer, timeout: float) -> Transport:
    """The HTTP transport, imported when a sync starts (opening a store need not load http.client)."""
    from .transport import HttpTransport

    return HttpTransport(key, peer, timeout)
