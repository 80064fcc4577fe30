"""The one public door: ``UnifiedMemoryAPI`` and ``MemoryConfig``.

Every adapter (CLI, HTTP, MCP, wrappers) calls this class and nothing below it.
It validates input (``validation.FieldChecks``), turns calls into ops on the
:class:`~neuralsync.oplog.log.OpLog` inside one write transaction, reads
through :class:`~neuralsync.store.reads.Reader`, and times every call into the
:class:`~neuralsync.services.monitor.PerformanceMonitor`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any, TypeVar

from . import validation as v
from .config import MemoryConfig
from .discovery import recall_via_server
from .errors import InvalidInput, NeuralSyncError, NotFound
from .facade.merges import MergesDoor
from .facade.sharing import SharingDoor
from .model import Change, Memory, Remembered
from .oplog import team
from .oplog.clock import hlc_ms
from .oplog.log import Intent, OpLog
from .oplog.materialize import record_pruned
from .replication.service import Replication
from .search.filters import Filters
from .search.recall import MODES, Recaller
from .search.semantic import SemanticIndex
from .services.compactor import DEFAULT_STRATEGIES, Compactor
from .services.doctor import DoctorReport, repair_fts, run_doctor
from .services.maintenance import optimize, tune
from .services.merger import OFF, Merger, choose_strategy
from .services.monitor import AlertCallback, PerformanceMonitor, SharedFigures, check_target, process_resources
from .services.teams import Teams
from .sessions.feed import ChangeFeed
from .sessions.growth import growth
from .sessions.registry import SessionRegistry
from .stages import PARSE, stage
from .store.access import AccessRecorder
from .store.reads import Reader, record_presence
from .store.storage import BUSY_RETRIES
from .store.writequeue import WriteQueue
from .textnorm import norm_hash
from .utils import Periodic, new_id, now_ms

__all__ = ["UnifiedMemoryAPI", "MemoryConfig", "Memory"]

log = logging.getLogger(__name__)

TOOL_MATCHES = ("exact", "or-unset")
UPDATE_ARGUMENTS = frozenset({"content", "scope", "priority", "tags", "kind", "tool", "metadata",
                              "ttl_ms", "confidence", "source", "expires_at"})
AUTO_OPTIMIZE_EVERY = 10_000
MAX_EMBED_TEXTS = 256
MERGE_SCAN_INTERVAL_S = 5.0
COMPACT_INTERVAL_S = 60.0  # a long-running process compacts a slice when the store was idle this long
T = TypeVar("T")
DEFER_AT_MOST = 2000  # creates a batch holds back for one set-at-a-time write
DEFERRED_TWINS = "deferred_twins"  # tx_cache key: (scope, norm_hash) of the creates a batch holds back


class _Outcome:
    """What ``_create_or_merge`` did (mutable while the transaction runs)."""

    __slots__ = ("memory_id", "memory", "done", "candidate_of")

    def __init__(self, memory_id: str) -> None:
        self.memory_id = memory_id
        self.memory: Memory | None = None
        self.done: Any = None  # MergeDone
        self.candidate_of: str | None = None


class UnifiedMemoryAPI(MergesDoor, SharingDoor):
    """A persistent memory shared by every process that opens the same ``base_path``.

    Use as a context manager (or call :meth:`close`). Safe to share between
    threads; every process may open its own instance on the same store.
    ``register_session=False`` opens the store without recording this process
    as a session (for commands that only list sessions or print the identity).
    ``tool`` names this process's session and, unless ``stamp_tool=False``, is
    the tool of its writes that name none (a server is not a tool: its clients'
    writes carry only the tool they state).
    """

    def __init__(self, config: MemoryConfig | None = None, *, tool: str | None = None,
                 register_session: bool = True, stamp_tool: bool = True) -> None:
        self.config = config or MemoryConfig.from_env()
        self.log = OpLog.open(self.config)
        self.storage = self.log.storage
        self.reads = Reader(self.storage)
        self.monitor = PerformanceMonitor(self.config.monitor_samples, self.config.target_response_time_ms)
        self.semantic = (SemanticIndex(self.storage, self.config.embedder, self.config.embed_via_server)
                         if self.config.embedder.lower() != "none" else None)
        self.recaller = Recaller(self.storage, self.semantic)
        if self.semantic is not None:
            self._adopt_embedder()
        self._batch = threading.local()
        self.checks = v.FieldChecks(self.config)
        self.access = AccessRecorder(self.storage)
        self.session_id = new_id()
        self.tool = tool or self.config.tool or os.environ.get("TOOL_NAME") or None
        self._write_tool = self.tool if stamp_tool else None
        self.figures = SharedFigures(self.config.home, self.monitor, self.session_id, self.tool)
        self._publisher: Periodic | None = None
        self.registry = SessionRegistry(self.storage, self.config.session_timeout_ms)
        self._registered = register_session
        if register_session:
            self.registry.register(self.session_id, self.tool)
        self.feed = ChangeFeed(self.storage)
        self.replication = Replication(self.log)
        self.teams = Teams(self.storage, self.log, self.config.home)
        self.merger = Merger(self.log, self.reads, self.config, self.semantic)
        self.compactor = Compactor(self.storage, self.log, self.merger, self.semantic, self.config.merge_undo_days,
                                   self.config.quota_bytes)
        self._merge_scans: Periodic | None = None
        self._team_syncs: Periodic | None = None
        self._compactions: Periodic | None = None
        self._idle_mark = (-1, 0.0)  # (last op seq seen, when) for the compaction scheduler
        self._ops_since_optimize = 0
        self._queue: WriteQueue | None = None
        self._closed = False
        # Recalls go to the store's announced server (see _via_server); a server turns this off for itself.
        self.forward_recalls = self.config.recall_via_server
        self._announced = False

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> UnifiedMemoryAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush statistics, run light maintenance if enabled, close connections."""
        if self._closed:
            return
        self._closed = True
        for periodic in (self._merge_scans, self._compactions, self._publisher, self._team_syncs):
            if periodic is not None:
                periodic.stop()
        if self._queue is not None:  # first: every write already submitted commits or gets its error
            self._queue.close()
        self.figures.publish(ended=True)
        self.replication.stop()
        self.access.close()
        if self.semantic is not None:
            self.semantic.close()
        try:
            self.registry.stop_heartbeat()
            if self._registered:
                self.registry.end(self.session_id)
        except NeuralSyncError as exc:  # a busy store must not make close() fail
            log.debug("could not mark session ended: %s", exc)
        if self.config.enable_auto_optimization:
            try:
                self.storage.conn.execute("PRAGMA optimize")
            except Exception as exc:  # noqa: BLE001 - closing must not fail on maintenance
                log.debug("PRAGMA optimize at close skipped: %s", exc)
        self.storage.close()

    # ------------------------------------------------------------ writes
    def remember(self, content: str, scope: str = "global", priority: float = 0.5,
                 tags: list[str] | tuple[str, ...] | str | None = None, kind: str = "fact",
                 tool: str | None = None, metadata: dict[str, Any] | None = None,
                 ttl_ms: int | None = None, confidence: float = 0.8, source: str | None = None,
                 merge: str | None = None) -> str:
        """Store a memory and return its id. Secrets in ``content`` are redacted first.

        A duplicate of a live memory in the scope (the same text, normalised) is merged into it by
        ``merge`` (a strategy, or ``"off"``; default: the scope's, else the store's) and that memory's id
        is returned; :meth:`remember_outcome` also says whether it merged.
        """
        with self.monitor.measure("remember"):
            args = dict(content=content, scope=scope, priority=priority, tags=tags, kind=kind, tool=tool,
                        metadata=metadata, ttl_ms=ttl_ms, confidence=confidence, source=source)
            return self._remember(args, merge=merge).memory_id

    def remember_memory(self, content: str, scope: str = "global", priority: float = 0.5,
                        tags: list[str] | tuple[str, ...] | str | None = None, kind: str = "fact",
                        tool: str | None = None, metadata: dict[str, Any] | None = None,
                        ttl_ms: int | None = None, confidence: float = 0.8, source: str | None = None,
                        merge: str | None = None) -> Memory:
        """Like :meth:`remember`, returning the memory as stored (secrets redacted), read back in the
        same transaction: also when a short ``ttl_ms`` has expired it by the time the caller looks."""
        return self.remember_outcome(content, scope, priority, tags, kind, tool, metadata, ttl_ms, confidence,
                                     source, merge=merge).memory

    def remember_outcome(self, content: str, scope: str = "global", priority: float = 0.5,
                         tags: list[str] | tuple[str, ...] | str | None = None, kind: str = "fact",
                         tool: str | None = None, metadata: dict[str, Any] | None = None,
                         ttl_ms: int | None = None, confidence: float = 0.8, source: str | None = None,
                         merge: str | None = None) -> Remembered:
        """Like :meth:`remember_memory`, and says whether the write was merged into a memory it repeats
        (then ``memory`` is that memory, and ``merge_id`` the merge, for ``undo_merge``)."""
        with self.monitor.measure("remember"):
            args = dict(content=content, scope=scope, priority=priority, tags=tags, kind=kind, tool=tool,
                        metadata=metadata, ttl_ms=ttl_ms, confidence=confidence, source=source)
            outcome = self._remember(args, merge=merge, read_back=True)
            assert outcome.memory is not None  # read inside the transaction that wrote it
            done = outcome.done
            if done is None:
                return Remembered(outcome.memory, candidate_of=outcome.candidate_of)
            return Remembered(outcome.memory, merged=True, merge_id=done.merge_id, strategy=done.strategy,
                              rule=done.rule)

    def _remember(self, args: dict[str, Any], merge: object = None, read_back: bool = False) -> _Outcome:
        values = {**args, "tool": args["tool"] if args["tool"] is not None else self._write_tool}
        with stage(PARSE):
            fields = self.checks.create(values, session=self.session_id, now=now_ms())
            strategy = choose_strategy(self.config, fields["scope"], merge)
        record_id = new_id()
        if fields["scope"].startswith(team.SCOPE_PREFIX):  # a shared scope's memory: its id is bound to the scope
            record_id = self.teams.new_record(self.storage.conn, fields)
        return self._create_or_merge(record_id, fields, strategy, read_back)

    def _create_or_merge(self, record_id: str, fields: dict[str, Any], strategy: str, read_back: bool) -> _Outcome:
        """Create the memory, or merge it into the live memory of its scope it repeats (one transaction)."""
        outcome = _Outcome(record_id)
        then = (lambda: self.reads.get(outcome.memory_id, include_expired=True)) if read_back else None

        def unit(conn: sqlite3.Connection) -> None:
            twin = None
            if strategy != OFF:
                key = norm_hash(fields["content"])
                held = self.storage.tx_cache.get(DEFERRED_TWINS)
                if isinstance(held, set) and (fields["scope"], key) in held:
                    self.storage.flush_deferred()  # its twin waits among this batch's creates: written first
                twin = self.merger.find_exact(conn, fields["scope"], key)
            if twin is not None and strategy == "manual":
                self.merger.pair_for_person(conn, twin.id, record_id, "exact duplicate (same normalised text)")
                outcome.candidate_of = twin.id
            elif twin is not None:
                self.storage.flush_deferred()  # the batch's earlier creates first, in order
                outcome.done = self.merger.absorb(conn, twin, record_id, fields, strategy)
                outcome.memory_id = twin.id
                outcome.memory = then() if then is not None else None
                return
            outcome.memory = self._commit([("create", record_id, fields)], (record_id, fields["content"]), then)

        self._write(unit, savepoint=False)
        if outcome.done is not None:
            self._after_commit(1)
        return outcome

    def import_memory(self, record: dict[str, Any]) -> bool:
        """Store an exported memory under its own id and creation time.

        Idempotent: returns False (and writes nothing) when the id already
        exists or was forgotten here. Fields are validated like ``remember``.
        """
        with self.monitor.measure("import_memory"):
            record_id, fields = self.checks.imported(record, session=self.session_id, now=now_ms())
            strategy = choose_strategy(self.config, fields["scope"])

            def unit(_conn: sqlite3.Connection) -> bool:
                # Known here, or waiting among this batch's creates (looked up without writing them).
                if (self.storage.is_deferred(self._append_deferred, record_id)
                        or any(record_presence(self.storage.peek_conn(), record_id))
                        or self.merger.absorbed(self.storage.peek_conn(), record_id)):
                    return False
                self._create_or_merge(record_id, fields, strategy, read_back=False)
                return True

            # No savepoint: import runs inside large batches, where savepoints make
            # FTS5 flush per record; this block raises nothing after validation.
            return self._write(unit, savepoint=False)

    def update(self, memory_id: str, **fields: Any) -> Memory:
        """Change fields of a memory (content, scope, priority, tags, kind, tool, metadata,
        ttl_ms, confidence, source). ``tags`` replaces the tag set. Returns the new state."""
        with self.monitor.measure("update"):
            record_id = v.memory_id(memory_id)
            unknown = sorted(set(fields) - UPDATE_ARGUMENTS)
            if unknown:
                raise InvalidInput(unknown[0], f"unknown field; updatable fields are {sorted(UPDATE_ARGUMENTS)}")
            if not fields:
                raise InvalidInput("fields", "nothing to update")
            scalars = self.checks.update(fields, now_ms())
            new_tags = self.checks.tags(fields["tags"]) if "tags" in fields else None

            def unit(_conn: sqlite3.Connection) -> Memory | None:
                current = self._require(record_id)
                moved = scalars.get("scope", current.scope)
                if moved != current.scope and (moved.startswith(team.SCOPE_PREFIX)
                                               or current.scope.startswith(team.SCOPE_PREFIX)):
                    raise InvalidInput("scope", "a memory does not move in or out of a shared scope; "
                                       "share a copy with team_promote")
                intents = [("update", record_id, scalars)] if scalars else []
                if new_tags is not None:
                    intents += self._tag_intents(current, new_tags)
                changed = "content" in scalars and scalars["content"] != current.content
                # Read back in the transaction: an update may itself expire the memory.
                return self._commit(intents, (record_id, scalars["content"]) if changed else None,
                                    lambda: self.reads.get(record_id, include_expired=True))

            updated = self._write(unit)
            if updated is None:
                raise NotFound(record_id)
            return updated

    def _tag_intents(self, current: Memory, new_tags: tuple[str, ...]) -> list[Intent]:
        old, new = set(current.tags), set(new_tags)
        intents: list[Intent] = [("tag_add", current.id, {"tag": tag}) for tag in sorted(new - old)]
        for tag in sorted(old - new):
            removes = sorted(self.reads.tag_adds(current.id, tag))
            intents.append(("tag_remove", current.id, {"tag": tag, "removes": removes}))
        return intents

    def forget(self, memory_id: str) -> bool:
        """Delete a memory. Raises :class:`NotFound` if there is no such live memory."""
        with self.monitor.measure("forget"):
            record_id = v.memory_id(memory_id)

            def unit(_conn: sqlite3.Connection) -> None:
                if not self.reads.exists(record_id):
                    raise NotFound(record_id)
                self._commit([("delete", record_id, {})])

            self._write(unit)
            return True

    def restore(self, memory_id: str) -> Memory:
        """Bring back a forgotten memory, as it was when it was forgotten; returns it.

        The restore is an ``update`` op with no fields on the forgotten memory: every replica's
        materialiser rebuilds a deleted memory from all its writes when a write reaches it
        (``materialize._resurrect``), so the restore replicates like any write. Raises
        :class:`NotFound` unless the memory was forgotten (a merged one comes back by ``undo_merge``).
        """
        with self.monitor.measure("restore"):
            record_id = v.memory_id(memory_id)

            def unit(conn: sqlite3.Connection) -> Memory | None:
                row = conn.execute("SELECT o.kind FROM tombstones t JOIN ops o ON o.id = t.op"
                                   " WHERE t.record_id = ?", (record_id,)).fetchone()
                if row is None or row[0] != "delete":
                    return None
                if record_pruned(conn, record_id):
                    raise InvalidInput("memory_id", "was compacted after every peer had its delete: its old"
                                                    " values are gone")
                return self._commit([("update", record_id, {})], None,
                                    lambda: self.reads.get(record_id, include_expired=True))

            restored = self._write(unit)
            if restored is None:
                raise NotFound(record_id)
            return restored

    def set_persona(self, text: str) -> None:
        """Set the persona text shared by every tool (empty text clears it)."""
        if not isinstance(text, str) or len(text) > self.config.max_content_chars:
            raise InvalidInput("text", "must be a string within the content limit")
        v.check_unicode(text, "text")
        self._commit([("persona", "persona", {"key": "persona", "text": self.checks.redactor.redact(text)})])

    def get_persona(self) -> str:
        """The persona text, or an empty string."""
        found = self.reads.persona()
        return "" if found is None else found[0]

    def get_persona_info(self) -> dict[str, Any] | None:
        """The persona with the clock that set it (``text``, ``hlc``, ``set_at`` in epoch ms), or None
        if never set."""
        found = self.reads.persona()
        return None if found is None else {"text": found[0], "hlc": found[1], "set_at": hlc_ms(found[1])}

    def _commit(self, intents: list[Intent], embed: tuple[str, str] | None = None,
                then: Callable[[], Any] | None = None) -> Any:
        """Apply intents as ops in one write transaction, with the vector of ``embed`` (id, text), and
        return what ``then`` reads inside that same transaction.

        Inside ``batch_operations`` vectors are computed in one call at the end
        of the batch. If the embedder fails, the memory is stored anyway and
        stays queued for ``embed_pending``: recall by text never waits on it.
        """
        if not intents:
            return then() if then is not None else None
        pending = getattr(self._batch, "pending", None)
        if embed is not None and pending is not None:
            pending.append(embed)
            embed = None
        if (pending is not None and then is None and len(intents) == 1 and intents[0][0] == "create"
                and self.storage.in_write):
            # A create in a batch waits to be written with the batch's next creates, set-at-a-time,
            # before anything on this thread next touches the store (Storage.defer). Checked now, so
            # an invalid create fails its own call.
            self.log.check(intents)
            created = intents[0][2]
            twins = self.storage.tx_cache.setdefault(DEFERRED_TWINS, set())
            if isinstance(twins, set):  # what the merger's probe cannot see until it is written
                twins.add((created["scope"], norm_hash(created["content"])))
            if self.storage.defer(self._append_deferred, intents[0], key=intents[0][1]) >= DEFER_AT_MOST:
                self.storage.flush_deferred()
            self._after_commit(1)
            return None
        vector = self._embed_now(embed) if embed is not None and self.config.embed_on_write else None

        def unit(conn: sqlite3.Connection) -> Any:
            self.storage.flush_deferred()  # a batch's earlier creates first, in order
            self.log.append(conn, intents)
            if vector is not None and embed is not None and self.semantic is not None:
                self.semantic.store_vectors(conn, [(embed[0], embed[1], vector)])
            return then() if then is not None else None

        result = self._write(unit, savepoint=False)
        self._after_commit(len(intents))
        return result

    def _append_deferred(self, conn: sqlite3.Connection, intents: list[Intent]) -> None:
        self.log.append(conn, intents, checked=True)

    def start_write_queue(self) -> None:
        """Group commit for long-running processes (servers): from now on, writes arriving together
        commit in one transaction on a writer thread, each caller getting its own result or error.

        Off by default: a one-shot command or a single-threaded program has nothing to group.
        Stopped by :meth:`close` after every write already submitted has committed or failed."""
        if self._queue is None and not self._closed:
            # Wait for the writer as long as a write would wait for SQLite's lock (busy timeout, retries).
            wait_s = max(1.0, self.config.busy_timeout_ms / 1000 * (BUSY_RETRIES + 1))
            self._queue = WriteQueue(self.storage, wait_s=wait_s)

    def _write(self, fn: Callable[[sqlite3.Connection], T], *, savepoint: bool = True) -> T:
        """Run ``fn(conn)`` inside a write transaction and return its result (or raise its error).

        With the write queue on and no write transaction open on this thread, ``fn`` runs on
        the writer thread in its own savepoint of a group transaction and this returns after
        that transaction commits. Otherwise it runs inline in ``self.storage.write(savepoint)``:
        joining the enclosing transaction when there is one (``batch_operations``, or ``fn``
        itself calling ``_write``), else its own. Either way ``fn`` is all-or-nothing (inline
        with ``savepoint=False`` a failure aborts the enclosing transaction instead), reads
        inside it see its writes, it may run on another thread (use the connection and
        ``self.reads``, not thread-locals), and it must not wait on other threads' writes.
        Post-commit work (``_after_commit``) is the caller's, after this returns.
        """
        queue = self._queue
        if queue is None or self.storage.in_write or queue.owns_thread():
            with self.storage.write(savepoint=savepoint) as conn:
                return fn(conn)
        return queue.submit(fn)

    def _after_commit(self, count: int) -> None:
        if self.semantic is not None:
            self.semantic.wake()
        self._ops_since_optimize += count
        if (self.config.enable_auto_optimization and self._ops_since_optimize >= AUTO_OPTIMIZE_EVERY
                and not self.storage.in_write):
            self._ops_since_optimize = 0
            try:
                optimize(self.storage, light=True)
            except (sqlite3.Error, NeuralSyncError) as exc:  # the write is committed: never fail it now
                log.debug("automatic maintenance skipped: %s", exc)

    def _adopt_embedder(self) -> None:
        try:
            self.semantic.adopt_embedder()  # type: ignore[union-attr]
        except NeuralSyncError as exc:  # e.g. the embedder's package is missing: text recall still works
            log.warning("semantic recall unavailable: %s", exc)

    def _embed_now(self, item: tuple[str, str]) -> Any:
        if self.semantic is None:
            return None
        try:
            return self.semantic.embed([item[1]])[0]
        except Exception as exc:  # noqa: BLE001 - any embedder failure leaves the row queued, never loses it
            log.warning("embedding deferred (%s); the memory is stored and queued", exc)
            return None

    @contextmanager
    def batch_operations(self) -> Iterator[UnifiedMemoryAPI]:
        """Group writes into one transaction: all of them are stored, or none."""
        outer = getattr(self._batch, "pending", None) is None
        if outer:
            self._batch.pending = []
        queue = self._queue
        # With the write queue on, a batch is one unit of it: its turn, then its own transaction here.
        turn = queue.exclusive() if queue is not None and not self.storage.in_write else nullcontext()
        try:
            with self.monitor.measure("batch_operations"), turn, self.storage.write() as conn:
                yield self
                if outer:
                    self._flush_batch_vectors(conn)
        finally:
            if outer:
                self._batch.pending = None

    def _flush_batch_vectors(self, conn: Any) -> None:
        self.storage.flush_deferred()  # the batch's memories, before their vectors
        items: list[tuple[str, str]] = self._batch.pending
        if not items or self.semantic is None or not self.config.embed_on_write:
            return
        try:
            vectors = self.semantic.embed([text for _, text in items])
        except Exception as exc:  # noqa: BLE001 - see _embed_now
            log.warning("batch embedding deferred (%s); the memories are stored and queued", exc)
            return
        self.semantic.store_vectors(conn, [(rid, text, vec) for (rid, text), vec in zip(items, vectors, strict=True)])

    # ------------------------------------------------------------ reads
    def get(self, memory_id: str) -> Memory:
        """The memory with this id; :class:`NotFound` if absent, forgotten or expired."""
        with self.monitor.measure("get"):
            memory = self.access.with_pending(self._require(v.memory_id(memory_id), with_access=True))
            self.access.record([memory.id])  # shown: the hits before this one
            return memory

    def _require(self, record_id: str, with_access: bool = False) -> Memory:
        memory = self.reads.get(record_id, with_access=with_access)
        if memory is None:
            raise NotFound(record_id)
        return memory

    def recall(self, query: str = "", scope: str | None = None, top_k: int = 10,
               tags: list[str] | tuple[str, ...] | str | None = None, kinds: list[str] | str | None = None,
               since: Any = None, until: Any = None, tag_match: str = "any",
               tool: str | None = None, mode: str = "hybrid", *, tool_match: str = "exact",
               fill_recent: bool = False) -> list[Memory]:
        """The best ``top_k`` memories for ``query`` (BM25 with priority/recency/confidence).

        Query text is always literal. An empty query returns the most relevant
        recent memories. ``scope=None`` searches every scope; ``tags`` match
        any (or ``tag_match="all"``); ``since``/``until`` bound creation time;
        ``tool`` keeps only memories written by that tool (``tool_match="or-unset"``:
        and those written without one, NeuralSync2's rule). ``mode`` is
        ``"hybrid"`` (BM25 and meaning, fused), ``"text"`` or ``"semantic"``.
        ``fill_recent``: when the search finds fewer than ``top_k``, the most
        recently updated memories passing the filters fill the rest (NeuralSync2's
        recall; they come after the hits, without a score).
        """
        with self.monitor.measure("recall"):
            return self._search(query, scope, top_k, tags, kinds, since, until, tag_match, tool, mode,
                                tool_match=tool_match, fill_recent=fill_recent)

    def semantic_search(self, query: str, top_k: int = 10, scope: str | None = None,
                        tags: list[str] | tuple[str, ...] | str | None = None, since: Any = None,
                        until: Any = None, kinds: list[str] | str | None = None,
                        tag_match: str = "any", tool: str | None = None) -> list[Memory]:
        """Memories closest in meaning to ``query`` (offline embeddings, HNSW index); same filters as recall."""
        with self.monitor.measure("semantic_search"):
            return self._search(query, scope, top_k, tags, kinds, since, until, tag_match, tool, "semantic")

    def _search(self, query: object, scope: object, top_k: object, tags: object, kinds: object, since: object,
                until: object, tag_match: str, tool: object, mode: str, *, tool_match: str = "exact",
                fill_recent: bool = False) -> list[Memory]:
        query = v.query(query, self.config.max_query_chars)
        if mode not in MODES:
            raise InvalidInput("mode", f"must be one of {', '.join(MODES)}")
        if tool_match not in TOOL_MATCHES:
            raise InvalidInput("tool_match", f"must be one of {', '.join(TOOL_MATCHES)}")
        with stage(PARSE):
            filters = self._filters(scope, tags, kinds, since, until, tag_match, tool)
        if tool_match == "or-unset":
            filters = replace(filters, tool_or_unset=True)
        k = v.positive_int(top_k, "top_k", optional=False, maximum=self.config.max_top_k)
        assert k is not None  # not optional
        forwarded = None if fill_recent or tool_match != "exact" else self._via_server(
            {"query": query, "scope": filters.scope, "top_k": k, "tags": list(filters.tags) or None,
             "tag_match": tag_match, "kinds": None if filters.kinds is None else list(filters.kinds),
             "tool": filters.tool, "mode": mode,
             "since": filters.since, "until": filters.until})
        if forwarded is not None:
            return forwarded  # the server recorded the access
        results = self.recaller.recall(query, filters, k, mode)
        if fill_recent and len(results) < k:
            results += self._recent_fill(filters, k, {m.id for m in results})
        self.access.record([m.id for m in results])
        return results

    def warm_up(self, mode: str = "hybrid") -> None:
        """For a process about to make one recall in ``mode``: start loading what it needs (the embedder on
        a background thread, the index file here), so the first search does not pay for them in turn.
        Nothing for a text recall or a store without semantic search."""
        if mode != "text" and self.semantic is not None:
            self.semantic.warm_up()

    def _via_server(self, request: dict[str, Any]) -> list[Memory] | None:
        """The hits of the server announced on this store for ``request`` (validated here first), or None:
        no server, it cannot answer, or this process serves the store. A process beside a server so
        never loads numpy, the index or the model for a recall; the server answers from what it holds."""
        if not self.forward_recalls or self._announced:
            return None
        return recall_via_server(self.config.home, request)

    def _recent_fill(self, filters: Filters, k: int, taken: set[str]) -> list[Memory]:
        """Up to ``k - len(taken)`` memories passing ``filters``, last updated first, not in ``taken``."""
        where, args = filters.sql(now_ms())
        fresh = [m for m in self.reads.recently_updated(where, args, k) if m.id not in taken]
        return fresh[:k - len(taken)]

    def _filters(self, scope: object, tags: object, kinds: object, since: object, until: object,
                 tag_match: str, tool: object = None) -> Filters:
        if tag_match not in ("any", "all"):
            raise InvalidInput("tag_match", "must be 'any' or 'all'")
        return Filters(
            scope=v.label(scope, "scope", v.MAX_SCOPE_CHARS, optional=True),
            tags=v.tags(tags, self.config.max_tags, self.config.max_tag_chars),
            tag_match=tag_match,
            kinds=v.string_list(kinds, "kinds"),
            since=v.timestamp(since, "since"),
            until=v.timestamp(until, "until"),
            tool=v.label(tool, "tool", v.MAX_TOOL_CHARS, optional=True),
        )

    def start_background_maintenance(self) -> None:
        """For long-lived processes (servers): keep the session alive and the vector
        index current from daemon threads; ingest never waits for the index."""
        self.registry.start_heartbeat(self.session_id)
        if self.semantic is not None:
            self.semantic.start_background_refresh()
        if self.config.dedupe and self._merge_scans is None:
            self._merge_scans = Periodic("neuralsync-merger", MERGE_SCAN_INTERVAL_S, self._background_scan)
            self._merge_scans.start()
        if self.config.monitor_publish_s and self._publisher is None:  # what `neuralsync stats` shows of us
            self._publisher = Periodic("neuralsync-monitor", self.config.monitor_publish_s, self.figures.publish)
            self._publisher.start()
        if self._compactions is None:
            self._compactions = Periodic("neuralsync-compactor", COMPACT_INTERVAL_S, self._compact_when_idle)
            self._compactions.start()

    def _compact_when_idle(self) -> None:
        """A slice of compaction when no op was written since the last look (a minute ago)."""
        seq = self.last_seq()
        if seq != self._idle_mark[0] or self._store_has_another_server():
            self._idle_mark = (seq, now_ms())
            return
        try:
            with self.monitor.measure("compact_slice"):
                self.compactor.idle_slice()
            self._idle_mark = (self.last_seq(), now_ms())
        except NeuralSyncError as exc:  # busy: the next idle minute tries again
            log.debug("idle compaction skipped: %s", exc)

    def embed_pending(self, progress: Any = None) -> int:
        """Embed memories that arrived without a vector (other writers, sync, changed content)."""
        return 0 if self.semantic is None else self.semantic.embed_pending(progress=progress)

    def embed_texts(self, texts: Sequence[str]) -> tuple[str, int, bytes]:
        """Vectors of ``texts`` with this store's embedder: (its name, dims, float32 little-endian rows).

        What a server offers the other processes of its store, so the machine holds one model."""
        if self.semantic is None:
            raise InvalidInput("texts", "semantic search is disabled on this store (embedder 'none')")
        if not isinstance(texts, (list, tuple)) or not 0 < len(texts) <= MAX_EMBED_TEXTS:
            raise InvalidInput("texts", f"must be a list of 1 to {MAX_EMBED_TEXTS} strings")
        for text in texts:
            v.text(text, "texts", self.config.max_content_chars)
        with self.monitor.measure("embed_texts"):
            embedder = self.semantic.local_embedder
            return embedder.name, embedder.dims, embedder.embed(list(texts)).astype("<f4").tobytes()

    def announce_server(self, url: str) -> None:
        """Tell the other processes of this store that this process serves it at ``url`` (loopback),
        so they embed through it; withdrawn by :meth:`close`."""
        self._announced = True  # a server never forwards a recall (to itself or to another server)
        if self.semantic is not None:
            self.semantic.announce(url)

    def rebuild_vector_index(self, full: bool = False, progress: Any = None) -> dict[str, Any]:
        """Bring the HNSW file up to date now (incremental unless ``full``); returns what was done."""
        if self.semantic is None:
            return {"skipped": "semantic search is disabled (embedder 'none')"}
        with self.monitor.measure("rebuild_vector_index"):
            return self.semantic.refresh_index(full=full, progress=progress)

    def range_recall(self, start_time: Any = None, end_time: Any = None, scope: str | None = None,
                     limit: int | None = None, newest_first: bool = False) -> list[Memory]:
        """Memories created between ``start_time`` and ``end_time`` (inclusive), oldest first
        (or newest first: then ``limit`` keeps the most recent)."""
        with self.monitor.measure("range_recall"):
            start, end = v.timestamp(start_time, "start_time"), v.timestamp(end_time, "end_time")
            if start is not None and end is not None and start > end:
                raise InvalidInput("start_time", "is after end_time")
            return self.reads.range(start, end, v.label(scope, "scope", v.MAX_SCOPE_CHARS, optional=True),
                                    v.positive_int(limit, "limit"), descending=bool(newest_first))

    def iter_memories(self) -> Iterator[Memory]:
        """Every live memory in id order, streamed in batches (export)."""
        return self.reads.iter_memories()

    def counts(self) -> dict[str, int]:
        """Live, expired and deleted memories, ops, scopes and tags."""
        return self.reads.counts()

    def changes_since(self, seq: int = 0, limit: int = 1000) -> list[Change]:
        """Ops applied to this store after local sequence number ``seq`` (the change feed)."""
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise InvalidInput("seq", "must be a non-negative integer")
        return self.reads.changes_since(seq, v.positive_int(limit, "limit", optional=False))  # type: ignore[arg-type]

    def subscribe(self, since: int | None = None, timeout: float | None = None,
                  stop: threading.Event | None = None) -> Iterator[Change]:
        """Follow every process's writes as they commit (blocking iterator); see :class:`ChangeFeed`."""
        return self.feed.subscribe(since=since, timeout=timeout, stop=stop)

    def last_seq(self) -> int:
        """The newest change-feed sequence number."""
        return self.feed.last_seq()

    # merges: facade/merges.py; peers, sync and shared scopes: facade/sharing.py

    def sessions(self, include_ended: bool = False) -> list[dict[str, Any]]:
        """Processes registered on this store (dead ones reaped first)."""
        return self.registry.list(include_ended)

    def growth(self, days: int = 30) -> dict[str, Any]:
        """Memories and bytes per day, and the projected day the configured quota is reached."""
        return growth(self.storage, v.positive_int(days, "days", optional=False, maximum=3650) or 30,
                      self.config.quota_bytes)

    # ------------------------------------------------------------ operations
    @contextmanager
    def performance_profiling(self, name: str) -> Iterator[None]:
        """Time the block into the monitor under ``name``."""
        with self.monitor.measure(v.label(name, "name", 128) or "profile"):
            yield

    def optimize_performance(self, target_response_time_ms: float | None = None) -> dict[str, Any]:
        """Act on what the monitor measured against ``target_response_time_ms`` (which also becomes
        this process's alert threshold): maintenance (ANALYZE/optimize, WAL checkpoint, FTS merge), and
        the page cache and vector search breadth when the stages show reads or vector search are slow.
        Reports what was done, why, and the measured latencies before and after."""
        target = check_target(self.config.target_response_time_ms if target_response_time_ms is None
                              else target_response_time_ms)
        with self.monitor.measure("optimize_performance"):
            report = tune(self.storage, self.semantic, self.monitor.stats(), target)
        self.monitor.set_target(target)
        return report

    def compact_analyze(self) -> dict[str, Any]:
        """What the store holds that it need not: fragmentation, expired memories, tombstones, duplicate
        clusters, FTS segments, WAL, vector-index lag, op-log bytes, and what each strategy would reclaim."""
        with self.monitor.measure("compact_analyze"):
            return self.compactor.analyze()

    def compact(self, strategies: Sequence[str] | None = None, dry_run: bool = False,
                progress: Callable[[str, int, int], None] | None = None,
                quota_bytes: int | None = None) -> dict[str, Any]:
        """Reclaim space: ``strategies`` (default all: purge_expired, consolidate_duplicates, truncate_log,
        prune_payloads, fts_optimize, vector_rebuild, defragment, checkpoint, vacuum), each in short slices;
        ``dry_run`` returns the plan only. Purges and merges are ops every replica applies; the rest is local,
        once every known peer has the op that removed a memory: truncate_log keeps of its ops only their place
        in the graph, vouched for by a cut this replica signs; prune_payloads keeps each op's signed skeleton;
        defragment packs sparse pages by writing their rows again unchanged. The result's ``left`` says what
        only a full rewrite returns and which merges wait for their undo window."""
        if quota_bytes is not None:  # a quota given asks for archiving too
            self.compactor.quota_bytes = v.positive_int(quota_bytes, "quota_bytes", optional=False) or 0
            if strategies is None:
                strategies = ("archive_over_quota", *DEFAULT_STRATEGIES)
        with self.monitor.measure("compact"):
            result = self.compactor.compact(strategies, dry_run=bool(dry_run), progress=progress)
        if not dry_run:
            self._after_commit(1)
        return result

    def on_performance_alert(self, callback: AlertCallback) -> Callable[[], None]:
        """Call ``callback(alert)`` from the operation's thread whenever a call of this process takes
        longer than the target (``alert``: operation, ms, target_ms, bottleneck, stages_ms, at); returns
        a function that unregisters it."""
        return self.monitor.on_alert(callback)

    def performance_alerts(self) -> list[dict[str, Any]]:
        """This process's most recent slow-operation alerts, oldest first."""
        return self.monitor.alerts()

    def performance_trend(self, operation: str, minutes: int = 1440) -> list[dict[str, Any]]:
        """Per-minute count and p50/p95/p99/max of ``operation`` in this process (up to a day), oldest first."""
        return self.monitor.trend(v.label(operation, "operation", 128) or "",
                                  v.positive_int(minutes, "minutes", optional=False, maximum=1440) or 1440)

    def archive(self, memory_ids: Sequence[str]) -> int:
        """Take memories out of recall (an op every replica applies); they stay in the store, listed by
        :meth:`archived`, until :meth:`unarchive`. Returns how many were archived."""
        if isinstance(memory_ids, str) or not isinstance(memory_ids, (list, tuple)) or not memory_ids:
            raise InvalidInput("memory_ids", "must be a non-empty list of memory ids")
        ids = [v.memory_id(i, "memory_ids") for i in memory_ids]
        with self.monitor.measure("archive"), self.storage.write() as conn:
            for record_id in ids:
                self._require(record_id)
            self.log.append(conn, [("update", record_id, {"archived": True}) for record_id in ids])
        self._after_commit(len(ids))
        return len(ids)

    def unarchive(self, memory_id: str) -> Memory:
        """Bring an archived memory back into recall; returns it."""
        record_id = v.memory_id(memory_id)
        with self.monitor.measure("unarchive"), self.storage.write() as conn:
            row = conn.execute("SELECT archived FROM memories WHERE id = ?", (record_id,)).fetchone()
            if row is None or not row[0]:
                raise NotFound(record_id)
            self.log.append(conn, [("update", record_id, {"archived": False})])
            memory = self.reads.get(record_id, include_expired=True)
        self._after_commit(1)
        assert memory is not None
        return memory

    def archived(self, limit: int = 100) -> list[Memory]:
        """Archived memories, last updated first."""
        return self.reads.archived(v.positive_int(limit, "limit", optional=False) or 100)

    def doctor(self, progress: Callable[[int, int], None] | None = None, quick: bool = False) -> DoctorReport:
        """Check everything: SQLite integrity, FTS, every op's hash and signature, and a rebuild of the
        state from the log compared with the stored state."""
        return run_doctor(self.storage, progress, quick, signer=self.log.author)

    def repair_fts(self) -> dict[str, Any]:
        """Rebuild the full-text index from the memories table, resetting its shadow tables first when
        SQLite cannot open it; what it found and did (``neuralsync doctor --repair``)."""
        return repair_fts(self.storage)

    def get_system_stats(self) -> dict[str, Any]:
        """Counts, sizes, and latency percentiles per operation."""
        counts = self.reads.counts()
        sizes = self.storage.sizes()
        perf = self.monitor.stats()
        perf["target_response_time_ms"] = self.monitor.target_ms
        perf["across_processes"] = self.figures.across_processes()  # this and every process that published
        return {
            **counts,
            "scopes_detail": self.reads.scope_counts(),
            "storage": {**sizes, "path": str(self.storage.path),
                        "bytes_per_memory": round(sizes["total_bytes"] / counts["memories"], 1)
                        if counts["memories"] else None},
            "performance_stats": perf,
            "site_id": self.log.site_id,
            "sync": self.replication.stats(),
            "teams": self.teams.all(),
            "schema_version": self.log.schema_version,
            "session_id": self.session_id,
            "process": process_resources(),
        }
