"""Retrieval quality of recall modes on a hand-labelled evaluation set.

Loads a labelled set (``bench/eval/eval_set.json`` by default; memories with
stable labels, queries with the labels that answer them) into a fresh
temporary store, optionally among ``--distractors N`` generated memories
(``bench/corpus.py``), runs every query in each mode (``text``, ``semantic``,
``hybrid``, and ``bm25``: plain FTS5 BM25 over the query's non-stop words, a
baseline outside ``recall``) and reports recall@5, recall@10, MRR and mean
latency, overall and per query type:

- ``paraphrase``: the query shares (almost) no content words with its answers;
- ``keyword``: the query shares words with its answer (text search's home turf).

Definitions: recall@k = share of a query's answers found in the top k,
averaged over queries; MRR = mean of 1/rank of the first answer in the top 10
(0 when none is). Runs offline in a few seconds::

    python bench/eval_quality.py                     # wordllama (default)
    python bench/eval_quality.py --embedder hashing  # dependency-free fallback
    python bench/eval_quality.py --json              # machine-readable
    python bench/eval_quality.py --misses            # list the queries each mode misses

Tuning without fooling ourselves: ``--half heldout`` (or ``tuning``) keeps one
half of the queries, split by ``--seed`` within each (type, scoped) stratum;
``--cv`` chooses the fusion (weights, normalisation, semantic floor) by a grid
search on the tuning half only - each query's candidates are gathered once,
then re-fused for every setting - applies the winner and reports the held-out
half::

    python bench/eval_quality.py --set bench/eval/eval_set_v2.json --cv
    python bench/eval_quality.py --set bench/eval/eval_set_v2.json --distractors 10000 --cv
    python bench/eval_quality.py --set bench/eval/eval_set_v2.json --distractors 100000 --half heldout  # minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import random
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

from neuralsync.search.filters import Filters  # noqa: E402
from neuralsync.search.recall import NORMS, Fusion, fuse  # noqa: E402
from neuralsync.search.text import STOP_WORDS, terms  # noqa: E402
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI  # noqa: E402
from neuralsync.utils import now_ms  # noqa: E402

EVAL_SET = Path(__file__).resolve().parent / "eval" / "eval_set.json"
EVAL_SET_V2 = Path(__file__).resolve().parent / "eval" / "eval_set_v2.json"
MODES = ("text", "semantic", "hybrid")
ALL_MODES = (*MODES, "bm25")
SPLIT_SEED = 11
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
        """Results of one query type, or ``scoped`` / ``unscoped`` queries (None: all)."""
        if kind in ("scoped", "unscoped"):
            return [r for r in self.results if (r.query.scope is not None) == (kind == "scoped")]
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


def split(queries: Sequence[EvalQuery], seed: int = SPLIT_SEED) -> tuple[list[EvalQuery], list[EvalQuery]]:
    """(tuning, held-out): each (type, scoped) stratum shuffled by ``seed`` and cut in half."""
    rng = random.Random(seed)
    tuning: list[EvalQuery] = []
    held: list[EvalQuery] = []
    strata: dict[tuple[str, bool], list[EvalQuery]] = {}
    for q in queries:
        strata.setdefault((q.type, q.scope is not None), []).append(q)
    for key in sorted(strata):
        group = strata[key][:]
        rng.shuffle(group)
        tuning += group[:len(group) // 2]
        held += group[len(group) // 2:]
    order = {id(q): i for i, q in enumerate(queries)}
    return sorted(tuning, key=lambda q: order[id(q)]), sorted(held, key=lambda q: order[id(q)])


def half_of(eval_set: EvalSet, half: str, seed: int = SPLIT_SEED) -> EvalSet:
    """The set with only the ``tuning`` or ``heldout`` half of its queries (``all``: unchanged)."""
    if half == "all":
        return eval_set
    tuning, held = split(eval_set.queries, seed)
    return EvalSet(eval_set.memories, tuning if half == "tuning" else held)


def load_distractors(api: UnifiedMemoryAPI, count: int, seed: int = 7, batch: int = 5000) -> None:
    """``count`` generated memories (``bench/corpus.py``) with the default priority and
    confidence, like the labelled ones, so boosts favour neither."""
    from corpus import Corpus

    corpus = Corpus(seed=seed)
    for start in range(0, count, batch):
        with api.batch_operations():
            for record in corpus.memories(count, start, start + batch):
                args = Corpus.remember_args(record)
                api.remember(args["content"], scope=args["scope"], tags=args["tags"] or None, kind=args["kind"])


def load_into(api: UnifiedMemoryAPI, eval_set: EvalSet, build_index: bool = True,
              distractors: int = 0) -> dict[str, str]:
    """Remember ``distractors`` generated memories, then every labelled one; returns label -> memory id."""
    label_to_id: dict[str, str] = {}
    if distractors:
        load_distractors(api, distractors)
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
    """Run one query in one mode through ``recall`` (``bm25``: :func:`plain_bm25`) and time it."""
    started = time.perf_counter()
    if mode == "bm25":
        ids = plain_bm25(api, query.text, query.scope, top_k)
    else:
        ids = [m.id for m in api.recall(query.text, scope=query.scope, top_k=top_k, mode=mode)]
    elapsed = (time.perf_counter() - started) * 1000
    return QueryResult(query, mode, [id_to_label.get(i, "?") for i in ids], elapsed)


def plain_bm25(api: UnifiedMemoryAPI, text: str, scope: str | None, top_k: int) -> list[str]:
    """The baseline a plain FTS5 user gets: content BM25 over every non-stop query word, OR'ed."""
    words = [w for w in terms(text) if w not in STOP_WORDS] or terms(text)
    if not words:
        return []
    match = "{content} : (" + " OR ".join('"' + w.replace('"', '""') + '"' for w in words) + ")"
    where, args = ("AND m.scope = ?", [scope]) if scope is not None else ("", [])
    with api.storage.read() as conn:
        rows = conn.execute(
            "SELECT m.id FROM memories_fts JOIN memories m ON m.rowid = memories_fts.rowid"
            f" WHERE memories_fts MATCH ? {where} ORDER BY bm25(memories_fts, 1.0, 0.0, 0.0) LIMIT ?",
            (match, *args, top_k)).fetchall()
    return [r[0] for r in rows]


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


# ---------------------------------------------------------------- choosing the fusion
SEMANTIC_ONLY = Fusion(w_sem=1.0, w_text=0.0, w_cover=0.0, floor=0.0, relative_floor=0.0)
W_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6)
GATE_GRID = (0.0, 0.5, 0.75, 0.9, 1.0)
FLOOR_GRID = ((0.0, 0.0), (0.05, 0.0), (0.1, 0.0), (0.0, 0.3), (0.05, 0.3), (0.1, 0.3), (0.0, 0.5), (0.1, 0.5))


def fusion_grid() -> list[Fusion]:
    """The mixes the cross-validation tries, no floor (semantic weight 1, the others relative)."""
    return [Fusion(w_sem=1.0, w_text=w_text, w_cover=w_cover, norm=norm, text_gate=gate, floor=0.0,
                   relative_floor=0.0)
            for norm, w_text, w_cover, gate in itertools.product(NORMS, W_GRID, W_GRID, GATE_GRID)
            if not (gate and w_text == w_cover == 0.0)]


def with_floors(fusion: Fusion) -> list[Fusion]:
    """``fusion`` with each semantic floor the cross-validation tries."""
    return [dataclasses.replace(fusion, floor=f, relative_floor=r) for f, r in FLOOR_GRID]


def gather(api: UnifiedMemoryAPI, queries: Sequence[EvalQuery], label_to_id: dict[str, str],
           pool: int = 3 * DEPTH) -> list[tuple[EvalQuery, list[Any]]]:
    """Each query's hybrid candidates (both signals scored), as ``recall`` would see them."""
    now = now_ms()
    return [(q, api.recaller.candidates(q.text, Filters(scope=q.scope), pool, now)) for q in queries]


def score_fusion(gathered: Sequence[tuple[EvalQuery, list[Any]]], fusion: Fusion,
                 id_to_label: dict[str, str]) -> dict[str, float]:
    """recall@5, recall@10 and MRR of ``fusion`` over pre-gathered candidates."""
    now = now_ms()
    report = ModeReport()
    for q, cands in gathered:
        ranked = fuse(cands, fusion, DEPTH, now)
        report.results.append(QueryResult(q, "hybrid", [id_to_label.get(m.id, "?") for m in ranked], 0.0))
    return report.metrics()


def choose_fusion(stores: Sequence[tuple[UnifiedMemoryAPI, dict[str, str]]], tuning: Sequence[EvalQuery],
                  folds: int = 2, seed: int = SPLIT_SEED) -> tuple[Fusion, dict[str, Any]]:
    """The grid setting with the best (recall@5 + MRR) on the tuning queries, averaged over ``stores``
    (the same set among different numbers of distractors: one default has to serve them all).

    ``folds``-fold cross-validation inside the tuning half says how far the
    choice generalises (each fold's winner scored on the fold it did not see);
    the returned setting is the best on the whole tuning half.
    """
    per_store = [(gather(api, tuning, label_to_id), {v: k for k, v in label_to_id.items()})
                 for api, label_to_id in stores]
    grid = fusion_grid()

    def objective(idx: Sequence[int], fusion: Fusion) -> float:
        total = 0.0
        for gathered, id_to_label in per_store:
            m = score_fusion([gathered[i] for i in idx], fusion, id_to_label)
            total += m["recall@5"] + m["mrr"]
        return total / len(per_store)

    def pick(idx: Sequence[int]) -> tuple[Fusion, list[tuple[float, Fusion]]]:
        # Two stages: the mix without floors, then the floor for that mix (the floor
        # only drops weak semantic-only candidates, so it barely interacts with the mix).
        ranked = sorted(((objective(idx, fu), i) for i, fu in enumerate(grid)), reverse=True)
        mix = grid[ranked[0][1]]
        floors = sorted(((objective(idx, fu), j) for j, fu in enumerate(with_floors(mix))), reverse=True)
        return with_floors(mix)[floors[0][1]], [(o, grid[i]) for o, i in ranked[1:6]]

    rng = random.Random(seed)
    order = list(range(len(tuning)))
    rng.shuffle(order)
    fold_scores = []
    for f in range(folds):
        inner = [i for j, i in enumerate(order) if j % folds != f]
        outer = [i for j, i in enumerate(order) if j % folds == f]
        winner, _ = pick(inner)
        fold_scores.append({"fusion": _fusion_dict(winner), "objective_unseen": round(objective(outer, winner), 4),
                            "objective_semantic_only": round(objective(outer, SEMANTIC_ONLY), 4)})
    everything = list(range(len(tuning)))
    best, runners = pick(everything)
    info = {"grid": len(grid), "tuning_queries": len(tuning), "chosen": _fusion_dict(best),
            "tuning": [score_fusion(g, best, i2l) for g, i2l in per_store], "folds": fold_scores,
            "runners_up": [_fusion_dict(fu) | {"objective": round(o, 4)} for o, fu in runners]}
    return best, info


def _fusion_dict(fusion: Fusion) -> dict[str, Any]:
    return {"norm": fusion.norm, "w_sem": fusion.w_sem, "w_text": fusion.w_text, "w_cover": fusion.w_cover,
            "text_gate": fusion.text_gate, "floor": fusion.floor, "relative_floor": fusion.relative_floor}


def run_eval(embedder: str = "wordllama", path: Path | str = EVAL_SET, build_index: bool = True,
             modes: Sequence[str] = MODES, distractors: Sequence[int] = (0,), half: str = "all", cv: bool = False,
             seed: int = SPLIT_SEED, vector_cache: bool = False,
             also_indexed: bool = False, breadths: Sequence[int] = ()
             ) -> list[tuple[dict[str, ModeReport], dict[str, Any]]]:
    """Load the set into one temporary store per entry of ``distractors`` (that many generated
    memories first) and evaluate the ``half`` of its queries in each. With ``cv``, first choose
    one fusion on the tuning half over all the stores, then report the held-out half. With
    ``vector_cache``, texts embedded by an earlier run are not embedded again (``vector_cache.py``:
    the same model's same vectors). With ``also_indexed`` (and no index built at load), each store is
    evaluated searched exactly, then again after its HNSW file is built: the index's cost in answers
    on the same vectors; each of ``breadths`` (the graph search's breadth) is then tried on that
    file too. Returns (reports, run info) per store and search."""
    full = load_eval_set(path)
    eval_set = half_of(full, "heldout" if cv else half, seed)
    out = []
    with tempfile.TemporaryDirectory(prefix="eval-quality-") as tmp:
        stores: list[tuple[UnifiedMemoryAPI, dict[str, str]]] = []
        infos: list[dict[str, Any]] = []
        try:
            for n in distractors:
                api = open_store(Path(tmp) / f"store-{n}", embedder)
                stores.append((api, {}))
                cached = None
                if vector_cache:
                    from vector_cache import install

                    cached = install(api)
                started = time.perf_counter()
                stores[-1] = (api, load_into(api, full, build_index, n))
                infos.append({"embedder": api.semantic.embedder.name if api.semantic is not None else embedder,
                              "memories": len(full.memories), "distractors": n, "queries": len(eval_set.queries),
                              "half": "heldout" if cv else half, "split_seed": seed,
                              "load_seconds": round(time.perf_counter() - started, 3), "vector_index": build_index})
                if cached is not None:
                    infos[-1]["vector_cache"] = {"hits": cached.hits, "embedded": cached.embedded}
            cv_info = None
            if cv:
                fusion, cv_info = choose_fusion(stores, split(full.queries, seed)[0], seed=seed)
                for api, _ in stores:
                    api.recaller.fusion = fusion
            for (api, label_to_id), info in zip(stores, infos, strict=True):
                info["fusion"] = _fusion_dict(api.recaller.fusion)
                if cv_info is not None:
                    info["cv"] = cv_info
                out.append((evaluate(api, eval_set, label_to_id, modes), info))
                if also_indexed and not build_index:  # the same store again, searched through the index file
                    started = time.perf_counter()
                    api.rebuild_vector_index()
                    indexed = {**info, "vector_index": True, "index_build_seconds":
                               round(time.perf_counter() - started, 1)}
                    out.append((evaluate(api, eval_set, label_to_id, [m for m in modes if m != "bm25"]), indexed))
                    assert api.semantic is not None
                    # Last use of this store: a breadth set here needs no undoing (it is the store's own).
                    for breadth in breadths:  # other search breadths on the same file
                        api.semantic.set_search_breadth(breadth)
                        out.append((evaluate(api, eval_set, label_to_id, [m for m in modes if m in
                                                                          ("semantic", "hybrid")]),
                                    {**indexed, "search_breadth": breadth}))
        finally:
            for api, _ in stores:
                api.close()
    return out


def summary(reports: dict[str, ModeReport], info: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready figures: per mode, overall and per query type, plus every query's ranks."""
    out: dict[str, Any] = {**info, "modes": {}}
    for mode, report in reports.items():
        out["modes"][mode] = {subset: report.metrics(None if subset == "all" else subset)
                              for subset in ("all", "paraphrase", "keyword", "scoped", "unscoped")}
    first = next(iter(reports.values()))
    out["per_query"] = [
        {"query": r.query.text, "type": r.query.type, "scope": r.query.scope, "answers": list(r.query.answers),
         "rank": {mode: reports[mode].results[i].rank() for mode in reports}}
        for i, r in enumerate(first.results)
    ]
    return out


def format_table(data: dict[str, Any]) -> str:
    lines = [f"embedder {data['embedder']}: {data['memories']} memories + {data['distractors']} distractors, "
             f"{data['queries']} queries ({data['half']}, split seed {data['split_seed']}), "
             f"loaded in {data['load_seconds']:.2f} s (vector index file: {data['vector_index']}"
             + (f", breadth {data['search_breadth']}" if "search_breadth" in data else "") + ")",
             f"fusion: {data['fusion']}", ""]
    if "cv" in data:
        cv = data["cv"]
        lines[-1:-1] = [f"chosen on {cv['tuning_queries']} tuning queries from {cv['grid']} settings",
                        "fold checks (R@5 + MRR on the unseen fold, chosen vs semantic only): " + "; ".join(
                            f"{f['objective_unseen']:.3f} vs {f['objective_semantic_only']:.3f}" for f in cv["folds"])]
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
    parser.add_argument("--set", default=str(EVAL_SET), help="evaluation set JSON (eval/eval_set_v2.json: 440 queries)")
    parser.add_argument("--distractors", type=int, nargs="+", default=[0],
                        help="generated memories loaded before the set; several sizes: one store each")
    parser.add_argument("--half", choices=("all", "tuning", "heldout"), default="all",
                        help="evaluate one half of the queries (split by --seed)")
    parser.add_argument("--seed", type=int, default=SPLIT_SEED, help="seed of the tuning / held-out split")
    parser.add_argument("--cv", action="store_true",
                        help="choose the fusion on the tuning half, report the held-out half")
    parser.add_argument("--no-index", action="store_true",
                        help="do not build the HNSW file (vectors are then searched exactly)")
    parser.add_argument("--exact-then-index", action="store_true",
                        help="evaluate each store searched exactly, then again with the HNSW file built")
    parser.add_argument("--breadths", nargs="+", type=int, default=[], metavar="BREADTH",
                        help="with --exact-then-index: also search the file with these search breadths")
    parser.add_argument("--vector-cache", action="store_true",
                        help="reuse vectors of texts embedded by earlier runs (bench/out/vector-cache)")
    parser.add_argument("--modes", nargs="+", default=list(ALL_MODES), choices=ALL_MODES)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--misses", action="store_true", help="also list the queries each mode misses")
    args = parser.parse_args(argv)
    runs = run_eval(args.embedder, args.set, not (args.no_index or args.exact_then_index), args.modes,
                    args.distractors, args.half, args.cv, args.seed, args.vector_cache, args.exact_then_index,
                    args.breadths)
    if args.json:
        print(json.dumps([summary(reports, info) for reports, info in runs], indent=2))
        return 0
    for reports, info in runs:
        print(format_table(summary(reports, info)) + "\n")
        if args.misses:
            print(format_misses(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
