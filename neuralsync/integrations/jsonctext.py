"""Editing JSON with comments (JSONC) as text: comments, indentation and key order outside the edit stay as they were.

Gemini CLI's ``settings.json`` may hold ``//`` and ``/* */`` comments (Gemini
strips them before ``JSON.parse``). No kept Python library edits such a file
and writes it back with its comments: ``json5`` and ``commentjson`` parse it but
dump without comments (and ``json5`` also accepts single quotes, unquoted keys
and trailing commas, which Gemini refuses); ``commentjson`` and ``jsonc-parser``
have had no release for years. So comments are blanked out with spaces (every
offset unchanged), the standard library's parser reads the rest (``json.loads``
for the document, ``raw_decode`` to step over each member's value), and only the
one member edited is inserted, replaced or cut as text. The caller parses the
result and checks every other value is unchanged before writing anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_WS = " \t\r\n"
_DECODER = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class Member:
    """One ``"key": value`` of an object: where its key starts and its value starts and ends."""

    key: str
    key_start: int
    value_start: int
    value_end: int


def blank_comments(text: str) -> str:
    """``text`` with every comment replaced by spaces (line breaks kept), strings untouched."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise ValueError(f"unterminated /* comment at character {i}")
            out.append("".join(ch if ch in "\r\n" else " " for ch in text[i:j + 2]))
            i = j + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def loads(text: str) -> Any:
    """Parse JSON that may hold ``//`` and ``/* */`` comments (nothing else beyond RFC 8259)."""
    return json.loads(blank_comments(text))


def newline(text: str) -> str:
    """The file's line break."""
    return "\r\n" if "\r\n" in text else "\n"


def dump_new(data: dict[str, Any], nl: str = "\n") -> str:
    """A new file: two-space indentation, final line break."""
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").replace("\n", nl)


def set_member(text: str, path: Sequence[str], value: Any) -> str:
    """``text`` with the member at ``path`` (keys from the top object) set to ``value``.

    A present member's value is replaced in place; a missing one is added after the last
    member of its object, with the indentation its siblings use (objects missing on the
    path are created with it). Values on the path must be objects (the caller checks).
    """
    blanked = blank_comments(text)
    start = _top(blanked)
    for depth, key in enumerate(path):
        members, close = _members(blanked, start)
        found = next((m for m in members if m.key == key), None)
        if found is None:
            nested: Any = value
            for outer in reversed(path[depth + 1:]):
                nested = {outer: nested}
            return _insert(text, blanked, start, close, members, key, nested)
        if depth == len(path) - 1:
            old = text[found.value_start:found.value_end]
            inline = "\n" not in old and old != "{}"  # an entry written on one line stays on one line
            rendered = _render(text, blanked, value, _lead(text, found.key_start), inline=inline)
            return text[:found.value_start] + rendered + text[found.value_end:]
        start = found.value_start
    return text


def remove_member(text: str, path: Sequence[str]) -> str:
    """``text`` without the member at ``path`` (unchanged when it is absent): the inverse of
    :func:`set_member` adding it, with the separating comma and its line."""
    blanked = blank_comments(text)
    start = _top(blanked)
    for depth, key in enumerate(path):
        members, close = _members(blanked, start)
        index = next((i for i, m in enumerate(members) if m.key == key), None)
        if index is None:
            return text
        if depth == len(path) - 1:
            return _cut(text, blanked, start, close, members, index)
        start = members[index].value_start
    return text


def append_element(text: str, path: Sequence[str], value: Any) -> str:
    """``text`` with ``value`` appended to the array at ``path`` (it must exist), after its last
    element and separated from it as that element is from what precedes it: the user's elements
    keep their bytes, and :func:`remove_element` of the new last element gives ``text`` back."""
    blanked = blank_comments(text)
    open_pos = _array_at(blanked, path)
    elements, close = _elements(blanked, open_pos)
    if not elements:
        inline = "\n" not in text[open_pos:close]
        rendered = _render(text, blanked, [value], _lead(text, open_pos), inline=inline)
        return text[:open_pos] + rendered + text[close + 1:]
    start, end = elements[-1]
    before = elements[-2][1] if len(elements) > 1 else open_pos
    gap = text[before:start].lstrip(",") if len(elements) > 1 else text[open_pos + 1:start]
    if gap.strip():  # a comment sits there: a plain line break (or space) instead
        gap = newline(text) + _lead(text, start) if _own_line(text, start) else " "
    inline = not _own_line(text, start)
    return text[:end] + "," + gap + _render(text, blanked, value, _lead(text, start), inline=inline) + text[end:]


def remove_element(text: str, path: Sequence[str], index: int) -> str:
    """``text`` without element ``index`` of the array at ``path`` and its separator (the inverse of
    :func:`append_element` for the last one)."""
    blanked = blank_comments(text)
    open_pos = _array_at(blanked, path)
    elements, _close = _elements(blanked, open_pos)
    start, end = elements[index]
    if index + 1 < len(elements):  # up to the next element: ours, the comma, the gap
        return text[:start] + text[elements[index + 1][0]:]
    if index > 0:  # the last: from the end of the one before (its comma and the gap go too)
        return text[:elements[index - 1][1]] + text[end:]
    return text[:start] + text[end:]


# ------------------------------------------------------------------ scanning
def _array_at(blanked: str, path: Sequence[str]) -> int:
    """Where the array value at ``path`` starts."""
    start = _top(blanked)
    for key in path:
        members, _close = _members(blanked, start)
        found = next((m for m in members if m.key == key), None)
        if found is None:
            raise ValueError(f"no member {key!r}")
        start = found.value_start
    if blanked[start:start + 1] != "[":
        raise ValueError(f"{'.'.join(path)} is not an array")
    return start


def _elements(blanked: str, open_pos: int) -> tuple[list[tuple[int, int]], int]:
    """(start, end) of each element of the array whose ``[`` is at ``open_pos``, and its ``]``."""
    elements: list[tuple[int, int]] = []
    i = _skip(blanked, open_pos + 1)
    if blanked[i:i + 1] == "]":
        return elements, i
    while True:
        _value, end = _DECODER.raw_decode(blanked, i)
        elements.append((i, end))
        i = _skip(blanked, end)
        if blanked[i:i + 1] == "]":
            return elements, i
        if blanked[i:i + 1] != ",":
            raise ValueError(f"expected ',' or ']' at character {i}")
        i = _skip(blanked, i + 1)


def _skip(blanked: str, i: int) -> int:
    while i < len(blanked) and blanked[i] in _WS:
        i += 1
    return i


def _top(blanked: str) -> int:
    i = _skip(blanked, 0)
    if i >= len(blanked) or blanked[i] != "{":
        raise ValueError("the document is not a JSON object")
    return i


def _members(blanked: str, open_pos: int) -> tuple[list[Member], int]:
    """The members of the object whose ``{`` is at ``open_pos``, and the position of its ``}``."""
    if blanked[open_pos] != "{":
        raise ValueError(f"no object at character {open_pos}")
    members: list[Member] = []
    i = _skip(blanked, open_pos + 1)
    if blanked[i:i + 1] == "}":
        return members, i
    while True:
        if blanked[i:i + 1] != '"':
            raise ValueError(f"expected a key at character {i}")
        key, after = json.decoder.scanstring(blanked, i + 1)  # type: ignore[attr-defined]
        colon = _skip(blanked, after)
        if blanked[colon:colon + 1] != ":":
            raise ValueError(f"expected ':' at character {colon}")
        value_start = _skip(blanked, colon + 1)
        _value, value_end = _DECODER.raw_decode(blanked, value_start)
        members.append(Member(key, i, value_start, value_end))
        i = _skip(blanked, value_end)
        if blanked[i:i + 1] == "}":
            return members, i
        if blanked[i:i + 1] != ",":
            raise ValueError(f"expected ',' or '}}' at character {i}")
        i = _skip(blanked, i + 1)


def _line_start(text: str, pos: int) -> int:
    return text.rfind("\n", 0, pos) + 1


def _lead(text: str, pos: int) -> str:
    """The leading whitespace of the line holding ``pos``."""
    start = _line_start(text, pos)
    end = start
    while end < len(text) and text[end] in " \t":
        end += 1
    return text[start:end]


def _own_line(text: str, pos: int) -> bool:
    """Only whitespace precedes ``pos`` on its line."""
    return not text[_line_start(text, pos):pos].strip(" \t")


def _unit(text: str, blanked: str) -> str:
    """One indentation step: what the top object's first member uses, else two spaces."""
    members, _close = _members(blanked, _top(blanked))
    if members and _own_line(text, members[0].key_start):
        return _lead(text, members[0].key_start) or "  "
    return "  "


def _compact(blanked: str) -> bool:
    return ":" in blanked and "\n" not in blanked.strip() and '": ' not in blanked and ", " not in blanked


def _render(text: str, blanked: str, value: Any, indent: str, *, inline: bool = False) -> str:
    """``value`` as JSON laid out like the file: on one line (``inline`` or a compact file), else
    multi-line at ``indent`` plus one step."""
    if inline or _compact(blanked):
        separators = (",", ":") if _compact(blanked) else (", ", ": ")
        return json.dumps(value, ensure_ascii=False, separators=separators)
    rendered = json.dumps(value, indent=_unit(text, blanked), ensure_ascii=False)
    return rendered.replace("\n", newline(text) + indent)


# ------------------------------------------------------------------ edits
def _insert(text: str, blanked: str, open_pos: int, close: int, members: list[Member], key: str,
            value: Any) -> str:
    nl = newline(text)
    colon = ":" if _compact(blanked) else ": "
    name = json.dumps(key, ensure_ascii=False)
    if members and not _own_line(text, members[0].key_start):  # one-line object: stay on the line
        last = members[-1].value_end
        item = "," if _compact(blanked) else ", "
        return text[:last] + item + name + colon + _render(text, blanked, value, "", inline=True) + text[last:]
    if members:
        indent = _lead(text, members[0].key_start)
        member = name + colon + _render(text, blanked, value, indent)
        last = members[-1].value_end
        eol = text.find("\n", last)
        eol = len(text) if eol < 0 else eol - (1 if text[eol - 1:eol] == "\r" else 0)
        if blanked[last:eol].strip() or "/*" in text[last:eol]:  # something else on that line: break it here
            eol = last
        return text[:last] + "," + text[last:eol] + nl + indent + member + text[eol:]
    own = _lead(text, open_pos)
    indent = own + _unit(text, blanked)
    member = name + colon + _render(text, blanked, value, indent)
    inside = text[open_pos + 1:close]
    if not inside.strip():
        return text[:open_pos + 1] + nl + indent + member + nl + own + text[close:]
    return text[:open_pos + 1] + nl + indent + member + inside + text[close:]


def _cut(text: str, blanked: str, open_pos: int, close: int, members: list[Member], index: int) -> str:
    ours = members[index]
    if index + 1 < len(members):  # a member follows: cut up to its key (ours, the comma, the gap)
        return text[:ours.key_start] + text[members[index + 1].key_start:]
    if index == 0:  # the only member
        if not (text[open_pos + 1:ours.key_start] + text[ours.value_end:close]).strip():
            return text[:open_pos + 1] + text[close:]
        begin = _line_start(text, ours.key_start) - 1 if _own_line(text, ours.key_start) else ours.key_start
        begin -= 1 if text[begin - 1:begin] == "\r" and text[begin:begin + 1] == "\n" else 0
        return text[:max(begin, open_pos + 1)] + text[ours.value_end:]
    previous = members[index - 1]
    comma = blanked.index(",", previous.value_end)
    if not text[comma + 1:ours.key_start].strip():  # only whitespace between: the comma and the gap go too
        return text[:comma] + text[ours.value_end:]
    begin = _line_start(text, ours.key_start) - 1 if _own_line(text, ours.key_start) else ours.key_start
    begin -= 1 if text[begin - 1:begin] == "\r" and text[begin:begin + 1] == "\n" else 0
    return text[:comma] + text[comma + 1:begin] + text[ours.value_end:]
