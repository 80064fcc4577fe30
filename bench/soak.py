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
throughout, so its memory (RSS) is the leak probe.

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
    rss_mb,
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
        self.rss: list[tuple[float, int, float]] = []  # (seconds since start, pid, MB)
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
        if self.process is not None and (mb := rss_mb(self.process.pid)) is not None:
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


def rss_figures(replica: Replica, warm_from: float) -> dict[str, Any]:
    """RSS of the longest-lived process of ``replica``: at start, after warm-up, at the end, and peak."""
    if not replica.rss:
        return {}
    by_pid: dict[int, list[tuple[float, float]]] = {}
    for at, pid, mb in replica.rss:
        by_pid.setdefault(pid, []).append((at, mb))
    series = max(by_pid.values(), key=len)
    warm = [mb for at, mb in series if at >= warm_from] or [series[-1][1]]
    return {"start_mb": series[0][1], "after_warm_up_mb": warm[0], "end_mb": series[-1][1],
            "peak_mb": max(mb for _, mb in series), "growth_after_warm_up_mb": round(series[-1][1] - warm[0], 1),
            "samples": len(series), "processes": len(by_pid)}


def run(args: argparse.Namespace) -> int:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out)
    root = out / f"soak-{stamp}"
    root.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("NS_TOKEN", "NS_HOST", "NS_PORT", "NS_ENDPOINT",
                                                            "NEURALSYNC_HOME")}
    env["PYTHONUNBUFFERED"] = "1"
    log(f"soak: {args.duration:.0f} s, homes and logs in {root}")
    a, b, faulty_key = prepare(root, env, args)
    a.start()
    b.start()
    stats, ledger, stop = Stats(), Ledger(), threading.Event()
    source = ContentSource(args.seed)
    api_a = UnifiedMemoryAPI(MemoryConfig(base_path=a.home), tool="soak-api")
    api_b = UnifiedMemoryAPI(MemoryConfig(base_path=b.home), tool="soak-reader")
    mcp_log = (root / "mcp.log").open("ab")
    urls = lambda: [(a.url, a.token), (b.url, b.token)]  # noqa: E731
    servers = lambda: [(a.url, bytes.fromhex(a.key)), (b.url, bytes.fromhex(b.key))]  # noqa: E731
    common = {"stop": stop, "stats": stats, "seed": args.seed}
    actors = [
        ApiWriter(api_a, source, ledger, rate=args.api_rate, **common),
        HttpWriter(urls, source, ledger, rate=args.http_rate, **common),
        CliWriter(b.home, source, ledger, env, rate=args.cli_rate, **common),
        McpWriter(a.home, source, ledger, env, mcp_log, rate=args.mcp_rate, **common),
        Reader(api_b, urls, source, rate=args.read_rate, **common),
        FaultyPeer(faulty_key, servers, ledger, rate=args.faulty_rate, **common),
    ]
    begun = time.monotonic()
    kills, compaction = 0, "off"
    try:
        for actor in actors:
            actor.start()
        next_kill, next_compact, next_rss, next_log = (begun + args.kill_every, begun + (args.compact_every or 1e18),
                                                       begun, begun + 15)
        while (now := time.monotonic()) < begun + args.duration:
            if now >= next_rss:
                for replica in (a, b):
                    replica.sample(begun)
                next_rss = now + RSS_EVERY_S
            if args.kill_every and now >= next_kill:
                assert a.process is not None
                kill_hard(a.process)
                kills += 1
                a.start()
                next_kill = time.monotonic() + args.kill_every
            if now >= next_compact:
                compaction = compaction_hook(api_a, stats)
                next_compact = now + args.compact_every
            if now >= next_log:
                log(f"  {now - begun:5.0f} s  acknowledged {len(ledger.expected):6d}  kills {kills}"
                    f"  errors {sum(stats.errors.values())}  RSS B {b.rss[-1][2] if b.rss else '?'} MB")
                next_log = now + 15
            time.sleep(0.1)
    finally:
        stop.set()
        for actor in actors:
            actor.join(timeout=60)
    elapsed = time.monotonic() - begun
    for replica in (a, b):
        replica.sample(begun)
    log("writers stopped; syncing until nothing moves ...")
    rounds = converge(api_a, api_b)
    outcome = check(ledger, {"a": api_a, "b": api_b})
    report = {
        "when": stamp, "machine": machine(), "load_average_end": load_average(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "seconds": round(elapsed, 1), "kills_of_a": kills, "restart_seconds_a": a.starts[1:],
        "compaction": compaction, "sync_rounds_to_converge": rounds,
        **stats.report(elapsed),
        "rss": {"b (never killed)": rss_figures(b, elapsed * WARM_UP_FRACTION),
                "a (killed and restarted)": rss_figures(a, 0)},
        "checks": outcome,
    }
    five_xx = {kind: n for kind, n in stats.errors.items() if "5xx" in kind or kind.startswith("faulty.5")}
    report["ok"] = (outcome["lost_or_wrong"] == 0 and outcome["digests_equal"] and all(outcome["doctor_ok"].values())
                    and rounds > 0 and not five_xx)
    api_a.close()
    api_b.close()
    mcp_log.close()
    for replica in (a, b):
        replica.stop()
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
        log(f"RSS {name}: {figures}")
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
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"), help="where the JSON goes")
    p.add_argument("--keep", action="store_true", help="keep the homes and logs even when every check passed")
    return p


if __name__ == "__main__":
    sys.exit(run(parser().parse_args()))
