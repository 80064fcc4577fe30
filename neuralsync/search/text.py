"""Full-text candidates from FTS5 (BM25) with a bound on the work per query.

User text never reaches FTS5 as syntax: it is split into word tokens (the way
the ``unicode61`` tokenizer splits) and each token is quoted as a phrase, so
quotes, ``*``, ``AND``, ``NEAR(`` and parentheses are searched as words.

Why a bound: BM25 must score every matching row before it can order them. A
word in half of a million rows costs ~0.3 s to rank. So each term is first
probed with a capped count. The rarest terms, as many as fit together within
``budget`` matches, are ranked over the whole index; the other terms then only
add to the final score through query-term coverage. When every term is common, ranking runs over the newest
``budget`` matching rows (rowids grow with time), where recency would put the
best answers anyway. Scope and tag filters are part of the FTS expression, so
FTS intersects them with the terms before anything is scored.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass

_WORD = re.compile(r"[^\W_]+")
MAX_TERMS = 32
BM25_WEIGHTS = "1.0, 0.5, 0.0"  # content, tags, scope
_COMMON_CACHE_LIMIT = 4096


def terms(query: str) -> list[str]:
    """Distinct lowercase word tokens of ``query``, in order, at most ``MAX_TERMS``."""
    seen: dict[str, None] = {}
    for token in _WORD.findall(query.lower()):
        seen.setdefault(token, None)
    return list(seen)[:MAX_TERMS]


def quote(text: str) -> str:
    """An FTS5 string literal: the text searched as a phrase, never as syntax."""
    return '"' + text.replace('"', '""') + '"'


def filter_expr(scope: str | None, tags: Sequence[str] | None, tag_match: str) -> str:
    """FTS column filters for a scope and tags (exact matching is rechecked in SQL)."""
    parts = []
    if scope is not None:
        words = terms(scope)
        parts.append(f"scope : {quote(' '.join(words))}" if words else "")
    if tags:
        phrases = [quote(" ".join(terms(t))) for t in tags if terms(t)]
        if phrases:
            joiner = " AND " if tag_match == "all" else " OR "
            parts.append(f"tags : ({joiner.join(phrases)})")
    return " AND ".join(p for p in parts if p)


@dataclass(frozen=True, slots=True)
class TextPlan:
    """How a text query will run: the MATCH expression and an optional rowid floor."""

    match: str
    min_rowid: int | None
    rare_terms: tuple[str, ...]
    common_terms: tuple[str, ...]


class TextSearcher:
    """Plans and runs bounded FTS5 queries; remembers which terms are common."""

    def __init__(self, budget: int) -> None:
        self.budget = max(1, budget)
        self._common: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def plan(self, conn: sqlite3.Connection, words: Sequence[str], filters: str) -> TextPlan | None:
        """Choose the match expression for ``words`` under ``filters``; None if nothing can match."""
        counts = {w: self._count(conn, w, filters) for w in words}
        present = sorted((w for w in words if counts[w] > 0), key=lambda w: counts[w])
        if not present:
            return None
        # Rarest first while the matches to score stay within the budget: the
        # total ranking work is bounded, however many mid-frequency words come.
        rare: list[str] = []
        total = 0
        for word in present:
            if total + counts[word] > self.budget:
                break
            rare.append(word)
            total += counts[word]
        common = present[len(rare):]
        chosen = rare or present
        match = " OR ".join(quote(w) for w in chosen)
        if filters:
            match = f"({filters}) AND ({match})"
        floor = None if rare else self._newest_floor(conn, match)
        return TextPlan(match, floor, tuple(rare), tuple(common))

    def _count(self, conn: sqlite3.Connection, word: str, filters: str) -> int:
        """Matches of ``word`` under ``filters``, counted only up to ``budget + 1``."""
        key = (filters, word)
        if key in self._common:
            return self._common[key]
        expr = f"({filters}) AND {quote(word)}" if filters else quote(word)
        count = conn.execute(
            "SELECT count(*) FROM (SELECT rowid FROM memories_fts WHERE memories_fts MATCH ? LIMIT ?)",
            (expr, self.budget + 1)).fetchone()[0]
        if count > self.budget:
            # Commonness only fades through mass deletion; cache it (bounded).
            with self._lock:
                if len(self._common) >= _COMMON_CACHE_LIMIT:
                    self._common.clear()
                self._common[key] = count
        return int(count)

    def _newest_floor(self, conn: sqlite3.Connection, match: str) -> int | None:
        row = conn.execute(
            "SELECT rowid FROM memories_fts WHERE memories_fts MATCH ? ORDER BY rowid DESC LIMIT 1 OFFSET ?",
            (match, self.budget - 1)).fetchone()
        return None if row is None else int(row[0])

    def forget_cache(self) -> None:
        """Drop the common-term cache (after bulk deletes or compaction)."""
        with self._lock:
            self._common.clear()
