"""Asking the store's running server instead of opening the store: the CLI's fast path for recall.

A fresh process that opens the store and searches it by meaning pays for numpy,
the vector index and the embedding model before it can answer; a server on the
same store has all of them loaded. When one is announced (see
:mod:`neuralsync.discovery`), ``neuralsync recall`` sends it the query over
loopback without opening the store; when there is none, or it cannot answer, the
CLI opens the store, whose facade asks the server again or searches itself. The
client is :func:`neuralsync.discovery.recall_via_server`, shared with the facade.
"""

from __future__ import annotations

from ..discovery import recall_via_server

__all__ = ["recall_via_server"]
