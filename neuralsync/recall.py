"""Recall: text candidates from FTS5, filters in SQL, then a re-rank that adds
priority, recency and confidence to relevance.

final = (0.7 * bm25 / best_bm25 + 0.3 * coverage) * (0.6 + 0.4 * boost)
boost = 0.5 * priority + 0.3 * recency + 0.2 * confidence,  recency = 2^(-age/30 days)

``coverage`` is the share of query words present in the memory: it lets common
words that were left out of the FTS expression (see ``search.text``) still
order the candidates. An empty query returns the most relevant recent memories.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .model import Memory
from .search.text import BM25_WEIGHTS, TextPlan, TextSearcher, filter_expr, terms
from .store import MEMORY_COLUMNS, NOT_EXPIRED, Store, row_to_memory
from .utils import now_ms

_WORD = re.compile(r"[^\W_]+")
HALF_LIFE_MS = 30 * 86_400_000
RECENT_POOL = 200


@dataclass(frozen=True, slots=True)
class Filters:
    """Validated recall filters."""

    scope: str | None = None
    tags: tuple[str, ...] = ()
    tag_match: str = "any"
    kinds: tuple[str, ...] | None = None
    since: int | None = None
    until: int | None = None
    tool: str | None = None

    def sql(self, now: int) -> tuple[str, list[object]]:
        """WHERE clauses on ``memories m`` (exact checks, expiry included)."""
        where, args = [NOT_EXPIRED], [now]
        if self.scope is not None:
            where.append("m.scope = ?")
            args.append(self.scope)
        if self.tool is not None:
            where.append("m.tool = ?")
            args.append(self.tool)
        if self.kinds:
            where.append(f"m.kind IN ({','.join('?' * len(self.kinds))})")
            args.extend(self.kinds)
        if self.since is not None:
            where.append("m.created_at >= ?")
            args.append(self.since)
        if self.until is not None:
            where.append("m.created_at <= ?")
            args.append(self.until)
        if self.tags:
            marks = ",".join("?" * len(self.tags))
            if self.tag_match == "all":
                where.append(f"(SELECT count(DISTINCT t.tag) FROM tags t WHERE t.mem = m.rowid"
                             f" AND t.tag IN ({marks})) = {len(self.tags)}")
            else:
                where.append(f"EXISTS (SELECT 1 FROM tags t WHERE t.mem = m.rowid AND t.tag IN ({marks}))")
            args.extend(self.tags)
        return " AND ".join(where), args


def boost(memory: Memory, now: int) -> float:
    """Priority, recency and confidence folded into 0..1."""
    age = max(0, now - memory.updated_at)
    recency = math.pow(2.0, -age / HALF_LIFE_MS)
    return 0.5 * memory.priority + 0.3 * recency + 0.2 * memory.confidence


class Recaller:
    """Runs recall queries against a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.text = TextSearcher(store.config.text_match_budget)

    def recall(self, query: str, filters: Filters, top_k: int) -> list[Memory]:
        """The ``top_k`` best memories for ``query`` under ``filters``."""
        words = terms(query)
        now = now_ms()
        with self.store.storage.read() as conn:
            if not words:
                return self._recent(conn, filters, top_k, now)
            plan = self.text.plan(conn, words, filter_expr(filters.scope, filters.tags, filters.tag_match))
            if plan is None:
                return []
            hits = self._text_candidates(conn, plan, filters, max(top_k * 2, 30), now)
        return rerank(hits, words, top_k, now)

    def _text_candidates(self, conn, plan: TextPlan, filters: Filters, limit: int,  # type: ignore[no-untyped-def]
                         now: int) -> list[tuple[Memory, float]]:
        where, args = filters.sql(now)
        floor = ""
        if plan.min_rowid is not None:
            floor = "AND memories_fts.rowid >= ? "
            args = [plan.min_rowid, *args]
        sql = (f"SELECT {MEMORY_COLUMNS}, bm25(memories_fts, {BM25_WEIGHTS}) AS s"
               " FROM memories_fts JOIN memories m ON m.rowid = memories_fts.rowid"
               f" WHERE memories_fts MATCH ? {floor}AND {where} ORDER BY s LIMIT ?")
        rows = conn.execute(sql, (plan.match, *args, limit)).fetchall()
        return [(row_to_memory(r), -float(r[-1])) for r in rows]

    def _recent(self, conn, filters: Filters, top_k: int, now: int) -> list[Memory]:  # type: ignore[no-untyped-def]
        where, args = filters.sql(now)
        rows = conn.execute(f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE {where}"
                            " ORDER BY m.created_at DESC LIMIT ?", (*args, max(RECENT_POOL, top_k))).fetchall()
        scored = [(boost(m, now), m) for m in map(row_to_memory, rows)]
        scored.sort(key=lambda pair: (-pair[0], pair[1].id))
        return [replace(m, score=round(s, 6)) for s, m in scored[:top_k]]


def rerank(hits: Sequence[tuple[Memory, float]], words: Sequence[str], top_k: int, now: int) -> list[Memory]:
    """Order text hits by relevance, query coverage and boosts; attach the score."""
    if not hits:
        return []
    best = max(rel for _, rel in hits) or 1.0
    wanted = set(words)
    scored = []
    for memory, rel in hits:
        present = wanted.intersection(_WORD.findall(memory.content.lower()))
        coverage = len(present) / len(wanted)
        score = (0.7 * rel / best + 0.3 * coverage) * (0.6 + 0.4 * boost(memory, now))
        scored.append((score, memory))
    return _best(scored, top_k)


def _best(scored: list[tuple[float, Memory]], top_k: int) -> list[Memory]:
    """Highest score first; ties go to the newer memory (ids are time-ordered)."""
    scored.sort(key=lambda pair: (pair[0], pair[1].id), reverse=True)
    return [replace(m, score=round(s, 6)) for s, m in scored[:top_k]]
