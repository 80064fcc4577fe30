"""What a new agent session or a shell user waits for: fresh-process CLI calls, query embedding,
and the memory an MCP server holds, with and without a ``neuralsync serve`` on the same store.

    python bench/bench_startup.py --quick        # 2,000 memories, 5 runs per command
    python bench/bench_startup.py                # 100,000 memories (text-indexed; 2,000 embedded)

Figures (medians over runs, each run a new process, as a user or an agent tool sees it):

- query embedding p50 / p99 on one thread (the default MiniLM int8 model, in process);
- ``neuralsync remember`` and ``neuralsync recall`` (hybrid, the default) wall time, no server;
- the same with a server running on the store (the CLI embeds through it: no model load);
- peak RSS of a ``neuralsync mcp`` stdio process after a recall in every mode, beside a server.

The store is built with ``remember`` in batches; only the newest memories get vectors (embedding
100,000 texts with MiniLM takes minutes and changes nothing measured here: the model load and
the imports are what a fresh process pays). Results go to ``<out>/startup.json``.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from benchlib import free_port, load_average, log, machine, server_process, summary  # noqa: E402
from corpus import Corpus  # noqa: E402

from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI  # noqa: E402

NEURALSYNC = [sys.executable, "-m", "neuralsync.cli"]


def build_store(home: Path, size: int, embedded: int) -> None:
    log(f"building a store of {size:,} memories in {home}")
    corpus = Corpus()
    with UnifiedMemoryAPI(MemoryConfig(base_path=home)) as api:
        for start in range(0, size, 5000):
            with api.batch_operations():
                for record in corpus.memories(size, start, min(size, start + 5000)):
                    api.remember(**Corpus.remember_args(record))
        # The newest rows get vectors and an index file, like a store a server keeps current.
        with api.storage.write() as conn:
            conn.execute("DELETE FROM embed_queue WHERE mem <= (SELECT max(rowid) FROM memories) - ?", (embedded,))
        api.embed_pending()
        api.rebuild_vector_index()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_times(argv: list[str], env: dict[str, str], runs: int) -> dict[str, Any]:
    """Wall time of ``runs`` fresh processes, and the CPU time each used (less sensitive to other load)."""
    durations, cpu = [], []
    for _ in range(runs):
        start, cpu_start = time.perf_counter(), _children_cpu()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        durations.append(time.perf_counter() - start)
        cpu.append(_children_cpu() - cpu_start)
    return {"median_ms": round(statistics.median(durations) * 1000, 1), "min_ms": round(min(durations) * 1000, 1),
            "max_ms": round(max(durations) * 1000, 1), "cpu_median_ms": round(statistics.median(cpu) * 1000, 1),
            "runs": runs, "load": load_average()}


def query_embedding(samples: int, rounds: int = 3) -> dict[str, Any]:
    """p50/p99 wall time of one query's embedding (one thread), and its thread CPU time p50."""
    from neuralsync.search.embed import MiniLMEmbedder

    embedder = MiniLMEmbedder(threads=1)
    embedder.load()
    times, cpu = [], []
    texts = [query.text for query in Corpus().queries(samples)]
    for _ in range(rounds):
        for text in texts:
            start, cpu_start = time.perf_counter_ns(), time.thread_time_ns()
            embedder.embed([text])
            times.append(time.perf_counter_ns() - start)
            cpu.append(time.thread_time_ns() - cpu_start)
    cpu.sort()
    return {**summary(times), "thread_cpu_p50_ms": round(cpu[len(cpu) // 2] / 1e6, 3), "load": load_average()}


def mcp_rss_beside_server(home: Path, env: dict[str, str]) -> float:
    """Peak RSS (MB) of an MCP stdio server after one recall in each mode (read from /proc at the end)."""
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=sys.executable, args=["-m", "neuralsync.mcp.server", "--home", str(home)],
                                   env=env)
    peak: list[float] = []

    async def session() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            for mode in ("hybrid", "text", "semantic"):
                await client.call_tool("recall", {"query": f"deploy pipeline {mode}"})
            peak.append(_peak_rss_of_children())

    anyio.run(session)
    return peak[0]


def _peak_rss_of_children() -> float:
    """VmHWM of the newest child process running the MCP server."""
    best = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"neuralsync.mcp.server" not in cmdline:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]) / 1024)
        except OSError:
            continue
    return round(best, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 memories, 5 runs per command")
    parser.add_argument("--memories", type=int, default=100_000)
    parser.add_argument("--embedded", type=int, default=2_000, help="how many of the newest memories get vectors")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--baseline", type=Path, help="another checkout (its root) whose recall runs alternately")
    args = parser.parse_args()
    size, runs = (2_000, 5) if args.quick else (args.memories, args.runs)
    home = args.out / f"startup-store-{size}"
    args.out.mkdir(parents=True, exist_ok=True)
    if not (home / "memory.db").exists():
        build_store(home, size, min(args.embedded, size))
    # As installed by pip: the package's bytecode compiled once (an editable checkout run with
    # PYTHONDONTWRITEBYTECODE=1 would compile every module in every process, ~150-200 ms per call).
    compileall.compile_dir(str(ROOT / "neuralsync"), quiet=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NS_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["NEURALSYNC_HOME"] = str(home)
    results: dict[str, Any] = {"machine": machine(), "memories": size, "load_before": load_average()}
    recall = [*NEURALSYNC, "recall", "how do we roll back a failed deploy"]
    remember = [*NEURALSYNC, "remember", "the release checklist lives in docs/release.md"]
    # The first recall on a machine optimizes the model's graph and caches it (embed/minilm.py); every
    # later process builds its session from that copy. Timed once, apart from the runs below.
    results["first_recall_ever_ms"] = None
    import onnxruntime

    from neuralsync.search.embed import minilm

    if minilm._derived_model(onnxruntime) is None:
        results["first_recall_ever_ms"] = run_times(recall, env, 1)["median_ms"]
    subprocess.run(recall, env=env, check=True, stdout=subprocess.DEVNULL, timeout=120)  # page cache warm
    results["query_embedding_1_thread"] = query_embedding(200)
    log(f"query embedding, one thread: {results['query_embedding_1_thread']}")
    results["no_server"] = {"recall": run_times(recall, env, runs), "remember": run_times(remember, env, runs)}
    log(f"no server: {results['no_server']}")
    if args.baseline is not None:  # the same recall by another checkout, alternating, so both see the same load
        compileall.compile_dir(str(args.baseline / "neuralsync"), quiet=1)
        other = {**env, "PYTHONPATH": str(args.baseline)}
        ours, theirs = [], []
        for _ in range(runs):
            theirs.append(run_times(recall, other, 1))
            ours.append(run_times(recall, env, 1))
        results["baseline_pairs"] = {
            key: {"median_ms": statistics.median(r["median_ms"] for r in rows),
                  "cpu_median_ms": statistics.median(r["cpu_median_ms"] for r in rows)}
            for key, rows in (("baseline", theirs), ("this", ours))} | {"runs": runs, "load": load_average()}
        log(f"recall, no server, alternating with {args.baseline}: {results['baseline_pairs']}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with server_process([*NEURALSYNC, "serve", "--port", str(port), "--log-level", "warning"], url, env,
                        subprocess.DEVNULL):
        subprocess.run(recall, env=env, check=True, stdout=subprocess.DEVNULL, timeout=120)  # server model warm
        results["with_server"] = {"recall": run_times(recall, env, runs), "remember": run_times(remember, env, runs)}
        log(f"with a server: {results['with_server']}")
        try:
            results["mcp_peak_rss_mb_beside_server"] = mcp_rss_beside_server(home, env)
            log(f"MCP stdio process beside the server, peak RSS: {results['mcp_peak_rss_mb_beside_server']} MB")
        except ImportError:
            log("the MCP SDK is not installed: skipping the MCP figure")
    results["load_after"] = load_average()
    path = args.out / ("startup-quick.json" if args.quick else "startup.json")
    path.write_text(json.dumps(results, indent=2))
    log(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
