"""The facade's door onto sharing: trusted peers and their sync, the op log's pages, shared scopes (teams).

A mixin of :class:`~neuralsync.unified_memory_api.UnifiedMemoryAPI`, which owns the state it uses; each
method validates and delegates, as every facade method does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import validation as v
from ..config import MemoryConfig
from ..errors import InvalidInput, NotFound
from ..model import LoggedOp, Memory
from ..oplog import team
from ..oplog.clock import hlc_ms
from ..oplog.log import OpLog, team_graph
from ..replication.peers import check_url as check_relay_url
from ..replication.protocol import SyncReport
from ..replication.service import Replication, TransportFactory
from ..services.monitor import PerformanceMonitor
from ..services.teams import Teams, hex32
from ..store.reads import Reader
from ..store.storage import Storage
from ..utils import Periodic

log = logging.getLogger("neuralsync.unified_memory_api")


class SharingDoor:
    """Peers, sync and shared scopes (the facade's state, shared)."""

    config: MemoryConfig
    storage: Storage
    log: OpLog
    reads: Reader
    monitor: PerformanceMonitor
    replication: Replication
    teams: Teams
    _team_syncs: Periodic | None

    if TYPE_CHECKING:  # the merges door's
        def _scan_quietly(self, near: bool) -> None: ...

    def identity(self) -> str:
        """This replica's public key (hex): give it to peers for ``neuralsync peer add``."""
        return self.log.site_id

    def add_peer(self, name: str, url: str, key: str) -> dict[str, Any]:
        """Trust another replica (name, URL of its ``neuralsync serve``, its public key)."""
        return self.replication.add_peer(name, url, key)

    def remove_peer(self, name: str) -> None:
        """Stop trusting a replica (ops received from it stay: they are valid by rule)."""
        self.replication.remove_peer(name)

    def list_peers(self) -> list[dict[str, Any]]:
        """Trusted replicas with their last sync time and error."""
        return self.replication.peers()

    def sync(self, peer: str | None = None, transport: TransportFactory | None = None,
             timeout: float = 30.0) -> list[SyncReport]:
        """Sync with one peer or all of them; each report says what moved (a failure is reported, not raised)."""
        with self.monitor.measure("sync"):
            reports = self.replication.sync_with(peer, transport, timeout)
        self._scan_quietly(near=False)
        return reports

    def start_interval_sync(self, seconds: float) -> None:
        """Sync with every peer every ``seconds`` on a background thread, until close."""
        self.replication.start_interval(seconds)

    def check_sync_request(self, headers: Mapping[str, str]) -> tuple[int, str, str] | None:
        """(status, reason, header at fault) to refuse a peer's sync request on its headers, before its
        body is read; or None."""
        return self.replication.precheck(headers)

    def serve_sync(self, headers: Mapping[str, str], body: bytes) -> tuple[int, bytes, dict[str, str]]:
        """Answer one signed sync request from a peer: (status, JSON body, headers)."""
        with self.monitor.measure("serve_sync"):
            answer = self.replication.serve(headers, body)
        self._scan_quietly(near=False)
        return answer

    # ------------------------------------------------------------ shared scopes (teams)
    def team_whoami(self) -> dict[str, str]:
        """This person's user key (give it to an admin to be added) and this machine's device key."""
        return {"user": bytes(self.teams.user.verify_key).hex(), "device": self.log.site_id}

    def team_create(self, name: str) -> dict[str, Any]:
        """A new shared scope ``team:<name>``, this user its first admin."""
        return self.teams.create(v.label(name, "name", team.MAX_NAME) or "")

    def team_set_member(self, name: str, user: str, role: str) -> dict[str, Any]:
        """Add a member by user key as ``reader``, ``writer`` or ``admin``, or remove them (``removed``).
        Removal is not retroactive: it stops what they write after seeing it and their further pulls."""
        return self.teams.set_member(name, user, role)

    def team_promote(self, memory_id: str, name: str) -> str:
        """Share a private memory with a shared scope: a new memory there, its provenance in its metadata."""
        record_id = v.memory_id(memory_id)
        memory = self.reads.get(record_id, include_expired=True)
        if memory is None:
            raise NotFound(record_id)
        return self.teams.promote(memory, name)

    def teams_list(self) -> list[dict[str, Any]]:
        """Shared scopes held here: id, members and roles, this user's role, memories, relay and last sync."""
        return self.teams.all()

    def team_use_relay(self, scope: str, url: str, relay_key: str) -> None:
        """Sync the shared scope (its name here, or its id) through the relay at ``url``."""
        self.teams.use_relay(self._team_id(scope), check_relay_url(url), hex32(relay_key, "relay_key"))

    def team_sync(self, scope: str | None = None, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Sync one shared scope (or every one with a relay) with its relay; a report per scope."""
        from ..replication.relay_client import RelayClient

        wanted = None if scope is None else self._team_id(scope)
        reports = []
        with self.monitor.measure("team_sync"):
            for graph, url, key in self.teams.relays():
                if wanted is None or graph == wanted:
                    reports.append(self.teams.sync(graph, RelayClient(url, key, self.log.key, timeout)).as_dict())
        if wanted is not None and not reports:
            raise InvalidInput("scope", "no relay for this shared scope: neuralsync team relay SCOPE URL KEY")
        return reports

    def start_team_sync(self, seconds: float) -> None:
        """Sync every shared scope that has a relay every ``seconds``, on a background thread, until close
        (a failure is logged and retried at the next tick)."""
        if self._team_syncs is None:
            self._team_syncs = Periodic("neuralsync-team-sync", seconds, self._team_sync_logged)
            self._team_syncs.start()

    def _team_sync_logged(self) -> None:
        if not self.teams.relays():
            return
        for report in self.team_sync():
            if report["error"]:
                log.warning("team sync of %s failed: %s", report["team"], report["error"])
            elif report["applied"] or report["pushed"] or report["refused"]:
                log.info("team sync of %s: pushed %d, applied %d, refused %d", report["team"], report["pushed"],
                         report["applied"], len(report["refused"]))

    def team_user_key(self, import_hex: str | None = None) -> str:
        """Export this person's user key (hex, to copy to their other machines), or import one."""
        return self.teams.export_user_key() if import_hex is None else self.teams.import_user_key(import_hex)

    def _team_id(self, scope: str) -> bytes:
        text = v.label(scope, "scope", 128) or ""
        try:
            return team_graph(self.storage.conn, text.removeprefix(team.SCOPE_PREFIX))
        except InvalidInput:
            return hex32(text, "scope")  # a scope not held yet (joining): its id

    def log_page(self, seq: int, limit: int) -> list[LoggedOp]:
        """Ops after local sequence number ``seq`` (at most ``limit``), oldest first, each with its
        wall-clock time and its memory as it is now (expired included)."""
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise InvalidInput("seq", "must be a non-negative integer")
        ops = self.log.ops_since(seq, v.positive_int(limit, "limit", optional=False))  # type: ignore[arg-type]
        ops = [(pos, op) for pos, op in ops if not op.pruned]  # compacted: deleted memories' old values
        now: dict[str, Memory | None] = {}
        for _, op in ops:
            if op.kind != "persona" and op.record_id not in now:
                now[op.record_id] = self.reads.get(op.record_id, include_expired=True)
        return [LoggedOp(pos, op, hlc_ms(op.hlc), now.get(op.record_id) if op.kind != "persona" else None)
                for pos, op in ops]

    def latest_seqs(self, record_ids: Sequence[str]) -> dict[str, int]:
        """The local sequence number of the newest op on each record (a memory id, or ``"persona"``);
        absent when no op here touched it."""
        return self.reads.latest_seqs([v.label(i, "record_ids", 64) or "" for i in record_ids])

    def conflicts(self, record_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Losing values of concurrent writes (record, field, both values and authors, resolution)."""
        return self.replication.conflicts(record_id, limit)
