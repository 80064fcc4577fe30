"""Compaction of a grown store: bytes on disk, recall of the survivors, and writes while it runs.

Builds a store of N memories (``--size``, default 100,000; ``--embedder``, default ``none``: text only;
``minilm``, the library's default, adds vectors and the HNSW file, embedded through ``vector_cache.py``)
where 30% expire right after they are written and 20% are exact duplicates of
others (written with ``merge="off"``, as a store from before the merger holds
them). Then, in one run:

1. size on disk after a WAL checkpoint, and the top-10 text recall of a fixed
   set of queries;
2. ``compact()`` (every default strategy, sliced: no full rewrite) while
   another process writes single memories (``remember``, one transaction
   each, one every ``--write-every-ms``), timing each;
3. size on disk afterwards (with the writer's memories counted out at the
   store's bytes per memory), and the same recalls: the results restricted to
   the memories that survive must be the same lists;
4. the writer stopped (an idle window), a full rewrite (``rewrite``): the lock
   time it takes and the size after it.

Targets (issue 15): shrink by at least the removed share (50%); writes during
compaction p99 under 50 ms.

    python bench/bench_compact.py --size 100000
    python bench/bench_compact.py --size 1000000 --build-only   # then rerun without it: the build is kept

The built store is kept (``compact-pristine-N``) and copied for each run, so
a rerun measures compaction again without rebuilding (``--rebuild`` forces it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import config, log, machine, summary
from corpus import Corpus

from neuralsync import UnifiedMemoryAPI
from neuralsync.services.doctor import fts_levels, fts_problem

WRITER = """
import json, sys, time
from pathlib import Path
from benchlib import config
from corpus import Corpus
from neuralsync import UnifiedMemoryAPI
store, stop, out, size = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
pause = float(sys.argv[5]) / 1000
SLOW_NS = 100_000_000  # a write slower than 100 ms is kept with its wall-clock start, to place it in the run
latencies, slow, stages = [], [], []
with UnifiedMemoryAPI(config(store, sys.argv[6])) as api:
    # Where a slow write spent its time, by the monitor's stages (lock_wait, sqlite_write, commit, ...).
    api.on_performance_alert(lambda a: stages.append((a["at"], a["stages_ms"])) if a["ms"] > 100 else None)
    for record in Corpus().memories(size * 10, size):  # more than any run writes: it stops when told
        if stop.exists():
            break
        args = Corpus.remember_args(record)
        args.pop("ttl_ms", None)
        at, start = time.time(), time.perf_counter_ns()
        api.remember(**args)
        latencies.append(time.perf_counter_ns() - start)
        if latencies[-1] > SLOW_NS:
            slow.append((at, latencies[-1] / 1e6))
        time.sleep(pause)
out.write_text(json.dumps({"latencies": latencies, "slow": slow, "stages": stages}))
"""
EXPIRED_SHARE = 0.30
DUPLICATE_SHARE = 0.20


def store_bytes(store_dir: Path) -> int:
    """Bytes on disk of the store: the database, its WAL and the vector index file (when there is one)."""
    return sum(f.stat().st_size for f in store_dir.iterdir()
               if f.is_file() and (f.name.startswith("memory.db") or f.name.startswith("vectors.usearch")))


def open_store(store_dir: Path, embedder: str) -> UnifiedMemoryAPI:
    api = UnifiedMemoryAPI(config(store_dir, embedder, merge_undo_days=0))
    if embedder != "none":
        from vector_cache import install

        install(api)  # the corpus's vectors, embedded once (bench/out/vector-cache)
    return api


def build(store_dir: Path, size: int, corpus: Corpus, batch: int, embedder: str) -> dict[str, Any]:
    """N memories: 30% expiring at once, 20% exact copies of earlier ones (kept apart: merge off)."""
    if store_dir.exists():
        shutil.rmtree(store_dir)
    rng = random.Random(size)
    originals = int(size * (1 - DUPLICATE_SHARE))
    started = time.perf_counter()
    texts: list[tuple[str, str]] = []  # the live originals: their copies are duplicates of live memories
    with open_store(store_dir, embedder) as api:
        records = corpus.memories(originals)
        done = 0
        while done < size:
            with api.batch_operations():
                for _ in range(min(batch, size - done)):
                    if done < originals:
                        args = Corpus.remember_args(next(records))
                        args.pop("ttl_ms", None)
                        expire = rng.random() < EXPIRED_SHARE / (1 - DUPLICATE_SHARE)
                        if not expire:
                            texts.append((args["content"], args.get("scope", "global")))
                        api.remember(**args, ttl_ms=1 if expire else None, merge="off")
                    else:
                        text, scope = rng.choice(texts)
                        api.remember(text.upper(), scope=scope, merge="off")
                    done += 1
            log(f"  built {done:,} / {size:,}")
        if embedder != "none":
            api.rebuild_vector_index(full=True)
    return {"rows": size, "seconds": round(time.perf_counter() - started, 1)}


class CheckpointTimer:
    """The compactor's own WAL checkpoints over 50 ms (start, ms), from its connection's statement trace: a
    checkpoint lasts until the connection's next statement begins."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.slow: list[tuple[float, float]] = []
        self._began: float | None = None
        conn.set_trace_callback(self._trace)

    def _trace(self, sql: str) -> None:
        now = time.time()
        if self._began is not None and now - self._began > 0.05:
            self.slow.append((self._began, (now - self._began) * 1000))
        self._began = now if sql.lstrip().upper().startswith("PRAGMA WAL_CHECKPOINT") else None

    def stop(self) -> None:
        self.conn.set_trace_callback(None)


def place_slow_writes(written: dict[str, Any], started_at: float,
                      steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each write over 100 ms: when it started (s into compaction), in which step, and where it spent its time
    (the stages of the performance alert the writer raised as it ended)."""
    placed = []
    for at, ms in written["slow"]:
        offset, end, step = at - started_at, 0.0, "before or after compaction"
        for s in steps:
            if 0 <= offset < end + s["ms"] / 1000:
                step = s["strategy"]
                break
            end += s["ms"] / 1000
        stages = [st for alert_at, st in written["stages"] if at <= alert_at <= at + ms / 1000 + 0.5]
        placed.append({"at_s": round(offset, 1), "ms": round(ms, 1), "step": step,
                       "stages_ms": stages[0] if stages else None})
    return placed


def recall_lists(api: UnifiedMemoryAPI, queries: list[str], k: int = 10) -> list[list[str]]:
    return [[m.id for m in api.recall(q, top_k=k, mode="text")] for q in queries]


def run(store_dir: Path, corpus: Corpus, size: int, write_every_ms: float, replay: bool,
        embedder: str) -> dict[str, Any]:
    queries = [q.text for q in corpus.queries(60)]
    with open_store(store_dir, embedder) as api:
        api.storage.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        before_size = store_bytes(store_dir)
        counts_before = api.counts()
        analysis = api.compact_analyze()
        before_lists = recall_lists(api, queries)
        # The writer is another process, as an agent's server or CLI is: it writes single memories at an
        # agent's pace until told to stop, timing each, and leaves its latencies in a file.
        stop_file, out_file = store_dir / "writer.stop", store_dir / "writer.json"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store_dir), str(stop_file), str(out_file),
                                   str(size), str(write_every_ms), embedder], cwd=str(Path(__file__).resolve().parent))
        time.sleep(2.0)  # the writer is up and writing
        load_before = os.getloadavg()
        checkpoints = CheckpointTimer(api.storage.conn)
        started, started_at = time.perf_counter(), time.time()
        report = api.compact()  # every default strategy: sliced, no full rewrite
        seconds = time.perf_counter() - started
        load_during = os.getloadavg()
        stop_file.touch()
        writer.wait(timeout=120)
        written = json.loads(out_file.read_text())
        latencies = written["latencies"]
        checkpoints.stop()
        slow_writes = place_slow_writes(written, started_at, report["steps"])
        slow_checkpoints = [{"at_s": round(at - started_at, 1), "ms": round(ms, 1)} for at, ms in checkpoints.slow]
        if embedder != "none":
            # The writer's last memories wait for their vectors (the store embeds in the background): embedded
            # and indexed, each costs what a memory of the pristine store costs, as the estimate below assumes.
            api.embed_pending()
            api.rebuild_vector_index()
        api.storage.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        after_size = store_bytes(store_dir)
        # The writer's memories are not the compaction's: its share, at the store's own bytes per memory.
        written_bytes = int(len(latencies) * before_size / size)
        # Then the step only an idle window gets (the writer has stopped): a full rewrite, lock held.
        rewrite = api.compact(["rewrite"])["steps"][0]
        rewritten_size = store_bytes(store_dir)
        # Survivors: memories live before and after (the writer's new ones are left out of both lists).
        survivors = {m.id for m in api.iter_memories()} & {i for b in before_lists for i in b}
        after_lists = recall_lists(api, queries, k=40)
        kept = [([i for i in b if i in survivors], [i for i in a if i in survivors])
                for b, a in zip(before_lists, after_lists, strict=True)]
        found = sum(set(b) <= set(a) for b, a in kept)  # every survivor found before is found after
        ordered = sum(a[:len(b)] == b for b, a in kept)  # and in the same order, ahead of the rest
        if replay:  # the whole doctor: every op verified and replayed into a scratch store
            doctor: Any = api.doctor(quick=True).ok
        else:  # its checks without the replay (which takes about as long as the build)
            integrity = api.storage.conn.execute("PRAGMA quick_check").fetchone()[0]
            doctor = {"quick_check": integrity, "fts": fts_problem(api.storage.conn) or "ok",
                      "fts_levels": fts_levels(api.storage.conn), "replay": "skipped (--no-replay)"}
    return {"size": size, "embedder": embedder, "before_bytes": before_size, "after_bytes": after_size,
            "shrunk_share": round(1 - after_size / before_size, 4),
            "writer_bytes_estimated": written_bytes,
            "shrunk_share_without_writes": round(1 - (after_size - written_bytes) / before_size, 4),
            "after_rewrite_bytes": rewritten_size,
            "shrunk_share_after_rewrite_without_writes": round(1 - (rewritten_size - written_bytes) / before_size, 4),
            "rewrite": rewrite, "load_average": {"before": load_before, "end": load_during},
            "write_every_ms": write_every_ms, "counts_before": counts_before,
            "analysis_reclaimable": analysis["reclaimable_bytes"], "compact_seconds": round(seconds, 1),
            "steps": report["steps"], "writes_during": summary(latencies),
            "slow_writes": slow_writes, "slow_checkpoints": slow_checkpoints,
            "recall_survivors_found": f"{found}/{len(queries)}", "recall_same_order": f"{ordered}/{len(queries)}",
            "doctor_ok": doctor}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    parser.add_argument("--write-every-ms", type=float, default=10.0,
                        help="the writer's pause between two memories (default 10: 100 a second at most)")
    parser.add_argument("--no-replay", action="store_true",
                        help="doctor's checks without its replay of every op (which takes as long as the build)")
    parser.add_argument("--rebuild", action="store_true", help="build the store even if a kept build exists")
    parser.add_argument("--build-only", action="store_true", help="build (and keep) the store, do not compact")
    parser.add_argument("--embedder", default="none", help="none (text only) or minilm (vectors and the HNSW file)")
    args = parser.parse_args(argv)
    corpus = Corpus()
    tag = "" if args.embedder == "none" else f"-{args.embedder}"
    pristine = Path(args.out) / f"compact-pristine-{args.size}{tag}"
    built_file = pristine / "built.json"
    if args.rebuild or not built_file.exists():
        log(f"building {args.size:,} memories ({EXPIRED_SHARE:.0%} expiring, {DUPLICATE_SHARE:.0%} duplicates) ...")
        built = build(pristine, args.size, corpus, args.batch, args.embedder)
        built_file.write_text(json.dumps(built) + "\n")
    built = json.loads(built_file.read_text())
    if args.build_only:
        return 0
    store_dir = Path(args.out) / f"compact-store-{args.size}{tag}"
    if store_dir.exists():
        shutil.rmtree(store_dir)
    log(f"copying the kept build {pristine} ...")
    shutil.copytree(pristine, store_dir, ignore=shutil.ignore_patterns("built.json", "monitor"))
    time.sleep(0.1)
    log("compacting while a writer writes ...")
    result = {"machine": machine(), "build": built, **run(store_dir, corpus, args.size, args.write_every_ms,
                                                                  not args.no_replay, args.embedder)}
    w = result["writes_during"]
    print(f"{args.size:,} memories: {result['before_bytes'] / 1e6:.1f} MB -> {result['after_bytes'] / 1e6:.1f} MB "
          f"with {w['n']:,} memories written meanwhile (~{result['writer_bytes_estimated'] / 1e6:.1f} MB): shrunk "
          f"{result['shrunk_share_without_writes']:.1%} without them (target >= 50%) in {result['compact_seconds']} s;"
          f" after a full rewrite ({result['rewrite']['lock_held_ms'] / 1000:.1f} s, lock held) "
          f"{result['after_rewrite_bytes'] / 1e6:.1f} MB: {result['shrunk_share_after_rewrite_without_writes']:.1%}\n"
          f"writes during compaction: n {w['n']} p50 {w['p50']:.2f} ms p99 {w['p99']:.2f} ms max {w['max']:.1f} ms "
          f"(target p99 < 50 ms)\nrecalls finding the same survivors: {result['recall_survivors_found']} (same order"
          f" {result['recall_same_order']}); "
          f"doctor ok: {result['doctor_ok']}")
    for step in result["steps"]:
        print(f"  {step}")
    out = Path(args.out) / f"compact-{args.size}{tag}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
