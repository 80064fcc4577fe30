"""``@remember:`` captures: parsing them, and storing them without ever losing one (issue 12).

A capture the memory cannot take now (the server is down, refuses the token,
the store is busy) is spooled: one JSON line in ``<home>/nswrap-spool.jsonl``
(mode 0600), sent first by the next wrapped run. After one such failure the
rest of the run's captures go straight to the spool, so a hanging server costs
one timeout, not one per capture. A capture the memory judges invalid is not
retried (it never would pass) but reported. Either way the user sees one line
saying what happened, never a silent loss.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import InvalidInput

MARKER = "@remember:"
SPOOL_FILE = "nswrap-spool.jsonl"
_OPTION = re.compile(r"(kind|scope|tool|confidence|tag)=(\"(?:[^\"\\]|\\.)*\"|'[^']*'|\S+)\s*")


@dataclass(frozen=True, slots=True)
class RememberLine:
    """A parsed ``@remember:`` line; ``None`` fields take the store's defaults."""

    text: str
    kind: str | None = None
    scope: str | None = None
    tool: str | None = None
    confidence: float | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)


def parse_remember(line: str) -> RememberLine | None:
    """Parse ``@remember: [kind=K] [scope=S] [tool=T] [confidence=C] [tag=X]... TEXT``.

    Returns None when the line is not a directive; raises ValueError when it is
    malformed (empty text, a confidence that is not a number in 0..1).
    """
    stripped = line.strip()
    if not stripped.startswith(MARKER):
        return None
    rest, options, tags = stripped[len(MARKER):].strip(), {}, []
    while (m := _OPTION.match(rest)) is not None:
        value = _unquote(m.group(2))
        if m.group(1) == "tag":
            tags.append(value)
        else:
            options[m.group(1)] = value
        rest = rest[m.end():]
    text = _unquote(rest.strip())
    if not text:
        raise ValueError("no text to remember")
    confidence = None
    if "confidence" in options:
        try:
            confidence = float(options["confidence"])
        except ValueError:
            raise ValueError(f"confidence must be a number, not {options['confidence']!r}") from None
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    return RememberLine(text, options.get("kind"), options.get("scope"), options.get("tool"), confidence,
                        tuple(t for t in tags if t))


def _unquote(text: str) -> str:
    """Strip shell-style quotes; text with unbalanced quotes (``don't``) is kept as written."""
    if not text or text[0] not in "\"'":
        return text
    try:
        parts = shlex.split(text)
    except ValueError:  # unbalanced: drop only the opening quote
        return text[1:].strip()
    return parts[0] if len(parts) == 1 else text


class Remembers(Protocol):
    """Where captures go: raises :class:`InvalidInput` for a capture it judges invalid, anything else
    when it cannot take one now."""

    def remember(self, item: RememberLine) -> None: ...


class Spool:
    """Captures waiting to be stored, one JSON line each, in a file only its owner can read."""

    def __init__(self, home: Path) -> None:
        self.path = home / SPOOL_FILE

    def add(self, item: RememberLine) -> None:
        """Append one capture (the directory and the file are created private)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(item), ensure_ascii=False) + "\n")

    def take(self) -> list[RememberLine]:
        """Every spooled capture, removed from the spool (renamed away first: two runs never both send one)."""
        claimed = self.path.with_name(f"{SPOOL_FILE}.{os.getpid()}")
        try:
            os.replace(self.path, claimed)
        except FileNotFoundError:
            return []
        try:
            text = claimed.read_text(encoding="utf-8", errors="replace")
        finally:
            claimed.unlink()
        items = []
        for line in text.splitlines():
            try:
                raw = json.loads(line)
                items.append(RememberLine(**{**raw, "tags": tuple(raw.get("tags") or ())}))
            except (ValueError, TypeError):  # a torn line: skip it, keep the rest
                continue
        return items


class Captures:
    """Stores captures through ``memory`` (None: unavailable), spooling what it cannot take now."""

    def __init__(self, memory: Remembers | None, spool: Spool, prog: str) -> None:
        self.memory, self.spool, self.prog = memory, spool, prog
        self.spooled = 0
        self.invalid: list[str] = []
        self.lost: list[str] = []
        self.reason = "no memory available"
        self.failed = memory is None

    def send_spooled(self) -> None:
        """Store what earlier runs spooled (before this run recalls, so it sees them); one line if any."""
        if self.memory is None or not self.spool.path.exists():
            return
        waiting = self.spool.take()
        stored = sum(self.keep(item) for item in waiting)
        if stored:
            self._say(f"stored {stored} capture(s) spooled by an earlier run")

    def keep(self, item: RememberLine) -> bool:
        """Store one capture now, else spool it; True when stored."""
        if self.memory is not None and not self.failed:
            try:
                self.memory.remember(item)
                return True
            except InvalidInput as exc:
                self.invalid.append(f"{item.text[:40]!r}: {exc}")
                return False
            except Exception as exc:  # noqa: BLE001 - whatever failed, the capture must survive it
                self.reason, self.failed = str(exc) or type(exc).__name__, True
        try:
            self.spool.add(item)
            self.spooled += 1
        except OSError as exc:  # the last resort failed too: say exactly what was lost
            self.lost.append(f"{item.text[:60]!r} ({exc.strerror or exc})")
        return False

    def report(self) -> None:
        """One line for what was not stored, if anything."""
        if self.spooled:
            self._say(f"{self.spooled} capture(s) not stored now ({self.reason}); saved to {self.spool.path},"
                      " sent by the next run")
        if self.invalid:
            self._say(f"{len(self.invalid)} capture(s) refused as invalid, not stored: {'; '.join(self.invalid)}")
        if self.lost:
            self._say(f"{len(self.lost)} capture(s) LOST: not stored ({self.reason}) and not spooled to"
                      f" {self.spool.path}: {'; '.join(self.lost)}")

    def _say(self, message: str) -> None:
        print(f"{self.prog}: {message}", file=sys.stderr, flush=True)
