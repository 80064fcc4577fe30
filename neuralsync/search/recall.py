"""Recall: text (BM25) and semantic candidates, filters in SQL, one fused ranking.

Every candidate from either list is scored on *both* signals - a text hit gets
its cosine similarity from its stored vector, a semantic hit its BM25 from FTS
restricted to the candidates - so fusion compares like with like instead of
guessing from ranks (plain reciprocal-rank fusion lost to semantic alone on
paraphrases):

relevance = W_SEM * cos / best_cos + W_TEXT * bm25 / best_bm25 + W_COVER * coverage
final     = relevance * (0.6 + 0.4 * boost)
boost     = 0.5 * priority + 0.3 * recency + 0.2 * confidence,  recency = 2^(-age/30 days)

``coverage`` is the share of query words present in the memory: it lets common
words that were left out of the FTS expression (see ``search.text``) still
order the candidates. Text mode uses W_SEM = 0, semantic mode W_TEXT = W_COVER
= 0. An empty query returns the most relevant recent memories.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..model import Memory
from ..store.reads import MEMORY_COLUMNS, row_to_memory
from ..store.storage import Storage
from ..utils import now_ms
from .filters import Filters
from .text import BM25_WEIGHTS, TextPlan, TextSearcher, filter_expr, terms

if TYPE_CHECKING:
    from .semantic import SemanticIndex

_WORD = re.compile(r"[^\W_]+")
HALF_LIFE_MS = 30 * 86_400_000
RECENT_POOL = 200
MODES = ("hybrid", "text", "semantic")
W_SEM, W_TEXT, W_COVER = 0.85, 0.10, 0.05  # tuned on bench/eval (see README)
ALL_WORDS_WINDOW = 10_000


def boost(memory: Memory, now: int) -> float:
    """Priority, recency and confidence folded into 0..1."""
    age = max(0, now - memory.updated_at)
    recency = math.pow(2.0, -age / HALF_LIFE_MS)
    return 0.5 * memory.priority + 0.3 * recency + 0.2 * memory.confidence


class Recaller:
    """Runs recall queries against one store's tables (and its vectors, when given)."""

    def __init__(self, storage: Storage, semantic: SemanticIndex | None = None) -> None:
        self.storage = storage
        self.config = storage.config
        self.semantic = semantic
        self.text = TextSearcher(storage.config.text_match_budget)

    def recall(self, query: str, filters: Filters, top_k: int, mode: str = "hybrid") -> list[Memory]:
        """The ``top_k`` best memories for ``query`` under ``filters``."""
        words = terms(query)
        now = now_ms()
        if not words:
            with self.storage.read() as conn:
                return self._recent(conn, filters, top_k, now)
        if mode == "text" or self.semantic is None:
            return self._text_only(words, filters, top_k, now)
        if mode == "semantic":
            hits = self.semantic.search(query, top_k, filters, now)
            return _best([(sim, m) for m, sim in hits], top_k)
        return self._hybrid(query, words, filters, top_k, now)

    def _text_only(self, words: list[str], filters: Filters, top_k: int, now: int) -> list[Memory]:
        with self.storage.read() as conn:
            plan = self._plan(conn, words, filters)
            if plan is None:
                return []
            hits = self._text_candidates(conn, plan, filters, max(top_k * 2, 30), now)
        return rerank(hits, words, top_k, now)

    def _plan(self, conn: sqlite3.Connection, words: list[str], filters: Filters) -> TextPlan | None:
        return self.text.plan(conn, words, filter_expr(filters.scope, filters.tags, filters.tag_match))

    def _hybrid(self, query: str, words: list[str], filters: Filters, top_k: int, now: int) -> list[Memory]:
        assert self.semantic is not None
        pool = max(top_k * 3, 30)
        vector = self.semantic.embed_query(query)
        sem_hits = self.semantic.search_vector(vector, pool, filters, now)
        with self.storage.read() as conn:
            plan = self._plan(conn, words, filters)
            text_hits = self._text_candidates(conn, plan, filters, pool, now) if plan else []
            candidates = {m.id: m for m, _ in (*text_hits, *sem_hits)}
            rel = {m.id: r for m, r in text_hits}
            missing = [rid for rid in candidates if rid not in rel]
            if plan is not None and plan.ranked and missing:
                rel.update(_bm25_of(conn, plan.ranked, missing))
        sims = {m.id: s for m, s in sem_hits}
        sims.update(self.semantic.similarities(vector, [rid for rid in candidates if rid not in sims]))
        cfg = self.config
        floor = max(cfg.semantic_floor, cfg.semantic_relative_floor * max(sims.values(), default=0.0))
        kept = [m for m in candidates.values() if rel.get(m.id, 0.0) > 0 or sims.get(m.id, 0.0) >= floor]
        return fuse(kept, rel, sims, words, top_k, now)

    def _text_candidates(self, conn: sqlite3.Connection, plan: TextPlan, filters: Filters, limit: int,
                         now: int) -> list[tuple[Memory, float]]:
        """BM25 hits of the rare words, topped up with the newest rows matching any word."""
        hits = self._ranked(conn, plan.ranked, filters, limit, now) if plan.ranked else []
        for match, windowed in ((plan.recent_all, True), (plan.recent, False)):
            if len(hits) >= limit or match is None:
                continue
            floor = self._window_floor(conn) if windowed else None
            seen = {m.id for m, _ in hits}
            hits += [(m, 0.0) for m in self._newest(conn, match, filters, limit, now, floor) if m.id not in seen]
        return hits

    @staticmethod
    def _window_floor(conn: sqlite3.Connection) -> int:
        """Lowest rowid of the newest ``ALL_WORDS_WINDOW`` rows: bounds an AND scan of common words."""
        top = conn.execute("SELECT coalesce(max(rowid), 0) FROM memories").fetchone()[0]
        return max(0, int(top) - ALL_WORDS_WINDOW)

    def _ranked(self, conn: sqlite3.Connection, match: str, filters: Filters, limit: int,
                now: int) -> list[tuple[Memory, float]]:
        where, args = filters.sql(now)
        if filters.restrictive:  # filter in SQL over the (bounded) matches
            sql = (f"SELECT {MEMORY_COLUMNS}, bm25(memories_fts, {BM25_WEIGHTS}) AS s"
                   " FROM memories_fts JOIN memories m ON m.rowid = memories_fts.rowid"
                   f" WHERE memories_fts MATCH ? AND {where} ORDER BY s, m.rowid DESC LIMIT ?")
            params = (match, *args, limit)
        else:  # rank inside FTS, join only the top rows
            sql = (f"SELECT {MEMORY_COLUMNS}, r.s FROM (SELECT rowid, bm25(memories_fts, {BM25_WEIGHTS}) AS s"
                   " FROM memories_fts WHERE memories_fts MATCH ? ORDER BY s, rowid DESC LIMIT ?) r"
                   f" JOIN memories m ON m.rowid = r.rowid WHERE {where} ORDER BY r.s, m.rowid DESC")
            params = (match, limit, *args)
        return [(row_to_memory(r), -float(r[-1])) for r in conn.execute(sql, params).fetchall()]

    def _newest(self, conn: sqlite3.Connection, match: str, filters: Filters, limit: int, now: int,
                floor: int | None = None) -> list[Memory]:
        """The newest rows matching ``match`` that pass the filters (no bm25: cost ~ rows read)."""
        where, args = filters.sql(now)
        rows = conn.execute(
            f"SELECT {MEMORY_COLUMNS} FROM (SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?"
            " AND rowid >= ? ORDER BY rowid DESC LIMIT ?) f JOIN memories m ON m.rowid = f.rowid"
            f" WHERE {where} ORDER BY m.rowid DESC", (match, floor or 0, limit * 4, *args)).fetchall()
        return [row_to_memory(r) for r in rows[:limit]]

    def _recent(self, conn: sqlite3.Connection, filters: Filters, top_k: int, now: int) -> list[Memory]:
        where, args = filters.sql(now)
        rows = conn.execute(f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE {where}"
                            " ORDER BY m.created_at DESC LIMIT ?", (*args, max(RECENT_POOL, top_k))).fetchall()
        scored = [(boost(m, now), m) for m in map(row_to_memory, rows)]
        return _best(scored, top_k)


def rerank(hits: Sequence[tuple[Memory, float]], words: Sequence[str], top_k: int, now: int) -> list[Memory]:
    """Order text hits by relevance, query coverage and boosts; attach the score."""
    rel = {m.id: r for m, r in hits}
    return fuse([m for m, _ in hits], rel, {}, words, top_k, now, w_sem=0.0, w_text=0.7, w_cover=0.3)


def fuse(candidates: Sequence[Memory], rel: dict[str, float], sims: dict[str, float], words: Sequence[str],
         top_k: int, now: int, w_sem: float = W_SEM, w_text: float = W_TEXT, w_cover: float = W_COVER) -> list[Memory]:
    """Score candidates on normalised BM25, cosine and query coverage, then boosts."""
    if not candidates:
        return []
    best_rel = max(rel.values(), default=0.0) or 1.0
    best_sim = max((s for s in sims.values() if s > 0), default=0.0) or 1.0
    wanted = set(words)
    scored = []
    for memory in candidates:
        present = wanted.intersection(_WORD.findall(memory.content.lower()))
        coverage = len(present) / len(wanted) if wanted else 0.0
        relevance = (w_sem * max(0.0, sims.get(memory.id, 0.0)) / best_sim
                     + w_text * rel.get(memory.id, 0.0) / best_rel + w_cover * coverage)
        scored.append((relevance * (0.6 + 0.4 * boost(memory, now)), memory))
    return _best(scored, top_k)


def _bm25_of(conn: sqlite3.Connection, match: str, record_ids: Sequence[str]) -> dict[str, float]:
    """BM25 of specific memories for the rare-word expression (absent when they do not match it)."""
    marks = ",".join("?" * len(record_ids))
    rows = conn.execute(
        f"SELECT m.id, bm25(memories_fts, {BM25_WEIGHTS}) FROM memories_fts"
        " JOIN memories m ON m.rowid = memories_fts.rowid"
        f" WHERE memories_fts MATCH ? AND m.id IN ({marks})", (match, *record_ids)).fetchall()
    return {rid: -float(score) for rid, score in rows}


def _best(scored: list[tuple[float, Memory]], top_k: int) -> list[Memory]:
    """Highest score first; ties go to the newer memory (ids are time-ordered)."""
    scored.sort(key=lambda pair: (pair[0], pair[1].id), reverse=True)
    return [m._replace(score=round(s, 6)) for s, m in scored[:top_k]]
