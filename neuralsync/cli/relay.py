"""CLI commands of the team relay: ``relay serve`` and ``relay migrate`` (issue 17).

The relay is a service of its own on PostgreSQL, not a user of the memory store: these handlers run
standalone (no store is opened) and import the relay only when called.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

DEFAULT_RELAY_PORT = 8391


def add_relay_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``relay serve|migrate`` on the CLI's subcommand factory."""
    cmd = add("relay", None, "the team relay on PostgreSQL: serve, migrate")
    actions = cmd.add_subparsers(dest="relay_action", metavar="ACTION", required=True)
    sub = actions.add_parser(
        "serve", help="run a relay (stateless: run as many as you like on one database)",
        description="Run a relay. Binds 127.0.0.1:8391 unless --host/--port say otherwise; every request but "
                    "/health must be signed by a registered device. Applies pending migrations first.")
    _db_option(sub)
    sub.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1 - loopback only)")
    sub.add_argument("--port", type=int, default=DEFAULT_RELAY_PORT, help=f"port (default: {DEFAULT_RELAY_PORT})")
    sub.add_argument("--relay-home", metavar="DIR",
                     help="where the relay's key lives (default: $NEURALSYNC_RELAY_HOME, else ~/.neuralsync2/relay);"
                          " relays sharing it are one relay to clients")
    sub.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub.set_defaults(standalone=cmd_relay_serve, handler=None)
    sub = actions.add_parser("migrate", help="apply the relay's pending schema migrations",
                             description="Apply the relay's numbered migrations not yet applied (safe to repeat).")
    _db_option(sub)
    sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub.set_defaults(standalone=cmd_relay_migrate, handler=None)


def _db_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--db", required=True, metavar="URL",
                     help="PostgreSQL connection string of a role with CREATEROLE (not a superuser), e.g. "
                          "postgresql://relay_owner@127.0.0.1/relay")


def cmd_relay_serve(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    from ..relay.run import serve

    serve(args.db, args.host, args.port, args.relay_home, args.log_level)
    return 0


def cmd_relay_migrate(args: argparse.Namespace) -> int:
    """Apply pending migrations; prints how many and the schema version."""
    from ..relay.run import migrate

    applied, version = migrate(args.db)
    if getattr(args, "json", False):
        print(json.dumps({"applied": applied, "version": version}))
    else:
        print(f"relay schema at version {version} ({applied} migration(s) applied now)")
    return 0
