"""What any JSON input may be, checked once for every door: HTTP bodies, MCP
messages, sync messages and answers, imported lines.

JSON as RFC 8259 means it (no ``NaN``/``Infinity``, valid Unicode, no lone
surrogates), nested at most :data:`MAX_JSON_DEPTH` levels. Python's parser
accepts the first two and recurses on the third, so a deep document either
costs a ``RecursionError`` or, in the MCP SDK's parser, vanishes without an
answer (issue 13). Every refusal is an :class:`InvalidInput` naming the field:
the input's name (``body``, ``line 3``) or the path inside it (``metadata.a``,
``tags[2]``).
"""

from __future__ import annotations

import json
from typing import Any

from .errors import InvalidInput

# Deep enough for any honest input (metadata is bounded at 5 levels inside a body, an MCP call
# nests its arguments 3 deep), far below the parsers' recursion limits.
MAX_JSON_DEPTH = 32


def parse_json(raw: str | bytes, field: str = "body", max_depth: int = MAX_JSON_DEPTH, *,
               one_field: bool = False) -> Any:
    """Parse one JSON input, or raise :class:`InvalidInput` naming ``field`` (or the path inside it).

    ``one_field``: the input is the value of one field (``--metadata``), so paths inside it start with
    ``field``; otherwise its top-level keys are fields of their own (a request body, an import line).
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw  # RFC 8259: UTF-8, nothing guessed
        value = json.loads(text, parse_constant=_NotJSON)
    except RecursionError:
        raise InvalidInput(field, f"nested deeper than {max_depth} levels") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(field, f"is not UTF-8 text (byte {exc.start + 1})") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(field, f"is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    check_json(value, field, max_depth, one_field=one_field)
    return value


class _NotJSON:
    """Stands in for NaN/Infinity while parsing, so the check can name where it was."""

    def __init__(self, name: str) -> None:
        self.name = name


def check_json(value: Any, field: str = "body", max_depth: int = MAX_JSON_DEPTH, *, one_field: bool = False) -> None:
    """Raise :class:`InvalidInput` if ``value`` (parsed JSON) nests deeper than ``max_depth`` or holds
    text that is not valid Unicode; the error names the path to the first offending item (a key of
    the top-level object is named alone, the body's ``query`` is the field ``query``, unless
    ``one_field``)."""
    stack: list[tuple[Any, int, str]] = [(value, 0, field)]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, (dict, list)) and depth >= max_depth:
            raise InvalidInput(path, f"nested deeper than {max_depth} levels")
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, _NotJSON):
            raise InvalidInput(path, f"{item.name} is not JSON (numbers must be finite)")
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, path)
                stack.append((child, depth + 1, key if depth == 0 and not one_field else f"{path}.{key}"))
        elif isinstance(item, list):
            stack.extend((child, depth + 1, f"{path}[{index}]") for index, child in enumerate(item))


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(path, "contains invalid unicode (lone surrogate)") from None
