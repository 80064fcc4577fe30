"""Vectors: the HNSW index file (:mod:`.index`, :mod:`.fileformat`) and exact search (:mod:`.exact`)."""

from .exact import Hit, exact_search, merge_results
from .fileformat import FORMAT, USEARCH_PIP, IndexFileError, IndexMeta, VectorIndexUnavailable, read_meta
from .index import AnnIndex, ReadOnlyIndexError

__all__ = ["AnnIndex", "Hit", "IndexMeta", "IndexFileError", "ReadOnlyIndexError", "VectorIndexUnavailable",
           "exact_search", "merge_results", "read_meta", "USEARCH_PIP", "FORMAT"]
