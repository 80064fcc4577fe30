"""Soak: two replicas under sustained mixed load, a faulty peer and hard kills, then a full account.

    python bench/soak.py                     # 3 minutes (the default)
    python bench/soak.py --duration 1800     # the 30-minute soak
    python bench/soak.py --duration 60 --kill-every 15 --out /tmp/soak

Two ``neuralsync serve`` processes (replicas A and B, loopback only) trust
each other and sync every ``--sync-interval`` seconds. Writers of every kind
write to them: the library in this process (on A's store), HTTP (both
servers), the CLI (a process per write, on B's store) and an MCP stdio server
(on A's store). Readers recall in every mode through the library (B's store)
and over HTTP. A faulty but trusted peer floods both servers' ``/v1/sync``.
Every ``--kill-every`` seconds server A is SIGKILLed and restarted; B runs
throughout, so its memory (RSS) is the leak probe. For the last
``--quiet-tail`` share of the run (default 20 %) the writers rest while
readers, sync and the faulty peer go on: caches and the vector index grow
with the data, a leak does not need it, so B's growth in that tail is the
figure to watch.

At the end, after the writers stop and the replicas sync until nothing moves:
every acknowledged write is on both replicas with the content last
acknowledged (or gone, if its forget was acknowledged), the replicas' state
digests are equal, ``doctor`` is clean on both, and no 5xx was answered. The
figures (throughput, p50/p99 per operation, errors by kind, RSS) are printed
and written to ``<out>/soak-<time>.json``; the exit code is 0 only when every
check passed. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
import nacl.signing
from benchlib import free_port, load_average, log, machine
from soak_actors import (
    CLI,
    ApiWriter,
    CliWriter,
    ContentSource,
    FaultyPeer,
    HttpWriter,
    Ledger,
    McpWriter,
    Reader,
    Stats,
    kill_hard,
    memory_mb,
)

from neuralsync.errors import NotFound
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

START_TIMEOUT_S = 60.0
RSS_EVERY_S = 2.0
WARM_UP_FRACTION = 0.2  # RSS growth is measured after this share of the run


class Replica:
    """One ``neuralsync serve`` process on a loopback port; restartable."""

    def __init__(self, name: str, home: Path, env: dict[str, str], sync_interval: float, log_dir: Path) -> None:
        self.name, self.home, self.env, self.sync_interval = name, home, env, sync_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log: IO[bytes] = (log_dir / f"serve-{name}.log").open("ab")
        self.process: subprocess.Popen[bytes] | None = None
        self.key = self.token = ""
        self.rss: list[tuple[float, int, dict[str, float]]] = []  # (seconds since start, pid, memory_mb)
        self.starts: list[float] = []

    def cli(self, *argv: str) -> str:
        done = subprocess.run([*CLI, "--home", str(self.home), *argv], env=self.env, capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            raise SystemExit(f"neuralsync {' '.join(argv)} failed on {self.name}: {done.stderr.strip()}")
        return done.stdout.strip()

    def start(self) -> None:
        begun = time.monotonic()
        self.process = subprocess.Popen(
            [*CLI, "--home", str(self.home), "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "warning", "--sync-interval", str(self.sync_interval)],
            env=self.env, stdout=self.log, stderr=self.log)
        while time.monotonic() - begun < START_TIMEOUT_S:
            if self.process.poll() is not None:
                raise SystemExit(f"server {self.name} exited during start-up; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    self.starts.append(round(time.monotonic() - begun, 3))
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise SystemExit(f"server {self.name} did not start in {START_TIMEOUT_S} s")

    def sample(self, since: float) -> None:
        if self.process is not None and (mb := memory_mb(self.process.pid)) is not None:
            self.rss.append((round(time.monotonic() - since, 1), self.process.pid, mb))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                kill_hard(self.process)
        self.log.close()


def compaction_hook(api: UnifiedMemoryAPI, stats: Stats) -> str:
    """Compaction does not exist yet. When the facade grows ``compact()``, the soak calls it here every
    ``--compact-every`` seconds, timed as ``compact``, while everything else runs."""
    compact = getattr(api, "compact", None)
    if compact is None:
        return "unavailable"
    stats.timed("compact", compact)
    return "ran"


def prepare(root: Path, env: dict[str, str], args: argparse.Namespace) -> tuple[Replica, Replica,
                                                                                   nacl.signing.SigningKey]:
    """Homes, keys and tokens; A and B trust each other and the faulty peer (a key only it holds)."""
    a, b = (Replica(name, root / name, env, args.sync_interval, root) for name in ("a", "b"))
    faulty = nacl.signing.SigningKey.generate()
    for replica in (a, b):
        replica.key, replica.token = replica.cli("identity"), replica.cli("token")
    for replica, other in ((a, b), (b, a)):
        replica.cli("peer", "add", other.name, other.url, "--key", other.key)
        replica.cli("peer", "add", "faulty", "http://127.0.0.1:9", "--key", faulty.verify_key.encode().hex())
    return a, b, faulty


def converge(api_a: UnifiedMemoryAPI, api_b: UnifiedMemoryAPI, rounds: int = 20) -> int:
    """Sync both ways until a round moves nothing; the number of rounds it took."""
    for round_number in range(1, rounds + 1):
        moved = 0
        for api, peer in ((api_a, "b"), (api_b, "a")):
            for report in api.sync(peer, timeout=60):
                if not report.ok:
                    log(f"  sync with {peer}: {report.error}")
                    moved += 1
                moved += report.applied + report.sent
        if moved == 0:
            return round_number
    return -1


def check(ledger: Ledger, apis: dict[str, UnifiedMemoryAPI]) -> dict[str, Any]:
    """Every acknowledged write on every replica as last acknowledged; digests and doctor."""
    expected = ledger.snapshot()
    lost: list[dict[str, Any]] = []
    for memory_id, content in expected.items():
        for name, api in apis.items():
            try:
                found: str | None = api.get(memory_id).content
            except NotFound:
                found = None
            if found != content:
                lost.append({"id": memory_id, "replica": name, "writer": ledger.by.get(memory_id),
                             "expected": content and content[:80], "found": found and found[:80]})
    doctors = {name: api.doctor() for name, api in apis.items()}
    return {
        "acknowledged_writes": len(expected),
        "acknowledged_by_writer": _count(ledger.by.values()),
        "forgotten": sum(1 for content in expected.values() if content is None),
        "lost_or_wrong": len(lost), "lost_examples": lost[:10],
        "digests_equal": len({report.digest for report in doctors.values()}) == 1,
        "doctor_ok": {name: report.ok for name, report in doctors.items()},
        "doctor_problems": {name: report.bad_ops + report.differences for name, report in doctors.items()},
        "memories": {name: report.memories for name, report in doctors.items()},
        "ops": {name: report.ops_checked for name, report in doctors.items()},
    }


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def rss_figures(replica: Replica, warm_from: float, tail_from: float) -> dict[str, Any]:
    """Memory of the longest-lived process of ``replica``: RSS and its heap (anon) and mapped-file parts
    at start, after warm-up, when the writers stopped (the quiet tail) and at the end; the store's size
    and the samples themselves. Growth in the tail, with reads, sync and the faulty peer going on but
    no data added, is the leak probe: caches and the vector index grow with the data, a leak does not
    need it."""
    if not replica.rss:
        return {}
    by_pid: dict[int, list[tuple[float, dict[str, float]]]] = {}
    for at, pid, mb in replica.rss:
        by_pid.setdefault(pid, []).append((at, mb))
    series = max(by_pid.values(), key=len)

    def at(moment: float) -> dict[str, float]:
        return next((mb for when, mb in series if when >= moment), series[-1][1])

    first, warm, tail, last = series[0][1], at(warm_from), at(tail_from), series[-1][1]
    figures: dict[str, Any] = {"processes": len(by_pid), "samples": len(series)}
    for part in ("rss", "anon", "file"):
        figures[part] = {"start_mb": first.get(part), "after_warm_up_mb": warm.get(part),
                         "writers_stopped_mb": tail.get(part), "end_mb": last.get(part),
                         "peak_mb": max(mb.get(part, 0.0) for _, mb in series),
                         "growth_after_warm_up_mb": round(last.get(part, 0.0) - warm.get(part, 0.0), 1),
                         "growth_in_quiet_tail_mb": round(last.get(part, 0.0) - tail.get(part, 0.0), 1)}
    figures["store_mb"] = round(sum(f.stat().st_size for f in replica.home.glob("memory.db*")) / 2**20, 1)
    figures["series"] = [(when, mb.get("rss"), mb.get("anon")) for when, mb in series]  # (s, RSS MB, anon MB)
    return figures


class Soak:
    """One run: the replicas, the actors, the loop that kills and samples, and the final account."""

    def __init__(self, args: argparse.Namespace, root: Path, env: dict[str, str]) -> None:
        self.args, self.root, self.env = args, root, env
        self.a, self.b, faulty_key = prepare(root, env, args)
        self.a.start()
        self.b.start()
        self.stats, self.ledger, self.source = Stats(), Ledger(), ContentSource(args.seed)
        self.stop_writers, self.stop_all = threading.Event(), threading.Event()
        self.api_a = UnifiedMemoryAPI(MemoryConfig(base_path=self.a.home), tool="soak-api")
        self.api_b = UnifiedMemoryAPI(MemoryConfig(base_path=self.b.home), tool="soak-reader")
        self.mcp_log = (root / "mcp.log").open("ab")
        self.writers, self.others = self._actors(faulty_key)
        self.kills, self.compaction, self.begun = 0, "off", 0.0

    def _actors(self, faulty_key: nacl.signing.SigningKey) -> tuple[list[Any], list[Any]]:
        args, a, b = self.args, self.a, self.b
        urls = lambda: [(a.url, a.token), (b.url, b.token)]  # noqa: E731
        servers = lambda: [(a.url, bytes.fromhex(a.key)), (b.url, bytes.fromhex(b.key))]  # noqa: E731
        writing = {"stop": self.stop_writers, "stats": self.stats, "seed": args.seed}
        always = {**writing, "stop": self.stop_all}
        return [
            ApiWriter(self.api_a, self.source, self.ledger, rate=args.api_rate, **writing),
            HttpWriter(urls, self.source, self.ledger, rate=args.http_rate, **writing),
            CliWriter(b.home, self.source, self.ledger, self.env, rate=args.cli_rate, **writing),
            McpWriter(a.home, self.source, self.ledger, self.env, self.mcp_log, rate=args.mcp_rate, **writing),
        ], [
            Reader(self.api_b, urls, self.source, rate=args.read_rate, **always),
            FaultyPeer(faulty_key, servers, self.ledger, rate=args.faulty_rate, **always),
        ]

    def drive(self) -> None:
        """Start every actor; kill A, compact, sample and report progress until the time is up."""
        args, self.begun = self.args, time.monotonic()
        writers_until = self.begun + args.duration * (1 - args.quiet_tail)
        due = {"kill": self.begun + (args.kill_every or 1e18), "compact": self.begun + (args.compact_every or 1e18),
               "rss": self.begun, "log": self.begun + 15}
        try:
            for actor in self.writers + self.others:
                actor.start()
            while (now := time.monotonic()) < self.begun + args.duration:
                if now >= writers_until and not self.stop_writers.is_set():
                    log(f"  {now - self.begun:5.0f} s  writers stop; readers, sync and the faulty peer go on")
                    self.stop_writers.set()
                self._tick(now, due)
                time.sleep(0.1)
        finally:
            self.stop_writers.set()
            self.stop_all.set()
            for actor in self.writers + self.others:
                actor.join(timeout=60)

    def _tick(self, now: float, due: dict[str, float]) -> None:
        if now >= due["rss"]:
            for replica in (self.a, self.b):
                replica.sample(self.begun)
            due["rss"] = now + RSS_EVERY_S
        if now >= due["kill"] and not self.stop_writers.is_set():
            assert self.a.process is not None
            kill_hard(self.a.process)
            self.kills += 1
            self.a.start()
            due["kill"] = time.monotonic() + self.args.kill_every
        if now >= due["compact"]:
            self.compaction = compaction_hook(self.api_a, self.stats)
            due["compact"] = now + self.args.compact_every
        if now >= due["log"]:
            rss = self.b.rss[-1][2]["rss"] if self.b.rss else "?"
            log(f"  {now - self.begun:5.0f} s  acknowledged {len(self.ledger.expected):6d}  kills {self.kills}"
                f"  errors {sum(self.stats.errors.values())}  RSS B {rss} MB")
            due["log"] = now + 15

    def account(self, stamp: str) -> dict[str, Any]:
        """Sync until nothing moves, check everything, and gather the figures."""
        elapsed = time.monotonic() - self.begun
        log("load stopped; syncing until nothing moves ...")
        rounds = converge(self.api_a, self.api_b)
        outcome = check(self.ledger, {"a": self.api_a, "b": self.api_b})
        tail_from = self.args.duration * (1 - self.args.quiet_tail)
        report = {
            "when": stamp, "machine": machine(), "load_average_end": load_average(),
            "settings": {k: v for k, v in vars(self.args).items() if k != "out"},
            "seconds": round(elapsed, 1), "kills_of_a": self.kills, "restart_seconds_a": self.a.starts[1:],
            "compaction": self.compaction, "sync_rounds_to_converge": rounds,
            **self.stats.report(elapsed),
            "rss": {"b (never killed)": rss_figures(self.b, elapsed * WARM_UP_FRACTION, tail_from),
                    "a (killed and restarted)": rss_figures(self.a, 0, tail_from)},
            "checks": outcome,
        }
        five_xx = {kind: n for kind, n in self.stats.errors.items() if "5xx" in kind or kind.startswith("faulty.5")}
        report["ok"] = (outcome["lost_or_wrong"] == 0 and outcome["digests_equal"] and rounds > 0
                        and all(outcome["doctor_ok"].values()) and not five_xx)
        return report

    def close(self) -> None:
        self.api_a.close()
        self.api_b.close()
        self.mcp_log.close()
        for replica in (self.a, self.b):
            replica.stop()


def run(args: argparse.Namespace) -> int:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out)
    root = out / f"soak-{stamp}"
    root.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("NS_TOKEN", "NS_HOST", "NS_PORT", "NS_ENDPOINT",
                                                            "NEURALSYNC_HOME")}
    env["PYTHONUNBUFFERED"] = "1"
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    log(f"soak: {args.duration:.0f} s, homes and logs in {root}")
    soak = Soak(args, root, env)
    try:
        soak.drive()
        for replica in (soak.a, soak.b):
            replica.sample(soak.begun)
        report = soak.account(stamp)
    finally:
        soak.close()
    path = out / f"soak-{stamp}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_summary(report, path)
    if report["ok"] and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if report["ok"] else 1


def print_summary(report: dict[str, Any], path: Path) -> None:
    checks = report["checks"]
    log(f"\n{report['seconds']:.0f} s, {report['kills_of_a']} SIGKILLs of A, converged in "
        f"{report['sync_rounds_to_converge']} sync round(s)")
    log(f"{'operation':<24}{'n':>8}{'per s':>9}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for name, op in report["operations"].items():
        log(f"{name:<24}{op['n']:>8}{op['per_s']:>9}{op['p50']:>10}{op['p99']:>10}{op['max']:>10}")
    log(f"errors: {report['errors'] or 'none'}")
    log(f"faulty peer, refused as expected: {sum(report['expected_refusals'].values())} requests")
    for name, figures in report["rss"].items():
        log(f"memory of server {name}, MB (store {figures.get('store_mb')} MB):")
        for part in ("rss", "anon", "file"):
            log(f"  {part:<5} {figures.get(part)}")
    log(f"acknowledged writes {checks['acknowledged_writes']} {checks['acknowledged_by_writer']}, lost or wrong "
        f"{checks['lost_or_wrong']}, digests equal {checks['digests_equal']}, doctor {checks['doctor_ok']}")
    log(f"{'OK' if report['ok'] else 'FAILED'}; figures in {path}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=180.0, help="seconds of load (default 180)")
    p.add_argument("--kill-every", type=float, default=30.0, help="SIGKILL and restart server A this often (0: never)")
    p.add_argument("--sync-interval", type=float, default=5.0, help="the servers' interval sync, seconds")
    p.add_argument("--compact-every", type=float, default=0.0, help="call the compaction hook this often (0: never)")
    p.add_argument("--api-rate", type=float, default=10.0, help="library writes per second")
    p.add_argument("--http-rate", type=float, default=10.0, help="HTTP writes per second")
    p.add_argument("--cli-rate", type=float, default=0.3, help="CLI writes per second (a process each)")
    p.add_argument("--mcp-rate", type=float, default=4.0, help="MCP tool calls per second")
    p.add_argument("--read-rate", type=float, default=10.0, help="recalls per second")
    p.add_argument("--faulty-rate", type=float, default=5.0, help="faulty sync requests per second")
    p.add_argument("--quiet-tail", type=float, default=0.2,
                   help="share of the run at the end with no writes (reads, sync, faulty peer go on): the leak probe")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"), help="where the JSON goes")
    p.add_argument("--keep", action="store_true", help="keep the homes and logs even when every check passed")
    return p


if __name__ == "__main__":
    sys.exit(run(parser().parse_args()))
