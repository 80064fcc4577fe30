"""CLI commands of shared scopes (issue 17): ``team whoami|create|add|remove|promote|relay|sync|list|user-key``.

A shared scope's memories are labelled ``team:<name>``: ``neuralsync remember --scope team:platform ...``
writes there (as a writer), and every recall spans private and shared scopes, the scope shown.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..unified_memory_api import UnifiedMemoryAPI


def add_team_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``team ACTION`` on the CLI's subcommand factory."""
    cmd = add("team", None, "shared scopes with other people, through a relay: create, add, sync, ...")
    actions = cmd.add_subparsers(dest="team_action", metavar="ACTION", required=True)

    def action(name: str, handler: Callable[[UnifiedMemoryAPI, argparse.Namespace], int], text: str,
               description: str | None = None) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=text, description=description or text)
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
        sub.set_defaults(handler=handler)
        return sub

    action("whoami", cmd_whoami, "your user key (an admin adds you by it) and this machine's device key")
    sub = action("create", cmd_create, "create a shared scope, you its first admin",
                 "Create the shared scope team:NAME. Then 'neuralsync team relay NAME URL KEY' and "
                 "'neuralsync team sync' to share it, and 'neuralsync team add NAME USER_KEY' to add people.")
    sub.add_argument("name", help="letters, digits, '-', '_' or '.' (at most 64)")
    sub = action("add", cmd_add, "add a member by user key, or change their role (admins only)")
    sub.add_argument("name", help="the shared scope")
    sub.add_argument("user", help="their user key ('neuralsync team whoami' on their machine)")
    sub.add_argument("--role", default="writer", choices=["reader", "writer", "admin"], help="default: writer")
    sub = action("remove", cmd_remove, "remove a member (not retroactive: what they hold or wrote stays)",
                 "Remove a member. Their writes made after they see the removal are refused and the relay stops "
                 "their pulls; what they already pulled, and what they wrote before, stays.")
    sub.add_argument("name")
    sub.add_argument("user", help="their user key")
    sub = action("promote", cmd_promote, "share a copy of a private memory with a shared scope")
    sub.add_argument("memory_id")
    sub.add_argument("name", help="the shared scope")
    sub = action("relay", cmd_relay, "sync a shared scope through a relay (join one by its id)",
                 "Sync a shared scope through the relay at URL ('neuralsync relay serve' prints its URL and "
                 "key). To join a scope you were added to, give its id (from the admin's 'team list').")
    sub.add_argument("scope", help="the shared scope's name here, or its id (64 hex) to join it")
    sub.add_argument("url", help="the relay, e.g. http://relay.internal:8391")
    sub.add_argument("key", help="the relay's public key (64 hex)")
    sub.add_argument("--no-sync", action="store_true", help="only record it; sync later")
    sub = action("sync", cmd_sync, "push and pull shared scopes through their relays now")
    sub.add_argument("scope", nargs="?", help="one shared scope (default: all with a relay)")
    sub.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default: 30)")
    action("list", cmd_list, "shared scopes here: members, your role, memories, relay, last sync")
    sub = action("user-key", cmd_user_key, "export your user key (to copy to your other machines) or import it",
                 "Print your user key (secret: it certifies your devices) or, with --import, use the key of "
                 "your other machine here. Kept in <home>/user.key, mode 0600.")
    sub.add_argument("--import", dest="import_hex", metavar="HEX", help="the key printed on your other machine")


def _out(args: argparse.Namespace, value: Any, text: str) -> int:
    print(json.dumps(value, indent=2) if getattr(args, "json", False) else text)
    return 0


def cmd_whoami(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    me = api.team_whoami()
    return _out(args, me, f"user   {me['user']}\ndevice {me['device']}")


def cmd_create(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    made = api.team_create(args.name)
    return _out(args, made, f"created {made['scope']} (id {made['id']}); you are its admin")


def cmd_add(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    info = api.team_set_member(args.name, args.user, args.role)
    return _out(args, info, f"{args.user[:16]}… is a {args.role} of {info['scope']}; sync to tell the relay")


def cmd_remove(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    info = api.team_set_member(args.name, args.user, "removed")
    return _out(args, info, f"{args.user[:16]}… removed from {info['scope']} (not retroactive); sync to tell the relay")


def cmd_promote(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    new_id = api.team_promote(args.memory_id, args.name)
    return _out(args, {"id": new_id}, f"shared as {new_id} in team:{args.name}")


def cmd_relay(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    api.team_use_relay(args.scope, args.url, args.key)
    if args.no_sync:
        return _out(args, {"relay": args.url}, f"{args.scope} will sync through {args.url}")
    return cmd_sync(api, argparse.Namespace(scope=args.scope, timeout=30.0, json=getattr(args, "json", False)))


def cmd_sync(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    reports = api.team_sync(args.scope, args.timeout)
    if getattr(args, "json", False):
        print(json.dumps(reports, indent=2))
    else:
        if not reports:
            print("no shared scope has a relay yet: 'neuralsync team relay NAME URL KEY'", file=sys.stderr)
        for r in reports:
            state = f"error: {r['error']}" if r["error"] else "ok"
            print(f"{r['team']:<24} pushed {r['pushed']}, pulled {r['pulled']}, applied {r['applied']},"
                  f" refused {len(r['refused'])}, waiting {r['waiting']}  {state}")
            for refused in r["refused"][:5]:
                print(f"  refused {refused['op'][:16]}…: {refused['reason']}", file=sys.stderr)
    return 1 if any(r["error"] for r in reports) else 0


def cmd_list(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    teams = api.teams_list()
    if getattr(args, "json", False):
        print(json.dumps(teams, indent=2))
        return 0
    if not teams:
        print("no shared scopes here: 'neuralsync team create NAME', or join one with 'neuralsync team relay'",
              file=sys.stderr)
    for t in teams:
        relay = t["relay"]["url"] if t["relay"] else "no relay"
        print(f"{t['scope']:<24} {t['role'] or 'not a member':<12} {len(t['members'])} members  "
              f"{t['memories']} memories  {relay}  id {t['id']}")
    return 0


def cmd_user_key(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    if args.import_hex:
        user = api.team_user_key(args.import_hex)
        return _out(args, {"user": user}, f"user key imported: you are {user}")
    return _out(args, {"user_key": api.team_user_key()}, api.team_user_key())
