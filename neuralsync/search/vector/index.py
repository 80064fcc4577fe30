"""Approximate nearest-neighbour (HNSW, usearch) index kept as a derived cache file.

SQLite holds every embedding; this file only makes cosine search fast. Losing
or corrupting it loses nothing: rebuild from the store. The file records
``covered_seq`` (the last store sequence number whose embedding it contains)
so a reader searches the file with HNSW and the few newer rows with
:func:`~.exact.exact_search`, then combines both with :func:`~.exact.merge_results`.
The file itself is :mod:`.fileformat`.

usearch behaviours this wrapper relies on or guards against (usearch 2.26):

* keys are ``uint64``; ``2**64-1`` is its "free slot" sentinel. Negative int64
  keys would wrap (``-1`` becomes the sentinel), so keys must be ``>= 0``.
* adding an existing key with ``multi=False`` raises ``RuntimeError``
  ("Duplicate keys not allowed") *after inserting the batch members before it*
  (not atomic). :meth:`AnnIndex.add` is therefore an upsert: it removes
  existing keys first and refuses duplicates inside one batch.
* ``remove`` only marks a tombstone: removed keys are never returned and
  ``len()`` drops at once, the key may be re-added later, and the tombstones
  survive ``save``/``view`` (counted as ``deleted`` in the metadata). Graph
  quality slowly degrades with many tombstones: rebuild when ``deleted`` is a
  large fraction of ``count``.
* a viewed (memory-mapped) index is immutable: usearch raises ``RuntimeError``
  on ``add``, ``ValueError`` on ``remove`` and *crashes the process* on
  ``rename``. :class:`AnnIndex` checks first and raises
  :class:`ReadOnlyIndexError`; :meth:`AnnIndex.writable_copy` gives a private,
  mutable in-memory copy.
* usearch does not keep the buffer it views alive (it holds no buffer
  export), so :class:`AnnIndex` owns the ``mmap`` and unmaps it only after
  resetting the usearch index.
* there is no predicate-filtered search in the Python API, so deleted or
  disallowed keys are filtered after the search, which is oversampled and
  widened until ``k`` hits survive.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InvalidInput, NeuralSyncError
from .exact import Hit, KeyFilter, as_keys, as_matrix, keep_predicate
from .fileformat import DTYPES, IndexMeta, load_usearch, map_file, write_file
from .rwlock import RWLock


class ReadOnlyIndexError(NeuralSyncError):
    """A mutation was attempted on a memory-mapped (viewed) index or a closed one."""


class AnnIndex:
    """Cosine HNSW index over int keys (usearch), saved as a derived cache file.

    Build one with :meth:`build` (or the constructor plus :meth:`add`), keep it
    current with :meth:`add`/:meth:`remove`, persist with :meth:`save`, and in
    other processes :meth:`open` it memory-mapped (``view=True``): the OS page
    cache is shared by every process, nothing is copied, opening is O(1).

    Thread safety: searches run concurrently; ``add``, ``remove``, ``close``
    and changing ``expansion_search`` take an exclusive lock (waiting writers
    block new searches so they cannot starve). ``save`` runs alongside searches
    but not alongside mutations. Across processes: one writer saves, readers
    re-``open`` to see the new file (the old mapping stays valid until closed,
    because ``save`` replaces the file by rename).

    Vectors are L2-normalised on the way in; similarities are
    ``1 - usearch cosine distance`` (approximate for ``f16``/``i8`` storage).
    """

    def __init__(
        self,
        dims: int,
        *,
        embedder: str = "",
        dtype: str = "f16",
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int = 64,
        threads: int = 1,
    ) -> None:
        if not isinstance(dims, int) or dims < 1:
            raise InvalidInput("dims", f"dims must be a positive int, got {dims!r}")
        if dtype not in DTYPES:
            raise InvalidInput("dtype", f"dtype must be one of {DTYPES}, got {dtype!r}")
        if connectivity < 2 or expansion_add < 1 or expansion_search < 1:
            raise InvalidInput("connectivity", "HNSW parameters must be positive")
        index = load_usearch().Index(
            ndim=dims,
            metric="cos",
            dtype=dtype,
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
            multi=False,
        )
        self._setup(index, embedder=embedder, dtype=dtype, read_only=False)
        self.threads = threads

    def _setup(
        self,
        index: Any,
        *,
        embedder: str,
        dtype: str,
        read_only: bool,
        mapping: mmap.mmap | None = None,
        path: Path | None = None,
    ) -> None:
        self._index = index
        self._embedder = embedder
        self._dtype = dtype
        self._read_only = read_only
        self._mapping = mapping
        self._path = path
        self._closed = False
        self._lock = RWLock()
        # One thread: usearch's 0 means every core, which oversubscribes a small machine under load and
        # makes a build's graph depend on thread timing (the same vectors, different neighbours).
        self.threads = 1

    @classmethod
    def _wrap(cls, index: Any, **kwargs: Any) -> AnnIndex:
        obj = cls.__new__(cls)
        obj._setup(index, **kwargs)
        return obj

    @classmethod
    def build(
        cls,
        keys: Any,
        vectors: Any,
        *,
        embedder: str = "",
        dtype: str = "f16",
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int = 64,
        threads: int = 1,
    ) -> AnnIndex:
        """Build a writable in-memory index from ``keys`` (int64 >= 0) and ``vectors``."""
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim != 2:
            raise InvalidInput("vectors", f"expected (n, dims) vectors, got {matrix.shape}")
        index = cls(
            int(matrix.shape[1]),
            embedder=embedder,
            dtype=dtype,
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
            threads=threads,
        )
        index.add(keys, matrix)
        return index

    # ------------------------------------------------------------------ properties

    @property
    def dims(self) -> int:
        return int(self._index.ndim)

    @property
    def dtype(self) -> str:
        return self._dtype

    @property
    def embedder(self) -> str:
        return self._embedder

    @property
    def read_only(self) -> bool:
        """True for a memory-mapped (viewed) index: use :meth:`writable_copy` to change it."""
        return self._read_only

    @property
    def path(self) -> Path | None:
        """The file this index was opened from, if any."""
        return self._path

    @property
    def connectivity(self) -> int:
        return int(self._index.connectivity)

    @property
    def expansion_search(self) -> int:
        """HNSW ``ef`` at query time: higher is slower and more accurate."""
        return int(self._index.expansion_search)

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        if value < 1:
            raise InvalidInput("expansion_search", "must be positive")
        with self._lock.write():
            self._index.expansion_search = int(value)

    @property
    def expansion_add(self) -> int:
        """HNSW ``ef`` while adding: how widely each new vector looks for its neighbours (a better
        graph for a slower add). Not kept in the file: an index opened from disk adds with usearch's
        default unless it is set again."""
        return int(self._index.expansion_add)

    @expansion_add.setter
    def expansion_add(self, value: int) -> None:
        if value < 1:
            raise InvalidInput("expansion_add", "must be positive")
        with self._lock.write():
            self._check_writable()
            self._index.expansion_add = int(value)

    def __len__(self) -> int:
        return 0 if self._closed else len(self._index)

    def __contains__(self, key: object) -> bool:
        if self._closed or not isinstance(key, int | np.integer) or int(key) < 0:
            return False
        return bool(self._index.contains(int(key)))

    def __repr__(self) -> str:
        mode = "view" if self._read_only else "rw"
        return (
            f"AnnIndex(dims={self.dims}, dtype={self._dtype!r}, count={len(self)}, "
            f"mode={mode}, embedder={self._embedder!r})"
        )

    # ------------------------------------------------------------------ mutation

    def _check_writable(self) -> None:
        if self._closed:
            raise ReadOnlyIndexError("index is closed")
        if self._read_only:
            raise ReadOnlyIndexError("index is memory-mapped read-only; call writable_copy() to modify it")

    def add(self, keys: Any, vectors: Any) -> int:
        """Insert or replace (upsert) vectors; returns how many were written.

        Keys already present are removed first, so re-embedding a memory just
        calls ``add`` again. Duplicate keys inside one call are refused
        (``InvalidInput``) rather than half-applied as usearch would.
        """
        key_arr = as_keys(keys)
        matrix = as_matrix(vectors, self.dims)
        if len(key_arr) != len(matrix):
            raise InvalidInput("keys", f"{len(key_arr)} keys for {len(matrix)} vectors")
        if len(np.unique(key_arr)) != len(key_arr):
            raise InvalidInput("keys", "duplicate keys in one add() call")
        if len(key_arr) == 0:
            return 0
        with self._lock.write():
            self._check_writable()
            ukeys = key_arr.astype(np.uint64)
            present = np.asarray(self._index.contains(ukeys), dtype=bool)
            if present.any():
                self._index.remove(ukeys[present])
            self._index.add(ukeys, matrix, threads=self.threads)
        return len(key_arr)

    def remove(self, keys: Any) -> int:
        """Remove keys (absent ones are ignored); returns how many were removed."""
        key_arr = as_keys(keys)
        if len(key_arr) == 0:
            return 0
        with self._lock.write():
            self._check_writable()
            return int(np.sum(self._index.remove(key_arr.astype(np.uint64))))

    # ------------------------------------------------------------------ search

    def search(
        self,
        query: Any,
        k: int = 10,
        *,
        exclude: KeyFilter | None = None,
        allowed: KeyFilter | None = None,
        oversample: float = 2.0,
    ) -> list[Hit]:
        """Top-``k`` hits for one query vector ``(dims,)`` or ``(1, dims)``, best first.

        ``exclude`` (e.g. deleted keys) and ``allowed`` are sets/containers of
        keys or predicates ``key -> bool``. With a filter, ``k * oversample``
        candidates are fetched and the fetch grows 4x per round until ``k``
        survive or the whole index was asked, so the top-k stays full.
        """
        matrix = as_matrix(query, self.dims, "query")
        if matrix.shape[0] != 1:
            raise InvalidInput("query", "search() takes one query; use search_many()")
        return self.search_many(matrix, k, exclude=exclude, allowed=allowed, oversample=oversample)[0]

    def search_many(
        self,
        queries: Any,
        k: int = 10,
        *,
        exclude: KeyFilter | None = None,
        allowed: KeyFilter | None = None,
        oversample: float = 2.0,
    ) -> list[list[Hit]]:
        """Top-``k`` hits for each row of ``queries`` ``(n, dims)``; see :meth:`search`."""
        matrix = as_matrix(queries, self.dims, "queries")
        if k < 1:
            raise InvalidInput("k", "k must be >= 1")
        if oversample < 1:
            raise InvalidInput("oversample", "oversample must be >= 1")
        keep = keep_predicate(exclude, allowed)
        with self._lock.read():
            if self._closed:
                raise ReadOnlyIndexError("index is closed")
            return self._search_rounds(matrix, k, keep, oversample)

    def _search_rounds(
        self,
        matrix: np.ndarray,
        k: int,
        keep: Callable[[int], bool] | None,
        oversample: float,
    ) -> list[list[Hit]]:
        size = len(self._index)
        results: list[list[Hit]] = [[] for _ in range(len(matrix))]
        if size == 0 or len(matrix) == 0:
            return results
        fetch = min(size, k if keep is None else math.ceil(k * oversample))
        pending = np.arange(len(matrix))
        while len(pending):
            rows = self._raw_search(matrix[pending], fetch)
            still: list[int] = []
            for qi, (keys, sims) in zip(pending, rows, strict=True):
                # Plain ints and floats in one C call each, and no more Hit objects than k: a hybrid
                # recall's pool is ~1,000 rows, where the per-row conversions cost ~2 ms.
                hits: list[Hit] = []
                for key, sim in zip(keys.tolist(), sims.tolist(), strict=True):
                    if keep is None or keep(key):
                        hits.append(Hit(key, sim))
                        if len(hits) == k:
                            break
                results[qi] = hits
                exhausted = len(keys) < fetch or fetch >= size
                if len(hits) < k and not exhausted:
                    still.append(int(qi))
            pending = np.asarray(still, dtype=np.int64)
            fetch = min(size, fetch * 4)
        return results

    def _raw_search(self, matrix: np.ndarray, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """usearch search returning per-query (keys, similarities), padding removed."""
        found = self._index.search(matrix, count, threads=self.threads)
        if len(matrix) == 1:
            return [(found.keys, 1.0 - found.distances)]
        return [
            (
                found.keys[i, : found.counts[i]],
                1.0 - found.distances[i, : found.counts[i]],
            )
            for i in range(len(matrix))
        ]

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike[str], covered_seq: int) -> IndexMeta:
        """Write the index atomically to ``path`` and return the metadata written.

        Readers see the old file or the new one, never a mix (see
        :func:`~.fileformat.write_file`). Runs alongside searches, not mutations;
        works for viewed indexes too (e.g. to re-save under a new covered_seq).
        """
        if not isinstance(covered_seq, int) or covered_seq < 0:
            raise InvalidInput("covered_seq", f"must be an int >= 0, got {covered_seq!r}")
        with self._lock.read():
            if self._closed:
                raise ReadOnlyIndexError("index is closed")
            meta = IndexMeta(covered_seq=covered_seq, dims=self.dims, embedder=self._embedder,
                             count=len(self._index), dtype=self._dtype,
                             connectivity=int(self._index.connectivity),
                             expansion_search=int(self._index.expansion_search))
            return write_file(self._index, path, meta)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, view: bool = True) -> tuple[AnnIndex, IndexMeta]:
        """Open an index file; returns ``(index, metadata)``.

        ``view=True`` memory-maps the file read-only: O(1) open, no copy, pages
        shared with every other process viewing the same file; the returned
        index is searchable but ``add``/``remove`` raise
        :class:`ReadOnlyIndexError` (use :meth:`writable_copy`).
        ``view=False`` loads a private writable copy into memory.
        Raises ``FileNotFoundError`` or :class:`~.fileformat.IndexFileError` (rebuild).
        """
        raw, meta, mapping = map_file(path, view=view)
        return cls._wrap(raw, embedder=meta.embedder, dtype=meta.dtype, read_only=view, mapping=mapping,
                         path=Path(path)), meta

    def writable_copy(self) -> AnnIndex:
        """A private, mutable, in-memory deep copy (e.g. of a viewed index)."""
        with self._lock.read():
            if self._closed:
                raise ReadOnlyIndexError("index is closed")
            copied = self._index.copy()
            threads = self.threads
        clone = self._wrap(copied, embedder=self._embedder, dtype=self._dtype, read_only=False)
        clone.threads = threads
        return clone

    def close(self) -> None:
        """Release memory / unmap the file. Idempotent; later use raises ``ReadOnlyIndexError``."""
        with self._lock.write():
            self._release()

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Order matters: usearch must forget the mapped memory before it is unmapped.
        self._index.reset()
        if self._mapping is not None:
            self._mapping.close()
            self._mapping = None

    def __enter__(self) -> AnnIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Unreachable objects have no concurrent users: no lock needed.
        with suppress(Exception):
            self._release()
