"""Exact cosine search and the pieces the ANN index shares with it: keys, vectors, filters, hits.

``exact_search`` scans a matrix (the rows newer than the index file, or a
small filtered set); ``merge_results`` combines its hits with the index's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Container, Sequence
from typing import Any, NamedTuple, TypeAlias

import numpy as np

from ...errors import InvalidInput

KeyFilter: TypeAlias = "Callable[[int], bool] | Container[int]"


class Hit(NamedTuple):
    """One search result: a store key and its cosine similarity (1 = same direction)."""

    key: int
    similarity: float


def as_keys(keys: Any, field: str = "keys") -> np.ndarray:
    """Validate keys as a 1-D array of non-negative int64."""
    arr = np.asarray(keys)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise InvalidInput(field, f"expected a 1-D array of keys, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInput(field, f"keys must be integers, got {arr.dtype}")
    if arr.dtype == np.uint64 and int(arr.max()) > np.iinfo(np.int64).max:
        raise InvalidInput(field, "keys must fit in int64")
    arr = arr.astype(np.int64)
    if int(arr.min()) < 0:
        raise InvalidInput(field, "keys must be >= 0 (usearch keys are uint64)")
    return arr


def as_matrix(vectors: Any, dims: int | None, field: str = "vectors") -> np.ndarray:
    """Validate vectors as finite float32 ``(n, dims)`` and L2-normalise the rows."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise InvalidInput(field, f"expected (n, dims) vectors, got shape {arr.shape}")
    if dims is not None and arr.shape[1] != dims:
        raise InvalidInput(field, f"expected {dims} dims, got {arr.shape[1]}")
    if not np.isfinite(arr).all():
        raise InvalidInput(field, "vectors contain NaN or infinity")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    out = np.zeros_like(arr)
    np.divide(arr, norms, out=out, where=norms > 0)
    return np.ascontiguousarray(out)


def keep_predicate(exclude: KeyFilter | None, allowed: KeyFilter | None) -> Callable[[int], bool] | None:
    """Combine an ``exclude`` and an ``allowed`` filter (set-like or predicate)."""
    if exclude is None and allowed is None:
        return None

    def as_pred(flt: KeyFilter) -> Callable[[int], bool]:
        if callable(flt):
            return flt
        return flt.__contains__

    excluded = as_pred(exclude) if exclude is not None else None
    permitted = as_pred(allowed) if allowed is not None else None

    def keep(key: int) -> bool:
        if excluded is not None and excluded(key):
            return False
        return permitted is None or bool(permitted(key))

    return keep


def _filter_mask(keys: np.ndarray, exclude: KeyFilter | None, allowed: KeyFilter | None) -> np.ndarray | None:
    """Boolean keep-mask over ``keys``; vectorised when the filters are collections."""
    if exclude is None and allowed is None:
        return None
    mask = np.ones(len(keys), dtype=bool)
    for flt, is_allow in ((exclude, False), (allowed, True)):
        if flt is None:
            continue
        if not callable(flt) and isinstance(flt, Collection):
            members = np.fromiter((int(x) for x in flt), dtype=np.int64, count=len(flt))
            inside = np.isin(keys, members)
        else:
            test = flt if callable(flt) else flt.__contains__
            inside = np.fromiter((bool(test(int(x))) for x in keys), bool, len(keys))
        mask &= inside if is_allow else ~inside
    return mask


def _sort_hits(hits: Sequence[Hit], k: int) -> list[Hit]:
    """Best first; ties broken by key so results are deterministic."""
    return sorted(hits, key=lambda h: (-h.similarity, h.key))[:k]


def exact_search(
    matrix: Any,
    keys: Any,
    query: Any,
    k: int = 10,
    *,
    exclude: KeyFilter | None = None,
    allowed: KeyFilter | None = None,
    normalized: bool = False,
) -> list[Hit]:
    """Brute-force cosine top-``k`` over ``matrix`` rows (keys in ``keys``).

    Meant for the rows newer than the index file's ``covered_seq`` (and for
    small stores where an ANN index is not worth it). Zero rows score 0.
    ``normalized``: ``matrix`` already went through :func:`as_matrix` (a
    caller that searches the same rows again and again validates and
    normalises them once; at 100k rows that is ~100 ms a query saved).
    """
    if k < 1:
        raise InvalidInput("k", "k must be >= 1")
    key_arr = as_keys(keys)
    rows = np.asarray(matrix, dtype=np.float32)
    if rows.size == 0:
        return []
    q = as_matrix(query, None, "query")
    if q.shape[0] != 1:
        raise InvalidInput("query", "exact_search() takes one query vector")
    if not normalized:
        rows = as_matrix(rows, q.shape[1], "matrix")
    elif rows.ndim != 2 or rows.shape[1] != q.shape[1]:
        raise InvalidInput("matrix", f"expected (n, {q.shape[1]}) vectors, got shape {rows.shape}")
    if len(rows) != len(key_arr):
        raise InvalidInput("keys", f"{len(key_arr)} keys for {len(rows)} rows")
    sims = rows @ q[0]
    mask = _filter_mask(key_arr, exclude, allowed)
    candidates = np.arange(len(sims)) if mask is None else np.flatnonzero(mask)
    if len(candidates) == 0:
        return []
    if len(candidates) > k:
        part = np.argpartition(-sims[candidates], k - 1)[:k]
        candidates = candidates[part]
    return _sort_hits([Hit(int(key_arr[i]), float(sims[i])) for i in candidates], k)


def merge_results(a: Sequence[Hit | tuple[int, float]], b: Sequence[Hit | tuple[int, float]], k: int) -> list[Hit]:
    """Merge two hit lists (e.g. ANN + exact): one hit per key, best similarity, top-``k``."""
    best: dict[int, float] = {}
    for key, sim in (*a, *b):
        key, sim = int(key), float(sim)
        if key not in best or sim > best[key]:
            best[key] = sim
    return _sort_hits([Hit(key, sim) for key, sim in best.items()], k)
