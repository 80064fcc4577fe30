"""The hash graph as this replica stores it: effective clocks and fast ancestry.

Every op names its predecessors (the heads its author had seen). Two derived
numbers per stored op make questions about that graph cheap:

- ``eff``, the *effective clock*: ``max(min(hlc, EFF_CAP), 1 + max(eff of preds))``.
  It is a function of the op and its ancestors only, so every replica computes
  the same value, and it grows strictly along every causal path. Ordering
  concurrent writes by ``(eff, author, id)`` therefore makes a causally later
  write win whatever clocks were stamped, and an op stamped at an absurd time
  (up to 2^63 - 1) is ordered by the same rule everywhere. For honest ops
  ``eff == hlc``: a local clock already exceeds its predecessors'.
- ``floor``: the largest local sequence number ``s`` such that every op *of its
  graph* with ``seq <= s`` is this op or one of its ancestors (NULL when that is
  the op's own ``seq``: the usual case, since a new op's predecessors are all
  heads). Each shared scope is a graph of its own (issue 17), so floors are per
  graph, and every ancestry question asks about ops of the op's own graph.
  It is a local index, never compared between replicas; it only lets most
  ancestry questions be answered without walking the graph.

Predecessor edges are stored (``op_preds``) only for ops whose floor is below
their own seq, the only ones a walk ever needs to step through.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections.abc import Iterable
from typing import NamedTuple

from ..store.storage import Storage
from . import codec

EFF_CAP = 1 << 62  # stamped clocks are clamped here for ordering, so eff stays in 64 bits

_NODE = "SELECT seq, eff, coalesce(floor, seq) FROM ops WHERE id = ?"
_PRED_NODES = ("SELECT p.seq, p.eff, coalesce(p.floor, p.seq) FROM op_preds e JOIN ops p ON p.seq = e.pred"
               " WHERE e.op = ?")


class Node(NamedTuple):
    """One stored op's place in the graph: local seq, effective clock, floor."""

    seq: int
    eff: int
    floor: int


def node(conn: sqlite3.Connection, oid: bytes) -> Node | None:
    """The stored op's node, or None if the op is not here."""
    row = conn.execute(_NODE, (oid,)).fetchone()
    return None if row is None else Node(*row)


def pred_nodes(conn: sqlite3.Connection, preds: Iterable[bytes]) -> list[Node] | None:
    """Nodes of ``preds``, or None if any of them is not stored."""
    nodes = []
    for pred in preds:
        found = node(conn, pred)
        if found is None:
            return None
        nodes.append(found)
    return nodes


def effective_clock(hlc: int, preds: list[Node]) -> int:
    """The op's effective clock from its stamped clock and its predecessors'."""
    eff = min(hlc, EFF_CAP)
    for pred in preds:
        if pred.eff >= eff:
            eff = pred.eff + 1
    return eff


def floor_of(preds: list[Node], covers_all_heads: bool, seq: int) -> int | None:
    """The new op's floor (None: its own seq) from its predecessors' floors."""
    if covers_all_heads:
        return None
    best = 0
    for pred in preds:
        best = max(best, pred.floor)
    return best if best < seq - 1 else None


def is_ancestor(conn: sqlite3.Connection, target: int, start: Iterable[Node]) -> bool:
    """True if the op at local seq ``target`` is one of ``start`` or their ancestor."""
    return bool(ancestors_among(conn, [target], start))


def ancestors_among(conn: sqlite3.Connection, targets: Iterable[int], start: Iterable[Node]) -> set[int]:
    """Which of the local seqs ``targets`` are ``start`` or its ancestors, in one walk of the graph."""
    left = set(targets)
    pending = sorted(left)  # a heap of the targets not found yet (lazily pruned)
    found: set[int] = set()
    stack = list(start)
    seen: set[int] = set()
    while stack and pending:
        current = stack.pop()
        if current.seq in left:
            found.add(current.seq)
        while pending and (pending[0] <= current.floor or pending[0] in found):  # below the floor: ancestors
            found.add(heapq.heappop(pending))
        if not pending or current.seq in seen or current.seq < pending[0]:
            continue  # ancestors are applied first: a smaller seq cannot reach a target
        seen.add(current.seq)
        stack.extend(Node(*row) for row in conn.execute(_PRED_NODES, (current.seq,)))
    return found


def below(conn: sqlite3.Connection, start: Iterable[Node]) -> tuple[int, set[int]]:
    """The ancestors-or-self of ``start`` (nodes of one graph) as ``(s, extra)``: every seq <= s of that
    graph, plus the seqs in ``extra``."""
    stack = list(start)
    floor = 0
    extra: set[int] = set()
    while stack:
        current = stack.pop()
        if current.seq <= floor or current.seq in extra:
            continue
        extra.add(current.seq)
        if current.floor > floor:
            floor = current.floor
        if current.floor < current.seq:
            stack.extend(Node(*row) for row in conn.execute(_PRED_NODES, (current.seq,)))
    return floor, {seq for seq in extra if seq > floor}


def graph_of(conn: sqlite3.Connection, seq: int) -> bytes | None:
    """The graph of the op at local seq ``seq`` (None: the personal graph)."""
    row = conn.execute("SELECT graph FROM ops WHERE seq = ?", (seq,)).fetchone()
    return None if row is None else row[0]


def graphs_here(conn: sqlite3.Connection) -> list[bytes | None]:
    """The graphs this store holds ops of: the personal one (None) first, then each shared scope's."""
    return [None, *(row[0] for row in conn.execute("SELECT graph FROM teams ORDER BY graph"))]


def below_per_graph(conn: sqlite3.Connection, start: Iterable[Node]) -> dict[bytes | None, tuple[int, set[int]]]:
    """:func:`below` for nodes of several graphs: per graph, ``(s, extra)`` such that its ancestors-or-self
    of ``start`` are the graph's ops with seq <= s, plus the seqs in ``extra`` (floors are per graph)."""
    groups: dict[bytes | None, list[Node]] = {}
    for item in start:
        groups.setdefault(graph_of(conn, item.seq), []).append(item)
    return {graph: below(conn, nodes) for graph, nodes in groups.items()}


def backfill_graph(storage: Storage) -> None:
    """Give ops logged before schema 5 their effective clock and floor (idempotent, resumable).

    Those ops were accepted under the earlier rule that a clock exceeds its
    predecessors', so their effective clock is their clock; floors are
    recomputed by replaying the heads in log order. Every op logged since has its
    effective clock, so once done (a flag in ``meta``) the log is not scanned again:
    that scan was most of the cost of opening a large store.
    """
    conn = storage.conn
    if conn.execute("SELECT 1 FROM meta WHERE key = 'graph_backfilled'").fetchone() is not None:
        return
    if conn.execute("SELECT 1 FROM ops WHERE eff IS NULL LIMIT 1").fetchone() is None:
        with storage.write() as wconn:
            wconn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('graph_backfilled', '1')")
        return
    with storage.write() as conn:
        heads: set[bytes] = set()
        nodes: dict[bytes, Node] = {}
        rows = conn.execute("SELECT seq, id, hlc, body FROM ops ORDER BY seq").fetchall()
        for seq, oid, hlc, body in rows:
            pred_ids = codec.decode(body)["preds"]
            preds = [nodes[p] for p in pred_ids if p in nodes]
            heads.difference_update(pred_ids)
            floor = floor_of(preds, not heads, seq)
            eff = effective_clock(hlc, preds)
            heads.add(oid)
            nodes[oid] = Node(seq, eff, seq if floor is None else floor)
            conn.execute("UPDATE ops SET eff = ?, floor = ? WHERE seq = ?", (eff, floor, seq))
            if floor is not None:
                conn.executemany("INSERT OR IGNORE INTO op_preds(op, pred) VALUES (?, ?)",
                                 [(seq, p.seq) for p in preds])
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('graph_backfilled', '1')")
