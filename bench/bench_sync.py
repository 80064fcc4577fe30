"""Benchmark of replication: full and incremental sync between replicas, over HTTP and in-process.

Builds a source replica of ``--ops`` memories (one signed op each, seeded
corpus from ``corpus.py``, ``remember()`` in ``batch_operations()``,
embedder ``none``), then measures with the public ``UnifiedMemoryAPI``:

    python bench/bench_sync.py --quick          # 5,000 ops, smoke run (well under a minute)
    python bench/bench_sync.py                  # 100,000 ops
    python bench/bench_sync.py --ops 20000 --new 500 --rounds 10

1. full sync of every op to a fresh replica (``api.sync("src")``):
   - over HTTP: the source is served by a server subprocess on a free
     127.0.0.1 port (``neuralsync.server.run``); the fresh replica syncs from
     the benchmark process through ``HttpTransport``;
   - in-process: the same sync to another fresh replica through a direct
     transport (the request is signed and answered by the source's
     ``replication.serve`` in this process, no HTTP), so the HTTP overhead shows;
2. incremental sync: after the full sync, ``--rounds`` times ``--new`` new
   memories on each side, then one sync; round trips, bytes and ops each way
   per round, median and max (over HTTP, then in-process after a catch-up
   sync of what the HTTP rounds added to the source).

Bytes are the JSON bodies of the sync messages (``SyncReport.bytes_sent`` /
``bytes_received``), without HTTP headers. "in transport" is the time spent
inside the transport call (the server's work + the wire); the rest of a sync
is the client's own work (applying received ops, choosing what to send).
CPU seconds: the benchmark process (client, and in-process also the server
side) and, over HTTP, the server process (from ``/proc``, Linux only).

By default the server runs with ``embedder="none"`` like the replicas here
(``--server-embedder none``: ``serve()`` of ``neuralsync.server.run`` with that
config). ``--server-embedder default`` starts the plain
``python -m neuralsync.server.run --home SRC`` command, whose default embedder
(wordllama) embeds the source's unembedded memories in a background thread
15 s after start, competing with the sync for CPU.

Stores live under ``<out>/sync-<ops>/`` (``bench/out/`` is ignored by git) and
are rebuilt on every run; results go to ``<out>/sync.json`` (``--quick``:
``<out>/sync-quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import config, free_port, ingest_batches, load_average, log, machine, peak_rss_mb, server_process
from corpus import Corpus

from neuralsync import UnifiedMemoryAPI
from neuralsync.errors import SyncRejected
from neuralsync.replication.peers import Peer
from neuralsync.replication.protocol import SyncReport
from neuralsync.replication.replica import Replica
from neuralsync.replication.service import Replication
from neuralsync.replication.signing import NONCE_HEADER, SIGNATURE_HEADER, sign_request, verify_reply
from neuralsync.replication.transport import HttpTransport

BENCH_VERSION = 1
START_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 120.0
UNUSED_URL = "http://127.0.0.1:9"  # the source never calls its clients back; a peer still needs a URL
SERVER_WITH_NO_EMBEDDER = (
    "import sys\n"
    "from neuralsync.config import MemoryConfig\n"
    "from neuralsync.server.run import serve\n"
    "serve(MemoryConfig.from_env(sys.argv[1], embedder='none'), '127.0.0.1', int(sys.argv[2]),"
    " log_level='warning')\n"
)


# ---------------------------------------------------------------- transports
class Timed:
    """Wraps a transport; adds up the seconds spent inside it (the server's work + the wire)."""

    def __init__(self, inner: Callable[[bytes], bytes]) -> None:
        self.inner = inner
        self.seconds = 0.0

    def __call__(self, body: bytes) -> bytes:
        start = time.perf_counter()
        try:
            return self.inner(body)
        finally:
            self.seconds += time.perf_counter() - start


class DirectTransport:
    """The HTTP transport without HTTP: sign, let the source's ``replication.serve`` answer, check the answer."""

    def __init__(self, source: Replication, client: UnifiedMemoryAPI, peer: Peer) -> None:
        self.source = source
        self.key = client.log.key
        self.peer = peer

    def __call__(self, body: bytes) -> bytes:
        headers = sign_request(self.key, self.peer.key, body)
        status, answer, answer_headers = self.source.serve(headers, body)
        if status != 200:
            raise SyncRejected(f"the source refused the sync ({status}): {answer[:500]!r}")
        verify_reply(self.peer.key, headers[NONCE_HEADER], answer, answer_headers.get(SIGNATURE_HEADER))
        return answer


# ---------------------------------------------------------------- the server
@contextmanager
def running_server(home: Path, port: int, embedder: str, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server subprocess on 127.0.0.1:``port`` for the block; always stopped (terminate, then kill)."""
    if embedder == "none":
        command = [sys.executable, "-c", SERVER_WITH_NO_EMBEDDER, str(home), str(port)]
    else:
        command = [sys.executable, "-m", "neuralsync.server.run", "--home", str(home), "--host", "127.0.0.1",
                   "--port", str(port), "--log-level", "warning"]
    env = {k: v for k, v in os.environ.items() if k not in ("NS_TOKEN", "NS_HOST", "NS_PORT", "NS_ENDPOINT")}
    with open(log_path, "wb") as server_log:
        try:
            with server_process(command, f"http://127.0.0.1:{port}", env, server_log, START_TIMEOUT_S) as process:
                yield process
        except SystemExit as exc:
            raise SystemExit(f"{exc}; its log:\n{log_path.read_text(errors='replace')[-2000:]}") from None


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


# ---------------------------------------------------------------- measurements
def timed_sync(client: UnifiedMemoryAPI, factory: Callable[[Peer], Callable[[bytes], bytes]],
               server_pid: int | None = None) -> dict[str, Any]:
    """One ``client.sync("src")`` through ``factory``'s transport; the report plus timings and CPU."""
    wrappers: list[Timed] = []

    def make(peer: Peer) -> Timed:
        wrappers.append(Timed(factory(peer)))
        return wrappers[-1]

    server_cpu = process_cpu_s(server_pid) if server_pid else None
    cpu = time.process_time()
    start = time.perf_counter()
    reports: list[SyncReport] = client.sync("src", transport=make)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    if server_cpu is not None and server_pid:
        after = process_cpu_s(server_pid)
        server_cpu = None if after is None else after - server_cpu
    report = reports[0]
    if not report.ok or report.error:
        raise SystemExit(f"sync failed: {report.error}")
    out = report.to_dict()
    out.update({
        "wall_s": round(wall, 3),
        "in_transport_s": round(sum(w.seconds for w in wrappers), 3),
        "client_s": round(wall - sum(w.seconds for w in wrappers), 3),
        "bench_cpu_s": round(cpu, 2),
        "server_cpu_s": None if server_cpu is None else round(server_cpu, 2),
    })
    return out


def check_converged(a: UnifiedMemoryAPI, b: UnifiedMemoryAPI, expected: int) -> None:
    """Both replicas hold the same heads and ``expected`` memories."""
    heads_a, heads_b = Replica(a.log).heads(), Replica(b.log).heads()
    count_a, count_b = a.reads.counts()["memories"], b.reads.counts()["memories"]
    if heads_a != heads_b or count_a != expected or count_b != expected:
        raise SystemExit(f"replicas differ after sync: {count_a:,} / {count_b:,} memories (expected {expected:,}),"
                         f" heads {'equal' if heads_a == heads_b else 'differ'}")


def add_memories(api: UnifiedMemoryAPI, corpus: Corpus, first: int, count: int) -> None:
    records = [Corpus.remember_args(r) for r in corpus.memories(first + count, first)]
    with api.batch_operations():
        for record in records:
            api.remember(**record)


def incremental(source: UnifiedMemoryAPI, client: UnifiedMemoryAPI,
                factory: Callable[[Peer], Callable[[bytes], bytes]], corpus: Corpus, first: int, new: int,
                rounds: int, label: str, server_pid: int | None = None) -> list[dict[str, Any]]:
    """``rounds`` times: ``new`` memories on each side, then one sync (only the sync is timed)."""
    out = []
    for number in range(1, rounds + 1):
        add_memories(source, corpus, first, new)
        add_memories(client, corpus, first + new, new)
        first += 2 * new
        expected = source.reads.counts()["memories"] + new
        result = timed_sync(client, factory, server_pid)
        check_converged(source, client, expected)
        result["round"] = number
        out.append(result)
        log(f"  {label} round {number}: {result['round_trips']} round trips, sent {result['sent']} ops"
            f" / {result['bytes_sent']:,} B, received {result['received']} ops / {result['bytes_received']:,} B,"
            f" {result['wall_s']:.3f} s")
    return out


def rounds_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def stat(key: str) -> dict[str, float]:
        values = [r[key] for r in rounds]
        return {"median": statistics.median(values), "max": max(values)}

    return {key: stat(key) for key in ("round_trips", "bytes_sent", "bytes_received", "sent", "received", "applied",
                                       "wall_s", "in_transport_s")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.out) / f"sync-{args.ops}"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    src_dir, http_dir, local_dir = root / "src", root / "dst-http", root / "dst-local"
    corpus = Corpus(seed=args.seed)
    result: dict[str, Any] = {"ops": args.ops, "new": args.new, "rounds": args.rounds, "store": str(root)}

    log(f"source: {args.ops:,} memories in batches of {args.batch:,} ...")
    with UnifiedMemoryAPI(config(src_dir, "none")) as src:
        per_batch, total_ns = ingest_batches(src, corpus, args.ops, args.batch, "built")
        src.storage.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        src_key = src.identity()
        counts = src.reads.counts()
        result["build"] = {"seconds": round(total_ns / 1e9, 2), "per_s": round(args.ops / (total_ns / 1e9), 1),
                           "ops_in_log": counts["ops"], "storage": src.get_system_stats()["storage"]}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    http_client = UnifiedMemoryAPI(config(http_dir, "none"))
    local_client = UnifiedMemoryAPI(config(local_dir, "none"))
    src = UnifiedMemoryAPI(config(src_dir, "none"))
    try:
        # Peers both ways: each client knows the source; the source knows both clients' keys.
        src.add_peer("dst-http", UNUSED_URL, http_client.identity())
        src.add_peer("dst-local", UNUSED_URL, local_client.identity())
        http_client.add_peer("src", url, src_key)
        local_client.add_peer("src", url, src_key)
        direct = lambda peer: DirectTransport(src.replication, local_client, peer)  # noqa: E731

        log(f"full sync in-process of {counts['ops']:,} ops ...")
        result["full_inprocess"] = timed_sync(local_client, direct)
        check_converged(src, local_client, args.ops)
        log(f"  {result['full_inprocess']['wall_s']:.2f} s, {result['full_inprocess']['round_trips']} round trips")
        src.close()  # the server owns the source during the HTTP sync

        log(f"full sync over HTTP from a server on {url} (server embedder {args.server_embedder!r}) ...")
        over_http = lambda peer: HttpTransport(http_client.log.key, peer, HTTP_TIMEOUT_S)  # noqa: E731
        with running_server(src_dir, port, args.server_embedder, root / "server.log") as server:
            result["full_http"] = timed_sync(http_client, over_http, server.pid)
            log(f"  {result['full_http']['wall_s']:.2f} s, {result['full_http']['round_trips']} round trips")
            # New memories on the source are written by this process while the server serves the store.
            src = UnifiedMemoryAPI(config(src_dir, "none"))
            check_converged(src, http_client, args.ops)
            first = args.ops + 1_000_000
            log(f"incremental over HTTP: {args.rounds} x (+{args.new} on each side, sync) ...")
            result["incremental_http"] = incremental(src, http_client, over_http, corpus, first, args.new,
                                                     args.rounds, "http", server.pid)
        first += 2 * args.new * args.rounds
        behind = src.reads.counts()["memories"] - local_client.reads.counts()["memories"]
        log(f"catch-up in-process ({behind:,} memories the HTTP rounds added) ...")
        result["catch_up_inprocess"] = timed_sync(local_client, direct)
        check_converged(src, local_client, src.reads.counts()["memories"])
        log(f"incremental in-process: {args.rounds} x (+{args.new} on each side, sync) ...")
        result["incremental_inprocess"] = incremental(src, local_client, direct, corpus, first, args.new,
                                                      args.rounds, "in-process")
    finally:
        for api in (src, http_client, local_client):
            api.close()
    result["incremental_http_summary"] = rounds_summary(result["incremental_http"])
    result["incremental_inprocess_summary"] = rounds_summary(result["incremental_inprocess"])
    return result


# ---------------------------------------------------------------- report
def mib(n: float) -> str:
    return f"{n / 2**20:,.2f} MiB" if n >= 2**20 else f"{n / 1024:,.1f} KiB"


def received(r: dict[str, Any]) -> str:
    """Ops received, and how many were new when some arrived twice (a Bloom false positive costs a round)."""
    return f"{r['received']}" + ("" if r["received"] == r["applied"] else f" ({r['applied']} new)")


def cpu_cell(r: dict[str, Any]) -> str:
    return f"{r['bench_cpu_s']:.1f}" + ("" if r["server_cpu_s"] is None else f" + {r['server_cpu_s']:.1f}")


def render(result: dict[str, Any], m: dict[str, Any]) -> str:
    lines = [
        f"## Sync: {result['ops']:,} ops; incremental {result['rounds']} x +{result['new']}/+{result['new']}",
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['memory_gb']} GiB; Python {m['python']};"
        f" SQLite {m['sqlite']}; {m['platform']}. Server embedder {result['server_embedder']!r}.",
        f"Source built at {result['build']['per_s']:,.0f} memories/s ({result['build']['seconds']:,.1f} s);"
        f" {result['build']['storage']['bytes_per_memory']:,.0f} B on disk per memory.",
        "",
        "| full sync to a fresh replica | ops | seconds | ops/s | round trips | bytes sent | bytes received"
        " | in transport s | client s | CPU s (bench + server) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, key in (("over HTTP (loopback)", "full_http"), ("in-process (no HTTP)", "full_inprocess")):
        r = result[key]
        lines.append(f"| {name} | {r['applied']:,} | {r['wall_s']:,.2f} | {r['applied'] / r['wall_s']:,.0f}"
                     f" | {r['round_trips']} | {mib(r['bytes_sent'])} | {mib(r['bytes_received'])}"
                     f" | {r['in_transport_s']:,.2f} | {r['client_s']:,.2f} | {cpu_cell(r)} |")
    http, local = result["full_http"], result["full_inprocess"]
    lines += ["", f"HTTP overhead on the full sync: {http['wall_s'] - local['wall_s']:+,.2f} s"
                  f" ({(http['wall_s'] / local['wall_s'] - 1) * 100:+.0f}%).", ""]
    lines += [
        f"| incremental sync (+{result['new']} each side) | round | round trips | bytes sent | bytes received"
        " | ops sent | ops received | seconds | in transport s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, key in (("over HTTP", "incremental_http"), ("in-process", "incremental_inprocess")):
        for r in result[key]:
            lines.append(f"| {name} | {r['round']} | {r['round_trips']} | {r['bytes_sent']:,} | {r['bytes_received']:,}"
                         f" | {r['sent']} | {received(r)} | {r['wall_s']:.3f} | {r['in_transport_s']:.3f} |")
        s = result[key + "_summary"]
        for stat in ("median", "max"):
            lines.append(f"| {name} | **{stat}** | {s['round_trips'][stat]:g} | {s['bytes_sent'][stat]:,.0f}"
                         f" | {s['bytes_received'][stat]:,.0f} | {s['sent'][stat]:g} | {s['received'][stat]:g}"
                         f" | {s['wall_s'][stat]:.3f} | {s['in_transport_s'][stat]:.3f} |")
    c = result["catch_up_inprocess"]
    lines += ["", f"In-process catch-up before its rounds: {c['applied']:,} ops received, {c['sent']} sent,"
                  f" {c['round_trips']} round trips, {c['wall_s']:.3f} s.",
              f"Peak RSS {result['peak_rss_mb']:,.0f} MiB; load average (1 min) {result['load_after'][:1]}"
              f" on {m['cpu_count']} CPUs."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=100_000, help="ops on the source for the full sync")
    parser.add_argument("--quick", action="store_true", help="5,000 ops (smoke run)")
    parser.add_argument("--new", type=int, default=100, help="new memories on each side per incremental round")
    parser.add_argument("--rounds", type=int, default=5, help="incremental rounds")
    parser.add_argument("--batch", type=int, default=5000, help="memories per batch_operations() while building")
    parser.add_argument("--seed", type=int, default=7, help="corpus seed")
    parser.add_argument("--server-embedder", choices=("none", "default"), default="none",
                        help="'none': serve() with embedder none (default); 'default': python -m"
                             " neuralsync.server.run (wordllama embeds the source in the background)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"), help="stores and results")
    parser.add_argument("--json", help="results file (default <out>/sync.json, --quick: <out>/sync-quick.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.ops = 5_000
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = Path(args.json) if args.json else out / ("sync-quick.json" if args.quick else "sync.json")
    m = machine()
    log(f"machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['memory_gb']} GiB; Python {m['python']};"
        f" SQLite {m['sqlite']}; {m['platform']}")
    started = time.monotonic()
    result = run(args)
    result.update({"server_embedder": args.server_embedder, "peak_rss_mb": peak_rss_mb(),
                   "load_after": load_average(), "total_s": round(time.monotonic() - started, 1)})
    report = {"bench": "sync", "version": BENCH_VERSION,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": m,
              "seed": args.seed, "settings": {k: v for k, v in vars(args).items() if k != "out"}, "result": result}
    path.write_text(json.dumps(report, indent=1))
    log("")
    log(render(result, m))
    log("")
    log(f"results: {path} (run took {result['total_s']:,.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
