"""MCP server: the memory as tools for any MCP client, on the official MCP Python SDK.

``python -m neuralsync.mcp.server`` serves stdio (what Claude Code, Codex CLI and
Gemini CLI spawn); ``--http`` serves streamable HTTP on 127.0.0.1. Like the CLI
this is a thin adapter: parse arguments, make one facade call, map package errors
to MCP tool errors (``isError`` results naming the field), so the server keeps
serving. Nothing but protocol reaches stdout: logs go to stderr, and while stdio
serves, the SDK points fd 1 at stderr so stray writes miss the wire. Every
message is checked first (``guard``: JSON, depth, size), and a refused one is
answered with a JSON-RPC error.

Primary tools come first; the peers' tool names (mcp-memory-service, mem0) are
thin compatibility aliases, listed with an "alias" title, or left out with
``--no-aliases``. Argument aliases (``top_k``/``n_results`` for ``limit``, ``q``,
``text``, ``id``, ``after``/``before``) are accepted by validation, not advertised.
"""

from __future__ import annotations

import argparse
import hmac
import logging
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

__all__ = ["ApiPool", "build_server", "run_http", "run_stdio", "main"]

log = logging.getLogger(__name__)
DEFAULT_TOOL = "mcp"
MAX_CLIENT_NAMES = 16  # distinct client names given their own session; later ones share "mcp"
MAX_TEXT_CHARS = 2000  # per memory in the text block; structured content carries it whole
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


def _line(m: Memory) -> str:
    tags = f" #{' #'.join(m.tags)}" if m.tags else ""
    text = m.content if len(m.content) <= MAX_TEXT_CHARS else m.content[:MAX_TEXT_CHARS] + " …"
    return f"- {m.id} [{m.scope}/{m.kind}{tags}] ({(_iso(m.created_at) or '')[:10]}): {text}"


def _result(text: str, data: dict[str, Any]) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def _memories(memories: Sequence[Memory], empty: str = "No memories found.") -> CallToolResult:
    head = f"{len(memories)} {'memory' if len(memories) == 1 else 'memories'}:"
    text = "\n".join([head, *map(_line, memories)]) if memories else empty
    return _result(text, {"count": len(memories), "memories": [memory_dict(m) for m in memories]})


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
        """Store a durable fact, preference, decision or instruction in the shared memory, for this
        and future sessions and for the user's other AI tools. Write one self-contained statement per
        call. Secrets are redacted. Returns the memory's id (a repeat of a stored fact merges into it)."""
        with _tool_errors():
            outcome = self._api(ctx).remember_outcome(content, scope=scope, priority=priority, tags=tags, kind=kind,
                                                      metadata=metadata, ttl_ms=_ttl_ms(ttl_seconds),
                                                      confidence=confidence)
        memory_id = outcome.memory.id
        if outcome.merged:
            return _result(f"Already remembered as {memory_id} (scope {scope}); merged into it.",
                           {"id": memory_id, "scope": scope, "merged": True})
        return _result(f"Remembered as {memory_id} (scope {scope}).", {"id": memory_id, "scope": scope})

    def recall(self, ctx: Context, query: Query = "", scope: Scope = None, tags: Tags = None,
               tag_match: TagMatch = "any", kinds: Kinds = None, since: Since = None, until: Until = None,
               limit: Limit = 10) -> CallToolResult:
        """Search the shared memory: full-text relevance with priority and recency. Use before
        answering questions about the user, their projects or earlier decisions. Filter by scope,
        tags (any or all), kinds and creation time. Returns the best matches, best first, with ids."""
        with _tool_errors():
            found = self._api(ctx).recall(query, scope=scope, top_k=limit, tags=tags, kinds=kinds,
                                          since=since, until=until, tag_match=tag_match)
        return _memories(found)

    def get_memory(self, ctx: Context, memory_id: MemoryId) -> CallToolResult:
        """Fetch one memory by id, with all its fields."""
        with _tool_errors():
            return _memories([self._api(ctx).get(memory_id)])

    def update_memory(self, ctx: Context, memory_id: MemoryId,
                      content: Annotated[str | None, Field(validation_alias=_alias("content", "text"),
                                                           description="New text, replacing the old.")] = None,
                      tags: Tags = None, scope: Annotated[str | None, Field(description="New scope.")] = None,
                      kind: Annotated[str | None, Field(validation_alias=_alias("kind", "memory_type"),
                                                        description="New kind.")] = None,
                      priority: Priority | None = None, confidence: Confidence | None = None,
                      metadata: Metadata = None) -> CallToolResult:
        """Correct or refine an existing memory instead of storing a near-duplicate. Only the fields
        given change; `tags` replaces the whole tag set. Returns the updated memory."""
        given = {"content": content, "tags": tags, "scope": scope, "kind": kind, "priority": priority,
                 "confidence": confidence, "metadata": metadata}
        with _tool_errors():
            memory = self._api(ctx).update(memory_id, **{k: v for k, v in given.items() if v is not None})
        return _result(f"Updated {memory.id}.\n{_line(memory)}", {"memory": memory_dict(memory)})

    def forget(self, ctx: Context, memory_id: MemoryId) -> CallToolResult:
        """Delete a memory that is wrong or no longer wanted, by id. This cannot be undone."""
        with _tool_errors():
            self._api(ctx).forget(memory_id)
        return _result(f"Forgot {memory_id}.", {"id": memory_id, "forgotten": True})

    def list_recent(self, ctx: Context, limit: Limit = 20, scope: Scope = None) -> CallToolResult:
        """List the most recently created memories, newest first (optionally in one scope)."""
        return self._recent(ctx, limit, scope, page=1)

    def memory_stats(self, ctx: Context) -> CallToolResult:
        """Statistics of the shared memory: counts per scope, storage size, latency percentiles."""
        with _tool_errors():
            stats = self._api(ctx).get_system_stats()
        storage = stats.get("storage", {})
        text = (f"{stats.get('memories', 0)} memories in {stats.get('scopes', 0)} scopes; "
                f"{storage.get('total_bytes', 0)} bytes at {storage.get('path', '?')}")
        return _result(text, stats)

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


def build_server(api: UnifiedMemoryAPI | Callable[[str], UnifiedMemoryAPI], *, aliases: bool = True) -> MCPServer:
    """An MCP server over ``api`` (one facade, or a function from client name to facade)."""
    api_for = (lambda _name: api) if isinstance(api, UnifiedMemoryAPI) else api
    tools = MemoryTools(api_for)
    server: MCPServer = MCPServer("neuralsync", version=__version__, instructions=INSTRUCTIONS,
                                  log_level="WARNING", middleware=[DepthGuard()])
    hints = {name: (title, hint) for name, title, hint in PRIMARY}
    for name, (title, hint) in hints.items():
        server.add_tool(getattr(tools, name), name=name, title=title,
                        annotations=hint.model_copy(update={"title": title}))
    for name, function, target, peers in ALIASES if aliases else ():
        fn, title = getattr(tools, function), f"{name} (alias of {target})"
        server.add_tool(fn, name=name, title=title, meta={"neuralsync/alias_of": target},
                        description=f"Compatibility alias of `{target}` for {peers} clients; prefer `{target}`. "
                                    + (fn.__doc__ or ""),
                        annotations=hints[target][1].model_copy(update={"title": title}))
    return server


# ------------------------------------------------------------------ transports
def run_stdio(config: MemoryConfig, *, aliases: bool = True) -> None:
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


def run_http(config: MemoryConfig, host: str = "127.0.0.1", port: int = 8374, token: str | None = None,
             *, aliases: bool = True) -> None:
    """Serve streamable HTTP at ``http://host:port/mcp``; refuses a non-loopback host without a token."""
    import uvicorn

    if not token and host not in ("127.0.0.1", "localhost", "::1"):
        raise NeuralSyncError(f"refusing to serve MCP on {host} without a token (use --token-file)")
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
    p.add_argument("--no-aliases", action="store_true", help="list only the primary tools, not peer-name aliases")
    p.add_argument("--log-level", default="WARNING", help="stderr log level (default WARNING)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m neuralsync.mcp.server`` (and ``neuralsync mcp``)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s neuralsync-mcp %(levelname)s %(name)s: %(message)s")
    try:
        config = MemoryConfig.from_env(args.home)
        if args.http:
            # Without --token-file the server's own token (0600 file) is required,
            # as for 'neuralsync mcp --http': no entry point serves the store unauthenticated.
            from ..server import resolve_token

            token = (Path(args.token_file).read_text(encoding="utf-8").strip() if args.token_file
                     else resolve_token(config))
            run_http(config, args.host, args.port, token or None, aliases=not args.no_aliases)
        else:
            run_stdio(config, aliases=not args.no_aliases)
    except (NeuralSyncError, OSError) as exc:
        sys.stderr.write(f"neuralsync mcp: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
