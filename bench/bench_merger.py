"""What duplicate detection costs a write, at 100k and 1M memories.

For each size: a store of the corpus's first N memories (built once under
``--out``, reused after; embedder ``none``: the write path never embeds), then
in one run, interleaved so machine noise falls on both alike:

- ``remember`` of a new memory with duplicate detection on (the default: one
  probe of the per-scope normal-form index inside the writing transaction);
- ``remember`` of a new memory with ``merge="off"`` (no probe);
- ``remember`` of an exact duplicate of a stored memory (its write absorbed
  into that memory: update + merge ops).

Each call is its own transaction (``durability="normal"``), as an agent's
writes are. Target (issue 14): p50 <= 1 ms with detection on, at 1M.

    python bench/bench_merger.py --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import build
from benchlib import config, log, machine, summary
from corpus import Corpus

from neuralsync import UnifiedMemoryAPI

TARGET_P50_MS = 1.0


def measure(store_dir: Path, corpus: Corpus, size: int, count: int, seed: int) -> dict[str, Any]:
    """Interleaved single writes: new with detection, new without, exact repeats."""
    fresh = [Corpus.remember_args(r) for r in corpus.memories(size + 2 * count + 40, size)]
    rng = random.Random(seed)
    with UnifiedMemoryAPI(config(store_dir, "none")) as api:
        stored = [m for m in api.range_recall(limit=20_000) if m.expires_at is None]
        repeats = [{"content": m.content.upper(), "scope": m.scope} for m in rng.sample(stored, count + 20)]
        for record in fresh[:20]:
            api.remember(**record)
        for repeat in repeats[:20]:
            api.remember(**repeat)
        timings: dict[str, list[int]] = {"new_detect": [], "new_off": [], "repeat_merged": []}
        merged = 0
        for i in range(count):
            calls: tuple[tuple[str, Callable[[], object]], ...] = (
                ("new_detect", lambda i=i: api.remember(**fresh[40 + 2 * i])),  # type: ignore[misc]
                ("new_off", lambda i=i: api.remember(**fresh[41 + 2 * i], merge="off")),  # type: ignore[misc]
                ("repeat_merged", lambda i=i: api.remember_outcome(**repeats[20 + i])))  # type: ignore[misc]
            for name, call in calls:
                start = time.perf_counter_ns()
                result = call()
                timings[name].append(time.perf_counter_ns() - start)
                merged += name == "repeat_merged" and bool(getattr(result, "merged", False))
        counts = api.counts()
    return {**{name: summary(values) for name, values in timings.items()}, "repeats_merged": merged,
            "repeats": count, "memories_after": counts["memories"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--count", type=int, default=2000, help="timed calls of each kind per size")
    parser.add_argument("--batch", type=int, default=5000, help="memories per batch when building a store")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    parser.add_argument("--rebuild", action="store_true", help="build the stores again")
    args = parser.parse_args(argv)
    corpus = Corpus()
    results: dict[str, Any] = {"machine": machine(), "sizes": {}}
    for size in args.sizes:
        store_dir = Path(args.out) / f"store-{size}"
        if args.rebuild or not (store_dir / "memory.db").exists():
            log(f"building {size:,} memories in {store_dir} ...")
            results.setdefault("builds", {})[size] = {k: v for k, v in build(store_dir, size, corpus, args.batch,
                                                                              "none").items() if k != "batches"}
        log(f"measuring {args.count:,} writes of each kind at {size:,} ...")
        result = measure(store_dir, corpus, size, args.count, seed=size)
        results["sizes"][size] = result
        on, off, rep = result["new_detect"], result["new_off"], result["repeat_merged"]
        verdict = "met" if on["p50"] <= TARGET_P50_MS else "MISSED"
        print(f"{size:>9,}  new, detection on  p50 {on['p50']:.3f} ms  p99 {on['p99']:.3f} ms   ({verdict}: p50 <= "
              f"{TARGET_P50_MS} ms)\n{'':>9}  new, merge=off     p50 {off['p50']:.3f} ms  p99 {off['p99']:.3f} ms\n"
              f"{'':>9}  exact repeat       p50 {rep['p50']:.3f} ms  p99 {rep['p99']:.3f} ms  "
              f"({result['repeats_merged']}/{result['repeats']} merged)")
    out = Path(args.out) / f"merger-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
