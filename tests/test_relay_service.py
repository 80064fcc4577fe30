"""The relay service over HTTP on a real PostgreSQL (``pgcluster.py``): a relay app in a uvicorn thread on
127.0.0.1 per test, driven by :class:`RelayClient` and by hand-made requests; two ``neuralsync relay serve``
processes on one database at the end.

What it must show: register + push + pull; an op pushed twice stored once; a non-member gets nothing by
pull or stream and cannot push; a forged certificate, a tampered op, an op of another scope, an unsigned,
tampered or replayed request are refused while the rest goes on; the stream sends a member new ops live.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import pytest

psycopg = pytest.importorskip("psycopg")
uvicorn = pytest.importorskip("uvicorn")


from neuralsync.errors import SyncRejected  # noqa: E402
from neuralsync.model import Op  # noqa: E402
from neuralsync.oplog import codec, team  # noqa: E402
from neuralsync.relay.store import RelayStore  # noqa: E402
from neuralsync.replication.relay_client import RelayClient, StreamPage  # noqa: E402
from neuralsync.replication.signing import sign_request  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import pgcluster  # noqa: E402
from _relay import serving  # noqa: E402

pytestmark = pytest.mark.skipif(pgcluster.bindir() is None, reason="PostgreSQL is not installed "
                                "(.ci/run installs Debian's postgresql)")

ALICE, BOB, CAROL = (nacl.signing.SigningKey(bytes([n]) * 32) for n in (11, 12, 13))
ALICE_DEV, ALICE_DEV2, BOB_DEV, CAROL_DEV = (nacl.signing.SigningKey(bytes([n]) * 32) for n in (21, 22, 23, 24))
RELAY_KEY = nacl.signing.SigningKey(bytes([99]) * 32)
HLC = 1 << 40


def pub(key: nacl.signing.SigningKey) -> bytes:
    return bytes(key.verify_key)


class Team:
    """A shared scope made by ``user`` through ``device``, and ops in its graph."""

    def __init__(self, user: nacl.signing.SigningKey, device: nacl.signing.SigningKey, name: str = "eng") -> None:
        nonce = name.encode().ljust(16, b".")[:16]
        self.id = team.scope_id_for(pub(user), name, nonce)
        self.root = codec.make_op(device, "team_create", self.id.hex(),
                                  {"user": pub(user), "name": name, "nonce": nonce,
                                   "cert": team.certify_device(user, pub(device))}, HLC, (), graph=self.id)
        self.clock = HLC

    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    def member(self, admin_device: nacl.signing.SigningKey, user: nacl.signing.SigningKey, role: str) -> Op:
        return codec.make_op(admin_device, "team_member", pub(user).hex(), {"user": pub(user), "role": role},
                             self._tick(), (self.root.id,), graph=self.id)

    def facts(self, device: nacl.signing.SigningKey, count: int, start: int = 0) -> list[Op]:
        return [codec.make_op(device, "create", f"{self.id.hex()[:8]}{n:024x}",
                              {"content": f"team fact {n}", "scope": "team", "kind": "fact", "priority": 0.5,
                               "confidence": 0.5}, self._tick(), (self.root.id,), graph=self.id)
                for n in range(start, start + count)]


class LiveRelay:
    def __init__(self, url: str, store: RelayStore) -> None:
        self.url, self.store = url, store

    def client(self, device: nacl.signing.SigningKey, timeout: float = 10.0) -> RelayClient:
        return RelayClient(self.url, pub(RELAY_KEY), device, timeout=timeout)


@pytest.fixture(scope="module")
def cluster() -> Iterator[pgcluster.Cluster]:
    with pgcluster.cluster() as running:
        yield running


@pytest.fixture
def relay(cluster: pgcluster.Cluster) -> Iterator[LiveRelay]:
    with serving(cluster, RELAY_KEY) as (url, store):
        yield LiveRelay(url, store)


def _ids(page: StreamPage) -> list[bytes]:
    return [codec.op_from_wire(op).id for op in page.ops]  # the client's side verifies every op


def _registered(live: LiveRelay, *pairs: tuple[nacl.signing.SigningKey, nacl.signing.SigningKey]) -> list[RelayClient]:
    clients = []
    for user, device in pairs:
        client = live.client(device)
        assert client.register(user) == {"device": pub(device).hex(), "user": pub(user).hex()}
        clients.append(client)
    return clients


def test_register_push_pull_and_an_op_pushed_twice_is_stored_once(relay: LiveRelay) -> None:
    alice, alice2 = _registered(relay, (ALICE, ALICE_DEV), (ALICE, ALICE_DEV2))
    eng = Team(ALICE, ALICE_DEV)
    ops = [eng.root, *eng.facts(ALICE_DEV, 4)]
    (first,) = alice.push(eng.id, ops[:3])
    assert (first["stored"], first["duplicates"], first["created"], first["refused"]) == (3, 0, True, [])
    (again,) = alice2.push(eng.id, ops)  # the user's other device: the two already there are not stored again
    assert (again["stored"], again["duplicates"], again["last_seq"]) == (2, 3, 5)
    page = alice2.pull(eng.id)
    assert _ids(page) == [op.id for op in ops] and [o["seq"] for o in page.ops] == [1, 2, 3, 4, 5]
    assert (page.cursor, page.last_seq) == (5, 5)
    assert _ids(alice.pull(eng.id, after=3, limit=1)) == [ops[3].id]
    assert alice.scopes() == [{"scope": eng.id.hex(), "role": "admin", "last_seq": 5}]
    with relay.store._owner() as conn:  # stored once, whatever the pushes
        assert conn.execute("SELECT count(*) FROM relay_ops").fetchone() == (5,)


def test_a_non_member_gets_nothing_by_pull_or_stream_and_cannot_push(relay: LiveRelay) -> None:
    alice, bob = _registered(relay, (ALICE, ALICE_DEV), (BOB, BOB_DEV))
    eng = Team(ALICE, ALICE_DEV)
    alice.push(eng.id, [eng.root, *eng.facts(ALICE_DEV, 2)])
    for attempt in (lambda: bob.pull(eng.id), lambda: list(bob.stream(eng.id)),
                    lambda: bob.push(eng.id, eng.facts(BOB_DEV, 1, start=50))):
        with pytest.raises(SyncRejected) as refused:
            attempt()
        assert refused.value.status == 403 and refused.value.field == "scope"
    # Bob's own scope, made with Eng's name, is another scope: his root cannot take Alice's id
    squat = Team(BOB, BOB_DEV)
    (report,) = bob.push(eng.id, [squat.root])
    assert report["stored"] == 0 and "another scope" in report["refused"][0]["reason"]
    assert bob.scopes() == []
    # Alice (admin in the relay's table) makes him a writer by a membership op; then removes him.
    grant = eng.member(ALICE_DEV, BOB, "writer")
    alice.push(eng.id, [grant])
    assert len(bob.pull(eng.id).ops) == 4
    assert bob.push(eng.id, eng.facts(BOB_DEV, 1, start=60))[0]["stored"] == 1
    removal = eng.member(ALICE_DEV, BOB, "removed")
    alice.push(eng.id, [removal])
    with pytest.raises(SyncRejected):
        bob.pull(eng.id, after=4)
    # A reader reads but cannot push; a writer's membership op (not an admin's) is stored for replicas to judge
    # and changes nothing in the relay's table.
    alice.push(eng.id, [eng.member(ALICE_DEV, CAROL, "reader")])
    (carol,) = _registered(relay, (CAROL, CAROL_DEV))
    assert len(carol.pull(eng.id).ops) == 7
    with pytest.raises(SyncRejected):
        carol.push(eng.id, eng.facts(CAROL_DEV, 1, start=70))
    alice.push(eng.id, [eng.member(ALICE_DEV, CAROL, "writer")])
    (sneaky,) = carol.push(eng.id, [eng.member(CAROL_DEV, BOB, "admin")])
    assert (sneaky["stored"], sneaky["members_changed"]) == (1, 0)
    with pytest.raises(SyncRejected):
        bob.pull(eng.id)
    # An old grant pushed again after the removal does not bring Bob back (the latest op per user wins).
    alice.push(eng.id, [grant])
    with pytest.raises(SyncRejected):
        bob.pull(eng.id)


def test_bad_ops_are_refused_with_their_reason_and_the_rest_is_stored(relay: LiveRelay) -> None:
    (alice,) = _registered(relay, (ALICE, ALICE_DEV))
    eng, other = Team(ALICE, ALICE_DEV), Team(ALICE, ALICE_DEV, name="ops")
    alice.push(eng.id, [eng.root])
    alice.push(other.id, [other.root])
    good = eng.facts(ALICE_DEV, 3)
    tampered = codec.op_to_wire(good[1])
    body = bytearray(base64.b64decode(tampered["body"]))
    body[body.index(b"team fact 1")] = ord("T")
    tampered["body"] = base64.b64encode(bytes(body)).decode()
    forged_sig = {**codec.op_to_wire(good[2]), "sig": base64.b64encode(bytes(64)).decode()}
    batch = [codec.op_to_wire(good[0]), tampered, codec.op_to_wire(other.facts(ALICE_DEV, 1)[0]), forged_sig,
             {"body": 5}, codec.op_to_wire(good[2])]
    (report,) = alice.push(eng.id, batch)
    reasons = {r["index"]: r["reason"] for r in report["refused"]}
    assert report["stored"] == 2 and set(reasons) == {1, 2, 3, 4}
    assert "hash" in reasons[1] and "another scope" in reasons[2] and "signature" in reasons[3]
    assert "body" in reasons[4]
    assert _ids(alice.pull(eng.id)) == [eng.root.id, good[0].id, good[2].id]
    with pytest.raises(SyncRejected) as refused:
        alice.push_batch(eng.id, [codec.op_to_wire(good[0])] * 1001)
    assert (refused.value.status, refused.value.field) == (413, "ops")


def test_forged_certificates_and_bad_requests_are_refused(relay: LiveRelay) -> None:
    (alice,) = _registered(relay, (ALICE, ALICE_DEV))
    eng = Team(ALICE, ALICE_DEV)
    alice.push(eng.id, [eng.root])
    # Bob's device claims to be Alice's: the certificate is Bob's signature, not Alice's.
    forged = {"user": pub(ALICE).hex(), "certificate": team.certify_device(BOB, pub(BOB_DEV)).hex()}
    status, answer = _raw(relay.url, "POST", "/relay/v1/devices", BOB_DEV, json.dumps(forged).encode())
    assert status == 403 and answer["error"]["field"] == "certificate"
    with pytest.raises(SyncRejected) as refused:
        relay.client(BOB_DEV).pull(eng.id)
    assert (refused.value.status, refused.value.field) == (403, "X-Neuralsync-Key")  # never registered
    path = f"/relay/v1/scopes/{eng.id.hex()}/ops"
    assert _raw(relay.url, "GET", path, None)[1]["error"]["field"] == "X-Neuralsync-Key"  # unsigned
    headers = sign_request(ALICE_DEV, pub(RELAY_KEY), b"")
    assert _raw(relay.url, "GET", path, headers=headers)[0] == 200
    status, answer = _raw(relay.url, "GET", path, headers=headers)  # the same request again
    assert (status, answer["error"]["field"]) == (401, "X-Neuralsync-Nonce")
    body = json.dumps({"ops": [codec.op_to_wire(eng.facts(ALICE_DEV, 1)[0])]}).encode()
    headers = sign_request(ALICE_DEV, pub(RELAY_KEY), body)
    status, answer = _raw(relay.url, "POST", f"/relay/v1/scopes/{eng.id.hex()}/push", body=body.replace(b"ops", b"OPS"),
                          headers=headers)  # the body changed after signing
    assert (status, answer["error"]["field"]) == (401, "X-Neuralsync-Signature")
    other_relay = sign_request(ALICE_DEV, bytes(32), b"")  # signed for another relay's key
    assert _raw(relay.url, "GET", path, headers=other_relay)[0] == 401
    status, answer = _raw(relay.url, "GET", f"/relay/v1/scopes/{eng.id.hex()[:-2]}/ops", ALICE_DEV)
    assert (status, answer["error"]["field"]) == (400, "scope")
    status, answer = _raw(relay.url, "GET", f"/relay/v1/scopes/{eng.id.hex()}/ops?limit=0", ALICE_DEV)
    assert (status, answer["error"]["field"]) == (400, "limit")
    status, answer = _raw(relay.url, "POST", f"/relay/v1/scopes/{eng.id.hex()}/push", ALICE_DEV, b"[1]")
    assert (status, answer["error"]["field"]) == (400, "body")
    assert [o["seq"] for o in alice.pull(eng.id).ops] == [1]  # nothing of it was stored


def _raw(url: str, method: str, path: str, device: nacl.signing.SigningKey | None = None, body: bytes = b"",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    """A request by hand: signed by ``device``, or with the given headers, or unsigned."""
    if headers is None:
        headers = sign_request(device, pub(RELAY_KEY), body) if device is not None else {}
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _follow(client: RelayClient, scope: bytes, after: int, pages: queue.Queue[StreamPage | BaseException]) -> None:
    try:
        for page in client.stream(scope, after, timeout=20):
            pages.put(page)
    except Exception as exc:  # noqa: BLE001 - handed to the test thread, which raises it
        pages.put(exc)


def _next(pages: queue.Queue[StreamPage | BaseException], timeout: float = 10) -> StreamPage:
    item = pages.get(timeout=timeout)
    if isinstance(item, BaseException):
        raise item
    return item


def test_the_stream_sends_members_new_ops_live_and_others_nothing(relay: LiveRelay) -> None:
    alice, bob, carol = _registered(relay, (ALICE, ALICE_DEV), (BOB, BOB_DEV), (CAROL, CAROL_DEV))
    eng, own = Team(ALICE, ALICE_DEV), Team(CAROL, CAROL_DEV, name="carols")
    alice.push(eng.id, [eng.root, eng.member(ALICE_DEV, BOB, "writer")])
    carol.push(own.id, [own.root])
    alice_pages: queue.Queue[StreamPage | BaseException] = queue.Queue()
    carol_pages: queue.Queue[StreamPage | BaseException] = queue.Queue()
    threading.Thread(target=_follow, args=(relay.client(ALICE_DEV, 20), eng.id, 0, alice_pages), daemon=True).start()
    threading.Thread(target=_follow, args=(relay.client(CAROL_DEV, 20), own.id, 1, carol_pages),
                     daemon=True).start()
    assert _next(alice_pages).cursor == 2  # what was there: sent at once
    facts = eng.facts(BOB_DEV, 3)
    started = time.monotonic()
    bob.push(eng.id, facts)  # through the same relay; another relay on the database works alike (below)
    live = _next(alice_pages)
    print(f"stream delivered a push in {time.monotonic() - started:.3f} s")
    assert _ids(live) == [op.id for op in facts] and live.cursor == 5
    with pytest.raises(SyncRejected) as refused:  # Carol, no member of Eng, cannot open its stream
        next(relay.client(CAROL_DEV).stream(eng.id))
    assert refused.value.status == 403
    mine = own.facts(CAROL_DEV, 1)
    carol.push(own.id, mine)
    assert _ids(_next(carol_pages)) == [mine[0].id]  # her own scope's op
    assert carol_pages.empty()  # and none of Eng's, pushed meanwhile
    # Revoked mid-stream: Bob's open stream ends without sending what was written after the removal.
    bob_pages: queue.Queue[StreamPage | BaseException] = queue.Queue()
    threading.Thread(target=_follow, args=(relay.client(BOB_DEV, 20), eng.id, 5, bob_pages), daemon=True).start()
    time.sleep(0.3)
    alice.push(eng.id, [eng.member(ALICE_DEV, BOB, "removed"), *eng.facts(ALICE_DEV, 2, start=90)])
    with pytest.raises(SyncRejected):
        _next(bob_pages)


def test_two_relay_processes_on_one_database_work_together(cluster: pgcluster.Cluster, tmp_path: Path) -> None:
    db = cluster.new_database()
    home = tmp_path / "relay-home"
    migrated = subprocess.run([sys.executable, "-m", "neuralsync", "relay", "migrate", "--db", db, "--json"],
                              capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(migrated.stdout) == {"applied": 2, "version": 2}
    relays = [_start_relay(db, home) for _ in range(2)]
    try:
        (url_a, key_a), (url_b, key_b) = relays[0][1:], relays[1][1:]
        assert key_a == key_b and oct((home / "relay.key").stat().st_mode & 0o777) == "0o600"
        a = RelayClient(url_a, key_a, ALICE_DEV, timeout=10)
        b_alice = RelayClient(url_b, key_b, ALICE_DEV, timeout=10)
        b_bob = RelayClient(url_b, key_b, BOB_DEV, timeout=10)
        a.register(ALICE)
        b_bob.register(BOB)
        eng = Team(ALICE, ALICE_DEV)
        member = eng.member(ALICE_DEV, BOB, "writer")
        a.push(eng.id, [eng.root, member])
        pages: queue.Queue[StreamPage | BaseException] = queue.Queue()
        threading.Thread(target=_follow, args=(RelayClient(url_b, key_b, BOB_DEV, 20), eng.id, 2, pages),
                         daemon=True).start()
        time.sleep(0.5)
        facts = eng.facts(ALICE_DEV, 3)
        a.push(eng.id, facts)  # pushed to A, streamed live by B's own LISTEN connection
        assert _ids(_next(pages)) == [op.id for op in facts]
        assert _ids(b_alice.pull(eng.id)) == [eng.root.id, member.id, *(op.id for op in facts)]
        headers = sign_request(ALICE_DEV, key_a, b"")
        path = f"/relay/v1/scopes/{eng.id.hex()}/ops"
        assert _raw(url_a, "GET", path, headers=headers)[0] == 200
        status, answer = _raw(url_b, "GET", path, headers=headers)  # replayed to the other process
        assert (status, answer["error"]["field"]) == (401, "X-Neuralsync-Nonce")
    finally:
        for process, _, _ in relays:
            process.terminate()
            process.wait(10)


def _start_relay(db: str, home: Path) -> tuple[subprocess.Popen[str], str, bytes]:
    port = pgcluster.free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "neuralsync", "relay", "serve", "--db", db, "--port", str(port),
                                "--relay-home", str(home), "--log-level", "warning"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    listening, key_line = process.stdout.readline(), process.stdout.readline()
    assert f"http://127.0.0.1:{port}/relay/v1" in listening, process.stderr.read() if process.stderr else ""
    key = bytes.fromhex(re.sub(r"^relay public key: ", "", key_line.strip()))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.05)
    return process, f"http://127.0.0.1:{port}", key
