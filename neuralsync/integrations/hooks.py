"""``neuralsync hook``: context through the agent CLIs' own hooks, capture at the end of a turn (issue 16).

``neuralsync install TOOL`` registers ``neuralsync hook --tool TOOL`` for three
events of the tool (:data:`.hookconfig.EVENTS`). The tool runs it with the
event's JSON on stdin and reads one JSON object from stdout:

- session start (``SessionStart``): the persona and the memories of the working
  directory's project (its scope is the repository's folder name), those that
  mention it, and the global ones, as ``hookSpecificOutput.additionalContext``;
- each prompt (``UserPromptSubmit``, Gemini's ``BeforeAgent``): the memories
  relevant to the prompt, the project's first;
- end of a turn (``Stop``, Gemini's ``AfterAgent``; ``SessionEnd`` reads the
  whole transcript): every ``@remember:`` line of the model's answer is stored,
  spooled when the store cannot take it now (:mod:`.capture`); prints ``{}``.

The context stays within a byte budget (``--budget``, else the ``hook_budget_bytes``
setting: ``$NEURALSYNC_HOOK_BUDGET_BYTES`` or ``config.toml``, default 6000).
Speed: a running ``neuralsync serve`` answers the recall (hybrid, nothing
loaded here); without one the store is searched by text in this process (no
model, no vector index): a few hundred milliseconds (``bench/bench_hooks.py``).
A hook must never break the session: any failure prints ``{}``, exits 0 and
leaves one line in ``<home>/logs/hooks.log``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .capture import Captures, Spool, parse_remember
from .hookconfig import EVENTS

if TYPE_CHECKING:
    from ..config import MemoryConfig
    from ..model import Memory
    from ..unified_memory_api import UnifiedMemoryAPI

LOG_FILE = "hooks.log"  # in <home>/logs/, beside the server's log
LOG_MAX_BYTES = 256 * 1024  # then it is rotated to hooks.log.1
SERVER_TIMEOUT_S = 1.5  # a server slower than this is stuck: search here instead
TOP_K = 6
MAX_ITEM_CHARS = 800  # one long memory must not eat the whole budget
MAX_QUERY_CHARS = 2000  # recall needs the gist of a prompt, not a pasted file
MAX_EVENT_BYTES = 8 * 1024 * 1024
MAX_TRANSCRIPT_BYTES = 4 * 1024 * 1024  # the tail of a long transcript is where the last turn is
PROG = "neuralsync hook"
START_EVENTS = frozenset({"SessionStart"})
PROMPT_EVENTS = frozenset({"UserPromptSubmit", "BeforeAgent"})
CAPTURE_EVENTS = frozenset({"Stop", "AfterAgent", "SessionEnd"})
_HOOK_CONTEXT = re.compile(r"<hook_context>.*?</hook_context>", re.DOTALL)
REMEMBER_HINT = ("To keep something for later sessions (any tool), write it on a line of its own: "
                 "@remember: [kind=fact|preference|decision] [scope=NAME] TEXT")


def run_hook(tool: str, *, home: str | None = None, budget: int | str | None = None,
             stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> int:
    """Handle one event; always exit code 0 and one JSON object on stdout."""
    out = stdout or sys.stdout
    event: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        if tool not in EVENTS:
            raise ValueError(f"--tool must be one of {', '.join(EVENTS)}, not {tool!r}")
        event = read_event(stdin or sys.stdin)
        config = _config(home)
        answer = handle(tool, event, config, _budget(budget, config.hook_budget_bytes))
    except Exception as exc:  # noqa: BLE001 - a hook must never fail the session it serves
        _log(home, tool, event, f"{type(exc).__name__}: {exc}")
        answer = {}
    elapsed_ms = (time.perf_counter() - started) * 1000
    if os.environ.get("NEURALSYNC_HOOK_TRACE"):
        _log(home, tool, event, f"ok in {elapsed_ms:.0f} ms, {len(json.dumps(answer))} bytes")
    try:
        out.write(json.dumps(answer, ensure_ascii=False) + "\n")
        out.flush()
    except (BrokenPipeError, OSError):  # the tool stopped waiting for us: nothing left to do
        pass
    return 0


def read_event(stream: IO[str]) -> dict[str, Any]:
    """The event object on stdin (bounded); an empty stdin is an empty event."""
    text = stream.read(MAX_EVENT_BYTES)
    if not text.strip():
        return {}
    event = json.loads(text)
    if not isinstance(event, dict):
        raise ValueError("the hook input is not a JSON object")
    return event


def handle(tool: str, event: dict[str, Any], config: MemoryConfig, budget: int) -> dict[str, Any]:
    """The answer to one event (``{}`` when there is nothing to add)."""
    name = str(event.get("hook_event_name") or "")
    if name in CAPTURE_EVENTS:
        capture(tool, event, config)
        return {}
    if name not in START_EVENTS | PROMPT_EVENTS:
        return {}
    with _Memory(config, tool) as memory:
        text = start_context(memory, event, budget) if name in START_EVENTS else prompt_context(memory, event,
                                                                                                  budget)
    if not text:
        return {}
    return {"hookSpecificOutput": {"hookEventName": name, "additionalContext": text}}


# ================================================================ context
class _Memory:
    """Reads for one hook: recall through the running server when there is one, else by text here."""

    def __init__(self, config: MemoryConfig, tool: str) -> None:
        self.config, self.tool = config, tool
        self._api: UnifiedMemoryAPI | None = None
        self.server = True  # until it fails once: a stuck server costs one timeout, not one per read

    def __enter__(self) -> _Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._api is not None:
            self._api.close()

    def api(self) -> UnifiedMemoryAPI:
        if self._api is None:
            from ..unified_memory_api import UnifiedMemoryAPI

            # recall_via_server off: this module asks the server itself, with a hook's short timeout.
            self._api = UnifiedMemoryAPI(replace(self.config, recall_via_server=False), tool=self.tool)
        return self._api

    def persona(self) -> str:
        from ..discovery import persona_via_server

        text = persona_via_server(self.config.home, timeout=SERVER_TIMEOUT_S) if self.server else None
        if text is None:
            self.server = False
            return self.api().get_persona()
        return text

    def recall(self, query: str, scope: str | None, top_k: int = TOP_K) -> list[Memory]:
        from ..discovery import recall_via_server

        request = {"query": query, "scope": scope, "top_k": top_k, "mode": "hybrid"}
        hits = recall_via_server(self.config.home, request, timeout=SERVER_TIMEOUT_S) if self.server else None
        if hits is None:  # no server (or a failing one): text search here, no model to load
            self.server = False
            hits = self.api().recall(query, scope=scope, top_k=top_k, mode="text")
        return hits


def project_of(cwd: str | None) -> str | None:
    """The project a working directory belongs to: its repository's folder name, else its own name
    (None for the home directory or the root, which belong to no project)."""
    if not cwd:
        return None
    path = Path(cwd).expanduser()
    for folder in (path, *path.parents):
        if (folder / ".git").exists():
            return folder.name or None
    if path == Path.home() or path == Path(path.anchor):
        return None
    return path.name or None


def start_context(memory: _Memory, event: dict[str, Any], budget: int) -> str:
    """The persona, then the project's memories, those that mention it, and the global ones."""
    project = project_of(event.get("cwd"))
    hits: list[Memory] = []
    if project:
        hits += memory.recall("", project)
        hits += memory.recall(project, None)
    hits += memory.recall("", "global")
    where = f" (project {project!r})" if project else ""
    return render(memory.persona(), f"Memories for this folder{where}:", hits, budget, hint=True)


def prompt_context(memory: _Memory, event: dict[str, Any], budget: int) -> str:
    """The memories relevant to the prompt, the project's first."""
    # Gemini CLI hands BeforeAgent the prompt with the session start's context prepended in a
    # <hook_context> block (non-interactive mode): searching for our own context would find it again.
    prompt = _HOOK_CONTEXT.sub(" ", str(event.get("prompt") or "")).strip()[:MAX_QUERY_CHARS]
    if not prompt:
        return ""
    project = project_of(event.get("cwd"))
    hits = memory.recall(prompt, project, TOP_K // 2) if project else []
    hits += memory.recall(prompt, None)
    return render("", "Memories relevant to this prompt:", hits, budget)


def render(persona: str, heading: str, hits: Iterable[Memory], budget: int, *, hint: bool = False) -> str:
    """The context block, never over ``budget`` bytes (UTF-8): whole lines only, long ones cut."""
    lines = ["[neuralsync: memory shared by this user's AI tools]"]
    if persona:
        lines.append("Persona: " + _cut(persona, max(budget // 2, 1)))
    items = [f"- ({m.kind}, {m.scope}) {_cut(m.content, MAX_ITEM_CHARS)}" for m in _unique(hits)]
    if not persona and not items:
        return ""
    if items:
        lines.append(heading)
    tail = [REMEMBER_HINT] if hint else []
    used = _size(lines + tail)
    if used > budget:  # even the frame does not fit: the persona alone, cut to the budget
        return _cut(persona, budget) if persona else ""
    for item in items:
        cost = len(item.encode("utf-8")) + 1
        if used + cost > budget:
            break
        lines.append(item)
        used += cost
    return "\n".join(lines + tail)


def _unique(hits: Iterable[Memory]) -> Iterator[Memory]:
    seen: set[str] = set()
    for m in hits:
        if m.id not in seen:
            seen.add(m.id)
            yield m


def _size(lines: list[str]) -> int:
    return len("\n".join(lines).encode("utf-8"))


def _cut(text: str, max_bytes: int) -> str:
    """``text`` on one line, at most ``max_bytes`` UTF-8 bytes (a cut ends with ``…``)."""
    flat = " ".join(text.split())
    data = flat.encode("utf-8")
    if len(data) <= max_bytes:
        return flat
    return data[:max(max_bytes - 3, 0)].decode("utf-8", errors="ignore").rstrip() + "…"


# ================================================================ capture
def capture(tool: str, event: dict[str, Any], config: MemoryConfig) -> int:
    """Store the ``@remember:`` lines of the turn's answer (or of the transcript at session end);
    returns how many were found."""
    found = []
    for line in answer_text(event).splitlines():
        try:
            item = parse_remember(line)
        except ValueError:  # malformed: the wrapper reports it; a hook has no one to tell
            continue
        if item is not None:
            found.append(item)
    if not found:
        return 0
    from .wrap import open_memory

    memory = open_memory(tool, source=PROG)
    captures = Captures(memory, Spool(config.home), PROG)
    try:
        captures.send_spooled()
        for item in found:
            captures.keep(item)
    finally:
        captures.report()
        memory.close()
    return len(found)


def answer_text(event: dict[str, Any]) -> str:
    """The model's text this event carries: the last answer (Claude/Codex ``Stop``, Gemini
    ``AfterAgent``), else what a transcript holds (the last turn; all of it at ``SessionEnd``)."""
    for key in ("last_assistant_message", "prompt_response"):
        if isinstance(event.get(key), str) and event[key].strip():
            return str(event[key])
    path = event.get("transcript_path")
    if not isinstance(path, str) or not path:
        return ""
    return "\n".join(transcript_answers(Path(path), whole=event.get("hook_event_name") == "SessionEnd"))


def transcript_answers(path: Path, *, whole: bool) -> list[str]:
    """The assistant's texts in a JSONL transcript (Claude Code's layout): after the last user
    message, or all of them when ``whole``."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(path.stat().st_size - MAX_TRANSCRIPT_BYTES, 0))
            raw = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    texts: list[str] = []
    for line in raw.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("message") if isinstance(entry, dict) else None
        role = message.get("role") if isinstance(message, dict) else None
        if role == "user" and isinstance(message, dict) and isinstance(message.get("content"), str) and not whole:
            texts = []  # a new prompt: only what follows it is this turn's
        elif role == "assistant" and isinstance(message, dict):
            texts += _texts(message.get("content"))
    return texts


def _texts(content: object) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [str(p["text"]) for p in content if isinstance(p, dict) and p.get("type") == "text" and "text" in p]
    return []


# ================================================================ settings and the log
def _config(home: str | None) -> MemoryConfig:
    from ..config import MemoryConfig

    return MemoryConfig.from_env(home)


def _budget(given: int | str | None, setting: int) -> int:
    """``--budget`` when given, else the store's ``hook_budget_bytes``."""
    raw = given
    if raw is None or raw == "":
        return setting
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"the hook budget must be a whole number of bytes, not {raw!r}") from None
    if not 200 <= value <= 1_000_000:
        raise ValueError(f"the hook budget must be from 200 to 1000000 bytes, not {value}")
    return value


def log_path(home: str | None) -> Path:
    """``<home>/logs/hooks.log`` (the store's home, as ``--home``/``$NEURALSYNC_HOME`` say)."""
    from ..config import DEFAULT_HOME, HOME_ENV

    # Not through MemoryConfig: a broken config file is one of the things this log must record.
    return Path(os.path.expanduser(home or os.environ.get(HOME_ENV) or DEFAULT_HOME)) / "logs" / LOG_FILE


def _log(home: str | None, tool: str, event: dict[str, Any], message: str) -> None:
    """One line in the hook log (private, rotated at 256 KB); a log that cannot be written is skipped."""
    path = log_path(home)
    line = (f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {tool} {event.get('hook_event_name') or '-'} "
            f"{' '.join(message.split())[:500]}\n")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the home itself too, when new
        if path.exists() and path.stat().st_size > LOG_MAX_BYTES:
            os.replace(path, path.with_name(LOG_FILE + ".1"))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(line)
    except OSError:
        pass
