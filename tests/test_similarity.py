"""When two memories are the same fact: the exact key, the lexical rule, what a merge keeps, and the
measured quality of the near-duplicate rule on the held-out half of the labelled pairs."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neuralsync.search.similarity import (
    DEFAULT_NEAR_THRESHOLD,
    Decision,
    content_union,
    lexical_conflict,
    more_specific,
    near_duplicate,
    normalise,
)

EVAL_SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "eval_dedupe.py"
# Measured by bench/eval_dedupe.py with MiniLM at the default threshold: held-out precision 0.903,
# recall 0.882 (243 pairs). The floors leave a margin for onnxruntime and tokenizer versions.
HELDOUT_PRECISION_FLOOR = 0.86
HELDOUT_RECALL_FLOOR = 0.83


# ---------------------------------------------------------------- normalise
@pytest.mark.parametrize(("text", "key"), [
    ("Deploy to staging on Fridays.", "deploy to staging on fridays"),
    ("  Deploy\tto  staging\non Fridays!!  ", "deploy to staging on fridays"),
    ("Use pnpm; ", "use pnpm"),
    ("Why?", "why"),
    ("Done...", "done"),
    ("Ｕｓｅ　ｐｎｐｍ", "use pnpm"),                    # NFKC: full-width letters and space
    ("STRASSE or Straße", "strasse or strasse"),       # casefold, not lower
    ("ﬁle paths", "file paths"),                        # NFKC ligature
    ("Python 3.12.", "python 3.12"),
    ("Use f-strings, not .format()", "use f-strings, not .format()"),  # inner punctuation is kept
    ("", ""),
    (" . ", ""),
])
def test_normalise(text: str, key: str) -> None:
    assert normalise(text) == key


def test_exact_duplicates_are_decided_without_the_cosine() -> None:
    assert near_duplicate("Use pnpm.", "  use PNPM ", cosine=0.0) == Decision(True, "same normalised text")
    assert normalise("Use pnpm.") != normalise("Use pnpm 9.")


# ---------------------------------------------------------------- the lexical rule
@pytest.mark.parametrize(("a", "b", "reason"), [
    ("Deploy to staging on Fridays.", "Never deploy to staging on Fridays.", "negation differs"),
    ("Use semicolons in JS.", "Don't use semicolons in JS.", "negation differs"),
    ("Use semicolons in JS.", "Don’t use semicolons in JS.", "negation differs"),   # typographic apostrophe
    ("Run tests with network access.", "Run tests without network access.", "negation differs"),
    ("PRs can be merged without review.", "PRs can't be merged without review.", "negation differs"),  # 1 vs 2
    ("Telemetry is enabled by default.", "Telemetry is disabled by default.", "negation differs"),
    ("The project targets Python 3.11.", "The project targets Python 3.12.", "numbers differ (3.11 vs 3.12)"),
    ("The API listens on port 8080.", "The API listens on port 8443.", "numbers differ (8080 vs 8443)"),
    ("The sprint length is two weeks.", "The sprint length is 3 weeks.", "numbers differ (2 vs 3)"),
    ("Use pnpm for installing packages.", "Use yarn for installing packages.", "alternatives differ (pnpm vs yarn)"),
    ("Deploy to staging on Fridays.", "Deploy to production on Fridays.",
     "alternatives differ (staging vs production)"),
    ("Deploy to prod on Fridays.", "Deploy to staging on Fridays.", "alternatives differ (production vs staging)"),
    ("Deploy on Fridays.", "Deploy on Mondays.", "alternatives differ (friday vs monday)"),
    ("Recover with git push --force.", "Recover with git push --force-with-lease.",
     "identifiers differ (--force vs --force-with-lease)"),
    ("Settings live in src/app/config.py.", "Settings live in src/app/settings.py.",
     "identifiers differ (src/app/config.py vs src/app/settings.py)"),
    ("Docs are at https://docs.example.com/a.", "Docs are at https://wiki.example.com/a.",
     "identifiers differ (https://docs.example.com/a vs https://wiki.example.com/a)"),
    ("Sort results in ascending order.", "Sort results in descending order.", "opposites (ascending vs descending)"),
])
def test_lexical_conflicts(a: str, b: str, reason: str) -> None:
    assert lexical_conflict(a, b) == reason
    assert lexical_conflict(b, a) is not None


@pytest.mark.parametrize(("a", "b"), [
    ("Use pnpm.", "Use pnpm for all JavaScript packages in this monorepo."),            # extra detail
    ("The API listens on port 8080.", "The API listens on port 8080 in every environment."),
    ("Run tests with pytest.", "Run tests with pytest -q from the repo root."),           # a flag added
    ("Secrets go in Vault.", "Secrets go in Vault under the kv/apps path."),              # a path added
    ("Deploy to prod on Fridays.", "Deploy to production on Fridays."),                  # an alias
    ("The cron job runs at 02:00 UTC.", "At 2:00 UTC every night the cron job runs."),   # one time, two spellings
    ("Never log PII.", "PII must not be logged."),                                        # both negated
    ("Never deploy without tests.", "Don't ever deploy without tests."),                 # both negated twice
    ("Deploy to staging on Fridays.", "Deploy to staging on Fridays, after the QA sign-off."),  # "off" in a word
    ("The entry point is in pyproject.toml under [project.scripts].",
     "The entry point is declared in the [project.scripts] table of pyproject.toml."),
])
def test_no_conflict_for_the_same_fact(a: str, b: str) -> None:
    assert lexical_conflict(a, b) is None
    assert lexical_conflict(b, a) is None


def test_near_duplicate_decisions_and_reasons() -> None:
    fridays = ("Deploy to staging on Fridays.", "Never deploy to staging on Fridays.")
    assert near_duplicate(*fridays, cosine=0.91) == Decision(False, "negation differs")
    paraphrase = ("Use pnpm for installing packages.", "In this repo we install dependencies with pnpm.")
    assert near_duplicate(*paraphrase, cosine=0.93) == Decision(True, f"cosine 0.93 >= {DEFAULT_NEAR_THRESHOLD:.2f}")
    low = near_duplicate(*paraphrase, cosine=0.5)
    assert not low.duplicate and low.reason.startswith("below threshold")
    assert near_duplicate(*paraphrase, cosine=0.85, threshold=0.9).duplicate is False
    assert near_duplicate(*paraphrase, cosine=float("nan")).duplicate is False
    assert 0.5 < DEFAULT_NEAR_THRESHOLD < 1.0


# ---------------------------------------------------------------- what a merge keeps
SPECIFIC_CASES = [
    ("Use pnpm.", "Use pnpm 9 for all JavaScript packages."),
    ("The API listens on port 8080.", "The API listens on port 8080 behind nginx (see deploy/nginx.conf)."),
    ("Format code with black.", "format code with black"),
    ("b", "a"),
    ("Same length X", "Same length Y"),
]


@pytest.mark.parametrize(("a", "b"), SPECIFIC_CASES)
def test_more_specific_is_symmetric_and_deterministic(a: str, b: str) -> None:
    assert more_specific(a, b) == more_specific(b, a) == more_specific(a, b)
    assert more_specific(a, b) in (a, b)
    assert more_specific(a, a) == a


def test_more_specific_prefers_numbers_identifiers_then_content_then_length() -> None:
    assert more_specific("Use pnpm.", "Use pnpm 9 for all JavaScript packages.") == \
        "Use pnpm 9 for all JavaScript packages."
    vague = "The configuration for the whole app is in the settings file."
    assert more_specific("Config is in src/settings.py.", vague) == "Config is in src/settings.py."
    assert more_specific("Prefer early returns.", "Prefer early returns over nested conditionals.") == \
        "Prefer early returns over nested conditionals."
    assert more_specific("Same length X", "Same length Y") == "Same length X"  # tie: the smaller string


@given(st.text(max_size=40), st.text(max_size=40))
def test_more_specific_is_symmetric_for_any_text(a: str, b: str) -> None:
    assert more_specific(a, b) == more_specific(b, a) in (a, b)


def test_content_union() -> None:
    a = "Use pnpm. Run lint before commit."
    b = "use pnpm\nRun the tests too. Run lint before commit!\nRun the tests too."
    assert content_union(a, b) == "Use pnpm. Run lint before commit.\nRun the tests too."
    assert content_union(a, a) == a
    assert content_union(a, "  ") == a
    assert content_union("", "One. Two.") == "One.\nTwo."
    assert content_union("Keep 3.12 pinned.", "Keep 3.12 pinned; bump in May.") == \
        "Keep 3.12 pinned.\nbump in May."  # split at ";", not inside "3.12"
    assert content_union("Line one\nline two", "LINE  TWO.\nline three") == "Line one\nline two\nline three"


def test_every_rule_is_a_pure_function_of_its_arguments() -> None:
    pairs = list(itertools.permutations(["Use pnpm.", "Use yarn.", "Never use yarn.", "Use pnpm 9."], 2))
    first = [(lexical_conflict(a, b), more_specific(a, b), content_union(a, b)) for a, b in pairs]
    again = [(lexical_conflict(a, b), more_specific(a, b), content_union(a, b)) for a, b in pairs]
    assert first == again


# ---------------------------------------------------------------- measured quality
def _load_eval_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("eval_dedupe", EVAL_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("eval_dedupe", module)
    spec.loader.exec_module(module)
    return module


def test_the_labelled_pairs_are_well_formed() -> None:
    ev = _load_eval_module()
    lines = ev.PAIRS.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) >= 400 and all(set(r) == {"a", "b", "duplicate", "type"} for r in rows)
    share = sum(r["duplicate"] for r in rows) / len(rows)
    assert 0.4 <= share <= 0.6
    assert len({(r["a"], r["b"]) for r in rows}) == len(rows)
    tune, held = ev.split(ev.load_pairs())
    assert not set(tune) & set(held) and len(tune) + len(held) == len(rows)


def test_held_out_precision_of_the_default_rule() -> None:
    pytest.importorskip("onnxruntime")
    ev = _load_eval_module()
    pairs = ev.load_pairs()
    cos = ev.cosines(pairs, "minilm")
    _, held = ev.split(pairs)
    rule = ev.scores(pairs, cos, held, ev.with_lexical, DEFAULT_NEAR_THRESHOLD)
    cosine_alone = ev.scores(pairs, cos, held, ev.cosine_only, DEFAULT_NEAR_THRESHOLD)
    assert rule["precision"] >= HELDOUT_PRECISION_FLOOR, rule
    assert rule["recall"] >= HELDOUT_RECALL_FLOOR, rule
    assert rule["precision"] >= cosine_alone["precision"] + 0.2  # the words are what make merging safe
