"""Validity of an op's fields, by kind: a rule that depends only on the op.

Every replica runs the same checks on every op it receives (and on its own),
so a well-signed op with missing or mistyped fields is rejected alike
everywhere instead of failing in the materialiser. Unknown keys are ignored
(forward compatibility); known keys must have the right type and range.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..errors import InvalidOp
from ..model import MAX_CONTENT_CHARS, MERGE_STRATEGIES
from ..utils import is_valid_id
from ..validation import content_fault, label_fault

MAX_LABEL = 512
MAX_TAGS = 256
MAX_REMOVES = 4096
MAX_PURGE = 256  # memories one purge op deletes


def _text(limit: int, optional: bool = False) -> Callable[[Any], bool]:
    """A label: the same characters the local checks allow (``validation.label_fault``)."""
    return lambda v: (v is None and optional) or (isinstance(v, str) and 0 < len(v) <= limit
                                                  and label_fault(v) is None)


def _content(v: Any) -> bool:
    """Content: the protocol's limit and the local checks' rule (``validation.content_fault``)."""
    return isinstance(v, str) and 0 < len(v) <= MAX_CONTENT_CHARS and content_fault(v) is None


def _unit(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1


def _time(optional: bool) -> Callable[[Any], bool]:
    return lambda v: (v is None and optional) or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 62)


def _tags(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= MAX_TAGS and all(_text(MAX_LABEL)(t) for t in v)


def _json(v: Any) -> bool:
    """A JSON value (the op encoding bounds depth and rejects non-finite floats)."""
    if v is None or isinstance(v, (str, bool, int, float)):
        return True
    if isinstance(v, list):
        return all(_json(item) for item in v)
    if isinstance(v, dict):
        return all(_json(item) for item in v.values())
    return False  # bytes: encodable, but not storable as JSON metadata


def _metadata(v: Any) -> bool:
    return v is None or (isinstance(v, dict) and _json(v))


SCALAR_RULES: dict[str, Callable[[Any], bool]] = {
    "content": _content,
    "scope": _text(MAX_LABEL),
    "kind": _text(MAX_LABEL),
    "priority": _unit,
    "confidence": _unit,
    "tool": _text(MAX_LABEL, optional=True),
    "source": _text(MAX_LABEL, optional=True),
    "session": _text(MAX_LABEL, optional=True),
    "metadata": _metadata,
    "expires_at": _time(optional=True),
    "created_at": _time(optional=False),
    "updated_at": _time(optional=True),
    "tags": _tags,
    "archived": lambda v: isinstance(v, bool),
}
CREATE_REQUIRED = ("content", "scope", "kind", "priority", "confidence")


def check_fields(kind: str, record_id: str, fields: dict[str, Any]) -> None:
    """Raise :class:`InvalidOp` unless ``fields`` are valid for an op of ``kind``."""
    if kind == "persona":
        text = fields.get("text")
        if (not isinstance(text, str) or len(text) > MAX_CONTENT_CHARS
                or not _text(MAX_LABEL)(fields.get("key", "persona"))):
            raise InvalidOp(f"persona op needs a text string of at most {MAX_CONTENT_CHARS} characters "
                            "(and a key of at most 512)")
        return
    if not is_valid_id(record_id):
        raise InvalidOp("memory ops need a 32-hex record id")
    if kind == "create":
        missing = [name for name in CREATE_REQUIRED if name not in fields]
        if missing:
            raise InvalidOp(f"create op lacks {missing[0]!r}")
    if kind in ("create", "update"):
        for name, value in fields.items():
            rule = SCALAR_RULES.get(name)
            if rule is not None and not rule(value):
                raise InvalidOp(f"{kind} op has an invalid {name!r}")
    elif kind in ("tag_add", "tag_remove"):
        if not _text(MAX_LABEL)(fields.get("tag")):
            raise InvalidOp(f"{kind} op needs a tag string")
        removes = fields.get("removes", [])
        if kind == "tag_remove" and (not isinstance(removes, list) or len(removes) > MAX_REMOVES
                                     or any(not isinstance(r, bytes) or len(r) != 32 for r in removes)
                                     or len(set(removes)) != len(removes)):
            raise InvalidOp(f"tag_remove op needs a list of at most {MAX_REMOVES} distinct 32-byte add-op ids")
    elif kind == "merge":
        _check_merge(record_id, fields)
    elif kind == "purge":
        records = fields.get("records")
        if (not isinstance(records, list) or not 0 < len(records) <= MAX_PURGE
                or not all(isinstance(r, str) and is_valid_id(r) for r in records)
                or records != sorted(set(records)) or records[0] != record_id):
            raise InvalidOp(f"purge op needs 'records': 1 to {MAX_PURGE} sorted distinct memory ids, the first its own")
    elif kind == "unmerge" and not _op_id(fields.get("merge")):
        raise InvalidOp("unmerge op needs the 32-byte id of the merge it undoes")


def _op_id(v: Any) -> bool:
    return isinstance(v, bytes) and len(v) == 32


def _check_merge(record_id: str, fields: dict[str, Any]) -> None:
    """A merge of memory ``record_id`` into ``into``: the strategy, the rule, what it replaced, what it kept."""
    into = fields.get("into")
    if not isinstance(into, str) or not is_valid_id(into) or into == record_id:
        raise InvalidOp("merge op needs 'into': the 32-hex id of another memory")
    if fields.get("strategy") not in MERGE_STRATEGIES or fields["strategy"] == "manual":
        raise InvalidOp(f"merge op has an invalid 'strategy' (one of {', '.join(MERGE_STRATEGIES[:3])})")
    if not _text(MAX_LABEL)(fields.get("rule")) or not isinstance(fields.get("absorbed"), bool):
        raise InvalidOp("merge op needs a 'rule' label and an 'absorbed' flag")
    merged, before = fields.get("merged"), fields.get("before", {})
    # An absorbed write has no ops of its own: the merge keeps all it would have created (its undo creates it).
    needed = CREATE_REQUIRED if fields.get("absorbed") else ()
    if not isinstance(merged, dict) or any(name not in merged for name in needed):
        raise InvalidOp("merge op needs 'merged': the merged memory's fields (all of them when absorbed)")
    for name, values in (("merged", merged), ("before", before)):
        if not isinstance(values, dict) or any(
                not rule(values[field]) for field, rule in SCALAR_RULES.items() if field in values):
            raise InvalidOp(f"merge op has an invalid {name!r}")
    update_op, tag_ops = fields.get("update_op"), fields.get("tag_ops", [])
    if update_op is not None and not _op_id(update_op):
        raise InvalidOp("merge op's 'update_op' must be a 32-byte op id")
    if not isinstance(tag_ops, list) or len(tag_ops) > MAX_TAGS or not all(_op_id(t) for t in tag_ops):
        raise InvalidOp(f"merge op's 'tag_ops' must be at most {MAX_TAGS} 32-byte op ids")
