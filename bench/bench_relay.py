"""Benchmark of the team relay (issue 17): push and pull throughput and per-batch latency on PostgreSQL.

    python bench/bench_relay.py --quick              # 20,000 ops in 20 scopes (about a minute)
    python bench/bench_relay.py                      # 1,000,000 ops in 100 scopes
    python bench/bench_relay.py --ops 200000 --scopes 100 --batch 500 --http-ops 20000

Data: ``--scopes`` shared scopes, each created by one of ``--users`` users (one device each) with a
``team_create`` root; the other users are added as writers by ``team_member`` ops; then ``--ops`` signed
memory ops (``create``, ~450-byte bodies, each op's predecessor the scope's previous op) spread evenly over
the scopes, written by the scope's members in turn. All ops are generated and signed first (timed apart).

1. Push through the service layer (``Relay.push``: every op parsed and its signature verified, then stored
   as the pushing device's user under row-level security): batches of ``--batch`` ops, scopes taken in
   turn; throughput (ops/s) and the per-batch latency p50/p99/max.
2. Pull through the service layer (``Relay.pull`` by cursor, ``--batch`` ops a page, as a member that did
   not write the scope's root): every op of every scope; throughput and per-page latency.
3. Over HTTP, a sample: ``neuralsync relay serve`` in a subprocess on 127.0.0.1, :class:`RelayClient`
   pushing ``--http-ops`` new ops (signed requests, signed answers) in batches, then pulling them back.

PostgreSQL: a throwaway cluster on loopback (``tests/pgcluster.py``: fsync off, 32 MB shared buffers), or
``--db URL`` (an owner role with CREATEROLE on an empty database). It runs on the same machine, so its CPU
competes with the benchmark's: the figures are for the whole system. Results: ``<out>/relay.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nacl.signing

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from benchlib import free_port, load_average, log, machine, peak_rss_mb, summary  # noqa: E402

from neuralsync.model import Op  # noqa: E402
from neuralsync.oplog import codec, team  # noqa: E402
from neuralsync.relay.service import Relay  # noqa: E402
from neuralsync.relay.store import RelayStore  # noqa: E402
from neuralsync.replication.relay_client import RelayClient  # noqa: E402

HLC0 = 1 << 44


class Scope:
    def __init__(self, number: int, users: list[nacl.signing.SigningKey], devices: list[nacl.signing.SigningKey]):
        self.owner = number % len(users)
        user, device = users[self.owner], devices[self.owner]
        name = f"bench-{number}"
        nonce = number.to_bytes(16, "big")
        self.id = team.scope_id_for(bytes(user.verify_key), name, nonce)
        self.clock = HLC0
        self.root = codec.make_op(device, "team_create", self.id.hex(),
                                  {"user": bytes(user.verify_key), "name": name, "nonce": nonce,
                                   "cert": team.certify_device(user, bytes(device.verify_key))},
                                  self.clock, (), graph=self.id)
        self.head = self.root.id
        self.members = [self._tick_op(devices[self.owner], "team_member", bytes(u.verify_key).hex(),
                                      {"user": bytes(u.verify_key), "role": "writer"})
                        for i, u in enumerate(users) if i != self.owner]
        self.reader = devices[(self.owner + 1) % len(devices)]

    def _tick_op(self, device: nacl.signing.SigningKey, kind: str, record: str, fields: dict[str, Any]) -> Op:
        self.clock += 1
        op = codec.make_op(device, kind, record, fields, self.clock, (self.head,), graph=self.id)
        self.head = op.id
        return op

    def fact(self, device: nacl.signing.SigningKey, n: int) -> Op:
        return self._tick_op(device, "create", f"{self.id.hex()[:8]}{n:024x}",
                             {"content": f"shared fact {n}: " + "the build runs on the team's runners " * 3,
                              "scope": "team", "kind": "fact", "priority": 0.5, "confidence": 0.8,
                              "tags": ["bench", "relay"]})


Made = dict[bytes, list[tuple[nacl.signing.SigningKey, dict[str, str]]]]


def generate(scopes: list[Scope], devices: list[nacl.signing.SigningKey], ops: int, start: int = 0) -> Made:
    """Per scope, (pushing device, op in wire form) in order; the device is the op's author. Only the wire form
    is kept (id, body, signature: what ``codec.op_from_wire`` reads), so a million ops fit in about 1 GB."""
    made: Made = {s.id: [] for s in scopes}
    for n in range(start, start + ops):
        scope = scopes[n % len(scopes)]
        device = devices[(scope.owner + n // len(scopes)) % len(devices)]
        wire = codec.op_to_wire(scope.fact(device, n))
        made[scope.id].append((device, {"id": wire["id"], "body": wire["body"], "sig": wire["sig"]}))
    return made


def batches(made: Made, size: int) -> Iterator[tuple[bytes, nacl.signing.SigningKey, list[dict[str, str]]]]:
    """Batches of one scope and one pushing device, scopes taken in turn (as many devices push at once)."""
    cursors = {scope: 0 for scope in made}
    while cursors:
        for scope in list(cursors):
            at = cursors[scope]
            chunk = made[scope][at:at + size]
            if not chunk:
                del cursors[scope]
                continue
            cursors[scope] = at + len(chunk)
            yield scope, chunk[0][0], [op for _, op in chunk]


@contextmanager
def database(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    import pgcluster

    with pgcluster.cluster() as cluster:
        yield cluster.new_database()


def setup(relay: Relay, scopes: list[Scope], users: list[nacl.signing.SigningKey],
          devices: list[nacl.signing.SigningKey]) -> None:
    for user, device in zip(users, devices, strict=True):
        relay.register(bytes(user.verify_key), bytes(device.verify_key),
                       team.certify_device(user, bytes(device.verify_key)))
    for scope in scopes:
        report = relay.push(bytes(devices[scope.owner].verify_key), scope.id,
                            [codec.op_to_wire(op) for op in (scope.root, *scope.members)])
        assert report.stored == 1 + len(scope.members) and not report.refused, report


def push_all(relay: Relay, made: Made, size: int) -> dict[str, Any]:
    durations: list[int] = []
    stored = 0
    gc.collect()
    cpu0, start = time.process_time(), time.perf_counter()
    for scope, device, ops in batches(made, size):
        t0 = time.perf_counter_ns()
        report = relay.push(bytes(device.verify_key), scope, ops)  # the wire form, as decoded from JSON
        durations.append(time.perf_counter_ns() - t0)
        if report.refused or report.stored != len(ops):
            raise SystemExit(f"push refused: {report}")
        stored += report.stored
        if len(durations) % 200 == 0:
            log(f"  pushed {stored:,} ops ({stored / (time.perf_counter() - start):,.0f} ops/s)")
    seconds = time.perf_counter() - start
    return {"ops": stored, "batches": len(durations), "seconds": round(seconds, 2),
            "ops_per_s": round(stored / seconds), "batch_ms": summary(durations),
            "client_cpu_s": round(time.process_time() - cpu0, 1), "load_after": load_average()}


def pull_pages(pull: Callable[[int], Any], cursor: int, durations: list[int]) -> int:
    """Pull one scope's pages from ``cursor`` to its last op (``pull(cursor)`` is one page), timing each
    call into ``durations``; returns how many ops came."""
    pulled = 0
    while True:
        t0 = time.perf_counter_ns()
        page = pull(cursor)
        durations.append(time.perf_counter_ns() - t0)
        pulled += len(page.ops)
        if page.cursor >= page.last_seq:
            return pulled
        cursor = page.cursor


def pull_all(relay: Relay, scopes: list[Scope], size: int) -> dict[str, Any]:
    durations: list[int] = []
    pulled = 0
    gc.collect()
    cpu0, start = time.process_time(), time.perf_counter()
    for scope in scopes:
        reader = bytes(scope.reader.verify_key)
        pulled += pull_pages(lambda at: relay.pull(reader, scope.id, at, size), 0, durations)  # noqa: B023
    seconds = time.perf_counter() - start
    return {"ops": pulled, "pages": len(durations), "seconds": round(seconds, 2), "ops_per_s": round(pulled / seconds),
            "page_ms": summary(durations), "client_cpu_s": round(time.process_time() - cpu0, 1),
            "load_after": load_average()}


def over_http(db: str, home: Path, scopes: list[Scope], devices: list[nacl.signing.SigningKey], ops: int,
              size: int, start: int) -> dict[str, Any]:
    """A sample through ``neuralsync relay serve`` and :class:`RelayClient` (new ops in the same scopes)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "neuralsync", "relay", "serve", "--db", db, "--port", str(port),
                               "--relay-home", str(home), "--log-level", "warning"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        server.stdout.readline()
        relay_key = bytes.fromhex(server.stdout.readline().split(":")[1].strip())
        url = f"http://127.0.0.1:{port}"
        _wait_for(port)
        clients = {bytes(d.verify_key): RelayClient(url, relay_key, d, timeout=120) for d in devices}
        made = generate(scopes, devices, ops, start)
        durations: list[int] = []
        begin = time.perf_counter()
        for scope, device, batch in batches(made, size):
            t0 = time.perf_counter_ns()
            (report,) = clients[bytes(device.verify_key)].push(scope, batch, batch=size)
            durations.append(time.perf_counter_ns() - t0)
            assert report["stored"] == len(batch) and not report["refused"], report
        push_s = time.perf_counter() - begin
        pull_durations: list[int] = []
        pulled = 0
        begin = time.perf_counter()
        for scope in scopes:
            client = clients[bytes(scope.reader.verify_key)]
            cursor = _seq_before(client, scope.id, len(made[scope.id]))
            pulled += pull_pages(lambda at: client.pull(scope.id, at, size), cursor, pull_durations)  # noqa: B023
        pull_s = time.perf_counter() - begin
        return {"ops": ops, "push": {"seconds": round(push_s, 2), "ops_per_s": round(ops / push_s),
                                     "batch_ms": summary(durations)},
                "pull": {"ops": pulled, "seconds": round(pull_s, 2), "ops_per_s": round(pulled / pull_s),
                         "page_ms": summary(pull_durations)}, "load_after": load_average()}
    finally:
        server.terminate()
        server.wait(20)


def _seq_before(client: RelayClient, scope: bytes, count: int) -> int:
    """The cursor just before the last ``count`` ops of the scope (the ones this sample pushed)."""
    return max(0, client.pull(scope, 0, 1).last_seq - count)


def _wait_for(port: int) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the relay did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=1_000_000)
    parser.add_argument("--scopes", type=int, default=100)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--http-ops", type=int, default=20_000)
    parser.add_argument("--db", help="PostgreSQL connection string (default: a throwaway cluster on loopback)")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--quick", action="store_true", help="20,000 ops in 20 scopes, 2,000 over HTTP")
    args = parser.parse_args()
    if args.quick:
        args.ops, args.scopes, args.http_ops = 20_000, 20, 2_000
    args.out.mkdir(parents=True, exist_ok=True)
    users = [nacl.signing.SigningKey(bytes([1, n]) * 16) for n in range(args.users)]
    devices = [nacl.signing.SigningKey(bytes([2, n]) * 16) for n in range(args.users)]
    result: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine(), "load_before": load_average(),
                              "params": {k: v for k, v in vars(args).items() if k not in ("db", "out")}}
    log(f"generating {args.ops:,} signed ops in {args.scopes} scopes (load {load_average()})")
    t0 = time.perf_counter()
    scopes = [Scope(n, users, devices) for n in range(args.scopes)]
    made = generate(scopes, devices, args.ops)
    result["generate"] = {"seconds": round(time.perf_counter() - t0, 1),
                          "ops_per_s": round(args.ops / (time.perf_counter() - t0))}
    log(f"  {result['generate']}")
    with database(args.db) as db:
        store = RelayStore(db)
        store.migrate()
        relay = Relay(store, nacl.signing.SigningKey.generate())
        setup(relay, scopes, users, devices)
        log("push through the service layer")
        result["push_service"] = push_all(relay, made, args.batch)
        log(f"  {result['push_service']}")
        del made
        log("pull through the service layer")
        result["pull_service"] = pull_all(relay, scopes, args.batch)
        log(f"  {result['pull_service']}")
        with store._owner() as conn:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        result["database_mb"] = round(int(size[0]) / 2**20, 1) if size else None
        if args.http_ops:
            log(f"over HTTP: {args.http_ops:,} more ops through 'neuralsync relay serve'")
            home = args.out / f"relay-home-{os.getpid()}"
            result["http_sample"] = over_http(db, home, scopes, devices, args.http_ops, args.batch, args.ops)
            log(f"  {result['http_sample']}")
    result["peak_rss_mb"] = peak_rss_mb()
    result["load_after"] = load_average()
    name = "relay-quick.json" if args.quick else "relay.json"
    (args.out / name).write_text(json.dumps(result, indent=2))
    log(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()

