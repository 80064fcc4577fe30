"""CLI commands that run services or touch files beside the store: ``mcp``,
``serve``, ``token``, ``embed``, ``sessions``, ``identity``, ``install``/``uninstall``.

Kept apart from :mod:`.app` so each file stays one concept. Servers open the
store themselves, so these handlers take only the parsed arguments
(``standalone``); heavy modules are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

DEFAULT_MCP_HTTP_PORT = 8374


def _config(args: argparse.Namespace, **overrides: object) -> Any:
    from ..config import MemoryConfig

    return MemoryConfig.from_env(getattr(args, "home", None), **overrides)


def _standalone(cmd: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], int]) -> None:
    cmd.set_defaults(standalone=handler, handler=None)


def add_service_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register the service commands on the main parser."""
    cmd = add("mcp", None, "run the MCP server (stdio by default; --http for streamable HTTP on 127.0.0.1)")
    cmd.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    cmd.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: 127.0.0.1, loopback only)")
    cmd.add_argument("--port", type=int, default=DEFAULT_MCP_HTTP_PORT, help="HTTP port (default: 8374)")
    cmd.add_argument("--aliases", action="store_true", default=None,
                     help="also list the peers' tool names (store_memory, add_memory, search_by_tag, ...); "
                          "or NEURALSYNC_MCP_ALIASES=1")
    cmd.add_argument("--no-aliases", dest="aliases", action="store_false", help=argparse.SUPPRESS)  # the default
    _standalone(cmd, cmd_mcp)

    cmd = add("serve", None, "run the HTTP server (JSON API under /v1, NeuralSync2 routes, SSE change feed). "
                             "Binds 127.0.0.1:8373 only, unless --host/$NS_HOST say otherwise; every route "
                             "but /health needs 'Authorization: Bearer <token>' (see 'neuralsync token')")
    cmd.add_argument("--host", help="bind address (default: $NS_HOST or 127.0.0.1 - loopback only)")
    cmd.add_argument("--port", type=int, help="port (default: $NS_PORT or 8373)")
    cmd.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    cmd.add_argument("--sync-interval", type=float, metavar="SECONDS",
                     help="sync with every trusted peer this often (default: the sync_interval_s setting, "
                          "0: only on demand, 'neuralsync sync')")
    _standalone(cmd, cmd_serve)

    cmd = add("token", None, "print the HTTP server's bearer token (created on first use, file mode 0600)")
    cmd.add_argument("--path", action="store_true", help="print the token file's path instead")
    _standalone(cmd, cmd_token)

    cmd = add("embed", None, "embed memories that lack a vector (after an embedder change, an import or a sync)"
                             " and bring the vector index up to date, with progress")
    cmd.add_argument("--full", action="store_true", help="rebuild the vector index from scratch")
    _standalone(cmd, cmd_embed)

    cmd = add("identity", None, "print this replica's public key (its site id)")
    _standalone(cmd, cmd_identity)

    for name, text in (("install", "register the neuralsync MCP server and its hooks in a tool's config "
                                   "(idempotent, backed up)"),
                       ("uninstall", "remove the neuralsync MCP server and its hooks from a tool's config")):
        cmd = add(name, None, text)
        cmd.add_argument("tool", choices=["claude-code", "codex", "gemini"])
        cmd.add_argument("--dry-run", action="store_true", help="print the change as a unified diff; write nothing")
        cmd.add_argument("--config", metavar="PATH", help="edit this file instead of the tool's default")
        cmd.add_argument("--scope", choices=["user", "project"], default="user",
                         help="user: ~/.claude.json, ~/.codex/config.toml, ~/.gemini/settings.json; "
                              "project: ./.mcp.json, ./.codex/config.toml, ./.gemini/settings.json")
        cmd.add_argument("--no-hooks", dest="hooks", action="store_false",
                         help="leave the tool's hooks alone (install registers SessionStart/prompt/end-of-turn hooks "
                              "that add the persona and relevant memories and capture '@remember:' lines)")
        if name == "install":
            cmd.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                             help="stdio: the tool starts 'neuralsync mcp' (default); http: it connects to a running "
                                  "'neuralsync mcp --http' with 'Authorization: Bearer' (the token in a user file, "
                                  "$NEURALSYNC_TOKEN in a project file and for Codex)")
            cmd.add_argument("--url", help=f"http: the server's URL (default http://127.0.0.1:{DEFAULT_MCP_HTTP_PORT}/mcp)")
        cmd.set_defaults(integration=name)
        _standalone(cmd, cmd_integration)

    cmd = add("hook", None, "run as an agent CLI's hook: read its event JSON on stdin, print the persona and the "
                            "memories relevant to the folder and prompt (or capture '@remember:' lines at the end "
                            "of a turn); never fails the session")
    # Checked by the hook itself, not argparse: a usage error (exit 2) would block the user's prompt.
    cmd.add_argument("--tool", default="", metavar="TOOL", help="claude-code, codex or gemini")
    cmd.add_argument("--budget", metavar="BYTES",
                     help="most bytes of context to print (default: the hook_budget_bytes setting, 6000)")
    _standalone(cmd, cmd_hook)

    cmd = add("sessions", None, "processes using this store (dead ones are reaped first)")
    cmd.add_argument("--all", action="store_true", help="include ended sessions")
    _standalone(cmd, cmd_sessions)


def cmd_mcp(args: argparse.Namespace) -> int:
    """Serve MCP until stdin closes (stdio) or the process is stopped (HTTP)."""
    from ..errors import DependencyMissing

    try:
        from ..mcp import server as mcp_server
    except ImportError as exc:
        raise DependencyMissing(f"the MCP server needs the MCP SDK: python -m pip install 'neuralsync[mcp]' ({exc})"
                                ) from None

    from ..server import token_path

    config = _config(args)
    aliases = mcp_server.aliases_from_env() if args.aliases is None else args.aliases
    if args.http:
        mcp_server.run_http(config, host=args.host, port=args.port, token=_server_token(config), aliases=aliases,
                            token_source=f"the token in {token_path(config)}; 'neuralsync token' prints it")
    else:
        mcp_server.run_stdio(config, aliases=aliases)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve HTTP until interrupted."""
    from ..server import serve

    given = {} if args.sync_interval is None else {"sync_interval_s": args.sync_interval}
    serve(_config(args, **given), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """The bearer token (or its file), created on first use."""
    from ..server import resolve_token, token_path

    config = _config(args)
    print(token_path(config) if args.path else resolve_token(config))
    return 0


def _server_token(config: Any) -> str | None:
    """The HTTP server's bearer token, shared with ``neuralsync serve``, when that module is available."""
    from ..server import resolve_token

    return str(resolve_token(config))


def cmd_integration(args: argparse.Namespace) -> int:
    """install / uninstall the MCP server entry in a tool's configuration.

    install refuses (one line naming the pip extra, nothing written) when the server could not start here.
    """
    from ..integrations.install import run_cli

    if args.integration == "uninstall":
        return run_cli("uninstall", args.tool, dry_run=args.dry_run, config_path=args.config, scope=args.scope,
                       hooks=args.hooks)
    token = None
    if args.transport == "http" and args.scope == "user" and args.tool != "codex":
        token = _server_token(_config(args))  # a user file holds the token itself (0600, like its API keys)
    return run_cli("install", args.tool, dry_run=args.dry_run, config_path=args.config, scope=args.scope,
                   transport=args.transport, url=args.url, token=token, hooks=args.hooks)


def cmd_hook(args: argparse.Namespace) -> int:
    """One hook event: always exit 0 with valid output (errors go to the hook log)."""
    from ..integrations.hooks import run_hook

    return run_hook(args.tool, home=getattr(args, "home", None), budget=args.budget)


def cmd_embed(args: argparse.Namespace) -> int:
    """Work the embedding queue down, then refresh the HNSW file."""
    from ..unified_memory_api import UnifiedMemoryAPI
    from .progress import Progress

    with UnifiedMemoryAPI(_config(args)) as api:
        with Progress("embedding", unit="memories") as bar:
            embedded = api.embed_pending(progress=bar)
        with Progress("indexing", unit="vectors") as bar:
            report = api.rebuild_vector_index(full=args.full, progress=bar)
    report["embedded"] = embedded
    print(json.dumps(report) if getattr(args, "json", False) else
          "  ".join(f"{key}: {value}" for key, value in report.items()))
    return 0


def cmd_identity(args: argparse.Namespace) -> int:
    """This replica's Ed25519 public key, hex."""
    from ..unified_memory_api import UnifiedMemoryAPI

    with UnifiedMemoryAPI(_config(args), register_session=False) as api:
        public = api.identity()
    print(json.dumps({"public_key": public}) if getattr(args, "json", False) else public)
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    """List sessions without registering one for this listing itself."""
    from ..unified_memory_api import UnifiedMemoryAPI

    with UnifiedMemoryAPI(_config(args), register_session=False) as api:
        rows = api.sessions(include_ended=args.all)
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no active sessions", file=sys.stderr)
    for row in rows:
        state = "ended" if row["ended"] else "active"
        print(f"{row['id']}  {row['tool'] or '-':<14} pid {row['pid']:<8} {state:<6} {row['cwd'] or ''}")
    return 0
