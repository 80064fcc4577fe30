"""Recall: text (BM25) and semantic candidates, filters in SQL, one fused ranking.

Every candidate from either list is scored on *both* signals - a text hit gets
its cosine similarity from its stored vector, a semantic hit its BM25 from FTS
restricted to the candidates - so fusion compares like with like (a
:class:`Candidate`). :func:`fuse` then puts the signals on one scale and mixes
them (:class:`Fusion`; the defaults were chosen by cross-validation on the
tuning half of ``bench/eval/eval_set_v2.json``, see ``bench/README-quality.md``):

relevance = W_SEM * sem + W_TEXT * text + W_COVER * cover
final     = relevance * (0.6 + 0.4 * boost)
boost     = 0.5 * priority + 0.3 * recency + 0.2 * confidence,  recency = 2^(-age/30 days)

``sem`` and ``text`` are the cosine similarity and the BM25 score normalised
over the candidate pool (``Fusion.norm``: by the best, min-max, z-score, or
reciprocal rank). ``cover`` is the IDF-weighted share of the query's
meaningful words (stop words out, see ``search.text``) present in the memory:
an absolute figure, so a query whose words match nothing well adds little.
Text and coverage count only when some candidate covers ``TEXT_GATE`` of the
query's weighted words; below that, shared words are incidental (a paraphrase
shares none with its answer) and they would only promote the wrong memories.
Text mode uses W_SEM = 0; semantic mode ranks by cosine alone. An empty query
returns the most relevant recent memories.
"""

from __future__ import annotations

import math
import re
import sqlite3
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..model import Memory
from ..stages import FUSION, TEXT_SEARCH, VECTOR_SEARCH, stage
from ..store.reads import MEMORY_COLUMNS, row_to_memory
from ..store.storage import Storage
from ..utils import now_ms
from .filters import Filters
from .text import BM25_WEIGHTS, TextPlan, TextSearcher, filter_expr, meaningful, terms

if TYPE_CHECKING:
    from .semantic import SemanticIndex

_WORD = re.compile(r"[^\W_]+")
HALF_LIFE_MS = 30 * 86_400_000
RECENT_POOL = 200
MODES = ("hybrid", "text", "semantic")
NORMS = ("max", "minmax", "z", "rrf")
# Chosen by cross-validation on the tuning half of bench/eval/eval_set_v2.json with the default
# embedder (minilm), among 0 and 10k distractors at once (bench/README-quality.md): z-scored cosine
# plus a little z-scored BM25, and text only when some candidate covers 3/4 of the query's weighted
# words. With wordllama the same search chose w_text 0.1; both are within noise of each other there.
W_SEM, W_TEXT, W_COVER = 1.0, 0.05, 0.0
NORM = "z"
TEXT_GATE = 0.75
RRF_K = 60.0
ALL_WORDS_WINDOW = 10_000


@dataclass(frozen=True, slots=True)
class Fusion:
    """How hybrid recall mixes its signals: weights, the scale they share, the semantic floor.

    A candidate with no BM25 is kept only when its cosine reaches
    ``max(floor, relative_floor * best cosine)``. Text and coverage count only
    when some candidate covers at least ``text_gate`` of the query's weighted
    words: below that, the words matched are incidental and meaning decides.
    """

    w_sem: float = W_SEM
    w_text: float = W_TEXT
    w_cover: float = W_COVER
    norm: str = NORM
    floor: float = 0.0
    relative_floor: float = 0.0
    rrf_k: float = RRF_K
    text_gate: float = TEXT_GATE


TEXT_ONLY = Fusion(w_sem=0.0, w_text=0.7, w_cover=0.3, norm="max", text_gate=0.0)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One memory with both signals: cosine (0 when unknown), BM25 (0 when it does not
    match the text expression) and the IDF-weighted coverage of the query's words."""

    memory: Memory
    sim: float
    bm25: float
    cover: float


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
        self.fusion = Fusion(floor=self.config.semantic_floor, relative_floor=self.config.semantic_relative_floor)

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
            with stage(FUSION):
                return _best([(sim, m) for m, sim in hits], top_k)
        found = self.candidates(query, filters, max(top_k * 3, 30), now)
        with stage(FUSION):
            return fuse(found, self.fusion, top_k, now)

    def _text_only(self, words: list[str], filters: Filters, top_k: int, now: int) -> list[Memory]:
        with stage(TEXT_SEARCH), self.storage.read() as conn:
            plan = self._plan(conn, words, filters)
            if plan is None:
                return []
            hits = self._text_candidates(conn, plan, filters, max(top_k * 2, 30), now)
            weights = self._idf(conn, words)
        with stage(FUSION):
            return rerank(hits, words, top_k, now, weights)

    def _plan(self, conn: sqlite3.Connection, words: list[str], filters: Filters) -> TextPlan | None:
        return self.text.plan(conn, words, filter_expr(filters.scope, filters.tags, filters.tag_match))

    def _idf(self, conn: sqlite3.Connection, words: Sequence[str]) -> dict[str, float]:
        """IDF of the query's meaningful words that occur in the store (counts capped at the budget)."""
        total = int(conn.execute("SELECT coalesce(max(rowid), 0) FROM memories").fetchone()[0])
        out = {}
        for word in meaningful(words):
            n = self.text.count(conn, word)
            if n > 0:
                out[word] = math.log(1.0 + (max(total, n) - n + 0.5) / (n + 0.5))
        return out

    def candidates(self, query: str, filters: Filters, pool: int, now: int) -> list[Candidate]:
        """Text and semantic candidates (``pool`` of each), every one scored on both signals."""
        assert self.semantic is not None
        words = terms(query)
        vector = self.semantic.embed_query(query)
        with stage(VECTOR_SEARCH):
            sem_hits = self.semantic.search_vector(vector, pool, filters, now)
        with stage(TEXT_SEARCH), self.storage.read() as conn:
            plan = self._plan(conn, words, filters)
            text_hits = self._text_candidates(conn, plan, filters, pool, now) if plan else []
            members = {m.id: m for m, _ in (*text_hits, *sem_hits)}
            rel = {m.id: r for m, r in text_hits if r > 0}
            missing = [rid for rid in members if rid not in rel]
            if plan is not None and plan.ranked and missing:
                rel.update(_bm25_of(conn, plan.ranked, missing))
            weights = self._idf(conn, words)
        sims = {m.id: s for m, s in sem_hits}
        with stage(VECTOR_SEARCH):
            sims.update(self.semantic.similarities(vector, [rid for rid in members if rid not in sims]))
        return [Candidate(m, sims.get(m.id, 0.0), rel.get(m.id, 0.0), coverage(m, weights))
                for m in members.values()]

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


def coverage(memory: Memory, weights: dict[str, float]) -> float:
    """IDF-weighted share of the weighted words present in ``memory``'s content (0..1)."""
    total = sum(weights.values())
    if total <= 0:
        return 0.0
    present = set(weights).intersection(_WORD.findall(memory.content.lower()))
    return sum(weights[w] for w in present) / total


def rerank(hits: Sequence[tuple[Memory, float]], words: Sequence[str], top_k: int, now: int,
           weights: dict[str, float] | None = None) -> list[Memory]:
    """Order text hits by BM25, query coverage (``weights`` per word, else equal) and boosts."""
    if weights is None:
        weights = dict.fromkeys(meaningful(words), 1.0)
    cands = [Candidate(m, 0.0, r, coverage(m, weights)) for m, r in hits]
    return fuse(cands, TEXT_ONLY, top_k, now)


def _scaled(values: Sequence[float], norm: str, rrf_k: float, present: Sequence[bool]) -> list[float]:
    """``values`` on a common 0..1-ish scale over the pool; entries not ``present`` score 0."""
    live = [v for v, p in zip(values, present, strict=True) if p]
    if not live:
        return [0.0] * len(values)
    if norm == "rrf":
        order = sorted((i for i, p in enumerate(present) if p), key=lambda i: -values[i])
        ranks = {i: r for r, i in enumerate(order, 1)}
        return [(rrf_k + 1) / (rrf_k + ranks[i]) if i in ranks else 0.0 for i in range(len(values))]
    if norm == "minmax":
        lo, hi = min(live), max(live)
        span = hi - lo
        return [((v - lo) / span if span > 0 else 1.0) if p else 0.0 for v, p in zip(values, present, strict=True)]
    if norm == "z":
        mean = statistics.fmean(live)
        sd = statistics.pstdev(live) if len(live) > 1 else 0.0
        return [(max(0.0, 1.0 + (v - mean) / sd / 3) if sd > 0 else 1.0) if p else 0.0
                for v, p in zip(values, present, strict=True)]
    best = max(live)
    return [(v / best if best > 0 else 0.0) if p else 0.0 for v, p in zip(values, present, strict=True)]


def fuse(candidates: Sequence[Candidate], fusion: Fusion, top_k: int, now: int) -> list[Memory]:
    """The ``top_k`` candidates by fused relevance (see the module doc), boosts applied."""
    if not candidates:
        return []
    kept = list(candidates)
    if fusion.floor > 0 or fusion.relative_floor > 0:
        floor = max(fusion.floor, fusion.relative_floor * max(c.sim for c in candidates))
        kept = [c for c in candidates if c.bm25 > 0 or c.sim >= floor]
    if not kept:
        return []
    sem = _scaled([c.sim for c in kept], fusion.norm, fusion.rrf_k, [True] * len(kept)) if fusion.w_sem else None
    text = _scaled([c.bm25 for c in kept], fusion.norm, fusion.rrf_k, [c.bm25 > 0 for c in kept])
    words_count = max(c.cover for c in kept) >= fusion.text_gate - 1e-9
    scored = []
    for i, c in enumerate(kept):
        relevance = fusion.w_text * text[i] + fusion.w_cover * c.cover if words_count else 0.0
        if sem is not None:
            relevance += fusion.w_sem * sem[i]
        scored.append((relevance * (0.6 + 0.4 * boost(c.memory, now)), c.memory))
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
