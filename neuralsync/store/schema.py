"""Numbered schema migrations. Each runs inside one transaction and is recorded.

The op log (``ops``, ``heads``) is the truth; every other table is derived
from it by ``oplog.materialize`` and can be rebuilt (``neuralsync doctor``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from ..textnorm import norm_hash

Migration = tuple[int, str, Callable[[sqlite3.Connection], None]]


def _run(conn: sqlite3.Connection, script: str) -> None:
    """Run statements one by one: ``executescript`` would COMMIT the migration's transaction."""
    for statement in _statements(script):
        conn.execute(statement)


def _statements(script: str) -> list[str]:
    """Split on ``;`` at line ends, keeping trigger bodies (``BEGIN ... END;``) whole."""
    out: list[str] = []
    current: list[str] = []
    for piece in script.split(";\n"):
        current.append(piece)
        text = ";\n".join(current)
        if text.count("BEGIN\n") <= text.count("END"):
            if text.strip():
                out.append(text)
            current = []
    return out


def _m001_initial(conn: sqlite3.Connection) -> None:
    _run(conn, """
    CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;

    -- The op log. seq is the local apply order and the change-feed cursor.
    CREATE TABLE ops(
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id BLOB NOT NULL UNIQUE,
        author BLOB NOT NULL,
        hlc INTEGER NOT NULL,
        kind TEXT NOT NULL,
        record_id TEXT NOT NULL,
        body BLOB NOT NULL,
        sig BLOB NOT NULL,
        received_at INTEGER NOT NULL
    );
    CREATE INDEX ops_record ON ops(record_id);
    CREATE TABLE heads(id BLOB PRIMARY KEY) WITHOUT ROWID;

    -- Materialised memories. rowid is never reused (AUTOINCREMENT) because the
    -- FTS index and, later, the vector index key on it.
    CREATE TABLE memories(
        rowid INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        content TEXT NOT NULL,
        tags TEXT NOT NULL DEFAULT '',
        scope TEXT NOT NULL,
        kind TEXT NOT NULL,
        tool TEXT,
        source TEXT,
        session TEXT,
        priority REAL NOT NULL,
        confidence REAL NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        expires_at INTEGER,
        content_hash TEXT NOT NULL,
        clocks TEXT
    );
    CREATE INDEX memories_scope_created ON memories(scope, created_at);
    CREATE INDEX memories_created ON memories(created_at);
    CREATE INDEX memories_updated ON memories(updated_at);
    CREATE INDEX memories_hash ON memories(content_hash);
    CREATE INDEX memories_expires ON memories(expires_at) WHERE expires_at IS NOT NULL;

    -- Observed-remove tag set: one row per (memory, tag, add op).
    CREATE TABLE tags(
        mem INTEGER NOT NULL,
        tag TEXT NOT NULL,
        add_op BLOB NOT NULL,
        PRIMARY KEY(mem, tag, add_op)
    ) WITHOUT ROWID;
    CREATE INDEX tags_tag ON tags(tag, mem);

    CREATE TABLE tombstones(record_id TEXT PRIMARY KEY, op BLOB NOT NULL) WITHOUT ROWID;

    -- Key/value registers (persona), last-writer-wins by clock.
    CREATE TABLE kv(key TEXT PRIMARY KEY, value TEXT NOT NULL, clock BLOB NOT NULL) WITHOUT ROWID;

    -- Local-only access statistics: not replicated, not part of the state digest.
    CREATE TABLE access(mem INTEGER PRIMARY KEY, accessed_at INTEGER NOT NULL,
                        access_count INTEGER NOT NULL);

    -- scope is indexed (weight 0 in bm25) so scope filters intersect inside FTS.
    CREATE VIRTUAL TABLE memories_fts USING fts5(
        content, tags, scope, content='memories', content_rowid='rowid',
        tokenize='unicode61 remove_diacritics 2'
    );
    INSERT INTO memories_fts(memories_fts, rank) VALUES('pgsz', 4050);
    INSERT INTO memories_fts(memories_fts, rank) VALUES('automerge', 8);
    INSERT INTO memories_fts(memories_fts, rank) VALUES('crisismerge', 32);
    """)


def _m002_sessions(conn: sqlite3.Connection) -> None:
    # Local-only: which processes use this store. Not replicated, not in the digest.
    _run(conn, """
    CREATE TABLE sessions(
        id TEXT PRIMARY KEY,
        tool TEXT,
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        cwd TEXT,
        started INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        ended INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX sessions_open ON sessions(ended, last_seen)
    """)


def _m003_embeddings(conn: sqlite3.Connection) -> None:
    # Vectors are derived, local data (never replicated, not in the digest).
    # seq grows on every write: the HNSW file covers seq <= its covered_seq, and
    # newer rows are searched exactly. Triggers keep the derived tables right
    # whatever path changed a memory (local write, remote op, rebuild).
    _run(conn, """
    CREATE TABLE embeddings(
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        mem INTEGER NOT NULL UNIQUE,
        embedder TEXT NOT NULL,
        vec BLOB NOT NULL
    );
    CREATE TABLE embed_queue(mem INTEGER PRIMARY KEY);
    CREATE TABLE vector_removed(mem INTEGER PRIMARY KEY);
    CREATE TRIGGER memories_queue_embedding AFTER INSERT ON memories BEGIN
        INSERT OR IGNORE INTO embed_queue(mem) VALUES (new.rowid);
    END;
    CREATE TRIGGER memories_stale_embedding AFTER UPDATE OF content ON memories
    WHEN new.content IS NOT old.content BEGIN
        DELETE FROM embeddings WHERE mem = old.rowid;
        INSERT OR IGNORE INTO embed_queue(mem) VALUES (old.rowid);
        INSERT OR IGNORE INTO vector_removed(mem) VALUES (old.rowid);
    END;
    CREATE TRIGGER memories_drop_embedding AFTER DELETE ON memories BEGIN
        DELETE FROM embeddings WHERE mem = old.rowid;
        DELETE FROM embed_queue WHERE mem = old.rowid;
        INSERT OR IGNORE INTO vector_removed(mem) VALUES (old.rowid);
    END;
    INSERT OR IGNORE INTO embed_queue(mem) SELECT rowid FROM memories
    """)


def _m004_drop_hash_index(conn: sqlite3.Connection) -> None:
    # The content-hash index was random-order (costly on every insert) and no
    # query used it; duplicate detection can add its own when it needs one.
    # (Time walks order by (created_at, rowid): every SQLite index already ends
    # in the rowid, so the narrow time indexes need no sort step.)
    _run(conn, "DROP INDEX memories_hash")


def _m005_replication(conn: sqlite3.Connection) -> None:
    # eff/floor/op_preds: the hash graph's derived numbers (see graph.py);
    # existing ops are filled in by the store on open (it needs the op codec).
    # conflicts: the losing values of concurrent writes (local audit trail).
    # peers, rejected_ops, sync_events, sync_counts: replication with trusted peers.
    _run(conn, """
    ALTER TABLE ops ADD COLUMN eff INTEGER;
    ALTER TABLE ops ADD COLUMN floor INTEGER;
    CREATE TABLE op_preds(op INTEGER NOT NULL, pred INTEGER NOT NULL, PRIMARY KEY(op, pred)) WITHOUT ROWID;
    CREATE TABLE conflicts(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        record_id TEXT NOT NULL,
        field TEXT NOT NULL,
        winner_op BLOB NOT NULL,
        loser_op BLOB NOT NULL,
        winner_value TEXT,
        loser_value TEXT,
        winner_author BLOB NOT NULL,
        loser_author BLOB NOT NULL,
        resolution TEXT NOT NULL,
        at INTEGER NOT NULL
    );
    CREATE INDEX conflicts_record ON conflicts(record_id);
    CREATE TABLE peers(
        name TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        key BLOB NOT NULL UNIQUE,
        added_at INTEGER NOT NULL,
        last_sync BLOB NOT NULL DEFAULT x'',
        synced_at INTEGER,
        last_error TEXT
    ) WITHOUT ROWID;
    CREATE TABLE rejected_ops(id BLOB PRIMARY KEY, reason TEXT NOT NULL, peer TEXT, at INTEGER NOT NULL)
        WITHOUT ROWID;
    CREATE TABLE sync_events(
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        peer TEXT,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE TABLE sync_counts(peer TEXT NOT NULL, reason TEXT NOT NULL, n INTEGER NOT NULL,
                             PRIMARY KEY(peer, reason)) WITHOUT ROWID
    """)



def _m006_sync_nonces(conn: sqlite3.Connection) -> None:
    # Nonces of accepted sync requests, kept for the request window so a
    # captured request cannot be replayed after a restart (issue 13).
    _run(conn, """
    CREATE TABLE sync_nonces(peer BLOB NOT NULL, nonce BLOB NOT NULL, at INTEGER NOT NULL,
                             PRIMARY KEY(peer, nonce)) WITHOUT ROWID;
    CREATE INDEX sync_nonces_at ON sync_nonces(at)
    """)

def _m007_merger(conn: sqlite3.Connection) -> None:
    # norm_hash: the hash of the content's normal form (``textnorm``), indexed per scope, so finding an
    # exact duplicate is one index probe. merges: the audit trail of merge ops (derived from the log,
    # local). merge_candidates: pairs the ``manual`` strategy left for a person (local).
    _run(conn, """
    ALTER TABLE memories ADD COLUMN norm_hash TEXT;
    CREATE TABLE merges(
        seq INTEGER PRIMARY KEY,
        op BLOB NOT NULL UNIQUE,
        author BLOB NOT NULL,
        at INTEGER NOT NULL,
        into_id TEXT NOT NULL,
        merged_id TEXT NOT NULL,
        strategy TEXT NOT NULL,
        rule TEXT NOT NULL,
        absorbed INTEGER NOT NULL,
        tool TEXT,
        source TEXT,
        session TEXT,
        body TEXT NOT NULL,
        undone_by BLOB
    );
    CREATE INDEX merges_into ON merges(into_id);
    CREATE INDEX merges_merged ON merges(merged_id);
    CREATE TABLE merge_candidates(
        a TEXT NOT NULL,
        b TEXT NOT NULL,
        rule TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY(a, b)
    ) WITHOUT ROWID
    """)
    rows = conn.execute("SELECT rowid, content FROM memories").fetchall()
    conn.executemany("UPDATE memories SET norm_hash = ? WHERE rowid = ?", [(norm_hash(c), r) for r, c in rows])
    conn.execute("CREATE INDEX memories_dup ON memories(scope, norm_hash)")
    # The scans start from now: memories stored before the merger existed are merged only when asked
    # (``neuralsync merges scan --all``), never behind the user's back on upgrade.
    conn.execute("INSERT OR REPLACE INTO meta(key, value) SELECT 'merge_scan_seq', coalesce(max(seq), 0) FROM ops")
    conn.execute("INSERT OR REPLACE INTO meta(key, value) SELECT 'near_scan_seq', coalesce(max(seq), 0)"
                 " FROM embeddings")


def _m008_archive(conn: sqlite3.Connection) -> None:
    # archived: a memory out of recall (and of the FTS and vector indexes) until restored (issue 15).
    _run(conn, "ALTER TABLE memories ADD COLUMN archived INTEGER NOT NULL DEFAULT 0")


def _m009_op_records(conn: sqlite3.Connection) -> None:
    # The memories an op names besides its own record (a purge deletes many): derived, for the per-memory
    # questions (what removed it, what wrote it) that look ops up by record.
    _run(conn, """
    CREATE TABLE op_records(record_id TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY(record_id, seq))
        WITHOUT ROWID
    """)


def _m010_team_graphs(conn: sqlite3.Connection) -> None:
    # Shared scopes (issue 17): each has a hash graph of its own; ``graph`` is its id (NULL: the personal
    # graph, every op before this). Heads are per graph. teams: the shared scopes whose root is here
    # (derived from their team_create ops); team_sync: how far each was pushed to and pulled from a relay.
    _run(conn, """
    ALTER TABLE ops ADD COLUMN graph BLOB;
    ALTER TABLE heads ADD COLUMN graph BLOB;
    CREATE INDEX ops_graph_kind ON ops(graph, kind) WHERE graph IS NOT NULL;
    CREATE INDEX ops_graph_seq ON ops(graph, seq) WHERE graph IS NOT NULL;
    CREATE TABLE teams(graph BLOB PRIMARY KEY, name TEXT NOT NULL, creator BLOB NOT NULL, root BLOB NOT NULL)
        WITHOUT ROWID;
    CREATE INDEX teams_name ON teams(name);
    CREATE TABLE team_relays(graph BLOB PRIMARY KEY, url TEXT NOT NULL, relay_key BLOB NOT NULL,
                             pushed_seq INTEGER NOT NULL DEFAULT 0, pulled_seq INTEGER NOT NULL DEFAULT 0,
                             synced_at INTEGER, last_error TEXT) WITHOUT ROWID
    """)


def _m011_log_cuts(conn: sqlite3.Connection) -> None:
    # Log truncation (issue 15): the ops a compaction truncated name the signed cut that vouches for them.
    _run(conn, """
    ALTER TABLE ops ADD COLUMN cut INTEGER;
    CREATE INDEX ops_cut ON ops(cut, seq) WHERE cut IS NOT NULL;
    CREATE TABLE log_cuts(n INTEGER PRIMARY KEY, at INTEGER NOT NULL, signer BLOB NOT NULL, ops INTEGER NOT NULL,
                          root BLOB NOT NULL, sig BLOB NOT NULL)
    """)


def _m012_defrag_guard(conn: sqlite3.Connection) -> None:
    # Defragmentation (issue 15) deletes and inserts memories rows again, unchanged, under the same rowid: the
    # triggers that queue and drop vectors stand aside while the meta row 'defragmenting' exists, which only
    # that write transaction ever holds (services/defrag.py).
    _run(conn, """
    DROP TRIGGER memories_queue_embedding;
    DROP TRIGGER memories_drop_embedding;
    CREATE TRIGGER memories_queue_embedding AFTER INSERT ON memories
    WHEN NOT EXISTS (SELECT 1 FROM meta WHERE key = 'defragmenting') BEGIN
        INSERT OR IGNORE INTO embed_queue(mem) VALUES (new.rowid);
    END;
    CREATE TRIGGER memories_drop_embedding AFTER DELETE ON memories
    WHEN NOT EXISTS (SELECT 1 FROM meta WHERE key = 'defragmenting') BEGIN
        DELETE FROM embeddings WHERE mem = old.rowid;
        DELETE FROM embed_queue WHERE mem = old.rowid;
        INSERT OR IGNORE INTO vector_removed(mem) VALUES (old.rowid);
    END
    """)


MIGRATIONS: list[Migration] = [
    (1, "initial schema: op log, memories, tags, fts", _m001_initial),
    (2, "session registry", _m002_sessions),
    (3, "embeddings, embedding queue, vector removals", _m003_embeddings),
    (4, "drop the unused content-hash index", _m004_drop_hash_index),
    (5, "hash-graph clocks and floors, conflicts, peers, sync log", _m005_replication),
    (6, "nonces of accepted sync requests", _m006_sync_nonces),
    (7, "merger: content normal-form hash, merge audit trail, manual candidates", _m007_merger),
    (8, "archived memories", _m008_archive),
    (9, "memories named by ops beyond their own record (purge)", _m009_op_records),
    (10, "shared scopes: an op's graph, heads per graph, teams", _m010_team_graphs),
    (11, "signed cuts of truncated ops", _m011_log_cuts),
    (12, "memories triggers stand aside while a slice defragments the table", _m012_defrag_guard),
]
