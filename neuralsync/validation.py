"""Input checks: every public value is checked here before an op is built.

Each failure raises :class:`InvalidInput` naming the field, so nothing is
written for bad input. Functions return normalised values; :class:`FieldChecks`
composes them (with secret redaction) into the fields of a create or update op,
one table shared by every write path of the facade.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from .config import MemoryConfig
from .errors import InvalidInput
from .redact import Redactor
from .utils import derived_id, is_valid_id

# What a label (scope, tool, source, tag, session) may not hold, here and in every replica's op check:
# C0 and C1 controls, the bidirectional marks, overrides and isolates that make a label display as
# something it is not ("evil\u202etxt.exe"), and invisible separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff]")
# Content must hold something to read: a character that is not whitespace, a control or an
# invisible format character.
_VISIBLE = re.compile(r"[^\s\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064"
                      r"\u2066-\u206f\ufeff]")
_KIND = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_SCOPE_CHARS = 128
MAX_TOOL_CHARS = 64
MAX_SOURCE_CHARS = 512
MAX_METADATA_DEPTH = 5  # the op encoder allows 8 levels and metadata sits 2 deep in an op


def memory_id(value: object, field: str = "id") -> str:
    """A well-formed memory id."""
    if not is_valid_id(value):
        raise InvalidInput(field, f"malformed id {str(value)[:80]!r} (expected 32 lowercase hex characters)")
    return value  # type: ignore[return-value]


def label_fault(value: str) -> str | None:
    """Why ``value`` cannot be a label, or None (the rule local checks and op checks share)."""
    if _CONTROL.search(value):
        return "must not contain control, bidirectional-override or invisible characters"
    return None


def content_fault(value: str) -> str | None:
    """Why ``value`` cannot be content, or None (the rule local checks and op checks share)."""
    if "\x00" in value:
        return "must not contain NUL characters"
    if not _VISIBLE.search(value):
        return "must contain visible text, not only whitespace or control characters"
    return None


def text(value: object, field: str, max_chars: int) -> str:
    """Content: valid-unicode text of at most ``max_chars`` characters, with something to read."""
    if not isinstance(value, str):
        raise InvalidInput(field, f"must be a string, not {type(value).__name__}")
    if not value.strip():
        raise InvalidInput(field, "must not be empty")
    if len(value) > max_chars:
        raise InvalidInput(field, f"is {len(value)} characters; the limit is {max_chars}")
    fault = content_fault(value)
    if fault is not None:
        raise InvalidInput(field, fault)
    check_unicode(value, field)
    return value


def query(value: object, max_chars: int) -> str:
    """Search text of at most ``max_chars`` characters (empty: no text condition).

    A query is searched, never stored: invalid code points (lone surrogates)
    are dropped rather than refused. Its length is bounded because recall's
    work (tokens, embedding) grows with it.
    """
    if not isinstance(value, str):
        raise InvalidInput("query", f"must be a string, not {type(value).__name__}")
    if len(value) > max_chars:
        raise InvalidInput("query", f"is {len(value)} characters; the limit is {max_chars}")
    return value.encode("utf-8", "replace").decode("utf-8")


def label(value: object, field: str, max_chars: int, optional: bool = False) -> str | None:
    """A short single-line name (scope, tool, source): no control characters."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidInput(field, f"must be a string, not {type(value).__name__}")
    value = value.strip()
    if not value or len(value) > max_chars:
        raise InvalidInput(field, f"must be 1 to {max_chars} characters")
    fault = label_fault(value)
    if fault is not None:
        raise InvalidInput(field, fault)
    check_unicode(value, field)
    return value


def kind(value: object) -> str:
    """A memory kind such as ``fact``, ``preference``, ``decision``."""
    if not isinstance(value, str) or not _KIND.fullmatch(value):
        raise InvalidInput("kind", "must be 1-64 characters of letters, digits, '_', '-', '.', ':'")
    return value


def unit(value: object, field: str) -> float:
    """A number in the closed interval 0..1 (priority, confidence)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(field, f"must be a number between 0 and 1, not {value!r}")
    if isinstance(value, int) and not 0 <= value <= 1:
        raise InvalidInput(field, f"must be between 0 and 1, not {str(value)[:40]}")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise InvalidInput(field, f"must be between 0 and 1, not {value!r}")
    return number + 0.0


def tags(value: object, max_tags: int, max_chars: int) -> tuple[str, ...]:
    """A sorted, de-duplicated tuple of tags; a string is read as comma-separated."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise InvalidInput("tags", f"must be a list of strings, not {type(value).__name__}")
    result = set()
    for item in value:
        if not isinstance(item, str):
            raise InvalidInput("tags", f"every tag must be a string, not {type(item).__name__} {item!r}")
        result.add(label(item, "tags", max_chars))
    if len(result) > max_tags:
        raise InvalidInput("tags", f"{len(result)} tags; the limit is {max_tags}")
    return tuple(sorted(result))  # type: ignore[arg-type]


def metadata(value: object, max_bytes: int) -> dict[str, Any]:
    """A JSON object of at most ``max_bytes`` when serialised."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("metadata", f"must be an object/dict, not {type(value).__name__}")
    _check_json(value, 0)
    try:
        size = len(json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise InvalidInput("metadata", f"must be JSON-serialisable: {exc}") from None
    if size > max_bytes:
        raise InvalidInput("metadata", f"is {size} bytes; the limit is {max_bytes}")
    return value


def _check_json(value: object, depth: int) -> None:
    if depth > MAX_METADATA_DEPTH:
        raise InvalidInput("metadata", f"nested deeper than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str:  # a str subclass (an Enum) encodes ambiguously
                raise InvalidInput("metadata", f"keys must be plain strings, not {type(key).__name__} {key!r}")
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)
    elif isinstance(value, str):
        check_unicode(value, "metadata")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput("metadata", "numbers must be finite")
    elif isinstance(value, int) and not isinstance(value, bool):
        if not -(1 << 63) <= value < (1 << 63):
            raise InvalidInput("metadata", "integers must fit in 64 bits")
    elif value is not None and not isinstance(value, bool):
        raise InvalidInput("metadata", f"values must be JSON types, not {type(value).__name__}")


IMPORT_FIELDS = frozenset({"id", "content", "scope", "priority", "tags", "kind", "tool", "metadata",
                           "confidence", "source", "session", "created_at", "updated_at", "expires_at",
                           "content_hash", "accessed_at", "access_count", "score"})
MAX_TTL_MS = 100 * 365 * 86_400_000  # a century: anything longer is "forever" (omit the ttl)
MAX_SEQ = (1 << 63) - 1


def positive_int(value: object, field: str, optional: bool = True, maximum: int = 1 << 62) -> int | None:
    """A positive integer (ttl_ms, top_k, limit), or None when optional."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= maximum:
        raise InvalidInput(field, f"must be a positive integer up to {maximum}, not {value!r}")
    return value


def timestamp(value: object, field: str) -> int | None:
    """Epoch milliseconds (int/float), a ``datetime`` or an ISO-8601 string; None passes."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidInput(field, "must be a time, not a boolean")
    if isinstance(value, int):
        if not 0 <= value < 1 << 53:
            raise InvalidInput(field, f"out of range: {str(value)[:40]}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or not 0 <= value < 1 << 53:
            raise InvalidInput(field, f"out of range: {value!r}")
        return int(value)
    from datetime import datetime, timezone

    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(field, f"not an ISO-8601 time or epoch milliseconds: {value!r}") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        ms = int(value.timestamp() * 1000)
        if not 0 <= ms < 1 << 53:  # before 1970 cannot be an op clock field
            raise InvalidInput(field, f"out of range: {value.isoformat()}")
        return ms
    raise InvalidInput(field, f"must be epoch milliseconds or ISO-8601, not {type(value).__name__}")


def string_list(value: object, field: str) -> tuple[str, ...] | None:
    """An optional list of short strings (kinds filter); a string is one item."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Iterable) or isinstance(value, (bytes, dict)):
        raise InvalidInput(field, "must be a list of strings")
    items = tuple(value)
    if not all(isinstance(item, str) for item in items):
        raise InvalidInput(field, "every item must be a string")
    return items


def check_unicode(value: str, field: str) -> None:
    """Raise InvalidInput unless ``value`` encodes as UTF-8 (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(field, "contains invalid unicode (lone surrogate)") from None


class FieldChecks:
    """Caller values to op fields: validated, secrets redacted, normalised to the op encoding's one form
    (plain ``str``, ``0.0`` not ``-0.0``), so the local state is exactly what every replica decodes."""

    def __init__(self, config: MemoryConfig) -> None:
        self.config = config
        self.redactor = Redactor(config.redact_secrets, config.extra_secret_patterns)
        cfg = config
        self.checks: dict[str, Callable[[Any], Any]] = {
            "content": self._content,
            "scope": lambda x: label(x, "scope", MAX_SCOPE_CHARS),
            "priority": lambda x: unit(x, "priority"),
            "confidence": lambda x: unit(x, "confidence"),
            "kind": kind,
            "tool": lambda x: label(x, "tool", MAX_TOOL_CHARS, optional=True),
            "source": lambda x: self._redact_optional(label(x, "source", MAX_SOURCE_CHARS, optional=True)),
            "metadata": lambda x: self._redact_metadata(metadata(x, cfg.max_metadata_bytes)),
            "expires_at": lambda x: timestamp(x, "expires_at"),
        }

    def create(self, values: dict[str, Any], *, session: str, now: int) -> dict[str, Any]:
        """The fields of a create op from ``remember``'s arguments (``ttl_ms`` becomes ``expires_at``)."""
        ttl = positive_int(values.get("ttl_ms"), "ttl_ms", maximum=MAX_TTL_MS)
        check = self.checks
        fields = {name: check[name](values[name]) for name in ("content", "scope", "priority", "confidence")}
        fields["tags"] = list(self.tags(values.get("tags")))
        fields.update((name, check[name](values[name])) for name in ("kind", "tool", "source", "metadata"))
        fields["session"] = session
        fields["expires_at"] = None if ttl is None else now + ttl
        fields["created_at"] = now
        return fields

    def imported(self, record: object, *, session: str, now: int) -> tuple[str, dict[str, Any]]:
        """(id, create fields) of an exported record: its own id (or one derived from its content and
        time, so the same line imported twice is one memory), creation time and tool are kept."""
        if not isinstance(record, dict):
            raise InvalidInput("record", "must be a JSON object")
        unknown = sorted(set(record) - IMPORT_FIELDS)
        if unknown:
            raise InvalidInput(unknown[0], "unknown field in imported record")
        created = timestamp(record.get("created_at"), "created_at")
        defaults = {"scope": "global", "priority": 0.5, "kind": "fact", "confidence": 0.8}
        values = {name: record.get(name, defaults.get(name)) for name in
                  ("content", "scope", "priority", "tags", "kind", "metadata", "confidence", "source")}
        fields = self.create({**values, "tool": None}, session=session, now=now)
        if created is not None:
            fields["created_at"] = created
        fields["tool"] = self.checks["tool"](record.get("tool"))
        fields["expires_at"] = self.checks["expires_at"](record.get("expires_at"))
        updated = timestamp(record.get("updated_at"), "updated_at")
        if updated is not None:
            fields["updated_at"] = max(updated, fields["created_at"])
        if record.get("session") is not None:
            fields["session"] = label(record["session"], "session", MAX_SOURCE_CHARS)
        if record.get("id") is not None:
            return memory_id(record["id"], "id"), fields
        return derived_id(fields["created_at"], f"{fields['scope']}\0{fields['content']}".encode()), fields

    def update(self, values: dict[str, Any], now: int) -> dict[str, Any]:
        """The scalar fields of an update op (tags are separate ops)."""
        out = {name: check(values[name]) for name, check in self.checks.items() if name in values}
        if "ttl_ms" in values:
            ttl = positive_int(values["ttl_ms"], "ttl_ms", maximum=MAX_TTL_MS)
            out["expires_at"] = None if ttl is None else now + ttl
        return out

    def tags(self, value: object) -> tuple[str, ...]:
        """Validated tags with secrets redacted (a key pasted as a tag is still a key)."""
        checked = tags(value, self.config.max_tags, self.config.max_tag_chars)
        return tuple(sorted({self.redactor.redact(tag) for tag in checked}))

    def _content(self, value: object) -> str:
        limit = self.config.max_content_chars
        redacted = self.redactor.redact(text(value, "content", limit))
        if len(redacted) > limit:  # a secret's placeholder can be longer than the secret
            raise InvalidInput("content", f"is {len(redacted)} characters with secrets redacted; the limit is {limit}")
        return redacted

    def _redact_optional(self, value: str | None) -> str | None:
        return None if value is None else self.redactor.redact(value)

    def _redact_metadata(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redactor.redact(str(value))
        if isinstance(value, dict):
            return {str(k): self._redact_metadata(item) for k, item in value.items()}
        if isinstance(value, list):
            return [self._redact_metadata(item) for item in value]
        if isinstance(value, float):
            return float(value) + 0.0
        return value
