"""Read a NeuralSync2 home (``memory.db``, ``oplog.jsonl``, persona) as records to import.

NeuralSync2 kept items in SQLite (``items``: id, kind, text, scope, tool, tags
JSON, confidence, benefit, consistency, created_at, updated_at, ttl_ms,
expires_at, tombstone, site_id, lamport, source, meta JSON), the persona under
key ``persona`` in a ``kv`` table, and an ``oplog.jsonl`` of
``{op, id, lamport, site_id, clock_ts, payload}``. Items are mapped to our
fields; their NeuralSync2 provenance goes into ``metadata.neuralsync2``. Ids
are kept when they are UUIDs (32 hex digits without dashes) and derived
stably otherwise, so importing the same home twice adds nothing.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInput
from ..utils import derived_id, now_ms, read_only_uri

SQLITE_MAGIC = b"SQLite format 3\x00"
_KIND = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_DELETE_OPS = frozenset({"delete", "del", "forget", "tombstone", "remove"})


@dataclass(frozen=True)
class Ns2Home:
    """Where a NeuralSync2 store's files are."""

    db: Path
    oplog: Path | None


def locate(path: str | Path) -> Ns2Home | None:
    """A NeuralSync2 home at ``path`` (its directory or its ``memory.db``), or None if it is not one."""
    path = Path(path).expanduser()
    db = path / "memory.db" if path.is_dir() else path
    if not db.is_file():
        return None
    with open(db, "rb") as head:
        if head.read(16) != SQLITE_MAGIC:
            return None
    conn = sqlite3.connect(read_only_uri(db), uri=True)
    try:
        has_items = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'items'").fetchone()
    finally:
        conn.close()
    if not has_items:
        return None
    oplog = db.with_name("oplog.jsonl")
    return Ns2Home(db, oplog if oplog.is_file() else None)


def read_persona(home: Ns2Home) -> str:
    """The persona text NeuralSync2 stored, or an empty string."""
    conn = sqlite3.connect(read_only_uri(home.db), uri=True)
    try:
        row = conn.execute("SELECT value FROM kv WHERE key = 'persona'").fetchone()
    except sqlite3.OperationalError:
        return ""
    finally:
        conn.close()
    if row is None or not isinstance(row[0], str):
        return ""
    try:  # NeuralSync2 stored either the text or a JSON object holding it
        value = json.loads(row[0])
    except json.JSONDecodeError:
        return row[0]
    return str(value.get("text", "")) if isinstance(value, dict) else row[0]


def records(home: Ns2Home) -> Iterator[tuple[int, dict[str, Any]]]:
    """(position, record) for every live item, then for items only the op log still holds."""
    seen: set[str] = set()
    position = 0
    conn = sqlite3.connect(read_only_uri(home.db), uri=True)
    conn.row_factory = sqlite3.Row
    try:
        for row in conn.execute("SELECT * FROM items"):
            item = dict(row)
            seen.add(str(item.get("id")))
            position += 1
            record = to_record(item)
            if record is not None:
                yield position, record
    finally:
        conn.close()
    for item in _oplog_items(home, seen):
        position += 1
        record = to_record(item)
        if record is not None:
            yield position, record


def _oplog_items(home: Ns2Home, seen: set[str]) -> Iterator[dict[str, Any]]:
    """The latest state of each item that is in the op log but not in the database."""
    if home.oplog is None:
        return
    latest: dict[str, tuple[tuple[int, int], str, Any]] = {}
    with open(home.oplog, encoding="utf-8", errors="replace") as log:
        for line in log:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(entry, dict) or str(entry.get("id")) in seen:
                continue
            clock = (_int(entry.get("lamport")), _int(entry.get("clock_ts")))
            key = str(entry.get("id"))
            if key not in latest or clock >= latest[key][0]:
                latest[key] = (clock, str(entry.get("op", "")).lower(), entry.get("payload"))
    for key, (_, op, payload) in latest.items():
        if op not in _DELETE_OPS and isinstance(payload, dict):
            yield {"id": key, **payload}


def to_record(item: dict[str, Any]) -> dict[str, Any] | None:
    """Our import record for one NeuralSync2 item; None for deleted, expired or empty ones."""
    text = item.get("text")
    if not isinstance(text, str) or not text.strip() or item.get("tombstone"):
        return None
    created = _ms(item.get("created_at")) or now_ms()
    expires = _ms(item.get("expires_at"))
    if expires is None and _int(item.get("ttl_ms")) > 0:
        expires = created + _int(item.get("ttl_ms"))
    if expires is not None and expires <= now_ms():
        return None
    original_id = str(item.get("id", ""))
    kind = item.get("kind") if isinstance(item.get("kind"), str) and _KIND.match(item["kind"]) else "fact"
    provenance = {k: item.get(k) for k in ("id", "site_id", "lamport", "benefit", "consistency", "kind")
                  if item.get(k) is not None}
    return {
        "id": _our_id(original_id, created),
        "content": text,
        "scope": item.get("scope") or "global",
        "kind": kind,
        "tool": item.get("tool") or None,
        "tags": [t for t in _json(item.get("tags"), []) if isinstance(t, str) and t.strip()],
        "confidence": min(1.0, max(0.0, float(item.get("confidence") or 0.8))),
        "metadata": {**_json(item.get("meta"), {}), "neuralsync2": provenance},
        "created_at": created,
        "updated_at": max(created, _ms(item.get("updated_at")) or created),
        "expires_at": expires,
        "source": item.get("source") or None,
    }


def _our_id(original: str, created_ms: int) -> str:
    compact = original.replace("-", "").lower()
    if re.fullmatch(r"[0-9a-f]{32}", compact):
        return compact
    if not original:
        raise InvalidInput("id", "NeuralSync2 item without an id")
    return derived_id(created_ms, b"neuralsync2\0" + original.encode("utf-8"))


def _ms(value: Any) -> int | None:
    """Epoch milliseconds from NeuralSync2's numbers (seconds are recognised by size)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return int(value * 1000) if value < 100_000_000_000 else int(value)


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _json(value: Any, default: Any) -> Any:
    if isinstance(value, (dict, list)):
        return value
    if isinstance(value, str) and value:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return default
        return parsed if isinstance(parsed, type(default)) else default
    return default
