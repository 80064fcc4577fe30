"""Moving from NeuralSync2: importing its home, and ``neuralsync migrate`` (issue 12).

``import PATH`` of a NeuralSync2 home brings its items and persona.
``migrate [HOME]`` does that, then makes sure NeuralSync2's clients can still
talk to ``neuralsync serve``: they send a token only from ``$NS_TOKEN`` and its
default token was empty, so the token is written where they and its tooling
read it (see :mod:`neuralsync.integrations.ns2_setup`), and every step is said
in one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput
from .output import emit_json

if TYPE_CHECKING:
    from ..integrations.neuralsync2 import Ns2Home
    from ..unified_memory_api import UnifiedMemoryAPI
    from .transfer import ImportReport

PROG = "neuralsync"
TOKEN_HINT = (f"{PROG}: note: NeuralSync2's clients (nsctl, nswrap, claude-ns, ...) send a token only from"
              f" $NS_TOKEN; '{PROG} migrate' sets that up")


def add_migrate_command(add: Callable[..., argparse.ArgumentParser], handler: Any) -> None:
    """Register ``migrate`` (``handler`` is :func:`cmd_migrate`, passed in to keep the import lazy)."""
    cmd = add("migrate", handler,
              "move from NeuralSync2: import its home, then give its clients the server token"
              " (token: in ~/.neuralsync/config.yaml, NS_TOKEN in your shell profile); safe to repeat")
    cmd.add_argument("source", nargs="?", metavar="NS2_HOME",
                     help="its directory or memory.db (default: db_path and oplog_path of"
                          " ~/.neuralsync/config.yaml, else ~/.neuralsync)")
    where = cmd.add_mutually_exclusive_group()
    where.add_argument("--profile", metavar="FILE",
                       help="shell profile to export NS_TOKEN in (default: ~/.zshrc, ~/.bashrc or ~/.profile"
                            " by $SHELL)")
    where.add_argument("--no-profile", action="store_true",
                       help="leave shell profiles alone (the line to add is printed instead)")


def import_neuralsync2(api: UnifiedMemoryAPI, home: Ns2Home) -> tuple[ImportReport, str]:
    """Items (and op-log-only items) and the persona of a NeuralSync2 home; (report, what became of
    the persona: ``carried``, ``kept`` (ours is later or the same), ``none``)."""
    from ..integrations.neuralsync2 import carry_persona, read_persona, records
    from .progress import Progress
    from .transfer import import_records

    with Progress("importing NeuralSync2", unit="items") as bar:
        report = import_records(api, records(home), progress=bar)
    persona = read_persona(home)
    if persona is None:
        return report, "none"
    return report, "carried" if carry_persona(api, persona.text, persona.at) else "kept"


def cmd_migrate(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Import, then the token where NeuralSync2's clients read it; one line per step."""
    from ..integrations import ns2_setup

    config_path = ns2_setup.ns2_config_path()
    ns2_config = ns2_setup.read_ns2_config(config_path)
    home = _source(args.source, ns2_config)
    if home is None:
        raise InvalidInput("NS2_HOME", f"no NeuralSync2 home at {args.source or '~/.neuralsync'}"
                                       " (a directory with memory.db, or the memory.db itself)")
    report, persona = import_neuralsync2(api, home)
    steps: dict[str, Any] = {"import": report.to_dict(), "from": str(home.db), "persona": persona}
    lines = [f"{report.summary} from {home.db}", f"persona: {_PERSONA_SAID[persona]}"]
    steps["token"], said = _share_token(api, args, config_path, ns2_config)
    lines += said
    served = _ns2_still_serving(ns2_config)
    if served:
        lines.append(f"warning: NeuralSync2's server still answers at {served}: stop it, then run '{PROG} serve'")
    if args.json:
        emit_json({**steps, "ns2_server_running": served})
    else:
        print("\n".join(lines))
    return 0 if report.ok else 1


_PERSONA_SAID = {"carried": "carried from NeuralSync2", "kept": "kept this store's (set later, or the same)",
                 "none": "NeuralSync2 had none"}


def _source(given: str | None, ns2_config: dict[str, str]) -> Ns2Home | None:
    from ..integrations.neuralsync2 import locate

    if given is not None:
        return locate(given)
    db = ns2_config.get("db_path") or str(Path.home() / ".neuralsync" / "memory.db")
    return locate(db, ns2_config.get("oplog_path") or None)


def _share_token(api: UnifiedMemoryAPI, args: argparse.Namespace, config_path: Path,
                 ns2_config: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Write the server token where NeuralSync2's side reads it; what was done, and the lines saying so."""
    from ..integrations import ns2_setup
    from ..server import resolve_token, token_path

    token = resolve_token(api.config)
    done: dict[str, Any] = {}
    lines: list[str] = []
    if ns2_config:
        done["ns2_config"] = ns2_setup.write_ns2_token(config_path, token)
        lines.append(f"token: {'written to' if done['ns2_config'] else 'already in'} {config_path}"
                     " (NeuralSync2's server and daemons read it there)")
    if os.environ.get("NS_TOKEN"):
        lines.append("token: NS_TOKEN is set in this shell; NeuralSync2's clients send it as it is")
        return done, lines
    line = ns2_setup.profile_line(token_path(api.config))
    if args.no_profile:
        lines.append(f"token: NeuralSync2's clients need NS_TOKEN; add to your shell profile: {line}")
        return done, lines
    profile = Path(args.profile).expanduser() if args.profile else ns2_setup.default_profile()
    done["profile"] = {"path": str(profile), "written": ns2_setup.add_to_profile(profile, line)}
    lines.append(f"token: {profile} {'now exports' if done['profile']['written'] else 'already exports'}"
                 f" NS_TOKEN for NeuralSync2's clients; in this shell run: {line}")
    return done, lines


def _ns2_still_serving(ns2_config: dict[str, str]) -> str | None:
    """NeuralSync2's address when a server there answers /health with its site id (0.5 s at most)."""
    import urllib.request

    site = ns2_config.get("site_id")
    if not site:
        return None
    url = f"http://{ns2_config.get('bind_host') or '127.0.0.1'}:{ns2_config.get('bind_port') or 8373}"
    try:
        with urllib.request.urlopen(url + "/health", timeout=0.5) as response:
            answer = json.loads(response.read(4096) or b"null")
    except (OSError, ValueError):
        return None
    return url if isinstance(answer, dict) and answer.get("site_id") == site else None


def print_token_hint() -> None:
    """After importing a NeuralSync2 home: how its clients keep authenticating (stderr)."""
    if not os.environ.get("NS_TOKEN"):
        print(TOKEN_HINT, file=sys.stderr)
