"""What an MCP message may be before the SDK sees it: JSON by ``json_input``'s rule, bounded in depth
and size, and every refusal answered (issue 13).

The SDK parses each stdio line itself; a line nested past its parser's
recursion limit (about 200 levels) becomes an exception it drops without a
word, and the client waits for its own timeout. So stdin goes through
:func:`screen_stdin` first: a line that breaks the rule is replaced by a
small request with the same id whose params carry the refusal, and
:class:`DepthGuard` (a server middleware, which also bounds in-process and
HTTP calls) answers it with a JSON-RPC error. A line with no id to answer is
logged and dropped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_REQUEST, PARSE_ERROR

from ..errors import InvalidInput
from ..json_input import check_json, parse_json

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 8 << 20  # one JSON-RPC message on stdio
REFUSED = "_neuralsync_refused"  # the params key a replaced line carries its refusal in
_ID = re.compile(rb'"id"\s*:\s*(-?\d{1,18}|"(?:[^"\\]|\\.){0,200}")')
_METHOD = re.compile(rb'"method"\s*:\s*"([A-Za-z0-9_/.$-]{1,100})"')


class DepthGuard:
    """Server middleware: a request whose params break the JSON rule (or that :func:`screen_line`
    replaced) is answered with a JSON-RPC error before validation or any handler runs."""

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        params = ctx.params
        if isinstance(params, dict) and isinstance(params.get(REFUSED), dict):
            refusal = params[REFUSED]
            raise MCPError(code=int(refusal.get("code", INVALID_REQUEST)), message=str(refusal.get("message")))
        try:
            check_json(params, "params")
        except InvalidInput as exc:
            log.warning("refused MCP %s: %s", ctx.method, exc)
            raise MCPError(code=INVALID_REQUEST, message=f"refused: {exc}") from None
        return await call_next(ctx)


def screen_line(line: bytes) -> bytes | None:
    """The line to hand the SDK: itself, a replacement carrying its refusal, or None to drop it."""
    if not line.strip():
        return line
    try:
        parse_json(line, "message")
        return line
    except InvalidInput as exc:
        code = PARSE_ERROR if "is not JSON" in exc.message else INVALID_REQUEST
        return _replacement(line, code, f"refused: {exc}")


def _replacement(line: bytes, code: int, message: str) -> bytes | None:
    ident = _ID.search(line[:4096])
    if ident is None:
        log.warning("dropped an MCP message with no id to answer: %s", message)
        return None
    log.warning("refused MCP message %s: %s", ident.group(1).decode(errors="replace"), message)
    method = _METHOD.search(line[:4096])
    request = {"jsonrpc": "2.0", "id": json.loads(ident.group(1)),
               "method": method.group(1).decode() if method else "tools/call",
               "params": {REFUSED: {"code": code, "message": message}}}
    return json.dumps(request).encode() + b"\n"


def _lines(source: BinaryIO) -> Iterator[bytes]:
    """Lines of at most MAX_LINE_BYTES; a longer one is read to its end and replaced by its refusal."""
    while True:
        line = source.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            head = line[:4096]
            while line and not line.endswith(b"\n"):
                line = source.readline(1 << 20)
            refused = _replacement(head, INVALID_REQUEST, f"refused: message over {MAX_LINE_BYTES} bytes")
            if refused is not None:
                yield refused
            continue
        screened = screen_line(line)
        if screened is not None:
            yield screened


@contextmanager
def screen_stdin() -> Iterator[None]:
    """Put a pipe fed by :func:`_lines` in place of fd 0 while the SDK serves stdio; restore it after."""
    original = os.dup(0)
    read_end, write_end = os.pipe()
    os.dup2(read_end, 0)
    os.close(read_end)

    def pump() -> None:
        with os.fdopen(os.dup(original), "rb") as source, os.fdopen(write_end, "wb") as sink:
            try:
                for line in _lines(source):
                    sink.write(line)
                    sink.flush()
            except (OSError, ValueError):  # the server closed its side: nothing left to feed
                pass

    threading.Thread(target=pump, name="neuralsync-mcp-stdin", daemon=True).start()
    try:
        yield
    finally:
        os.dup2(original, 0)
        os.close(original)
