"""Resident memory of a ``neuralsync mcp`` stdio process beside a running ``neuralsync serve`` (issue 11).

    python bench/bench_mcp_memory.py                      # the bench_startup store (100,000 memories)
    python bench/bench_mcp_memory.py --home <store> --runs 5

A real MCP client session (the SDK's stdio client) spawns ``python -m neuralsync.mcp.server``, calls
``recall`` (the tool's recall is hybrid: BM25 and meaning, so it needs everything a text or a semantic
recall needs; queries, an empty one, a filtered one), ``remember`` once and ``list_recent``, and then
reads the server process's peak RSS (``VmHWM``) and which heavy modules it holds
(from ``/proc/<pid>``: status, and the shared libraries it has mapped).
Each run is done twice: recalls sent to the server (the default, ``recall_via_server``) and searched in
the MCP process (``NEURALSYNC_RECALL_VIA_SERVER=0``, what every MCP process did before). The import cost
of each layer is measured alone in a fresh interpreter (peak RSS after the import). Results go to
``<out>/mcp_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from benchlib import free_port, load_average, log, machine, server_process  # noqa: E402

NEURALSYNC = [sys.executable, "-m", "neuralsync.cli"]
IMPORTS = (
    ("python alone", "pass"),
    ("the facade", "import neuralsync.unified_memory_api"),
    ("pydantic", "import pydantic"),
    ("the MCP SDK (server side)", "import mcp.server.mcpserver"),
    ("neuralsync.mcp.server (SDK + facade)", "import neuralsync.mcp.server"),
    ("numpy", "import numpy"),
    ("onnxruntime (with numpy)", "import onnxruntime"),
    ("usearch (with onnxruntime first)", "import onnxruntime, usearch.index"),
)
HEAVY = ("numpy", "onnxruntime", "usearch", "tokenizers")


def import_costs() -> dict[str, float]:
    """Peak RSS (MB) of a fresh interpreter after each import alone."""
    out: dict[str, float] = {}
    for label, statement in IMPORTS:
        # VmHWM, not ru_maxrss: the latter carries the parent's peak across fork and exec.
        code = (f"{statement}\nfrom pathlib import Path\n"
                "print(next(line.split()[1] for line in Path('/proc/self/status').read_text().splitlines()"
                " if line.startswith('VmHWM:')))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
        out[label] = round(int(done.stdout.strip()) / 1024, 1)
    return out


def _status(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return fields


def _mcp_pid() -> int:
    """The MCP server process the client just spawned (a live child of this process)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if b"neuralsync.mcp.server" not in Path(f"/proc/{entry}/cmdline").read_bytes():
                    continue
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{os.getpid()}\n" in status and "VmHWM:" in status:
                found.append(int(entry))
    if not found:
        raise SystemExit("no MCP server process found")
    return max(found, key=lambda pid: os.stat(f"/proc/{pid}").st_mtime)


def _mapped(pid: int) -> list[str]:
    """Which heavy modules' shared libraries the process has mapped (numpy, onnxruntime, usearch...)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted(name for name in HEAVY if f"/{name}/" in maps or f"/{name}." in maps)


def mcp_session(home: Path, env: dict[str, str]) -> dict[str, Any]:
    """One MCP stdio session: recalls in every mode, a remember, a list; the process's figures at the end."""
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=sys.executable, args=["-m", "neuralsync.mcp.server", "--home", str(home)],
                                   env=env)
    figures: dict[str, Any] = {}

    async def session() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            pid = _mcp_pid()
            figures["after_initialize"] = _status(pid)
            # The tool's recall is hybrid (text and meaning fused): it needs all a text or a semantic one does.
            for query in ("how do we roll back a failed deploy", "python testing habits", ""):
                result = await client.call_tool("recall", {"query": query, "limit": 10})
                assert not result.is_error, result.content
            result = await client.call_tool("recall", {"query": "deploy", "tags": ["ops"], "scope": "global"})
            assert not result.is_error, result.content
            figures["after_recalls"] = {**_status(pid), "heavy_modules_mapped": _mapped(pid)}
            await client.call_tool("remember", {"content": "the MCP memory bench ran here", "scope": "global"})
            figures["after_remember"] = _status(pid)
            await client.call_tool("list_recent", {"limit": 5})
            figures.update(_status(pid))
            figures["heavy_modules_mapped"] = _mapped(pid)

    anyio.run(session)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="the store (default: bench_startup's 100,000-memory store)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args()
    home = args.home or args.out / "startup-store-100000"
    if not (home / "memory.db").exists():
        raise SystemExit(f"no store at {home}: run bench/bench_startup.py first (it builds one)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NS_") and k != "NEURALSYNC_RECALL_VIA_SERVER"}
    env["NEURALSYNC_HOME"] = str(home)
    env["NEURALSYNC_MERGE"] = "off"
    results: dict[str, Any] = {"machine": machine(), "store": str(home), "load_before": load_average()}
    results["import_peak_rss_mb"] = import_costs()
    log(f"import costs (peak RSS MB): {results['import_peak_rss_mb']}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with server_process([*NEURALSYNC, "serve", "--port", str(port), "--log-level", "warning"], url, env,
                        subprocess.DEVNULL):
        subprocess.run([*NEURALSYNC, "recall", "warm up"], env=env, check=True, stdout=subprocess.DEVNULL, timeout=120)
        for label, extra in (("via_server", {}), ("local_search", {"NEURALSYNC_RECALL_VIA_SERVER": "0"})):
            runs = [mcp_session(home, {**env, **extra}) for _ in range(args.runs)]
            results[label] = {"runs": runs,
                              "peak_rss_mb_after_recalls_median": statistics.median(
                                  r["after_recalls"]["VmHWM"] for r in runs),
                              "peak_rss_mb_at_end_median": statistics.median(r["VmHWM"] for r in runs)}
            log(f"MCP beside a server, {label}: peak RSS after the recalls, median "
                f"{results[label]['peak_rss_mb_after_recalls_median']} MB; after a remember and a list too "
                f"{results[label]['peak_rss_mb_at_end_median']} MB; heavy modules mapped "
                f"{runs[-1]['heavy_modules_mapped']}")
    results["load_after"] = load_average()
    path = args.out / "mcp_memory.json"
    path.write_text(json.dumps(results, indent=2))
    log(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
