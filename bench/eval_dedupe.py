"""When are two memories the same fact? The near-duplicate rule measured on labelled pairs.

Loads ``bench/eval/dedupe_pairs.jsonl`` (short developer-memory facts in
pairs, each labelled ``duplicate`` true/false with a ``type``: paraphrase,
reorder, abbreviation, detail, near_exact for duplicates; negation, number,
alternative, environment, reversed, related for different facts), embeds
every text with the default embedder (MiniLM, offline) and compares two rules:

- ``cosine``: same normalised text, or cosine >= threshold;
- ``cosine+lexical``: :func:`neuralsync.search.similarity.near_duplicate`
  (the same, unless ``lexical_conflict`` finds a reason the texts differ).

The pairs are split in two halves by a hash of the pair (stable as pairs are added).
Each rule's threshold is chosen on the tuning half by maximising F0.5
(precision weighted twice recall: merging two different facts loses one of
them, missing a duplicate only leaves a redundant memory), ties to the higher
threshold; precision, recall and F1 are reported on the held-out half, with
the errors per type and which lexical rule blocked what. Runs in a few seconds::

    python bench/eval_dedupe.py                 # prints the summary, writes bench/out/dedupe-<time>.json
    python bench/eval_dedupe.py --errors        # also lists the held-out mistakes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from neuralsync.search.similarity import (  # noqa: E402
    DEFAULT_NEAR_THRESHOLD,
    lexical_conflict,
    near_duplicate,
    normalise,
)

PAIRS = ROOT / "bench" / "eval" / "dedupe_pairs.jsonl"
GRID = tuple(round(0.50 + 0.01 * i, 2) for i in range(50))  # 0.50 .. 0.99
BETA = 0.5


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    duplicate: bool
    type: str


def load_pairs(path: Path = PAIRS) -> list[Pair]:
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            pairs.append(Pair(row["a"], row["b"], bool(row["duplicate"]), row["type"]))
    return pairs


def _key(pair: Pair) -> str:
    return hashlib.sha256(f"{pair.a}\x00{pair.b}".encode()).hexdigest()


def split(pairs: Sequence[Pair]) -> tuple[list[int], list[int]]:
    """Indices of the tuning and held-out halves, by one bit of a hash of the pair: a pair's half never
    changes when pairs are added, so the held-out half stays unseen."""
    tune = [i for i, p in enumerate(pairs) if int(_key(p)[:8], 16) % 2 == 0]
    held = [i for i, p in enumerate(pairs) if int(_key(p)[:8], 16) % 2 == 1]
    return tune, held


def cosines(pairs: Sequence[Pair], embedder_spec: str = "minilm") -> list[float]:
    """Cosine of each pair's two texts under the embedder (unit vectors: the dot product)."""
    from neuralsync.search.embed import get_embedder

    embedder = get_embedder(embedder_spec)
    texts = sorted({t for p in pairs for t in (p.a, p.b)})
    vectors = embedder.embed(texts)
    row = {t: i for i, t in enumerate(texts)}
    return [float(vectors[row[p.a]] @ vectors[row[p.b]]) for p in pairs]


Rule = Callable[[Pair, float, float], bool]


def cosine_only(pair: Pair, cosine: float, threshold: float) -> bool:
    return normalise(pair.a) == normalise(pair.b) or cosine >= threshold


def with_lexical(pair: Pair, cosine: float, threshold: float) -> bool:
    return near_duplicate(pair.a, pair.b, cosine, threshold).duplicate


RULES: dict[str, Rule] = {"cosine": cosine_only, "cosine+lexical": with_lexical}


def scores(pairs: Sequence[Pair], cos: Sequence[float], indices: Sequence[int], rule: Rule,
           threshold: float) -> dict[str, Any]:
    tp = fp = fn = tn = 0
    errors: Counter[str] = Counter()
    for i in indices:
        predicted = rule(pairs[i], cos[i], threshold)
        truth = pairs[i].duplicate
        tp += predicted and truth
        fp += predicted and not truth
        fn += truth and not predicted
        tn += not predicted and not truth
        if predicted != truth:
            errors[pairs[i].type] += 1
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fb = (1 + BETA**2) * precision * recall / (BETA**2 * precision + recall) if precision + recall else 0.0
    return {"threshold": threshold, "precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(f1, 4), "f0.5": round(fb, 4), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "errors_by_type": dict(sorted(errors.items()))}


def choose(pairs: Sequence[Pair], cos: Sequence[float], tune: Sequence[int], rule: Rule) -> float:
    """The threshold with the best F0.5 on the tuning half (ties: the higher threshold)."""
    return max(GRID, key=lambda t: (scores(pairs, cos, tune, rule, t)["f0.5"], t))


def blocked_by(pairs: Sequence[Pair], cos: Sequence[float], indices: Sequence[int], threshold: float
               ) -> dict[str, dict[str, int]]:
    """Among pairs at or above the threshold: which lexical rule fired on duplicates (lost merges)
    and on different facts (saved merges)."""
    out: dict[str, Counter[str]] = {"duplicates_blocked": Counter(), "different_blocked": Counter()}
    for i in indices:
        if cos[i] < threshold:
            continue
        reason = lexical_conflict(pairs[i].a, pairs[i].b)
        if reason:
            rule = reason.split(" (")[0]
            out["duplicates_blocked" if pairs[i].duplicate else "different_blocked"][rule] += 1
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def _short(result: dict[str, Any]) -> dict[str, float]:
    return {k: result[k] for k in ("precision", "recall", "f1")}


def evaluate(pairs: Sequence[Pair], cos: Sequence[float]) -> dict[str, Any]:
    tune, held = split(pairs)
    report: dict[str, Any] = {
        "pairs": len(pairs), "duplicates": sum(p.duplicate for p in pairs), "tune": len(tune), "heldout": len(held),
        "types": dict(sorted(Counter(p.type for p in pairs).items())),
        "criterion": f"max F{BETA} on the tuning half, ties to the higher threshold",
        "default_threshold": DEFAULT_NEAR_THRESHOLD, "rules": {},
    }
    for name, rule in RULES.items():
        chosen = choose(pairs, cos, tune, rule)
        report["rules"][name] = {"chosen": chosen, "tune": scores(pairs, cos, tune, rule, chosen),
                                 "heldout": scores(pairs, cos, held, rule, chosen),
                                 "heldout_at_default": scores(pairs, cos, held, rule, DEFAULT_NEAR_THRESHOLD)}
    report["curve"] = {f"{t:.2f}": {"tune": _short(scores(pairs, cos, tune, with_lexical, t)),
                                    "heldout": _short(scores(pairs, cos, held, with_lexical, t))}
                       for t in GRID if round(t * 100) % 5 == 0}
    report["lexical_rules_heldout_at_default"] = blocked_by(pairs, cos, held, DEFAULT_NEAR_THRESHOLD)
    by_type: dict[str, list[float]] = {}
    for p, c in zip(pairs, cos, strict=True):
        by_type.setdefault(p.type, []).append(c)
    report["cosine_by_type"] = {k: {"min": round(min(v), 3), "median": round(sorted(v)[len(v) // 2], 3),
                                    "max": round(max(v), 3)} for k, v in sorted(by_type.items())}
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=Path, default=PAIRS)
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--errors", choices=("heldout", "tune"), help="list one half's mistakes at the default")
    parser.add_argument("--threshold", type=float, default=DEFAULT_NEAR_THRESHOLD, help="for --errors")
    args = parser.parse_args(argv)
    pairs = load_pairs(args.pairs)
    started = time.perf_counter()
    cos = cosines(pairs, args.embedder)
    report = evaluate(pairs, cos)
    report["embedder"] = args.embedder
    report["embed_seconds"] = round(time.perf_counter() - started, 2)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"dedupe-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"{report['pairs']} pairs ({report['duplicates']} duplicates), tune {report['tune']} / "
          f"held-out {report['heldout']}; {report['criterion']}")
    for name, result in report["rules"].items():
        h, d = result["heldout"], result["heldout_at_default"]
        print(f"{name:15s} chosen {result['chosen']:.2f}: held-out P {h['precision']:.3f} R {h['recall']:.3f} "
              f"F1 {h['f1']:.3f} errors {h['errors_by_type']}")
        print(f"{'':15s} at default {DEFAULT_NEAR_THRESHOLD:.2f}: P {d['precision']:.3f} R {d['recall']:.3f} "
              f"F1 {d['f1']:.3f} errors {d['errors_by_type']}")
    print("lexical rules on held-out pairs above the default:", report["lexical_rules_heldout_at_default"])
    print("cosine by type:", report["cosine_by_type"])
    if args.errors:
        tune, held = split(pairs)
        for i in held if args.errors == "heldout" else tune:
            decision = near_duplicate(pairs[i].a, pairs[i].b, cos[i], args.threshold)
            if decision.duplicate != pairs[i].duplicate:
                print(f"  [{pairs[i].type}] {cos[i]:.3f} {decision.reason}: {pairs[i].a!r} | {pairs[i].b!r}")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
