"""Semantic search: embeddings in SQLite as the truth, an HNSW file as a cache.

- Vectors are written beside the memory in the same transaction when the
  writer embeds (``store_vectors``); every other new or changed memory is put
  on ``embed_queue`` by a trigger and embedded by ``embed_pending`` (any
  process; small queues are drained before a search, so one process sees
  another's new memories at once).
- The HNSW file (``vectors.usearch``) covers embeddings up to its
  ``covered_seq`` and is opened memory-mapped, shared by every process. Newer
  rows are kept in an in-memory delta and searched exactly; their keys
  supersede the file's. The file is rewritten atomically by whichever process
  holds ``vectors.lock`` (``refresh_index``), never by a reader.
- Every hit is re-read from ``memories`` with the caller's filters in SQL, so a
  forgotten, expired or out-of-scope memory can never come back, whatever the
  file still holds.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput, NeuralSyncError
from ..oplog.materialize import content_hash
from ..stages import EMBED, VECTOR_SEARCH, stage
from ..store.reads import MEMORY_COLUMNS, row_to_memory
from ..store.storage import Storage
from ..utils import Periodic

if TYPE_CHECKING:
    import numpy as np

    from ..model import Memory
    from .embed import Embedder
    from .filters import Filters
    from .vector import AnnIndex, Hit, IndexMeta

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
EMBED_BATCH = 512
DRAIN_BEFORE_SEARCH = 128        # queue sizes a search embeds itself (~0.4 s of MiniLM at most)
EXACT_FILTER_LIMIT = 20_000      # filtered sets this small are searched exactly
MAX_DELTA = 200_000              # newest rows kept in memory when the file lags far behind
REFRESH_DELTA = 5_000            # a server rebuilds the file once this many rows are uncovered
REFRESH_INTERVAL_S = 15.0
WIDEN = (8, 32)
REMOVED_PER_WRITE = 2_000        # removed keys forgotten per write transaction after a rebuild
SERVER_RECHECK_S = 30.0          # a process embedding locally looks for a started server this often
INDEX_FILE = "vectors.usearch"
# Measured on 100k wordllama vectors with short queries: M=16/ef 64 gave
# recall@10 0.85; M=32 (build ~2x slower) with ef 192 gives ~0.96 at ~1 ms.
ANN_SETTINGS: dict[str, Any] = {"connectivity": 32, "expansion_add": 400, "expansion_search": 192}
# The graph search returns this many times the candidates wanted (so it explores at least that many, twice over
# through the exclusion filter); the best by the index's own f16 similarity are kept and ranked exactly when
# their memories are read. MiniLM, 100k generated memories plus the labelled eval set (bench/README-quality.md):
# hybrid's 90 candidates from a graph search of ~180 left R@5 at .579 against exact search's .602; the wider
# search keeps it within .02. Only the kept candidates' vectors are read: ranking the whole x8 pool exactly
# from SQLite cost 2-10 ms of random reads at 1M and changed no answer (the f16 order differs only in ties).
ANN_POOL = 8


def default_breadth(size: int) -> int:
    """The graph search's breadth (``expansion_search``) for an index of ``size`` vectors: the built-in 192
    up to ~400k, then about one per two thousand, in steps of 64. The graph reaches fewer true neighbours as
    it grows: at 1M (MiniLM, graph built with ``expansion_add`` 400; bench/README-semantic.md) top-10
    agreement with exact search was .955 at 192, .978 at 384, .984 at 512 (the target: .98) and .989 at 768,
    the graph search alone 4 -> 5.5 -> 7.8 ms."""
    return min(4096, max(int(ANN_SETTINGS["expansion_search"]), -(-size // 128_000) * 64))


def to_blob(vector: np.ndarray) -> bytes:
    """Little-endian float32 bytes of one vector."""
    import numpy as np

    return np.asarray(vector, dtype="<f4").tobytes()


def from_blobs(blobs: Sequence[bytes], dims: int) -> np.ndarray:
    """A (n, dims) float32 matrix from stored blobs."""
    import numpy as np

    if not blobs:
        return np.zeros((0, dims), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dims).astype(np.float32)


class SemanticIndex:
    """Embeds, stores and searches vectors for one store. Thread-safe."""

    def __init__(self, storage: Storage, embedder_spec: str = "minilm", via_server: bool = True) -> None:
        self.storage = storage
        self.via_server = via_server
        self.home = storage.config.home
        self.spec = embedder_spec
        self.path = self.home / INDEX_FILE
        self._embedder: Embedder | None = None
        self._local_embedder: Embedder | None = None
        self._server_checked = 0.0
        self._announced = False
        self._lock = threading.RLock()
        self._ann: AnnIndex | None = None
        self._ann_meta: IndexMeta | None = None
        self._ann_stamp: tuple[int, int] | None = None
        self._ann_checked = 0.0
        self._breadth: int | None = None  # set_search_breadth's value; None: the index file's own
        self._delta: dict[int, np.ndarray] = {}
        self._delta_upto = -1
        self._delta_cache: tuple[np.ndarray, np.ndarray] | None = None
        self._refresher: Periodic | None = None
        self._warming: threading.Thread | None = None

    # ------------------------------------------------------------ embedding
    @property
    def local_embedder(self) -> Embedder:
        """This process's own embedder, built on first use (a server embeds with it for the others)."""
        with self._lock:
            if self._local_embedder is None:
                from .embed import get_embedder

                self._local_embedder = get_embedder(self.spec)
            return self._local_embedder

    @property
    def embedder(self) -> Embedder:
        """The configured embedder: through this store's running server when there is one (one model per
        machine), else this process's own. A process that found no server looks again now and then."""
        local = self.local_embedder
        with self._lock:
            now = time.monotonic()
            if self.via_server and (self._embedder is None or self._embedder is local) \
                    and now - self._server_checked >= SERVER_RECHECK_S:
                from ..discovery import read_server_info

                self._server_checked = now
                if read_server_info(self.home) is not None:  # else the client's imports are not needed
                    from .embed.remote import server_embedder

                    self._embedder = server_embedder(self.home, local.name, lambda: local)
            return self._embedder or local

    def warm_up(self) -> None:
        """Load this process's embedder on a background thread while the index file is mapped here, so
        a first search pays for the two at once, not in turn (a fresh process about to search: the model's
        session is built outside the GIL). Nothing is loaded when the store's server embeds for us."""
        from ..discovery import read_server_info

        if self._warming is not None or (self.via_server and read_server_info(self.home) is not None):
            return

        def load() -> None:
            try:
                loader = getattr(self.local_embedder, "load", None)
                if callable(loader):
                    loader()
            except Exception as exc:  # noqa: BLE001 - a head start only: the search reports what fails
                log.debug("embedder warm-up failed: %s", exc)

        self._warming = threading.Thread(target=load, name="neuralsync-warm-up", daemon=True)
        self._warming.start()
        try:
            with self._lock:
                self._current_ann()
        except NeuralSyncError as exc:  # e.g. usearch missing: the search says so, or searches exactly
            log.debug("index warm-up failed: %s", exc)

    def announce(self, url: str) -> None:
        """Offer this process's embedder to the store's other processes (see ``embed.remote``)."""
        from ..discovery import write_server_info

        write_server_info(self.home, url, self.local_embedder.name, self.local_embedder.dims)
        self._announced = True

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors for ``texts``."""
        with stage(EMBED):
            return self.embedder.embed(list(texts))

    def adopt_embedder(self) -> int:
        """Queue every vector made by another embedder for re-embedding; returns how many.

        Runs when a store is opened with a different embedder than last time
        (its name is kept in ``meta``). Search keeps working meanwhile: queued
        rows leave the semantic results until their new vector is written
        (text recall still finds them), and the refresher or ``neuralsync embed``
        works the queue down with progress.
        """
        from .embed.names import known_name

        name = known_name(self.spec) or self.embedder.name  # a bundled embedder's name needs no import
        conn = self.storage.conn
        row = conn.execute("SELECT value FROM meta WHERE key = 'embedder'").fetchone()
        if row is not None and row[0] == name:
            return 0
        with self.storage.write() as wconn:
            queued = wconn.execute("INSERT OR IGNORE INTO embed_queue(mem) SELECT mem FROM embeddings"
                                   " WHERE embedder != ?", (name,)).rowcount
            wconn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('embedder', ?)", (name,))
        if queued:
            log.warning("embedder changed to %s: %d memories queued for re-embedding", name, queued)
        return int(queued)

    def store_vectors(self, conn: sqlite3.Connection, items: Sequence[tuple[str, str, np.ndarray]]) -> None:
        """Write vectors of (memory id, embedded text, vector) in the caller's transaction and dequeue them."""
        name = self.embedder.name
        rows = [(record_id, content_hash(text), vec) for record_id, text, vec in items]
        # Only while the memory still holds the embedded text (a rolled-back update
        # inside a batch must not leave the vector of text that was never stored).
        conn.executemany("INSERT OR REPLACE INTO embeddings(mem, embedder, vec)"
                         " SELECT rowid, ?, ? FROM memories WHERE id = ? AND content_hash = ?",
                         [(name, to_blob(vec), rid, chash) for rid, chash, vec in rows])
        conn.executemany("DELETE FROM embed_queue WHERE mem = (SELECT rowid FROM memories WHERE id = ?"
                         " AND content_hash = ?)", [(rid, chash) for rid, chash, _ in rows])

    def pending(self) -> int:
        """Memories waiting for a vector."""
        return int(self.storage.conn.execute("SELECT count(*) FROM embed_queue").fetchone()[0])

    def embed_pending(self, limit: int | None = None, progress: Progress | None = None) -> int:
        """Embed queued memories (new from elsewhere, or changed); returns how many."""
        queued = self.pending()
        total = queued if limit is None else min(limit, queued)
        done = 0
        while done < total:
            rows = self.storage.conn.execute(
                "SELECT q.mem, m.content, m.content_hash FROM embed_queue q JOIN memories m ON m.rowid = q.mem"
                " ORDER BY q.mem LIMIT ?", (min(EMBED_BATCH, total - done),)).fetchall()
            if not rows:
                break
            vectors = self.embed([content for _, content, _ in rows])
            name = self.embedder.name
            with self.storage.write() as conn:
                # The content hash guards against a change made while we embedded.
                conn.executemany(
                    "INSERT OR REPLACE INTO embeddings(mem, embedder, vec)"
                    " SELECT rowid, ?, ? FROM memories WHERE rowid = ? AND content_hash = ?",
                    [(name, to_blob(vec), mem, chash) for (mem, _, chash), vec in zip(rows, vectors, strict=True)])
                conn.executemany("DELETE FROM embed_queue WHERE mem = ? AND EXISTS"
                                 " (SELECT 1 FROM embeddings WHERE mem = ?)", [(m, m) for m, _, _ in rows])
            done += len(rows)
            if progress:
                progress(done, total)
        return done

    # ------------------------------------------------------------ search
    def search(self, query: str, k: int, filters: Filters, now: int) -> list[tuple[Memory, float]]:
        """Top ``k`` memories by cosine similarity to ``query`` that pass ``filters``."""
        vector = self.embed_query(query)
        with stage(VECTOR_SEARCH):
            return self.search_vector(vector, k, filters, now)

    def embed_query(self, query: str) -> np.ndarray:
        """The query's vector, after embedding a small queue so that memories other
        processes just wrote are searchable (a large queue is left to the refresher)."""
        if 0 < self.pending() <= DRAIN_BEFORE_SEARCH:
            self.embed_pending()
        return self.embed([query])[0]

    def search_vector(self, vector: np.ndarray, k: int, filters: Filters, now: int) -> list[tuple[Memory, float]]:
        """Like :meth:`search` for an already embedded query.

        Filters are applied to the candidates in SQL; when they leave fewer
        than ``k``, the candidate pool widens (x8, x32) before a narrow filter
        falls back to an exact search over just the rows it admits.
        """
        want = max(k * 3, 30)
        found = self._fetch(vector, self._candidates(vector, want), filters, now)
        if len(found) >= k or not filters.restrictive:
            return found[:k]
        for factor in WIDEN:
            found = self._fetch(vector, self._candidates(vector, want * factor), filters, now)
            if len(found) >= k:
                return found[:k]
        exact = self._exact_filtered(vector, k, filters, now)
        return found[:k] if exact is None else exact

    def similarities(self, vector: np.ndarray, record_ids: Sequence[str]) -> dict[str, float]:
        """Cosine similarity of ``vector`` to each stored memory (ids without a vector are absent)."""
        if not record_ids:
            return {}
        marks = ",".join("?" * len(record_ids))
        rows = self.storage.conn.execute(
            f"SELECT m.id, e.vec FROM embeddings e JOIN memories m ON m.rowid = e.mem WHERE m.id IN ({marks})",
            list(record_ids)).fetchall()
        if not rows:
            return {}
        matrix = from_blobs([blob for _, blob in rows], len(vector))
        sims = matrix @ vector
        return {rid: float(s) for (rid, _), s in zip(rows, sims, strict=True)}

    def _candidates(self, vector: np.ndarray, want: int) -> list[Hit]:
        """ANN hits from the file (minus rows superseded since) merged with exact delta hits.

        Only the snapshot is taken under the lock; searches run outside it, so
        concurrent queries (a server's threads) do not queue behind each other.
        """
        from .vector import ReadOnlyIndexError, exact_search, merge_results

        for _ in range(2):
            with self._lock:
                ann = self._current_ann()
                self._sync_delta()
                keys, matrix = self._delta_matrix(len(vector))
                stale = self._delta  # membership tests only: safe while another thread adds
            try:
                ann_hits = (ann.search(vector, want * ANN_POOL, exclude=stale.__contains__)[:want]
                            if ann is not None else [])
                break
            except ReadOnlyIndexError:  # the file was replaced and this view closed: take the new one
                with self._lock:
                    self._ann_checked = 0.0
        else:
            ann_hits = []
        delta_hits = exact_search(matrix, keys, vector, want, normalized=True) if len(keys) else []
        return merge_results(ann_hits, delta_hits, want)

    def _fetch(self, vector: np.ndarray, hits: Sequence[Hit], filters: Filters,
               now: int) -> list[tuple[Memory, float]]:
        """The hits' memories that pass ``filters``, ranked by exact similarity to ``vector``.

        The index ranks by its f16 copies; each hit's stored float32 vector is read in the same
        statement as its memory, so the ranking and the similarities returned are exact."""
        if not hits:
            return []
        where, args = filters.sql(now)
        marks = ",".join("?" * len(hits))
        rows = self.storage.conn.execute(
            f"SELECT {MEMORY_COLUMNS}, m.rowid, e.vec FROM memories m"
            " LEFT JOIN embeddings e ON e.mem = m.rowid AND e.embedder = ?"
            f" WHERE m.rowid IN ({marks}) AND {where} AND m.rowid NOT IN (SELECT mem FROM embed_queue)",
            [self.embedder.name, *(h.key for h in hits), *args]).fetchall()
        if not rows:
            return []
        found = {h.key: h.similarity for h in hits}
        exact = [row for row in rows if row[-1] is not None]
        if exact:
            sims = from_blobs([row[-1] for row in exact], len(vector)) @ vector
            found.update(zip((row[-2] for row in exact), sims.tolist(), strict=True))
        return sorted(((row_to_memory(row), found[row[-2]]) for row in rows), key=lambda pair: -pair[1])

    def _exact_filtered(self, vector: np.ndarray, k: int, filters: Filters,
                        now: int) -> list[tuple[Memory, float]] | None:
        """Exact search over a small filtered set (None when the set is too large for that)."""
        import numpy as np

        from .vector import exact_search

        where, args = filters.sql(now)
        rows = self.storage.conn.execute(
            f"SELECT e.mem, e.vec FROM embeddings e JOIN memories m ON m.rowid = e.mem WHERE {where} LIMIT ?",
            (*args, EXACT_FILTER_LIMIT + 1)).fetchall()
        if len(rows) > EXACT_FILTER_LIMIT:
            return None
        keys = np.array([mem for mem, _ in rows], dtype=np.int64)
        hits = exact_search(from_blobs([b for _, b in rows], len(vector)), keys, vector, k) if rows else []
        return self._fetch(vector, hits, filters, now)

    # ------------------------------------------------------------ the file and the delta
    def _current_ann(self) -> AnnIndex | None:
        """The memory-mapped index file, re-opened when another process replaced it."""
        now = time.monotonic()
        if now - self._ann_checked < 0.5:
            return self._ann
        self._ann_checked = now
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._drop_ann()
            return None
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp != self._ann_stamp:
            self._open_ann(stamp)
        return self._ann

    def _open_ann(self, stamp: tuple[int, int]) -> None:
        from .vector import AnnIndex

        self._drop_ann()
        try:
            ann, meta = AnnIndex.open(self.path, view=True)
        except NeuralSyncError as exc:
            log.warning("vector index %s unusable (%s); searching exactly until it is rebuilt", self.path, exc)
            return
        if meta.embedder != self.embedder.name or meta.dims != self.embedder.dims:
            ann.close()  # built by another embedder: useless for this one's queries
            return
        ann.threads = 1  # one query at a time: a thread pool only adds latency (builds use every core)
        breadth = self._breadth if self._breadth is not None else default_breadth(len(ann))
        if ann.expansion_search != breadth:
            ann.expansion_search = breadth
        self._ann, self._ann_meta, self._ann_stamp = ann, meta, stamp
        self._delta, self._delta_upto, self._delta_cache = {}, meta.covered_seq, None

    @property
    def search_breadth(self) -> int:
        """How many candidates the HNSW search explores per query (usearch ``expansion_search``)."""
        ann = self._current_ann()
        if ann is not None:
            return ann.expansion_search
        return self._breadth if self._breadth is not None else int(ANN_SETTINGS["expansion_search"])

    def set_search_breadth(self, breadth: int) -> None:
        """Explore ``breadth`` candidates per query in this process (fewer: faster, lower recall)."""
        if isinstance(breadth, bool) or not isinstance(breadth, int) or not 16 <= breadth <= 4096:
            raise InvalidInput("search_breadth", "must be an integer from 16 to 4096")
        self._breadth = breadth
        if self._ann is not None:
            self._ann.expansion_search = breadth

    def _drop_ann(self) -> None:
        had_file = self._ann_meta is not None
        if self._ann is not None:
            self._ann.close()
        self._ann = self._ann_meta = self._ann_stamp = None
        # The delta held what the file did not cover; without the file every row belongs in it. Only then:
        # with no file at all this runs at every look (twice a second), and reloading a 100k-row delta each
        # time made every query of an unindexed store take ~1-3 s.
        if had_file:
            self._delta, self._delta_upto, self._delta_cache = {}, -1, None

    def _sync_delta(self) -> None:
        """Load embeddings written after what the file (or the last sync) covers."""
        import numpy as np

        if self._delta_upto < 0:
            self._delta_upto = 0
        # Newest first, at most MAX_DELTA: memory stays bounded when the file lags
        # far behind (older rows wait for the rebuild; text recall still finds them).
        rows = self.storage.conn.execute(
            "SELECT seq, mem, vec FROM embeddings WHERE seq > ? AND embedder = ? ORDER BY seq DESC LIMIT ?",
            (self._delta_upto, self.embedder.name, MAX_DELTA)).fetchall()
        if not rows:
            return
        rows.reverse()
        dims = self.embedder.dims
        for _seq, mem, blob in rows:
            self._delta[mem] = np.frombuffer(blob, dtype="<f4", count=dims)
        self._delta_upto = rows[-1][0]
        self._delta_cache = None

    def _delta_matrix(self, dims: int) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        from .vector.exact import as_matrix

        if self._delta_cache is None:
            keys = np.fromiter(self._delta.keys(), dtype=np.int64, count=len(self._delta))
            # Validated and normalised once here, not at every search (exact_search(normalized=True)).
            matrix = (as_matrix(np.stack(list(self._delta.values())), dims, "embeddings") if self._delta
                      else np.zeros((0, dims), dtype=np.float32))
            self._delta_cache = (keys, matrix)
        return self._delta_cache

    def uncovered(self) -> int:
        """Embeddings newer than the index file."""
        covered = self._ann_meta.covered_seq if self._ann_meta else 0
        row = self.storage.conn.execute("SELECT count(*) FROM embeddings WHERE seq > ?", (covered,)).fetchone()
        return int(row[0])

    # ------------------------------------------------------------ rebuilding the file
    def refresh_index(self, full: bool = False, progress: Progress | None = None) -> dict[str, Any]:
        """Bring the index file up to date (write role: holder of ``vectors.lock``).

        Incremental when a usable file exists and few rows were removed since;
        otherwise a full build streamed from SQLite. Readers keep using the old
        file until the new one is renamed over it.
        """
        import numpy as np

        from .vector import AnnIndex

        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "vectors.lock", "a+b") as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return {"skipped": "another process is rebuilding the vector index"}
            started = time.perf_counter()
            self.embed_pending(progress=progress)
            conn = self.storage.conn
            top_seq = int(conn.execute("SELECT coalesce(max(seq), 0) FROM embeddings").fetchone()[0])
            removed = [m for (m,) in conn.execute("SELECT mem FROM vector_removed")]
            with self._lock:
                self._current_ann()
                base = self._ann if (self._ann is not None and not full) else None
                covered = self._ann_meta.covered_seq if (base is not None and self._ann_meta) else 0
            index = base.writable_copy() if base is not None else AnnIndex(
                self.embedder.dims, embedder=self.embedder.name, **ANN_SETTINGS)
            index.expansion_add = int(ANN_SETTINGS["expansion_add"])  # a copy of a file adds with usearch's default
            try:
                if removed and base is not None:
                    index.remove(np.array(removed, dtype=np.int64))
                added = self._add_rows(index, covered, progress)
                index.save(self.path, covered_seq=top_seq)
            finally:
                index.close()
            for start in range(0, len(removed), REMOVED_PER_WRITE):  # short writes: writers wait no longer
                with self.storage.write() as wconn:
                    wconn.executemany("DELETE FROM vector_removed WHERE mem = ?",
                                      [(m,) for m in removed[start:start + REMOVED_PER_WRITE]])
            with self._lock:
                self._ann_checked = 0.0
            return {"mode": "incremental" if base is not None else "full", "added": added,
                    "removed": len(removed) if base is not None else 0, "covered_seq": top_seq,
                    "seconds": round(time.perf_counter() - started, 2)}

    def _add_rows(self, index: AnnIndex, after_seq: int, progress: Progress | None) -> int:
        import numpy as np

        conn = self.storage.conn
        total = int(conn.execute("SELECT count(*) FROM embeddings WHERE seq > ?", (after_seq,)).fetchone()[0])
        dims, name, done, last = self.embedder.dims, self.embedder.name, 0, after_seq
        while True:
            rows = conn.execute("SELECT seq, mem, vec FROM embeddings WHERE seq > ? AND embedder = ?"
                                " ORDER BY seq LIMIT 20000", (last, name)).fetchall()
            if not rows:
                return done
            index.add(np.array([mem for _, mem, _ in rows], dtype=np.int64),
                      from_blobs([blob for _, _, blob in rows], dims))
            done += len(rows)
            last = rows[-1][0]
            if progress:
                progress(done, total)

    def start_background_refresh(self, interval: float = REFRESH_INTERVAL_S) -> None:
        """For long-lived processes: embed what arrives from elsewhere and rebuild the
        file once ``REFRESH_DELTA`` rows are uncovered, from a daemon thread."""
        if self._refresher is None:
            self._refresher = Periodic("neuralsync-vectors", interval, self._maintain)
            self._refresher.start()

    def wake(self) -> None:
        """New memories were written: embed them now in the background (servers only)."""
        if self._refresher is not None:
            self._refresher.wake()

    def _maintain(self) -> None:
        self.embed_pending()
        with self._lock:
            self._current_ann()
        if self.uncovered() >= REFRESH_DELTA:
            log.info("vector index: %s", self.refresh_index())

    def close(self) -> None:
        """Stop background work, withdraw a server announcement, release the mapped file."""
        if self._announced:
            from ..discovery import remove_server_info

            remove_server_info(self.home)
            self._announced = False
        if self._refresher is not None:
            self._refresher.stop(timeout=2)
        if self._warming is not None:  # never leave a model load running into interpreter shutdown
            self._warming.join(timeout=60)
        with self._lock:
            self._drop_ann()


