"""Shared scopes on this replica: create and join them, manage members, promote memories, sync with a relay.

A person is a *user key* (``<home>/user.key``, mode 0600, the same file on each of their machines) and each
replica writes with its own device key, which the user key certifies. A shared scope is a graph of its own
(``oplog/team.py``); its memories are labelled ``team:<name>`` and recalled beside the private ones.

Sync with a relay (``neuralsync relay serve`` on PostgreSQL) pushes the scope's ops this replica holds and
the relay lacks, and pulls the relay's by cursor. Nothing the relay sends is trusted: every op is verified
here (signature, id, its scope, the author's rights among its ancestors) like an op from any peer, so a
tampered body or an op of a non-member is refused and logged, and the rest goes on. An op whose predecessor
the relay withholds waits; the pull cursor stops before it, so the next sync asks again, and the op is also
found through another peer (a replica's own other machines sync every graph they share).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nacl.signing

from ..errors import InvalidInput, InvalidOp, SyncRejected
from ..model import Memory, Op
from ..oplog import codec, team
from ..oplog.graph import node
from ..oplog.identity import load_or_create_key
from ..oplog.log import OpLog, team_graph
from ..oplog.materialize import membership_at
from ..store.storage import Storage
from ..utils import now_ms

if TYPE_CHECKING:
    from ..replication.relay_client import RelayClient

log = logging.getLogger(__name__)

PULL_PAGE = 1000
MAX_WAITING_PAGES = 3  # pages re-read while an op waits for a withheld predecessor


@dataclass
class TeamSyncReport:
    """One scope's sync with its relay."""

    team: str
    pushed: int = 0
    pulled: int = 0
    applied: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)
    waiting: int = 0
    cursor: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"team": self.team, "pushed": self.pushed, "pulled": self.pulled, "applied": self.applied,
                "refused": [{"op": op, "reason": reason} for op, reason in self.refused],
                "waiting": self.waiting, "cursor": self.cursor, "error": self.error}


class Teams:
    """The shared scopes of one store (the facade's ``team_*`` methods are thin doors onto this)."""

    def __init__(self, storage: Storage, oplog: OpLog, home: Path) -> None:
        self.storage = storage
        self.oplog = oplog
        self.user_key_path = home / "user.key"

    # -- who I am
    @property
    def user(self) -> nacl.signing.SigningKey:
        """This person's user key (created on first use, mode 0600; copy it to your other machines)."""
        return load_or_create_key(self.user_key_path)

    @property
    def device(self) -> bytes:
        return self.oplog.author

    def import_user_key(self, raw_hex: str) -> str:
        """Use the user key of another of your machines here (its 64 hex characters); the user's public key."""
        raw = hex32(raw_hex, "user_key", "must be 64 hex characters ('neuralsync team user-key' on your machine)")
        if self.user_key_path.exists() and self.user_key_path.read_bytes() != raw:
            raise InvalidInput("user_key", f"{self.user_key_path} holds another user key; move it away first")
        fd = os.open(self.user_key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, raw)
        finally:
            os.close(fd)
        return bytes(nacl.signing.SigningKey(raw).verify_key).hex()

    def export_user_key(self) -> str:
        return self.user.encode().hex()

    # -- scopes and members
    def create(self, name: str) -> dict[str, Any]:
        """A new shared scope with this user as its first admin."""
        user = self.user
        nonce = os.urandom(16)
        graph = team.scope_id_for(bytes(user.verify_key), name, nonce)
        fields = {"name": name, "user": bytes(user.verify_key), "nonce": nonce,
                  "cert": team.certify_device(user, self.device)}
        try:
            codec.check_op_fields("team_create", graph.hex(), fields, self.device, graph)
        except InvalidOp as exc:
            raise InvalidInput("name", str(exc)) from None
        with self.storage.write() as conn:
            if conn.execute("SELECT 1 FROM teams WHERE name = ?", (name,)).fetchone() is not None:
                raise InvalidInput("name", f"a shared scope called {name!r} is here already")
            self.oplog.append_in_graph(conn, graph, [("team_create", graph.hex(), fields)])
        return self.describe(name)

    def set_member(self, name: str, user_hex: str, role: str) -> dict[str, Any]:
        """Add a member (``reader``, ``writer``, ``admin``), change their role, or remove them (``removed``):
        an admin's signed op in the scope. Removal stops what they write after seeing it, not what they
        wrote before, nor what they already hold."""
        if role not in team.MEMBER_ROLES:
            raise InvalidInput("role", f"must be one of {', '.join(team.MEMBER_ROLES)}")
        user = hex32(user_hex, "user", "a user key is 64 hex characters (neuralsync team whoami)")
        with self.storage.write() as conn:
            graph = team_graph(conn, name)
            self.oplog.append_in_graph(conn, graph, [("team_member", user.hex(), {"user": user, "role": role})])
        return self.describe(name)

    def add_device(self, conn: sqlite3.Connection, graph: bytes) -> bool:
        """Certify this device in the scope (once, and only while its user is a member), so its writes
        count as the user's."""
        state = self.membership(conn, graph)
        user = self.user
        if self.device in state.devices or state.roles.get(bytes(user.verify_key)) in (None, "removed"):
            return False
        fields = {"user": bytes(user.verify_key), "cert": team.certify_device(user, self.device)}
        self.oplog.append_in_graph(conn, graph, [("team_device", self.device.hex(), fields)])
        return True

    def membership(self, conn: sqlite3.Connection, graph: bytes) -> team.Membership:
        """The scope's membership as of everything held here."""
        return membership_now(conn, graph)

    def promote(self, memory: Memory, name: str) -> str:
        """Copy a private memory into the shared scope ``name`` (a new memory there, its provenance in its
        metadata); the private one stays. Returns the new memory's id."""
        if memory.scope.startswith(team.SCOPE_PREFIX):
            raise InvalidInput("memory_id", "the memory is in a shared scope already")
        now = now_ms()
        salt = os.urandom(16)
        fields: dict[str, Any] = {
            "content": memory.content, "scope": team.scope_label(name), "kind": memory.kind,
            "priority": memory.priority, "confidence": memory.confidence, "tags": list(memory.tags),
            "metadata": {**memory.metadata, "promoted_from": {"id": memory.id, "scope": memory.scope, "at": now}},
            "tool": memory.tool, "source": memory.source, "created_at": now, "id_salt": salt}
        with self.storage.write() as conn:
            graph = team_graph(conn, name)
            record_id = team.record_id_for(graph, salt)
            self.oplog.append_in_graph(conn, graph, [("create", record_id, fields)])
        return record_id

    def new_record(self, conn: sqlite3.Connection, fields: dict[str, Any]) -> str:
        """The id of a new memory labelled ``team:<name>`` (bound to that scope), the salt set in ``fields``."""
        graph = team_graph(conn, fields["scope"][len(team.SCOPE_PREFIX):])
        fields["id_salt"] = os.urandom(16)
        return team.record_id_for(graph, fields["id_salt"])

    # -- what is here
    def all(self) -> list[dict[str, Any]]:
        names = [row[0] for row in self.storage.conn.execute("SELECT name FROM teams ORDER BY name")]
        return [self.describe(name) for name in names]

    def describe(self, name: str) -> dict[str, Any]:
        conn = self.storage.conn
        graph = team_graph(conn, name)
        state = self.membership(conn, graph)
        me = bytes(self.user.verify_key)
        relay = conn.execute("SELECT url, relay_key, pushed_seq, pulled_seq, synced_at, last_error FROM team_relays"
                             " WHERE graph = ?", (graph,)).fetchone()
        memories = conn.execute("SELECT count(*) FROM memories WHERE scope = ?", (team.scope_label(name),)).fetchone()
        return {
            "name": name, "scope": team.scope_label(name), "id": graph.hex(),
            "creator": state.creator.hex() if state.creator else None,
            "role": state.roles.get(me), "device_certified": self.device in state.devices,
            "members": {user.hex(): role for user, role in sorted(state.roles.items())},
            "memories": memories[0],
            "relay": None if relay is None else {"url": relay[0], "key": relay[1].hex(), "pushed_seq": relay[2],
                                                 "cursor": relay[3], "synced_at": relay[4], "last_error": relay[5]},
        }

    # -- relays
    def use_relay(self, graph: bytes, url: str, relay_key: bytes) -> None:
        with self.storage.write() as conn:
            conn.execute("INSERT INTO team_relays(graph, url, relay_key) VALUES (?, ?, ?) ON CONFLICT(graph)"
                         " DO UPDATE SET url = excluded.url, relay_key = excluded.relay_key", (graph, url, relay_key))

    def relays(self) -> list[tuple[bytes, str, bytes]]:
        return [(bytes(g), u, bytes(k)) for g, u, k in self.storage.conn.execute(
            "SELECT graph, url, relay_key FROM team_relays ORDER BY graph")]

    def sync(self, graph: bytes, client: RelayClient) -> TeamSyncReport:
        """Push what the relay lacks of this scope, pull what is new there, verify and apply it."""
        name_row = self.storage.conn.execute("SELECT name FROM teams WHERE graph = ?", (graph,)).fetchone()
        report = TeamSyncReport(name_row[0] if name_row else graph.hex())
        try:
            client.register(self.user)
            self._push(graph, client, report)  # first: a new scope reaches the relay with its root
            self._pull(graph, client, report)
            with self.storage.write() as conn:
                if conn.execute("SELECT 1 FROM teams WHERE graph = ?", (graph,)).fetchone() is not None:
                    self.add_device(conn, graph)
            self._push(graph, client, report)
        except (SyncRejected, OSError) as exc:
            report.error = str(exc)
        self._record(graph, report)
        return report

    def _push(self, graph: bytes, client: RelayClient, report: TeamSyncReport) -> None:
        row = self.storage.conn.execute("SELECT pushed_seq FROM team_relays WHERE graph = ?", (graph,)).fetchone()
        after = row[0] if row else 0
        while True:
            rows = self.storage.conn.execute(
                "SELECT seq, body, sig FROM ops WHERE graph = ? AND seq > ? ORDER BY seq LIMIT 500",
                (graph, after)).fetchall()
            if not rows:
                return
            wire = [codec.op_to_wire(codec.parse_op(body, sig, verify=False, stored=True)) for _, body, sig in rows]
            answer = client.push_batch(graph, wire)
            report.pushed += int(answer.get("stored", 0))
            after = rows[-1][0]
            with self.storage.write() as conn:
                conn.execute("UPDATE team_relays SET pushed_seq = ? WHERE graph = ?", (after, graph))

    def _pull(self, graph: bytes, client: RelayClient, report: TeamSyncReport) -> None:
        row = self.storage.conn.execute("SELECT pulled_seq FROM team_relays WHERE graph = ?", (graph,)).fetchone()
        cursor = row[0] if row else 0
        waiting_pages = 0
        while True:
            page = client.pull(graph, cursor, PULL_PAGE)
            if not page.ops:
                break
            report.pulled += len(page.ops)
            ops: list[tuple[int, Op]] = []
            for wire in page.ops:
                try:
                    op = codec.op_from_wire(wire)
                    if op.graph != graph:
                        raise InvalidOp("an op of another scope sent for this one")
                    ops.append((int(wire["seq"]), op))
                except (InvalidOp, KeyError, TypeError, ValueError) as exc:
                    report.refused.append((str(wire.get("id", "?")) if isinstance(wire, dict) else "?", str(exc)))
            result = self.oplog.apply_remote([op for _, op in ops], source="relay")
            report.applied += len(result.applied)
            report.refused += result.rejected
            stuck = set(result.missing)
            report.waiting = len(stuck)
            # The cursor moves past every op that is applied or refused for good; it stops before the first
            # that waits for a predecessor (withheld?), so the next sync reads it again.
            first_waiting = min((seq for seq, op in ops if op.id.hex() in stuck), default=None)
            cursor = page.cursor if first_waiting is None else max(cursor, first_waiting - 1)
            if first_waiting is not None:
                waiting_pages += 1
                if waiting_pages >= MAX_WAITING_PAGES or page.cursor >= page.last_seq:
                    break
            elif page.cursor >= page.last_seq:
                break
        report.cursor = cursor
        with self.storage.write() as conn:
            conn.execute("UPDATE team_relays SET pulled_seq = ? WHERE graph = ?", (cursor, graph))

    def _record(self, graph: bytes, report: TeamSyncReport) -> None:
        with self.storage.write() as conn:
            conn.execute("UPDATE team_relays SET synced_at = ?, last_error = ? WHERE graph = ?",
                         (now_ms(), report.error, graph))
        for op, reason in report.refused:
            log.warning("relay sync of %s refused op %s: %s", report.team, op, reason)


def membership_now(conn: sqlite3.Connection, graph: bytes) -> team.Membership:
    """A shared scope's membership as of every op of it held here (its heads)."""
    heads = [found for (hid,) in conn.execute("SELECT id FROM heads WHERE graph = ?", (graph,))
             if (found := node(conn, hid)) is not None]
    return membership_at(conn, graph, heads)


def may_write(conn: sqlite3.Connection, scope: str, device: bytes) -> bool:
    """True unless ``scope`` is a shared scope in which this device's ops would be refused (not a writer
    there, as of what is held here): background work (the merger's scans) leaves such scopes alone."""
    if not scope.startswith(team.SCOPE_PREFIX):
        return True
    try:
        graph = team_graph(conn, scope[len(team.SCOPE_PREFIX):])
    except InvalidInput:  # not held here, or ambiguous: nothing to write in it
        return False
    return membership_now(conn, graph).role_of_device(device) in team.WRITE_ROLES


def hex32(text: object, name: str, hint: str = "must be 64 hex characters") -> bytes:
    """32 bytes given as 64 hex characters (a key, a shared scope's id), or :class:`InvalidInput` naming ``name``."""
    try:
        raw = bytes.fromhex(text.strip()) if isinstance(text, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise InvalidInput(name, hint)
    return raw
