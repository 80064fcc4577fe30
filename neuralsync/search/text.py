"""Full-text candidates from FTS5 with a bound on the work per query.

User text never reaches FTS5 as syntax: it is split into word tokens (the way
the ``unicode61`` tokenizer splits) and each token is quoted as a phrase, so
quotes, ``*``, ``AND``, ``NEAR(`` and parentheses are searched as words.

Why a bound: FTS5's ``bm25()`` counts every row that contains each phrase of
the expression (its IDF), whatever else limits the query - about 45 ns a row,
so one word in most of a million rows costs tens of milliseconds. So:

- each word's match count is probed once, capped at ``budget + 1`` (cached);
- ``bm25()`` only ever sees the rarest words whose matches fit the budget
  together (``TextPlan.ranked``); scope and tag filters stay out of it and
  are checked in SQL on those few candidates;
- when that leaves too few candidates (every word common, or a narrow filter),
  the newest rows matching ``filters AND (any word)`` are taken by rowid -
  cheap, no ``bm25()`` - and ordered by query coverage, boosts and meaning.

Stop words (function words, question words, "please", "look", ...) are left
out of every expression (:func:`meaningful`): they occur in most rows, so as
OR terms they only let rows that share "where do i" with the query into the
ranking. A query made only of stop words ("the", "how do i"), or whose other
words occur nowhere, searches the stop words, since there is nothing better.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

_WORD = re.compile(r"[^\W_]+")
MAX_TERMS = 32
BM25_WEIGHTS = "1.0, 0.5, 0.0"  # content, tags, scope
_CACHE_LIMIT = 8192
_RARE_TTL_S = 30.0
ALL_WORDS_MAX = 3  # a rare word's count may grow; a common word stays common
# English function words and query noise: searched only when a query has nothing else.
STOP_WORDS = frozenset("""
a about above after again against all also am an and any are aren as at be because been before being below
between both but by can cannot could couldn did didn do does doesn doing don down during each else ever
every few for from further get gets getting got had hadn has hasn have haven having he her here hers herself
him himself his how i if in into is isn it its itself just keep keeps kind let like ll look looking lot may
me might mine more most much must mustn my myself need needs no nor not now of off on once one only or other
our ours ourselves out over own please re really s same shall shan she should shouldn so some something such
t than that the their theirs them themselves then there these they this those through thing things to too
under until up us ve very want wanted was wasn way we were weren what whats when where whether which while
who whom whose why will with won would wouldn yes yet you your yours yourself yourselves
""".split())


def terms(query: str) -> list[str]:
    """Distinct lowercase word tokens of ``query``, in order, at most ``MAX_TERMS``."""
    seen: dict[str, None] = {}
    for token in _WORD.findall(query.lower()):
        seen.setdefault(token, None)
    return list(seen)[:MAX_TERMS]


def meaningful(words: Sequence[str]) -> list[str]:
    """``words`` without :data:`STOP_WORDS`; all of them when every word is one."""
    kept = [w for w in words if w not in STOP_WORDS]
    return kept or list(words)


def quote(text: str) -> str:
    """An FTS5 string literal: the text searched as a phrase, never as syntax."""
    return '"' + text.replace('"', '""') + '"'


def filter_expr(scope: str | None, tags: Sequence[str] | None, tag_match: str) -> str:
    """FTS column filters for a scope and tags (exact matching is rechecked in SQL)."""
    parts = []
    if scope is not None and terms(scope):
        parts.append(f"scope : {quote(' '.join(terms(scope)))}")
    if tags:
        phrases = [quote(" ".join(terms(t))) for t in tags if terms(t)]
        if phrases:
            joiner = " AND " if tag_match == "all" else " OR "
            parts.append(f"tags : ({joiner.join(phrases)})")
    return " AND ".join(parts)


@dataclass(frozen=True, slots=True)
class TextPlan:
    """How a text query runs: ``ranked`` goes to bm25(); ``recent_all`` (every word) then
    ``recent`` (any word) to the newest-rows path."""

    ranked: str | None
    recent: str
    recent_all: str | None
    rare_terms: tuple[str, ...]
    common_terms: tuple[str, ...]


def words_expr(words: Sequence[str], joiner: str = " OR ") -> str:
    """Words searched in content and tags only (never in the scope column)."""
    return "{content tags} : (" + joiner.join(quote(w) for w in words) + ")"


class TextSearcher:
    """Plans bounded FTS5 queries; remembers how common each word is."""

    def __init__(self, budget: int) -> None:
        self.budget = max(1, budget)
        self._counts: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def plan(self, conn: sqlite3.Connection, words: Sequence[str], filters: str) -> TextPlan | None:
        """The plan for ``words`` under FTS ``filters``; None if no word occurs.

        Stop words are dropped, unless none of the other words occurs at all."""
        counts: dict[str, int] = {}
        present: list[str] = []
        for candidates in (meaningful(words), list(words)):
            counts = {w: self.count(conn, w) for w in candidates}
            present = sorted((w for w in candidates if counts[w] > 0), key=lambda w: counts[w])
            if present:
                break
        if not present:
            return None
        rare: list[str] = []
        total = 0
        for word in present:  # rarest first, while their matches fit the budget together
            if total + counts[word] > self.budget:
                break
            rare.append(word)
            total += counts[word]
        any_word = words_expr(present)
        recent = f"({filters}) AND {any_word}" if filters else any_word
        # Rows holding every word are what coverage favours; the AND of the few
        # rarest words finds them cheaply (filters are checked in SQL after).
        recent_all = words_expr(present[:ALL_WORDS_MAX], " AND ") if len(present) > 1 else None
        ranked = words_expr(rare) if rare else None
        return TextPlan(ranked, recent, recent_all, tuple(rare), tuple(present[len(rare):]))

    def count(self, conn: sqlite3.Connection, word: str) -> int:
        """Rows containing ``word``, counted only up to ``budget + 1`` (cached)."""
        now = time.monotonic()
        cached = self._counts.get(word)
        if cached is not None and (cached[0] > self.budget or now - cached[1] < _RARE_TTL_S):
            return cached[0]
        count = int(conn.execute(
            "SELECT count(*) FROM (SELECT rowid FROM memories_fts WHERE memories_fts MATCH ? LIMIT ?)",
            (words_expr([word]), self.budget + 1)).fetchone()[0])
        with self._lock:
            if len(self._counts) >= _CACHE_LIMIT:
                self._counts.clear()
            self._counts[word] = (count, now)
        return count

    def forget_cache(self) -> None:
        """Drop cached counts (after bulk deletes or compaction)."""
        with self._lock:
            self._counts.clear()
