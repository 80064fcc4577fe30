"""CLI commands of replication: ``peer add|list|remove``, ``sync [NAME]``, ``conflicts``.

``neuralsync identity`` (in :mod:`.services`) prints the key a peer needs.
Handlers take the open facade and the parsed arguments, like :mod:`.app`'s.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from .output import short_json

if TYPE_CHECKING:
    from ..unified_memory_api import UnifiedMemoryAPI


def add_sync_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register the replication commands on the CLI's subcommand factory."""
    cmd = add("peer", None, "trusted replicas to sync with: add, list, remove")
    actions = cmd.add_subparsers(dest="peer_action", metavar="ACTION", required=True)
    sub = actions.add_parser("add", help="trust a replica (again: change its URL)",
                             description="Trust a replica. Run 'neuralsync identity' there for its key; "
                                         "it must add this replica too before they can sync.")
    sub.add_argument("name", help="a short name, e.g. laptop")
    sub.add_argument("url", help="where its 'neuralsync serve' listens, e.g. http://laptop.lan:8373")
    sub.add_argument("--key", required=True, metavar="PUBLIC_KEY", help="its public key (64 hex digits)")
    sub.set_defaults(handler=cmd_peer_add)
    sub = actions.add_parser("list", help="trusted replicas and their last sync")
    sub.set_defaults(handler=cmd_peer_list)
    sub = actions.add_parser("remove", help="stop trusting a replica")
    sub.add_argument("name")
    sub.set_defaults(handler=cmd_peer_remove)
    for parser in actions.choices.values():
        parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    cmd = add("sync", cmd_sync, "exchange ops with one trusted peer or all of them, and report what moved")
    cmd.add_argument("name", nargs="?", help="the peer (default: every peer)")
    cmd.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default: 30)")

    cmd = add("conflicts", cmd_conflicts, "concurrent writes and the values that lost, newest first")
    cmd.add_argument("--id", dest="record_id", help="only this memory")
    cmd.add_argument("--limit", type=int, default=50, help="at most this many (default: 50)")


def cmd_peer_add(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Trust a peer; prints it."""
    peer = api.add_peer(args.name, args.url, args.key)
    print(json.dumps(peer) if args.json else f"peer {peer['name']} at {peer['url']} trusted (key {peer['key']})")
    return 0


def cmd_peer_list(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Trusted peers."""
    peers = api.list_peers()
    if args.json:
        print(json.dumps(peers, indent=2))
        return 0
    if not peers:
        print("no peers yet: 'neuralsync peer add NAME URL --key KEY'", file=sys.stderr)
    for peer in peers:
        state = f"error: {peer['last_error']}" if peer["last_error"] else (
            f"synced {_ago(peer['synced_at'])}" if peer["synced_at"] else "never synced")
        print(f"{peer['name']:<16} {peer['url']:<32} {peer['key'][:16]}…  {state}")
    return 0


def cmd_peer_remove(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Stop trusting a peer (NotFound, exit 3, if unknown)."""
    api.remove_peer(args.name)
    print(json.dumps({"removed": args.name}) if args.json else f"peer {args.name} removed")
    return 0


def cmd_sync(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Sync; exit 1 if any peer failed (the others' progress is kept)."""
    if args.name is None and not api.list_peers():
        print("neuralsync: no peers to sync with: 'neuralsync peer add NAME URL --key KEY'", file=sys.stderr)
        return 1
    reports = api.sync(args.name, timeout=args.timeout)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    for report in reports:
        if args.json:
            continue
        if not report.ok:
            print(f"{report.peer}: FAILED: {report.error}")
            continue
        line = (f"{report.peer}: received {_count(report.applied, 'new op')}, sent {report.sent}"
                f" ({_count(report.round_trips, 'round trip')},"
                f" {_size(report.bytes_sent + report.bytes_received)}, {report.seconds:.2f} s)")
        if report.rejected:
            line += f"; REFUSED {_count(report.rejected, 'invalid op')} (see 'neuralsync stats')"
        if report.waiting:
            line += f"; {_count(report.waiting, 'op')} still waiting for predecessors"
        if report.error:
            line += f"; {report.error}"
        print(line)
    return 0 if all(r.ok for r in reports) else 1


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def cmd_conflicts(api: UnifiedMemoryAPI, args: argparse.Namespace) -> int:
    """Concurrent writes that were merged, and what lost."""
    rows = api.conflicts(args.record_id, args.limit)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    if not rows:
        print("no conflicts recorded", file=sys.stderr)
    for row in rows:
        print(f"{row['record_id']} {row['field']}: kept {short_json(row['winner_value'])}"
              f" (by {row['winner_author'][:8]}), lost {short_json(row['loser_value'])}"
              f" (by {row['loser_author'][:8]}) - {row['resolution']}")
    return 0




def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def _ago(ms: int) -> str:
    from ..utils import now_ms

    seconds = max(0, (now_ms() - ms) // 1000)
    return f"{seconds} s ago" if seconds < 120 else f"{seconds // 60} min ago" if seconds < 7200 else \
        f"{seconds // 3600} h ago"
