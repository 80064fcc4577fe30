"""Retrieval quality of recall modes on a hand-labelled evaluation set.

Loads ``bench/eval/eval_set.json`` (memories with stable labels, queries with
the labels that answer them) into a fresh temporary store, runs every query in
each mode (``text``, ``semantic``, ``hybrid``) and reports recall@5,
recall@10, MRR and mean latency, overall and per query type:

- ``paraphrase``: the query shares (almost) no content words with its answers;
- ``keyword``: the query shares words with its answer (text search's home turf).

Definitions: recall@k = share of a query's answers found in the top k,
averaged over queries; MRR = mean of 1/rank of the first answer in the top 10
(0 when none is). Runs offline in a few seconds::

    python bench/eval_quality.py                     # wordllama (default)
    python bench/eval_quality.py --embedder hashing  # dependency-free fallback
    python bench/eval_quality.py --json              # machine-readable
    python bench/eval_quality.py --misses            # list the queries each mode misses
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI  # noqa: E402

EVAL_SET = Path(__file__).resolve().parent / "eval" / "eval_set.json"
MODES = ("text", "semantic", "hybrid")
DEPTH = 10  # results fetched per query; MRR is MRR@10
_WORD = re.compile(r"[^\W_]+")
# Function words a paraphrase may share with its answer without giving it away.
STOPWORDS = frozenset("""a about after an and any are as at be before by can do does for from her how i in is it its
me my no not of on or our s she should than that the their them then there they this to was we what when where which
who whom why with you your""".split())


@dataclass(frozen=True, slots=True)
class EvalQuery:
    """One labelled query."""

    text: str
    answers: tuple[str, ...]
    type: str
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class EvalSet:
    """Memories (dicts with ``label``, ``content``, ``scope``, ``kind``, ``tags``) and queries."""

    memories: list[dict[str, Any]]
    queries: list[EvalQuery]

    def query(self, text: str, scope: str | None = None) -> EvalQuery:
        """The query with this text (and scope)."""
        for q in self.queries:
            if q.text == text and q.scope == scope:
                return q
        raise KeyError(text)


@dataclass(slots=True)
class QueryResult:
    """What one mode returned for one query."""

    query: EvalQuery
    mode: str
    labels: list[str]  # labels of the returned memories, best first
    latency_ms: float

    def rank(self) -> int | None:
        """1-based rank of the first answer, or None."""
        for i, label in enumerate(self.labels, 1):
            if label in self.query.answers:
                return i
        return None

    def recall(self, k: int) -> float:
        found = set(self.labels[:k]).intersection(self.query.answers)
        return len(found) / len(self.query.answers)


@dataclass(slots=True)
class ModeReport:
    """Aggregates of one mode over a set of queries."""

    results: list[QueryResult] = field(default_factory=list)

    def subset(self, kind: str | None) -> list[QueryResult]:
        return [r for r in self.results if kind is None or r.query.type == kind]

    def metrics(self, kind: str | None = None) -> dict[str, float]:
        rows = self.subset(kind)
        if not rows:
            return {"queries": 0}
        ranks = [r.rank() for r in rows]
        return {
            "queries": len(rows),
            "recall@5": round(statistics.fmean(r.recall(5) for r in rows), 4),
            "recall@10": round(statistics.fmean(r.recall(10) for r in rows), 4),
            "mrr": round(statistics.fmean(0.0 if k is None else 1.0 / k for k in ranks), 4),
            "latency_ms": round(statistics.fmean(r.latency_ms for r in rows), 3),
        }


def load_eval_set(path: Path | str = EVAL_SET) -> EvalSet:
    """Read and check the set: unique labels, every answer label exists."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    memories = raw["memories"]
    labels = [m["label"] for m in memories]
    if len(labels) != len(set(labels)):
        raise ValueError("duplicate memory labels in the evaluation set")
    known = set(labels)
    queries = []
    for q in raw["queries"]:
        answers = tuple(q["answers"])
        missing = [a for a in answers if a not in known]
        if not answers or missing:
            raise ValueError(f"query {q['query']!r}: unknown or missing answers {missing}")
        queries.append(EvalQuery(q["query"], answers, q["type"], q.get("scope")))
    return EvalSet(memories, queries)


def content_words(text: str) -> set[str]:
    """Lower-case word tokens (split like the full-text index splits) minus :data:`STOPWORDS`."""
    return set(_WORD.findall(text.lower())) - STOPWORDS


def overlap(eval_set: EvalSet, query: EvalQuery) -> set[str]:
    """Content words a query shares with any of its answers."""
    contents = {m["label"]: m["content"] for m in eval_set.memories}
    shared: set[str] = set()
    for label in query.answers:
        shared |= content_words(query.text) & content_words(contents[label])
    return shared


def open_store(base_path: Path | str, embedder: str = "wordllama") -> UnifiedMemoryAPI:
    """An API on a store at ``base_path`` with the given embedder."""
    return UnifiedMemoryAPI(MemoryConfig(base_path=str(base_path), embedder=embedder))


def load_into(api: UnifiedMemoryAPI, eval_set: EvalSet, build_index: bool = True) -> dict[str, str]:
    """Remember every memory (one batch); returns label -> memory id."""
    label_to_id: dict[str, str] = {}
    with api.batch_operations():
        for m in eval_set.memories:
            label_to_id[m["label"]] = api.remember(m["content"], scope=m.get("scope", "global"),
                                                   kind=m.get("kind", "fact"), tags=m.get("tags") or None)
    api.embed_pending()
    if build_index:
        api.rebuild_vector_index()
    return label_to_id


def run_query(api: UnifiedMemoryAPI, query: EvalQuery, mode: str, id_to_label: dict[str, str],
              top_k: int = DEPTH) -> QueryResult:
    """Run one query in one mode through ``recall`` and time it."""
    started = time.perf_counter()
    hits = api.recall(query.text, scope=query.scope, top_k=top_k, mode=mode)
    elapsed = (time.perf_counter() - started) * 1000
    return QueryResult(query, mode, [id_to_label.get(m.id, "?") for m in hits], elapsed)


def evaluate(api: UnifiedMemoryAPI, eval_set: EvalSet, label_to_id: dict[str, str],
             modes: Iterable[str] = MODES) -> dict[str, ModeReport]:
    """Every query in every mode; one warm-up query per mode is not counted."""
    id_to_label = {v: k for k, v in label_to_id.items()}
    reports: dict[str, ModeReport] = {}
    for mode in modes:
        run_query(api, eval_set.queries[0], mode, id_to_label)
        report = ModeReport()
        for query in eval_set.queries:
            report.results.append(run_query(api, query, mode, id_to_label))
        reports[mode] = report
    return reports


def run_eval(embedder: str = "wordllama", path: Path | str = EVAL_SET, build_index: bool = True,
             modes: Sequence[str] = MODES) -> tuple[EvalSet, dict[str, ModeReport], dict[str, Any]]:
    """Load the set into a temporary store and evaluate; returns (set, reports, run info)."""
    eval_set = load_eval_set(path)
    with tempfile.TemporaryDirectory(prefix="eval-quality-") as tmp:
        api = open_store(Path(tmp) / "store", embedder)
        try:
            started = time.perf_counter()
            label_to_id = load_into(api, eval_set, build_index)
            load_s = time.perf_counter() - started
            reports = evaluate(api, eval_set, label_to_id, modes)
            name = api.semantic.embedder.name if api.semantic is not None else embedder
        finally:
            api.close()
    info = {"embedder": name, "memories": len(eval_set.memories), "queries": len(eval_set.queries),
            "load_seconds": round(load_s, 3), "vector_index": build_index}
    return eval_set, reports, info


def summary(reports: dict[str, ModeReport], info: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready figures: per mode, overall and per query type, plus every query's ranks."""
    out: dict[str, Any] = {**info, "modes": {}}
    for mode, report in reports.items():
        out["modes"][mode] = {"all": report.metrics(), "paraphrase": report.metrics("paraphrase"),
                              "keyword": report.metrics("keyword")}
    first = next(iter(reports.values()))
    out["per_query"] = [
        {"query": r.query.text, "type": r.query.type, "scope": r.query.scope, "answers": list(r.query.answers),
         "rank": {mode: reports[mode].results[i].rank() for mode in reports}}
        for i, r in enumerate(first.results)
    ]
    return out


def format_table(data: dict[str, Any]) -> str:
    lines = [f"embedder {data['embedder']}: {data['memories']} memories, {data['queries']} queries, "
             f"loaded in {data['load_seconds']:.2f} s (vector index file: {data['vector_index']})", ""]
    head = f"{'mode':<9} {'subset':<11} {'n':>3} {'recall@5':>9} {'recall@10':>10} {'MRR':>7} {'mean ms':>8}"
    lines += [head, "-" * len(head)]
    for mode, subsets in data["modes"].items():
        for subset, m in subsets.items():
            if not m.get("queries"):
                continue
            lines.append(f"{mode:<9} {subset:<11} {m['queries']:>3} {m['recall@5']:>9.3f} {m['recall@10']:>10.3f}"
                         f" {m['mrr']:>7.3f} {m['latency_ms']:>8.2f}")
    return "\n".join(lines)


def format_misses(reports: dict[str, ModeReport], k: int = 5) -> str:
    lines = []
    for mode, report in reports.items():
        lines.append(f"\n{mode}: queries with no answer in the top {k}")
        for r in report.results:
            if r.recall(k) == 0:
                lines.append(f"  [{r.query.type[:4]}] {r.query.text!r} -> want {list(r.query.answers)},"
                             f" got {r.labels[:3]}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedder", default="wordllama", help="embedder spec (wordllama, hashing, ...)")
    parser.add_argument("--set", default=str(EVAL_SET), help="evaluation set JSON")
    parser.add_argument("--no-index", action="store_true",
                        help="do not build the HNSW file (vectors are then searched exactly)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--misses", action="store_true", help="also list the queries each mode misses")
    args = parser.parse_args(argv)
    _, reports, info = run_eval(args.embedder, args.set, not args.no_index, args.modes)
    data = summary(reports, info)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(format_table(data))
        if args.misses:
            print(format_misses(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
