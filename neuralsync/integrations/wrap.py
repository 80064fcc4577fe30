"""``nswrap`` and the ``claude-ns``/``codex-ns``/``gemini-ns`` wrappers (NeuralSync2's habits).

``nswrap -- CMD ...`` fetches the persona and three recalled memories, writes the
preamble (then any piped stdin) to the child's stdin, streams the child's stdout
as it comes, and stores every output line that starts with ``@remember:``. The
child's stderr passes straight through and its exit code is returned.

When stdin is a terminal (an interactive session, issue 16) the child gets that
terminal as its stdin, untouched: the preamble goes through the tool's own
option instead (Claude Code's ``--append-system-prompt``, Codex's
``-c developer_instructions=...``; Gemini CLI has no such option and gets its
context from the hooks ``neuralsync install gemini`` registers), and when
stdout is a terminal too the child writes to it directly (its captures then come
from the end-of-turn hook).

The store is opened directly through the facade, so no server is needed; when
``NS_ENDPOINT`` or ``NS_TOKEN`` is set, the NeuralSync2 HTTP routes are used
instead. Memory trouble never stops the child, and never loses a capture: what
cannot be stored now is spooled and sent by the next run (see :mod:`.capture`),
and one line on stderr says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from ..config import MemoryConfig
from ..errors import InvalidInput, ServerUnavailable
from .capture import MARKER, Captures, RememberLine, Spool, parse_remember

__all__ = ["Recalled", "RememberLine", "parse_remember", "format_preamble", "run", "nswrap_main",
           "claude_ns_main", "codex_ns_main", "gemini_ns_main"]

PROG = "nswrap"
DEFAULT_TOP_K = 3
MAX_QUERY_CHARS = 2000  # recall needs the gist, not a whole piped file
HTTP_TIMEOUT_S = 10.0
NOT_FOUND_EXIT = 127


@dataclass(frozen=True, slots=True)
class Recalled:
    """One recalled memory, as the preamble shows it."""

    kind: str
    scope: str
    confidence: float
    text: str


class MemoryClient(Protocol):
    """What the wrapper needs from a memory: read the context, store captured lines."""

    def persona(self) -> str: ...
    def recall(self, query: str, top_k: int) -> list[Recalled]: ...
    def remember(self, item: RememberLine) -> None: ...
    def close(self) -> None: ...


# ================================================================ formatting
def format_preamble(persona: str, items: Sequence[Recalled]) -> str:
    """NeuralSync2's preamble: ``Persona: ...`` and a blank line, then ``[M1] (kind, scope, conf=c) text``."""
    lines = [f"Persona: {persona}", ""] if persona else []
    lines += [f"[M{i}] ({m.kind}, {m.scope}, conf={m.confidence}) {m.text}" for i, m in enumerate(items, 1)]
    return "\n".join(lines) + "\n" if lines else ""


# ================================================================ memory backends
class LocalMemory:
    """The store on this machine, opened through the facade (``$NEURALSYNC_HOME``)."""

    def __init__(self, tool: str | None, source: str = PROG) -> None:
        from ..unified_memory_api import UnifiedMemoryAPI

        self.api = UnifiedMemoryAPI(MemoryConfig.from_env(), tool=tool)
        self.tool, self.source = tool, source

    def persona(self) -> str:
        return self.api.get_persona()

    def recall(self, query: str, top_k: int) -> list[Recalled]:
        # Filled with the latest memories when few match, as the server's /recall does in HTTP mode.
        found = self.api.recall(query, top_k=top_k, fill_recent=True)
        return [Recalled(m.kind, m.scope, m.confidence, m.content) for m in found]

    def remember(self, item: RememberLine) -> None:
        self.api.remember(item.text, kind=item.kind or "fact", scope=item.scope or "global",
                          tool=item.tool or self.tool, tags=list(item.tags) or None,
                          confidence=0.8 if item.confidence is None else item.confidence, source=self.source)

    def close(self) -> None:
        self.api.close()


class HttpMemory:
    """A running server, through NeuralSync2's routes (``/persona``, ``/recall``, ``/remember``)."""

    def __init__(self, endpoint: str, token: str | None, tool: str | None, source: str = PROG) -> None:
        if not endpoint.startswith(("http://", "https://")):  # urllib would also open file:// URLs
            raise ValueError(f"NS_ENDPOINT must be an http(s) URL, not {endpoint!r}")
        self.endpoint, self.token, self.tool, self.source = endpoint.rstrip("/"), token, tool, source

    def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.endpoint + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                return json.loads(response.read().decode("utf-8") or "null")
        except urllib.error.HTTPError as exc:
            field, reason = _refusal(exc)
            if exc.code in (400, 413, 422):  # the request itself is wrong: sending it again cannot help
                raise InvalidInput(field or "capture", reason) from None
            hint = " (set NS_TOKEN: see 'neuralsync token')" if exc.code in (401, 403) else ""
            raise ServerUnavailable(f"{self.endpoint} answered {exc.code}: {reason}{hint}") from None
        except (OSError, ValueError) as exc:  # refused, timed out, reset, or not JSON
            raise ServerUnavailable(f"{self.endpoint} unreachable: {getattr(exc, 'reason', exc)}") from None

    def persona(self) -> str:
        answer = self._call("/persona")
        return str(answer.get("text") or "") if isinstance(answer, dict) else ""

    def recall(self, query: str, top_k: int) -> list[Recalled]:
        answer = self._call("/recall", {"query": query, "top_k": top_k, "tool": None})
        return [Recalled(str(i.get("kind", "fact")), str(i.get("scope", "global")), i.get("confidence", 0.8),
                         str(i.get("text", ""))) for i in (answer or {}).get("items", [])]

    def remember(self, item: RememberLine) -> None:
        body: dict[str, Any] = {"text": item.text, "kind": item.kind or "fact", "scope": item.scope or "global",
                                "tool": item.tool or self.tool, "tags": list(item.tags), "source": self.source}
        if item.confidence is not None:
            body["confidence"] = item.confidence
        self._call("/remember", body)

    def close(self) -> None:
        pass


def _refusal(exc: urllib.error.HTTPError) -> tuple[str | None, str]:
    """(field, message) of a server's error answer, as far as it says."""
    try:
        doc = json.loads(exc.read(65536) or b"null")
    except (OSError, ValueError):
        doc = None
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        return error.get("field"), str(error.get("message") or exc.reason)
    return None, str(doc.get("detail") if isinstance(doc, dict) and doc.get("detail") else exc.reason)


def open_memory(tool: str | None, source: str = PROG) -> MemoryClient:
    """HTTP when ``NS_ENDPOINT`` or ``NS_TOKEN`` is set (NeuralSync2's variables), else the local store."""
    endpoint, token = os.environ.get("NS_ENDPOINT"), os.environ.get("NS_TOKEN")
    if endpoint or token:
        host, port = os.environ.get("NS_HOST", "127.0.0.1"), os.environ.get("NS_PORT", "8373")
        return HttpMemory(endpoint or f"http://{host}:{port}", token, tool, source)
    return LocalMemory(tool, source)


# ================================================================ running the child
def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _piped_stdin() -> bytes:
    stdin = sys.stdin
    if stdin is None or stdin.closed or stdin.isatty():
        return b""
    return stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode("utf-8")


def _preamble(memory: MemoryClient | None, query: str, top_k: int) -> str:
    if memory is None:
        return ""
    try:
        return format_preamble(memory.persona(), memory.recall(query, top_k))
    except Exception as exc:  # noqa: BLE001 - recall trouble must never stop the wrapped tool
        _warn(f"no recalled context ({exc})")
        return ""


def _feed(pipe: IO[bytes], data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except (BrokenPipeError, OSError):  # the child does not read its stdin: that is its choice
        pass


def _capture(captures: Captures, line: bytes) -> None:
    text = line.decode("utf-8", errors="replace")
    try:
        item = parse_remember(text)
    except ValueError as exc:
        _warn(f"ignored {text.strip()[:80]!r}: {exc}")
        return
    if item is not None:
        captures.keep(item)


class _Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...
    def flush(self) -> object: ...


def _stream(stdout: IO[bytes], captures: Captures, out: _Sink | None) -> None:
    """Copy the child's stdout as it arrives (partial lines too); capture complete lines."""
    pending, sink = b"", out
    while chunk := os.read(stdout.fileno(), 65536):
        if sink is not None:
            try:
                sink.write(chunk)
                sink.flush()
            except BrokenPipeError:  # our reader left (`claude-ns ... | head`): keep capturing
                sink = None
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            _capture(captures, line)
    if pending:
        _capture(captures, pending)


def context_args(tool: str | None, preamble: str) -> list[str]:
    """The options that hand ``preamble`` to ``tool`` without its stdin (none for a tool without one)."""
    if not preamble:
        return []
    if tool == "claude-code":
        return ["--append-system-prompt", preamble]
    if tool == "codex":  # -c takes a TOML value; a JSON string is a valid TOML basic string
        return ["-c", f"developer_instructions={json.dumps(preamble, ensure_ascii=False)}"]
    return []


def _is_terminal(stream: IO[Any] | None) -> bool:
    try:
        return stream is not None and not stream.closed and stream.isatty()
    except (ValueError, OSError):
        return False


def run(command: Sequence[str], tool: str | None, *, top_k: int = DEFAULT_TOP_K, prog: str = PROG) -> int:
    """Run ``command`` with recalled context (on stdin, or through the tool's option when stdin is a
    terminal); returns its exit code (127 if not found)."""
    binary = shutil.which(command[0]) if command else None
    if binary is None:
        name = command[0] if command else "(none)"
        print(f"{prog}: error: command not found: {name!r} (is it installed and on PATH?)", file=sys.stderr)
        return NOT_FOUND_EXIT
    interactive = _is_terminal(sys.stdin)
    piped = b"" if interactive else _piped_stdin()
    query = (piped.decode("utf-8", errors="replace").strip() or " ".join(command[1:]))[:MAX_QUERY_CHARS]
    memory = _open(tool)
    captures = Captures(memory, Spool(Path(MemoryConfig.from_env().home)), prog)
    try:
        captures.send_spooled()  # before recall, so this run already sees them
        preamble = _preamble(memory, query, top_k)
        env = dict(os.environ, **({"TOOL_NAME": tool} if tool else {}))
        if interactive:  # the terminal stays the person's: context through the tool's option
            argv, data = [binary, *context_args(tool, preamble), *command[1:]], b""
            stdout = None if _is_terminal(sys.stdout) else subprocess.PIPE
        else:
            separator = "\n" if preamble and piped else ""
            argv, data = [binary, *command[1:]], (preamble + separator).encode("utf-8") + piped
            stdout = subprocess.PIPE
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE if data else None, stdout=stdout, env=env)
        except OSError as exc:  # found on PATH but not runnable (permissions, bad interpreter line)
            print(f"{prog}: error: cannot run {binary}: {exc.strerror or exc}", file=sys.stderr)
            return 126
        return _supervise(proc, data, captures)
    except KeyboardInterrupt:  # before the child started (e.g. during recall)
        return 130
    finally:
        captures.report()
        if memory is not None:
            memory.close()


def _open(tool: str | None) -> MemoryClient | None:
    try:
        return open_memory(tool)
    except Exception as exc:  # noqa: BLE001 - an unopenable store must not stop the wrapped tool
        _warn(f"memory unavailable, running without it ({exc}); captures are spooled")
        return None


def _supervise(proc: subprocess.Popen[bytes], stdin_data: bytes, captures: Captures) -> int:
    """Feed stdin, stream stdout, wait. With nothing to inject, stdin was left to the child (interactive use)."""
    feeder = threading.Thread(target=_feed, args=(proc.stdin, stdin_data), daemon=True)
    if proc.stdin is not None:
        feeder.start()
    # Ctrl-C reaches the whole foreground group: the child decides, we wait for its exit code.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        if proc.stdout is not None:  # None: the child writes to the terminal itself
            out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
            _stream(proc.stdout, captures, out or _TextOut(sys.stdout))
            proc.stdout.close()
        code = proc.wait()
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
        if feeder.is_alive():
            feeder.join(timeout=1.0)
    return 128 - code if code < 0 else code  # killed by a signal: the shell's 128+N


class _TextOut:
    """Bytes adapter for a text-only ``sys.stdout`` (an embedding host or a test harness)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data.decode("utf-8", errors="replace"))

    def flush(self) -> None:
        self.stream.flush()


# ================================================================ entry points
def nswrap_main(argv: Sequence[str] | None = None) -> int:
    """``nswrap [--tool NAME] [-k N] -- CMD ...``; ``--tool`` defaults to ``$TOOL_NAME``."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=PROG, usage=f"{PROG} [--tool NAME] [-k N] [--] CMD [ARG ...]",
                                     description="Run CMD with recalled memories on its stdin; "
                                                 f"store every '{MARKER}' line it prints.",
                                     epilog="Options before CMD are nswrap's; everything from CMD on is the "
                                            "command's ('--' ends nswrap's options explicitly).")
    parser.add_argument("--tool", default=os.environ.get("TOOL_NAME"), help="tool name (default: $TOOL_NAME)")
    parser.add_argument("-k", "--top-k", type=int, default=DEFAULT_TOP_K, help="memories to recall (default: 3)")
    if "--" in args:
        options, command = args[:args.index("--")], args[args.index("--") + 1:]
    else:  # nswrap's options end at the first word that is not one of them (`nswrap --help` is nswrap's help)
        parser.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        options, command = args, []
    try:
        opts = parser.parse_args(options)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    command = command or list(getattr(opts, "command", None) or [])
    if not command:
        parser.print_usage(sys.stderr)
        return 2
    return run(command, opts.tool or None, top_k=max(opts.top_k, 1))


def _wrapper(tool: str, binary: str, argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    return run([binary, *args], tool, prog=f"{tool.split('-')[0]}-ns")


def claude_ns_main(argv: Sequence[str] | None = None) -> int:
    """``claude-ns ARGS``: Claude Code (``claude``) with neuralsync memory."""
    return _wrapper("claude-code", "claude", argv)


def codex_ns_main(argv: Sequence[str] | None = None) -> int:
    """``codex-ns ARGS``: Codex CLI (``codex``) with neuralsync memory."""
    return _wrapper("codex", "codex", argv)


def gemini_ns_main(argv: Sequence[str] | None = None) -> int:
    """``gemini-ns ARGS``: Gemini CLI (``gemini``) with neuralsync memory."""
    return _wrapper("gemini", "gemini", argv)


if __name__ == "__main__":
    sys.exit(nswrap_main())
