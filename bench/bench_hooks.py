"""What an agent session waits for at each hook (issue 16): a fresh ``neuralsync hook`` process per
event, as Claude Code, Gemini CLI and Codex CLI start it, with and without a ``neuralsync serve``.

    python bench/bench_hooks.py --quick        # 2,000 memories, 5 runs per event
    python bench/bench_hooks.py                # 100,000 memories (the store bench_startup.py builds)

Events: ``SessionStart`` in a project folder (persona + the project's, the mentioning and the global
memories: three recalls) and ``UserPromptSubmit`` with a question from the corpus (two recalls).
Without a server the hook searches by text in its own process (no model); with one, the server
answers hybrid recalls and the persona (the hook then imports no store code at all). Figures are
wall-clock medians (min, max) over fresh processes, plus the context size each event printed.
The package's bytecode is compiled first and used, as after ``pip install`` (with
``PYTHONDONTWRITEBYTECODE`` on an editable install every process recompiles ~120 modules:
0.2-0.4 s more). Results go to ``<out>/hooks.json`` (``hooks-quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from bench_startup import build_store  # noqa: E402
from benchlib import free_port, load_average, log, machine, server_process  # noqa: E402
from corpus import Corpus  # noqa: E402

NEURALSYNC = [sys.executable, "-m", "neuralsync.cli"]
HOOK = [*NEURALSYNC, "hook", "--tool", "claude-code"]


def run_hook(event: dict[str, Any], env: dict[str, str], runs: int) -> dict[str, Any]:
    durations, size = [], 0
    payload = json.dumps(event)
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(HOOK, input=payload, env=env, capture_output=True, text=True, check=True, timeout=60)
        durations.append(time.perf_counter() - start)
        answer = json.loads(done.stdout)
        size = len(answer.get("hookSpecificOutput", {}).get("additionalContext", "").encode("utf-8"))
    return {"median_ms": round(statistics.median(durations) * 1000, 1), "min_ms": round(min(durations) * 1000, 1),
            "max_ms": round(max(durations) * 1000, 1), "runs": runs, "context_bytes": size}


def measure(env: dict[str, str], project: Path, runs: int) -> dict[str, Any]:
    prompts = [q.text for q in Corpus().queries(runs) if q.cls == "question"] or ["how do we deploy?"]
    start = {"hook_event_name": "SessionStart", "source": "startup", "cwd": str(project)}
    prompt = {"hook_event_name": "UserPromptSubmit", "cwd": str(project), "prompt": prompts[0]}
    return {"SessionStart": run_hook(start, env, runs), "UserPromptSubmit": run_hook(prompt, env, runs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 memories, 5 runs per event")
    parser.add_argument("--memories", type=int, default=100_000)
    parser.add_argument("--embedded", type=int, default=2_000, help="how many of the newest memories get vectors")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args()
    size, runs = (2_000, 5) if args.quick else (args.memories, args.runs)
    home = args.out / f"startup-store-{size}"  # shared with bench_startup.py
    args.out.mkdir(parents=True, exist_ok=True)
    if not (home / "memory.db").exists():
        build_store(home, size, min(args.embedded, size))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NS_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["NEURALSYNC_HOME"] = str(home)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "neuralsync")], env=env, check=True,
                   stdout=subprocess.DEVNULL, timeout=300)
    results: dict[str, Any] = {"machine": machine(), "memories": size, "load_before": load_average()}
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch) / "webshop"  # one of the corpus's projects, as a repository
        (project / ".git").mkdir(parents=True)
        results["no_server"] = measure(env, project, runs)
        log(f"no server: {results['no_server']}")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with server_process([*NEURALSYNC, "serve", "--port", str(port), "--log-level", "warning"], url, env,
                            subprocess.DEVNULL):
            subprocess.run([*NEURALSYNC, "recall", "warm the model"], env=env, check=True,
                           stdout=subprocess.DEVNULL, timeout=120)
            results["with_server"] = measure(env, project, runs)
            log(f"with a server: {results['with_server']}")
    results["load_after"] = load_average()
    path = args.out / ("hooks-quick.json" if args.quick else "hooks.json")
    path.write_text(json.dumps(results, indent=2))
    log(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
