"""Editing TOML as text, so that every comment, blank line and ordering outside the edit survives byte for byte.

A TOML library that rewrites the document would move comments: the one
before a table belongs to the previous table in its model, so a table added
after the last ``[mcp_servers.*]`` lands below the next section's leading
comment (tried with tomlkit 0.15). Here the file is scanned for ``[table]``
headers (outside strings, comments and arrays), a table's span is found, and
blocks are inserted or cut; the caller parses the result and checks that
every other value is unchanged before writing anything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def loads(text: str) -> dict[str, Any]:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError("reading TOML on Python 3.10 needs tomli: pip install tomli") from exc
    return tomllib.loads(text)


def key(name: str) -> str:
    """A key as TOML spells it: bare when it can be, else quoted."""
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def value(item: Any) -> str:
    """A value as TOML spells it (the types tomllib returns)."""
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, (int, float)):
        return repr(item)  # inf and nan are spelled the same in TOML
    if isinstance(item, str):
        return json.dumps(item, ensure_ascii=False)  # JSON escapes are valid TOML basic-string escapes
    if isinstance(item, list):
        return "[" + ", ".join(value(v) for v in item) + "]"
    if isinstance(item, dict):
        return "{ " + ", ".join(f"{key(k)} = {value(v)}" for k, v in item.items()) + " }"
    return str(item.isoformat())  # dates and times, as tomllib returned them


def insert(text: str, pos: int, block: str, nl: str) -> str:
    before, after = text[:pos], text[pos:]
    if before and not before.endswith("\n"):
        before += nl
    return before + (nl if before else "") + block + after


def cut(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """Remove spans (last first), each with the blank line that ``_insert`` put before it."""
    for start, end in reversed(spans):
        before, after = text[:start], text[end:]
        for sep in ("\r\n", "\n"):
            if before.endswith(sep * 2):
                before = before[:-len(sep)]
                break
        else:
            if not before:
                after = after.lstrip("\r\n")
        text = before + after
    return text


def spans(text: str, headers: list[tuple[int, tuple[str, ...]]], prefix: tuple[str, ...]) -> list[tuple[int, int]]:
    """(start, end) of each table under ``prefix``, without trailing blank and comment lines."""
    spans = []
    for i, (start, key) in enumerate(headers):
        if key[:len(prefix)] == prefix:
            end = headers[i + 1][0] if i + 1 < len(headers) else len(text)
            lines = text[start:end].splitlines(keepends=True)
            while len(lines) > 1 and (not lines[-1].strip() or lines[-1].lstrip().startswith("#")):
                lines.pop()
            spans.append((start, start + sum(map(len, lines))))
    return spans


def headers(text: str) -> list[tuple[int, tuple[str, ...]]]:
    """(line start, key path) of every ``[table]`` header, skipping strings, comments and arrays."""
    found: list[tuple[int, tuple[str, ...]]] = []
    i, n, depth, line_start = 0, len(text), 0, True
    while i < n:
        if line_start:
            line_start, j = False, i
            while j < n and text[j] in " \t":
                j += 1
            if depth == 0 and j < n and text[j] == "[":
                end = text.find("\n", j)
                end = n if end < 0 else end + 1
                found.append((i, _header_key(text[j:end])))
                i, line_start = end, True
                continue
            i = j
            continue
        c = text[i]
        if c == "\n":
            line_start = True
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c in "\"'":
            i = _skip_string(text, i)
            continue
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        i += 1
    return found


def _skip_string(text: str, i: int) -> int:
    quote = text[i]
    if text.startswith(quote * 3, i):
        j = i + 3
        while j < len(text) and not text.startswith(quote * 3, j):
            j += 2 if quote == '"' and text[j] == "\\" else 1
        j += 3
        while j < len(text) and text[j] == quote:  # up to two quotes may end the content
            j += 1
        return j
    j = i + 1
    while j < len(text) and text[j] not in (quote, "\n"):
        j += 2 if quote == '"' and text[j] == "\\" else 1
    return j + 1


def _header_key(line: str) -> tuple[str, ...]:
    """Key path of a header line; ``[[array]]`` headers get a marker so they never match a table."""
    match = re.match(r"\[\[?", line)
    assert match is not None
    parts: list[str] = ["[["] if match.group() == "[[" else []
    pos = match.end()
    token = re.compile(r"\s*(\"(?:[^\"\\]|\\.)*\"|'[^']*'|[A-Za-z0-9_-]+)\s*([.\]])")
    while (m := token.match(line, pos)) is not None:
        raw = m.group(1)
        parts.append(_unquote(raw))
        pos = m.end()
        if m.group(2) == "]":
            return tuple(parts)
    return ("<unparsed>", line)


def _unquote(raw: str) -> str:
    if raw[0] == "'":
        return raw[1:-1]
    if raw[0] != '"':
        return raw
    try:
        return str(json.loads(raw))
    except ValueError:  # a TOML-only escape such as \U0001F600: compare it raw
        return raw[1:-1]
