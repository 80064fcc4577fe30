"""Read a NeuralSync2 home (``memory.db``, ``oplog.jsonl``) as records to import, and map its items.

NeuralSync2's server kept items in SQLite (``items``: id, kind, text, scope,
tool, tags JSON, confidence, benefit, consistency, created_at, updated_at,
ttl_ms, expires_at, tombstone, site_id, lamport, source, meta JSON), the
persona as a JSON object ``{"text", "site_id", "lamport"}`` under ``k =
'persona'`` in ``kv(k, v)``, and appended every local write to ``oplog.jsonl``
as ``{op, id, lamport, site_id, clock_ts, payload}`` (``persona_set`` entries
carry no ``id``: they are persona history, never memories).

Items map to our fields; what has no field of ours (its id, site and Lamport
clock, ``benefit``, ``consistency``, a tag order) is kept under
``metadata["neuralsync2"]``, so the legacy routes can answer the item as
NeuralSync2 would. UUID ids are kept (without dashes); any other id maps to
one derived from it alone, so importing or pushing the same item twice adds
nothing and a later delete finds it.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput
from ..utils import derived_id, now_ms, read_only_uri

if TYPE_CHECKING:
    from ..unified_memory_api import UnifiedMemoryAPI

SQLITE_MAGIC = b"SQLite format 3\x00"
PROVENANCE = "neuralsync2"  # the metadata key holding what NeuralSync2 knew and we have no field for
PERSONA_OP = "persona_set"
_KIND = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_UUID = re.compile(r"[0-9a-f]{32}")
_DELETE_OPS = frozenset({"delete", "del", "forget", "tombstone", "remove"})


@dataclass(frozen=True)
class Ns2Home:
    """Where a NeuralSync2 store's files are."""

    db: Path
    oplog: Path | None


@dataclass(frozen=True)
class Ns2Persona:
    """NeuralSync2's persona: its text and when it was set (epoch ms; None when only ``kv`` has it)."""

    text: str
    at: int | None


def locate(path: str | Path, oplog: str | Path | None = None) -> Ns2Home | None:
    """A NeuralSync2 home at ``path`` (its directory or its ``memory.db``), or None if it is not one.

    ``oplog`` names the op log when it is not ``oplog.jsonl`` beside the database."""
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
    log = Path(oplog).expanduser() if oplog is not None else db.with_name("oplog.jsonl")
    return Ns2Home(db, log if log.is_file() else None)


# ---------------------------------------------------------------- persona
def read_persona(home: Ns2Home) -> Ns2Persona | None:
    """The persona NeuralSync2 would show: its latest logged ``persona_set``, else the ``kv`` value.

    The log decides because NeuralSync2's ``kv`` row keeps the highest Lamport
    clock, and that clock restarts at 0 with its server: after a restart, a newer
    persona lost to an older one in ``kv`` while its server showed the newer.
    """
    latest: Ns2Persona | None = None
    for entry in _log_entries(home):
        payload = entry.get("payload")
        if entry.get("op") == PERSONA_OP and isinstance(payload, dict) and isinstance(payload.get("text"), str):
            at = _ms(entry.get("clock_ts"))
            if latest is None or (at or 0) >= (latest.at or 0):
                latest = Ns2Persona(payload["text"], at)
    return latest if latest is not None else _kv_persona(home)


def _kv_persona(home: Ns2Home) -> Ns2Persona | None:
    conn = sqlite3.connect(read_only_uri(home.db), uri=True)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(kv)")}
        if not columns:
            return None  # no kv table: no persona was ever set
        if not {"k", "v"} <= columns:
            raise InvalidInput("kv", f"{home.db}: NeuralSync2's kv table has columns (k, v), not {sorted(columns)}")
        row = conn.execute("SELECT v FROM kv WHERE k = 'persona'").fetchone()
    finally:
        conn.close()
    if row is None or not isinstance(row[0], str):
        return None
    try:
        value = json.loads(row[0])
    except json.JSONDecodeError:
        return Ns2Persona(row[0], None)  # a bare string, as a hand-edited home may hold
    text = value.get("text") if isinstance(value, dict) else value
    return Ns2Persona(text, None) if isinstance(text, str) else None


def carry_persona(api: UnifiedMemoryAPI, text: str, made: int | None) -> bool:
    """Set NeuralSync2's persona here when it is the later one (``made``: when it was set there, epoch
    ms; None: unknown, so only when this store has none). True when it was set."""
    current = api.get_persona_info()
    if text == (current["text"] if current else ""):
        return False
    if current is not None and (made is None or made <= current["set_at"]):
        return False  # ours was set after: the later persona wins
    api.set_persona(text)
    return True


# ---------------------------------------------------------------- items
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
    """The last logged state of each item that is in the op log but not in the database."""
    latest: dict[str, tuple[str, Any, Any]] = {}
    for entry in _log_entries(home):
        key = entry.get("id")
        if not isinstance(key, str) or not key or key in seen or entry.get("op") == PERSONA_OP:
            continue
        latest[key] = (str(entry.get("op", "")).lower(), entry.get("payload"), entry.get("clock_ts"))
    for key, (op, payload, clock_ts) in latest.items():
        if op not in _DELETE_OPS and isinstance(payload, dict):
            yield {"created_at": clock_ts, **payload, "id": key}


def _log_entries(home: Ns2Home) -> Iterator[dict[str, Any]]:
    """The op log's entries in append order (NeuralSync2 appended in time order); broken lines are skipped."""
    if home.oplog is None:
        return
    with open(home.oplog, encoding="utf-8", errors="replace") as log:
        for line in log:
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                continue
            if isinstance(entry, dict):
                yield entry


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
    raw_kind = item.get("kind")
    kind = raw_kind if isinstance(raw_kind, str) and _KIND.match(raw_kind) else "fact"
    tags = clean_tags(_json(item.get("tags"), []))
    extra = {"kind": raw_kind} if kind != raw_kind and raw_kind is not None else {}
    return {
        "id": our_id(str(item.get("id", ""))),
        "content": text,
        "scope": item.get("scope") or "global",
        "kind": kind,
        "tool": item.get("tool") or None,
        "tags": tags,
        "confidence": _unit(item.get("confidence"), 0.8),
        "metadata": {**_json(item.get("meta"), {}),
                     PROVENANCE: provenance(item, tags, original_id=True, extra=extra)},
        "created_at": created,
        "updated_at": max(created, _ms(item.get("updated_at")) or created),
        "expires_at": expires,
        "source": item.get("source") or None,
    }


def provenance(item: dict[str, Any], tags: list[str], original_id: bool,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What NeuralSync2 knew of an item that we have no field for (None values left out).

    ``tags`` keeps NeuralSync2's order (and repeats) only when it is not our sorted set's."""
    keys = ("id", "site_id", "lamport", "benefit", "consistency") if original_id else ("benefit", "consistency")
    kept = {key: item.get(key) for key in keys if item.get(key) is not None}
    if tags != sorted(set(tags)):
        kept["tags"] = tags
    return {**kept, **(extra or {})}


def clean_tags(value: Any) -> list[str]:
    """NeuralSync2's tag list as our checks will see it (strings, stripped, none empty), order kept."""
    return [tag.strip() for tag in value if isinstance(tag, str) and tag.strip()] if isinstance(value, list) else []


def our_id(original: str) -> str:
    """Our id for a NeuralSync2 id: a UUID without its dashes, else one derived from the id alone."""
    if not original:
        raise InvalidInput("id", "NeuralSync2 item without an id")
    compact = original.replace("-", "").lower()
    if _UUID.fullmatch(compact):
        return compact
    return derived_id(0, b"neuralsync2\0" + original.encode("utf-8", "surrogatepass"))


def _ms(value: Any) -> int | None:
    """Epoch milliseconds from NeuralSync2's numbers (seconds are recognised by size)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1 << 53:
        return None
    return int(value * 1000) if value < 100_000_000_000 else int(value)


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1 << 62 else 0


def _unit(value: Any, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return default
    return min(1.0, max(0.0, float(value)))


def _json(value: Any, default: Any) -> Any:
    if isinstance(value, (dict, list)):
        return value if isinstance(value, type(default)) else default
    if isinstance(value, str) and value:
        try:
            parsed = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return default
        return parsed if isinstance(parsed, type(default)) else default
    return default
