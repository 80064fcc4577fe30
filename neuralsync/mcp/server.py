"""MCP server: the memory as tools for any MCP client, on the official MCP Python SDK.

``python -m neuralsync.mcp.server`` serves stdio (what Claude Code, Codex CLI and
Gemini CLI spawn); ``--http`` serves streamable HTTP on 127.0.0.1. Like the CLI
this is a thin adapter: parse arguments, make one facade call, map package errors
to MCP tool errors (``isError`` results naming the field), so the server keeps
serving. Nothing but protocol reaches stdout: logs go to stderr, and while stdio
serves, the SDK points fd 1 at stderr so stray writes miss the wire. Every
message is checked first (``guard``: JSON, depth, size), and a refused one is
answered with a JSON-RPC error.

The core tools only, by default; the peers' tool names (mcp-memory-service, mem0)
are thin compatibility aliases behind ``--aliases`` (or ``NEURALSYNC_MCP_ALIASES=1``).
Argument aliases (``top_k``/``n_results`` for ``limit``, ``q``, ``text``, ``id``,
``after``/``before``) are accepted by validation, not advertised.

Results: ONE representation, a single text block holding compact JSON, and no
``structuredContent``. The clients disagree on what reaches the model: Claude Code
forwards only ``structuredContent`` when there is one, Codex prefers it too, and
Gemini CLI reads only ``content``. A JSON text block is the one form every one of
them passes whole to the model, and programs read it with one ``json.loads``.
Every result fits ``RESULT_BUDGET`` characters: long contents are cut with a
marker naming the ``get_memory`` offset where the rest starts.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from .. import __version__
from ..config import MemoryConfig
from ..errors import NeuralSyncError, StoreBusy
from ..model import Memory
from ..unified_memory_api import UnifiedMemoryAPI
from .guard import DepthGuard, screen_stdin

try:
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import CallToolResult, TextContent, ToolAnnotations
    from pydantic import AliasChoices, Field
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('the MCP server needs the MCP Python SDK 2.x: pip install "mcp>=2.3,<3"') from exc

__all__ = ["ApiPool", "aliases_from_env", "build_server", "endpoint", "run_http", "run_stdio", "main"]

log = logging.getLogger(__name__)
DEFAULT_TOOL = "mcp"
MAX_CLIENT_NAMES = 16  # distinct client names given their own session; later ones share "mcp"
HTTP_PATH = "/mcp"  # where the SDK's streamable HTTP app answers
ALIASES_ENV = "NEURALSYNC_MCP_ALIASES"  # 1/true/yes/on: also list the peers' tool names
RESULT_BUDGET = 16_000  # characters of one tool result's JSON text (about 4,000 tokens)
LIST_CONTENT_CHARS = 2_000  # a memory's content in a list (recall, list_recent); get_memory pages the rest
GET_CONTENT_CHARS = 12_000  # one page of a memory's content from get_memory
INSTRUCTIONS = (
    "Persistent memory shared with the user's other AI tools and sessions. Call `recall` before work "
    "that may depend on earlier decisions, preferences or project facts; call `remember` for durable "
    "facts worth keeping (not transient chatter). Use scope 'project:<name>' for project facts, "
    "'global' for facts about the user.")

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                            open_world_hint=False)
ADDITIVE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                           open_world_hint=False)
OVERWRITE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True,
                            open_world_hint=False)


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


# Parameter types: JSON schema descriptions are what the model reads.
Content = Annotated[str, Field(validation_alias=_alias("content", "text"),
                               description="The fact to remember, self-contained (readable without this chat).")]
Tags = Annotated[list[str] | str | None, Field(
    description="Tags: a list of strings, or one comma-separated string such as 'python,testing'.")]
Scope = Annotated[str | None, Field(
    description="Scope such as 'global' or 'project:<name>'. Omit to search every scope.")]
HomeScope = Annotated[str, Field(description="'global' for facts about the user, 'project:<name>' for a project.")]
Ttl = Annotated[int | None, Field(ge=1, description="Forget automatically after this many seconds (default never).")]
Kind = Annotated[str, Field(validation_alias=_alias("kind", "memory_type", "type"),
                            description="Kind: fact, preference, decision, instruction, note, ...")]
Kinds = Annotated[list[str] | str | None, Field(validation_alias=_alias("kinds", "kind", "memory_type"),
                                                description="Only these kinds (list or comma-separated).")]
Priority = Annotated[float, Field(ge=0, le=1, description="Importance 0..1 (0.5 normal, 0.9 critical).")]
Confidence = Annotated[float, Field(ge=0, le=1, description="How sure the fact is, 0..1.")]
Metadata = Annotated[dict[str, Any] | None, Field(description="Optional JSON object of extra fields.")]
MemoryId = Annotated[str, Field(validation_alias=_alias("memory_id", "id"),
                                description="The 32-character memory id from recall or remember.")]
Offset = Annotated[int, Field(ge=0, description="Content character to start at (a page's next_offset).")]
Query = Annotated[str, Field(validation_alias=_alias("query", "q"),
                             description="What to look for, in plain words. Empty: most relevant recent.")]
Limit = Annotated[int, Field(ge=1, le=1000, validation_alias=_alias("limit", "top_k", "n_results", "page_size"),
                             description="Maximum number of memories (also accepted as top_k or n_results).")]
TagMatch = Annotated[Literal["any", "all"], Field(description="'any' tag matches (default) or 'all' tags needed.")]
Since = Annotated[str | float | None, Field(validation_alias=_alias("since", "after"),
                                            description="Created at or after: ISO-8601 or epoch ms.")]
Until = Annotated[str | float | None, Field(validation_alias=_alias("until", "before"),
                                            description="Created at or before: ISO-8601 or epoch ms.")]


# ------------------------------------------------------------------ results
def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    try:
        moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    except (OverflowError, ValueError, OSError):
        return None  # beyond what a calendar date can say (the ms value is returned beside it)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def memory_dict(m: Memory) -> dict[str, Any]:
    """The JSON-friendly form of a memory every tool returns."""
    out: dict[str, Any] = {
        "id": m.id, "content": m.content, "scope": m.scope, "kind": m.kind, "tags": list(m.tags),
        "priority": m.priority, "confidence": m.confidence, "tool": m.tool,
        "created_at": _iso(m.created_at), "created_at_ms": m.created_at,
        "updated_at": _iso(m.updated_at), "score": None if m.score is None else round(m.score, 4),
    }
    if m.expires_at is not None:
        out["expires_at"] = _iso(m.expires_at)
    if m.metadata:
        out["metadata"] = m.metadata
    return out


def _clip(out: dict[str, Any], content: str, offset: int, size: int) -> dict[str, Any]:
    """``out`` with ``content[offset:offset + size]``; a cut one ends with a marker saying where the rest is."""
    total = len(content)
    piece = content[offset:offset + size]
    end = offset + len(piece)
    if offset or end < total:
        rest = f"; the rest: get_memory with offset={end}" if end < total else ""
        out["content"] = piece + (f" [truncated: characters {offset}-{end} of {total}{rest}]" if end < total else "")
        out["content_page"] = {"offset": offset, "total_chars": total, "next_offset": end if end < total else None}
    return out


def _bounded(m: Memory, size: int, offset: int = 0) -> dict[str, Any]:
    """``memory_dict`` with the content cut to ``size`` characters, and oversized metadata left out."""
    out = _clip(memory_dict(m), m.content, offset, size)
    if "metadata" in out and len(_dumps(out["metadata"])) > size:
        out["metadata"] = {"omitted": "too large for a tool result; read it with `neuralsync get --json`"}
    return out


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _result(data: dict[str, Any]) -> CallToolResult:
    """The one representation: compact JSON in a single text block (see the module docstring)."""
    text = _dumps(data)
    if len(text) > RESULT_BUDGET:  # a last guard; the shapes below are cut to fit before this
        text = _dumps({"truncated": True, "note": "result over the size budget; narrow the request",
                       "keys": sorted(data)[:50]})
    return CallToolResult(content=[TextContent(type="text", text=text)])


def _memories(memories: Sequence[Memory]) -> CallToolResult:
    """A list of memories within the budget: contents cut to LIST_CONTENT_CHARS, then the tail left out."""
    out: dict[str, Any] = {"count": len(memories), "memories": []}
    used = len(_dumps(out)) + 200  # room for the omission note
    for m in memories:
        item = _bounded(m, LIST_CONTENT_CHARS)
        size = len(_dumps(item)) + 1
        if used + size > RESULT_BUDGET:
            out["omitted"] = len(memories) - len(out["memories"])
            out["note"] = "more matches than fit in one result: lower limit or narrow the query"
            break
        out["memories"].append(item)
        used += size
    return _result(out)


@contextmanager
def _tool_errors() -> Iterator[None]:
    """Package errors become tool errors the model can read and correct; the server keeps serving."""
    try:
        yield
    except StoreBusy as exc:
        raise ToolError(f"store busy (another process is writing); retry shortly: {exc}") from exc
    except NeuralSyncError as exc:
        raise ToolError(str(exc)) from exc


def _ttl_ms(seconds: int | None) -> int | None:
    return None if seconds is None else seconds * 1000


# ------------------------------------------------------------------ facades per client
def client_tool_name(ctx: Context) -> str:
    """The connecting client's ``clientInfo.name`` as a tool label, else ``"mcp"``."""
    try:
        params = ctx.session.client_params
    except ValueError:  # no request context (a direct in-process call)
        return DEFAULT_TOOL
    name = params.client_info.name if params is not None else ""
    return re.sub(r"[^A-Za-z0-9_.:-]+", "-", name).strip("-")[:64] or DEFAULT_TOOL


class ApiPool:
    """One facade per client name, opened on first use, so sessions and memories carry the client's name."""

    def __init__(self, config: MemoryConfig) -> None:
        self._config = config
        self._apis: dict[str, UnifiedMemoryAPI] = {}
        self._lock = threading.Lock()  # sync tools run on worker threads

    def get(self, tool: str) -> UnifiedMemoryAPI:
        """The facade registered as ``tool`` (shared ``"mcp"`` once too many names were seen)."""
        with self._lock:
            if tool not in self._apis and len(self._apis) >= MAX_CLIENT_NAMES:
                tool = DEFAULT_TOOL
            if tool not in self._apis:
                api = UnifiedMemoryAPI(self._config, tool=tool)
                api.start_write_queue()  # concurrent tool calls (HTTP transport) commit together
                if not self._apis:  # one facade per process keeps the vector index current
                    api.start_background_maintenance()
                self._apis[tool] = api
            return self._apis[tool]

    def close(self) -> None:
        """Close every facade opened (ends their sessions)."""
        with self._lock:
            apis, self._apis = list(self._apis.values()), {}
        for api in apis:
            api.close()


# ------------------------------------------------------------------ tools
class MemoryTools:
    """The tool functions; docstrings are the descriptions the model reads."""

    def __init__(self, api_for: Callable[[str], UnifiedMemoryAPI]) -> None:
        self._api_for = api_for

    def _api(self, ctx: Context) -> UnifiedMemoryAPI:
        return self._api_for(client_tool_name(ctx))

    def remember(self, ctx: Context, content: Content, tags: Tags = None, scope: HomeScope = "global",
                 kind: Kind = "fact", priority: Priority = 0.5, confidence: Confidence = 0.8,
                 metadata: Metadata = None, ttl_seconds: Ttl = None) -> CallToolResult:
        """Store one durable, self-contained fact, preference, decision or instruction, shared with
        future sessions and the user's other AI tools. Secrets are redacted; a repeat of a stored fact
        merges into it. Returns the id."""
        with _tool_errors():
            outcome = self._api(ctx).remember_outcome(content, scope=scope, priority=priority, tags=tags, kind=kind,
                                                      metadata=metadata, ttl_ms=_ttl_ms(ttl_seconds),
                                                      confidence=confidence)
        data: dict[str, Any] = {"id": outcome.memory.id, "scope": scope}
        if outcome.merged:
            data["merged"] = True
        return _result(data)

    def recall(self, ctx: Context, query: Query = "", scope: Scope = None, tags: Tags = None,
               tag_match: TagMatch = "any", kinds: Kinds = None, since: Since = None, until: Until = None,
               limit: Limit = 10) -> CallToolResult:
        """Search the shared memory, best first: hybrid ranking (BM25 keyword match and meaning by
        embeddings, fused, weighed by priority and recency). Filters: scope, tags, kinds, creation time.
        Long contents are cut; get_memory returns the rest."""
        with _tool_errors():
            found = self._api(ctx).recall(query, scope=scope, top_k=limit, tags=tags, kinds=kinds,
                                          since=since, until=until, tag_match=tag_match)
        return _memories(found)

    def get_memory(self, ctx: Context, memory_id: MemoryId, offset: Offset = 0) -> CallToolResult:
        """Fetch one memory by id with all its fields. A long content comes in pages: pass the
        `next_offset` of one page as `offset` to read the next."""
        with _tool_errors():
            memory = self._api(ctx).get(memory_id)
        if offset > len(memory.content):
            raise ToolError(f"offset: must be at most {len(memory.content)}, the content's length")
        return _result({"memory": _bounded(memory, GET_CONTENT_CHARS, offset)})

    def update_memory(self, ctx: Context, memory_id: MemoryId,
                      content: Annotated[str | None, Field(validation_alias=_alias("content", "text"),
                                                           description="New text, replacing the old.")] = None,
                      tags: Tags = None, scope: Annotated[str | None, Field(description="New scope.")] = None,
                      kind: Annotated[str | None, Field(validation_alias=_alias("kind", "memory_type"),
                                                        description="New kind.")] = None,
                      priority: Priority | None = None, confidence: Confidence | None = None,
                      metadata: Metadata = None) -> CallToolResult:
        """Correct an existing memory instead of storing a near-duplicate. Only the given fields
        change; `tags` replaces the tag set. Returns the updated memory."""
        given = {"content": content, "tags": tags, "scope": scope, "kind": kind, "priority": priority,
                 "confidence": confidence, "metadata": metadata}
        with _tool_errors():
            memory = self._api(ctx).update(memory_id, **{k: v for k, v in given.items() if v is not None})
        return _result({"memory": _bounded(memory, LIST_CONTENT_CHARS)})

    def forget(self, ctx: Context, memory_id: MemoryId) -> CallToolResult:
        """Delete a wrong or unwanted memory by id. Cannot be undone."""
        with _tool_errors():
            self._api(ctx).forget(memory_id)
        return _result({"id": memory_id, "forgotten": True})

    def list_recent(self, ctx: Context, limit: Limit = 20, scope: Scope = None) -> CallToolResult:
        """The most recently created memories, newest first, optionally in one scope."""
        return self._recent(ctx, limit, scope, page=1)

    def memory_stats(self, ctx: Context) -> CallToolResult:
        """Counts (memories, scopes), storage size and operation latencies of the shared memory."""
        with _tool_errors():
            stats = self._api(ctx).get_system_stats()
        if len(_dumps(stats)) > RESULT_BUDGET:  # the latency tables grow with the tools seen; keep the counts
            stats = {k: v for k, v in stats.items() if len(_dumps(v)) <= RESULT_BUDGET // 8}
            stats["omitted"] = "large sections left out; `neuralsync stats --json` shows all"
        return _result(stats)

    def _recent(self, ctx: Context, limit: int, scope: str | None, page: int) -> CallToolResult:
        if page < 1 or page * limit > 1000:
            raise ToolError("page: must be at least 1, with page * page_size at most 1000")
        with _tool_errors():
            api = self._api(ctx)
            found = api.range_recall(None, None, scope, page * limit, newest_first=True)
        return _memories(found[(page - 1) * limit:])

    # ---------------------------------------------------------- compatibility aliases
    def compat_store(self, ctx: Context, content: Content, tags: Tags = None,
                     memory_type: Annotated[str | None, Field(validation_alias=_alias("memory_type", "type"))] = None,
                     metadata: Metadata = None, scope: str = "global") -> CallToolResult:
        """Store a memory (peer shape: tags and type may also sit inside metadata)."""
        extra = dict(metadata or {})
        tags = tags if tags is not None else extra.pop("tags", None)
        kind = memory_type or extra.pop("type", None) or "fact"
        return self.remember(ctx, content, tags=tags, scope=scope, kind=kind, metadata=extra or None)

    def compat_search(self, ctx: Context, query: Query = "", tags: Tags = None, tag_match: TagMatch = "any",
                      match_all: bool | None = None, since: Since = None, until: Until = None,
                      limit: Limit = 10, scope: Scope = None, filters: Metadata = None) -> CallToolResult:
        """Search memories (peer shape: match_all, after/before, mem0 filters with scope/tags/kinds)."""
        f = filters or {}
        match = "all" if match_all or f.get("tag_match") == "all" else tag_match
        return self.recall(ctx, query, scope=scope or f.get("scope"), tags=tags if tags is not None else f.get("tags"),
                           tag_match=match, kinds=f.get("kinds") or f.get("kind"), since=since, until=until,
                           limit=limit)

    def compat_delete(self, ctx: Context, memory_id: Annotated[str | None, Field(
                      validation_alias=_alias("memory_id", "id"))] = None,
                      content_hash: str | None = None) -> CallToolResult:
        """Delete one memory by id."""
        if memory_id is None:
            hint = "deleting by content_hash is not supported; " if content_hash else ""
            raise ToolError(f"memory_id: required ({hint}find the id with recall)")
        return self.forget(ctx, memory_id)

    def compat_list(self, ctx: Context, limit: Limit = 20, page: int = 1, tags: Tags = None,
                    scope: Scope = None) -> CallToolResult:
        """List memories newest first (page is 1-based); with tags, the best tagged ones."""
        if tags:
            return self.recall(ctx, "", scope=scope, tags=tags, limit=limit)
        return self._recent(ctx, limit, scope, page)


PRIMARY: tuple[tuple[str, str, ToolAnnotations], ...] = (
    ("remember", "Remember", ADDITIVE),
    ("recall", "Recall memories", READ_ONLY),
    ("get_memory", "Get a memory", READ_ONLY),
    ("update_memory", "Update a memory", OVERWRITE),
    ("forget", "Forget a memory", OVERWRITE),
    ("list_recent", "List recent memories", READ_ONLY),
    ("memory_stats", "Memory statistics", READ_ONLY),
)
# (peer tool name, our function, primary tool it stands for, clients that use the name)
ALIASES: tuple[tuple[str, str, str, str], ...] = (
    ("store_memory", "compat_store", "remember", "mcp-memory-service"),
    ("memory_store", "compat_store", "remember", "mcp-memory-service"),
    ("add_memory", "compat_store", "remember", "mem0"),
    ("retrieve_memory", "compat_search", "recall", "mcp-memory-service"),
    ("memory_search", "compat_search", "recall", "mcp-memory-service"),
    ("search_by_tag", "compat_search", "recall", "mcp-memory-service"),
    ("search_memories", "compat_search", "recall", "mem0"),
    ("delete_memory", "compat_delete", "forget", "mcp-memory-service, mem0"),
    ("list_memories", "compat_list", "list_recent", "mcp-memory-service"),
    ("memory_list", "compat_list", "list_recent", "mcp-memory-service"),
    ("get_memories", "compat_list", "list_recent", "mem0"),
    ("memory_update", "update_memory", "update_memory", "mcp-memory-service"),
)


def aliases_from_env() -> bool:
    """``NEURALSYNC_MCP_ALIASES`` set to 1/true/yes/on: list the peers' tool names too."""
    return os.environ.get(ALIASES_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def build_server(api: UnifiedMemoryAPI | Callable[[str], UnifiedMemoryAPI], *, aliases: bool = False) -> MCPServer:
    """An MCP server over ``api`` (one facade, or a function from client name to facade); the core
    tools, and with ``aliases`` the peers' tool names after them."""
    api_for = (lambda _name: api) if isinstance(api, UnifiedMemoryAPI) else api
    tools = MemoryTools(api_for)
    server: MCPServer = MCPServer("neuralsync", version=__version__, instructions=INSTRUCTIONS,
                                  log_level="WARNING", middleware=[DepthGuard()])
    hints = {name: (title, hint) for name, title, hint in PRIMARY}
    for name, (title, hint) in hints.items():
        fn = getattr(tools, name)
        server.add_tool(fn, name=name, title=title, description=" ".join((fn.__doc__ or "").split()),
                        annotations=hint.model_copy(update={"title": title}))
    for name, function, target, peers in ALIASES if aliases else ():
        fn, title = getattr(tools, function), f"{name} (alias of {target})"
        server.add_tool(fn, name=name, title=title, meta={"neuralsync/alias_of": target},
                        description=f"Compatibility alias of `{target}` for {peers} clients; prefer `{target}`. "
                                    + " ".join((fn.__doc__ or "").split()),
                        annotations=hints[target][1].model_copy(update={"title": title}))
    return server


# ------------------------------------------------------------------ transports
def run_stdio(config: MemoryConfig, *, aliases: bool = False) -> None:
    """Serve MCP over stdin/stdout until the client closes stdin."""
    pool = ApiPool(config)
    try:
        with screen_stdin():
            build_server(pool.get, aliases=aliases).run("stdio")
    finally:
        pool.close()


class BearerAuth:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <token>``."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self._expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = next((value for name, value in scope.get("headers") or () if name.lower() == b"authorization"),
                         b"")
            if not hmac.compare_digest(given, self._expected):
                from starlette.responses import JSONResponse

                reply = JSONResponse({"error": "unauthorized: a bearer token is required"}, status_code=401,
                                     headers={"WWW-Authenticate": "Bearer"})
                await reply(scope, receive, send)
                return
        await self.app(scope, receive, send)


def http_app(server: MCPServer, host: str = "127.0.0.1", token: str | None = None) -> Any:
    """The streamable HTTP ASGI app at ``/mcp`` (DNS-rebinding protection on loopback, optional token)."""
    app = server.streamable_http_app(host=host)
    return BearerAuth(app, token) if token else app


def endpoint(host: str, port: int) -> str:
    """The streamable HTTP URL clients connect to."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{HTTP_PATH}"


def run_http(config: MemoryConfig, host: str = "127.0.0.1", port: int = 8374, token: str | None = None,
             *, aliases: bool = False, token_source: str = "") -> None:
    """Serve streamable HTTP at ``http://host:port/mcp``; refuses a non-loopback host without a token.

    Says on stderr where it listens and how a client authenticates (``token_source``: where the token is).
    """
    import uvicorn

    if not token and host not in ("127.0.0.1", "localhost", "::1"):
        raise NeuralSyncError(f"refusing to serve MCP on {host} without a token (use --token-file)")
    auth = (f"send 'Authorization: Bearer <token>' ({token_source or 'the token given'})" if token
            else "no authentication (loopback only)")
    sys.stderr.write(f"neuralsync mcp: streamable HTTP on {endpoint(host, port)} (host {host}, port {port}, "
                     f"path {HTTP_PATH}); {auth}\n")
    sys.stderr.flush()
    pool = ApiPool(config)
    try:
        app = http_app(build_server(pool.get, aliases=aliases), host, token)
        # log_config=None: uvicorn's default config sends access logs to stdout.
        from ..server.run import http_protocol  # the same uvicorn as `neuralsync serve`, quirk fixed

        uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, lifespan="on",
                    http=http_protocol())
    finally:
        pool.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neuralsync mcp", description="MCP server for the neuralsync memory (stdio by default).",
        epilog="HTTP binds 127.0.0.1 unless --host is given; a non-loopback host requires a token.")
    p.add_argument("--home", help="store directory (default: $NEURALSYNC_HOME, else ~/.neuralsync2/memory)")
    p.add_argument("--http", action="store_true", help="serve streamable HTTP at /mcp instead of stdio")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8374, help="HTTP port (default 8374)")
    p.add_argument("--token-file", help="HTTP: require 'Authorization: Bearer <token in this file>'")
    p.add_argument("--aliases", action="store_true", default=None,
                   help=f"also list the peers' tool names (store_memory, add_memory, ...); or ${ALIASES_ENV}=1")
    p.add_argument("--no-aliases", dest="aliases", action="store_false", help=argparse.SUPPRESS)  # the default now
    p.add_argument("--log-level", default="WARNING", help="stderr log level (default WARNING)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m neuralsync.mcp.server`` (and ``neuralsync mcp``)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s neuralsync-mcp %(levelname)s %(name)s: %(message)s")
    try:
        config = MemoryConfig.from_env(args.home)
        aliases = aliases_from_env() if args.aliases is None else args.aliases
        if args.http:
            # Without --token-file the server's own token (0600 file) is required,
            # as for 'neuralsync mcp --http': no entry point serves the store unauthenticated.
            from ..server import resolve_token, token_path

            token = (Path(args.token_file).read_text(encoding="utf-8").strip() if args.token_file
                     else resolve_token(config))
            source = f"the token in {args.token_file}" if args.token_file else \
                f"the token in {token_path(config)}; 'neuralsync token' prints it"
            run_http(config, args.host, args.port, token or None, aliases=aliases, token_source=source)
        else:
            run_stdio(config, aliases=aliases)
    except (NeuralSyncError, OSError) as exc:
        sys.stderr.write(f"neuralsync mcp: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
