"""Approximate nearest-neighbour (HNSW, usearch) index kept as a derived cache file.

SQLite holds every embedding; this file only makes cosine search fast. Losing
or corrupting it loses nothing: rebuild from the store. The file records
``covered_seq`` (the last store sequence number whose embedding it contains)
so a reader searches the file with HNSW and the few newer rows with
:func:`exact_search`, then combines both with :func:`merge_results`.

File layout (one file, replaced atomically, so index and metadata can never
disagree)::

    [usearch index, exactly as usearch saves it][metadata JSON][footer 24 B]
    footer = little-endian u64 json_len, u64 index_len, 8-byte magic

usearch only reads the prefix it needs, so the file is also a valid usearch
file for debugging tools.

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

import json
import math
import mmap
import os
import struct
import tempfile
import threading
from collections.abc import Callable, Collection, Container, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple, TypeAlias

import numpy as np

from neuralsync.errors import IntegrityError, InvalidInput, NeuralSyncError

__all__ = [
    "AnnIndex",
    "Hit",
    "IndexMeta",
    "IndexFileError",
    "ReadOnlyIndexError",
    "VectorIndexUnavailable",
    "exact_search",
    "merge_results",
    "read_meta",
    "USEARCH_PIP",
    "FORMAT",
]

USEARCH_PIP = "pip install usearch"
FORMAT = "neuralsync-ann/1"
DTYPES = ("f32", "f16", "i8")

_MAGIC = b"NSANN\x00v1"
_FOOTER = struct.Struct("<QQ8s")
_MAX_META_BYTES = 1 << 20

KeyFilter: TypeAlias = "Callable[[int], bool] | Container[int]"


class Hit(NamedTuple):
    """One search result: a store key and its cosine similarity (1 = same direction)."""

    key: int
    similarity: float


class IndexFileError(IntegrityError):
    """The index file is not ours, truncated, corrupt or inconsistent: rebuild it."""


class ReadOnlyIndexError(NeuralSyncError):
    """A mutation was attempted on a memory-mapped (viewed) index or a closed one."""


class VectorIndexUnavailable(NeuralSyncError):
    """usearch is not installed; the message has the pip line."""


@dataclass(frozen=True)
class IndexMeta:
    """Metadata stored in the index file.

    ``covered_seq``: every store row with seq <= this is in the index (minus
    deletions, which the caller filters). ``embedder``: the embedder ``name``;
    a different name means the vectors are from another space: rebuild.
    ``deleted``: usearch tombstones in the file (rebuild when large).
    """

    covered_seq: int
    dims: int
    embedder: str
    count: int
    dtype: str
    deleted: int = 0
    metric: str = "cos"
    connectivity: int = 16
    expansion_search: int = 64
    format: str = FORMAT

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> IndexMeta:
        """Parse metadata, ignoring unknown keys (forward compatible)."""
        try:
            data = json.loads(raw)
            known = {f.name for f in fields(cls)}
            meta = cls(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError, AttributeError) as exc:
            raise IndexFileError(f"bad index metadata: {exc}") from exc
        if meta.format != FORMAT or meta.dtype not in DTYPES or meta.metric != "cos":
            raise IndexFileError(f"unsupported index format: {meta}")
        return meta


# --------------------------------------------------------------------------- helpers


def _usearch() -> ModuleType:
    """Import ``usearch.index`` lazily so importing this module stays cheap."""
    try:
        import usearch.index as usearch_index
    except ImportError as exc:
        raise VectorIndexUnavailable(f"usearch is not installed; install it with: {USEARCH_PIP}") from exc
    return usearch_index


def _as_keys(keys: Any, field: str = "keys") -> np.ndarray:
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


def _as_matrix(vectors: Any, dims: int | None, field: str = "vectors") -> np.ndarray:
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


def _keep_predicate(exclude: KeyFilter | None, allowed: KeyFilter | None) -> Callable[[int], bool] | None:
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


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: fsync the directory entry (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


class _RWLock:
    """Many concurrent readers or one writer; waiting writers block new readers.

    Not re-entrant: public methods take it once and call only unlocked helpers.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


# --------------------------------------------------------------------------- file I/O


def _read_footer(buf: memoryview | bytes) -> tuple[IndexMeta, int]:
    """Parse and check the footer + metadata of a whole index file image."""
    size = len(buf)
    if size < _FOOTER.size:
        raise IndexFileError("index file too short")
    json_len, blob_len, magic = _FOOTER.unpack(bytes(buf[size - _FOOTER.size :]))
    if magic != _MAGIC:
        raise IndexFileError("not a neuralsync index file (bad magic)")
    if json_len > _MAX_META_BYTES or blob_len + json_len + _FOOTER.size != size:
        raise IndexFileError("index file is truncated or has a bad footer")
    meta = IndexMeta.from_json(bytes(buf[blob_len : blob_len + json_len]))
    return meta, blob_len


def read_meta(path: str | os.PathLike[str]) -> IndexMeta:
    """Read only the metadata of an index file (cheap: footer + JSON, no mapping).

    Raises ``FileNotFoundError`` if missing and :class:`IndexFileError` if not
    a valid index file.
    """
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size < _FOOTER.size:
            raise IndexFileError("index file too short")
        fh.seek(size - _FOOTER.size)
        json_len, blob_len, magic = _FOOTER.unpack(fh.read(_FOOTER.size))
        if magic != _MAGIC:
            raise IndexFileError("not a neuralsync index file (bad magic)")
        if json_len > _MAX_META_BYTES or blob_len + json_len + _FOOTER.size != size:
            raise IndexFileError("index file is truncated or has a bad footer")
        fh.seek(blob_len)
        return IndexMeta.from_json(fh.read(json_len))


# --------------------------------------------------------------------------- the index


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
        threads: int = 0,
    ) -> None:
        if not isinstance(dims, int) or dims < 1:
            raise InvalidInput("dims", f"dims must be a positive int, got {dims!r}")
        if dtype not in DTYPES:
            raise InvalidInput("dtype", f"dtype must be one of {DTYPES}, got {dtype!r}")
        if connectivity < 2 or expansion_add < 1 or expansion_search < 1:
            raise InvalidInput("connectivity", "HNSW parameters must be positive")
        index = _usearch().Index(
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
        self._lock = _RWLock()
        self.threads = 0

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
        threads: int = 0,
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
        key_arr = _as_keys(keys)
        matrix = _as_matrix(vectors, self.dims)
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
        key_arr = _as_keys(keys)
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
        matrix = _as_matrix(query, self.dims, "query")
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
        matrix = _as_matrix(queries, self.dims, "queries")
        if k < 1:
            raise InvalidInput("k", "k must be >= 1")
        if oversample < 1:
            raise InvalidInput("oversample", "oversample must be >= 1")
        keep = _keep_predicate(exclude, allowed)
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
                hits = [
                    Hit(int(key), float(sim))
                    for key, sim in zip(keys, sims, strict=True)
                    if keep is None or keep(int(key))
                ]
                results[qi] = hits[:k]
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

        Temp file in the same directory, fsync, ``os.replace``, fsync of the
        directory: readers see the old file or the new one, never a mix, and a
        failed save leaves the old file untouched and no temp file behind.
        Works for viewed indexes too (e.g. to re-save under a new covered_seq).
        """
        if not isinstance(covered_seq, int) or covered_seq < 0:
            raise InvalidInput("covered_seq", f"must be an int >= 0, got {covered_seq!r}")
        target = Path(path)
        directory = target.parent if str(target.parent) else Path(".")
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            with self._lock.read():
                if self._closed:
                    raise ReadOnlyIndexError("index is closed")
                self._index.save(os.fspath(tmp))
                count = len(self._index)
                connectivity = int(self._index.connectivity)
                expansion = int(self._index.expansion_search)
            blob_len = tmp.stat().st_size
            header = _usearch().Index.metadata(os.fspath(tmp)) or {}
            meta = IndexMeta(
                covered_seq=covered_seq,
                dims=self.dims,
                embedder=self._embedder,
                count=count,
                dtype=self._dtype,
                deleted=int(header.get("count_deleted", 0)),
                connectivity=connectivity,
                expansion_search=expansion,
            )
            raw = meta.to_json()
            with open(tmp, "r+b") as fh:
                fh.seek(blob_len)
                fh.write(raw)
                fh.write(_FOOTER.pack(len(raw), blob_len, _MAGIC))
                fh.truncate()
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            _fsync_dir(directory)
        except BaseException:
            with suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return meta

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, view: bool = True) -> tuple[AnnIndex, IndexMeta]:
        """Open an index file; returns ``(index, metadata)``.

        ``view=True`` memory-maps the file read-only: O(1) open, no copy, pages
        shared with every other process viewing the same file; the returned
        index is searchable but ``add``/``remove`` raise
        :class:`ReadOnlyIndexError` (use :meth:`writable_copy`).
        ``view=False`` loads a private writable copy into memory.

        Both read one consistent snapshot of the file (a single ``mmap``), so a
        concurrent ``save`` replacing the file cannot mix two versions.
        Raises ``FileNotFoundError`` or :class:`IndexFileError` (rebuild).
        """
        target = Path(path)
        with open(target, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < _FOOTER.size:
                raise IndexFileError(f"{target}: index file too short")
            mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            index, meta = cls._open_mapping(mapping, view=view)
        except BaseException:
            mapping.close()
            raise
        if view:
            return cls._wrap(
                index,
                embedder=meta.embedder,
                dtype=meta.dtype,
                read_only=True,
                mapping=mapping,
                path=target,
            ), meta
        mapping.close()
        return cls._wrap(
            index,
            embedder=meta.embedder,
            dtype=meta.dtype,
            read_only=False,
            path=target,
        ), meta

    @staticmethod
    def _open_mapping(mapping: mmap.mmap, *, view: bool) -> tuple[Any, IndexMeta]:
        """Create the usearch index over (view) or from (load) a mapped file image."""
        usearch_index = _usearch()
        whole = memoryview(mapping)
        blob = whole[:0]
        try:
            meta, blob_len = _read_footer(whole)
            blob = whole[:blob_len]
            try:
                header = usearch_index.Index.metadata(blob)
            except (ValueError, RuntimeError) as exc:
                raise IndexFileError(f"unreadable usearch header: {exc}") from exc
            if not header or int(header["dimensions"]) != meta.dims or int(header["count_present"]) != meta.count:
                raise IndexFileError("usearch header disagrees with index metadata")
            index = usearch_index.Index(
                ndim=meta.dims,
                metric="cos",
                dtype=meta.dtype,
                connectivity=meta.connectivity,
                expansion_search=meta.expansion_search,
                multi=False,
            )
            try:
                if view:
                    index.view(blob)
                else:
                    index.load(blob)
            except (ValueError, RuntimeError) as exc:
                raise IndexFileError(f"usearch could not read the index: {exc}") from exc
            index.expansion_search = meta.expansion_search
            if len(index) != meta.count or index.ndim != meta.dims:
                raise IndexFileError("index contents disagree with metadata")
            return index, meta
        finally:
            # usearch does not hold a buffer export; the mmap itself stays open
            # (owned by the AnnIndex) for as long as the view is used.
            blob.release()
            whole.release()

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


# --------------------------------------------------------------------------- exact search


def exact_search(
    matrix: Any,
    keys: Any,
    query: Any,
    k: int = 10,
    *,
    exclude: KeyFilter | None = None,
    allowed: KeyFilter | None = None,
) -> list[Hit]:
    """Brute-force cosine top-``k`` over ``matrix`` rows (keys in ``keys``).

    Meant for the rows newer than the index file's ``covered_seq`` (and for
    small stores where an ANN index is not worth it). Zero rows score 0.
    """
    if k < 1:
        raise InvalidInput("k", "k must be >= 1")
    key_arr = _as_keys(keys)
    rows = np.asarray(matrix, dtype=np.float32)
    if rows.size == 0:
        return []
    q = _as_matrix(query, None, "query")
    if q.shape[0] != 1:
        raise InvalidInput("query", "exact_search() takes one query vector")
    rows = _as_matrix(rows, q.shape[1], "matrix")
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
