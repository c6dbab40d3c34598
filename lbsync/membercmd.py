"""`lbsync member add|remove|list`: static members, in the style of Octavia's member commands.

`add` checks the member exactly as a reconcile would (name rules, allowed_networks, never one of
the LB's listeners, one member per endpoint) and refuses a name a Serf member of the pool has;
the store changes under the run lock, then one reconcile brings nginx there at once (a daemon
would only notice at its next resync).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from . import static
from .errors import ConfigError
from .files import locked
from .members import select, serves
from .plan import PUSHED, RELOADED
from .pools import settings_for
from .rules import printable

if TYPE_CHECKING:
    from .config import Settings


def add_options(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(title="actions", dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add a static member to a pool, then sync",
                             description="Add a backend that runs no Serf agent to POOL and sync nginx.")
    add.add_argument("pool", metavar="POOL", help="a [[pool]] name")
    add.add_argument("name", metavar="NAME", help="member name ([A-Za-z0-9._-]; unique in the pool, Serf included)")
    add.add_argument("endpoint", metavar="ADDR:PORT", help="IP address and port, e.g. 10.0.0.5:8080 or [fd00::5]:80")
    add.add_argument("--weight", type=int, default=1, help="1-256 (default 1)")
    add.add_argument("--backup", action="store_true", help="only used when no primary member is up")
    add.add_argument("--drain", action="store_true", help="added draining: in the pool, no new requests")
    remove = actions.add_parser("remove", help="remove a static member from a pool, then sync")
    remove.add_argument("pool", metavar="POOL")
    remove.add_argument("name", metavar="NAME")
    show = actions.add_parser("list", help="list static members (of one pool, or all)")
    show.add_argument("pool", metavar="POOL", nargs="?")
    show.add_argument("--json", action="store_true", help="as JSON: {pool: {name: fields}}")


def run_member(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list(settings, args)
    pool = static.find_pool(settings, args.pool)
    with locked(settings.lock_file, settings.lock_timeout):
        store = static.load(settings.state_dir)
        members = store.setdefault(pool.name, {})
        if args.action == "add":
            member = static.member_from(args.name, args.endpoint, args.weight, args.backup, args.drain)
            _check_new(settings, args, pool, members, member)
            members[member.name] = member
            done = f"added {member.name} ({args.endpoint}) to pool {pool.name}"
        else:
            if args.name not in members:
                raise ConfigError(f"pool {pool.name} has no static member {printable(args.name)}")
            del members[args.name]
            done = f"removed {args.name} from pool {pool.name}"
        static.save(settings.state_dir, store)
    print(done, flush=True)  # stored: should the sync below fail, the next reconcile applies it
    from .sync import reconcile

    result = reconcile(settings, args.source_factory(settings))
    print({RELOADED: "nginx reloaded", PUSHED: "pushed to nginx, no reload"}.get(result.action, "nginx unchanged"))
    return 0


def _check_new(settings: Settings, args: argparse.Namespace, pool, members: dict, member: static.StaticMember) -> None:
    """Refuse what a reconcile would skip, with the reason it would log."""
    if member.name in members:
        raise ConfigError(f"pool {pool.name} already has a static member {member.name}; remove it first")
    single = settings_for(settings, pool)
    record = member.record(pool.follows)
    selection = select([record] + [m.record(pool.follows) for m in members.values()], single)
    refused = {skip.name: skip.reason for skip in selection.skipped}
    if member.name in refused:
        raise ConfigError(f"member {member.name}: {refused[member.name]}")
    clash = [r for r in args.source_factory(settings).members()
             if str(r.get("Name")) == member.name and serves(r.get("Tags"), pool.follows)]
    if clash:
        raise ConfigError(f"pool {pool.name} already has a Serf member named {member.name}; pick another name")


def _list(settings: Settings, args: argparse.Namespace) -> int:
    store = static.load(settings.state_dir)
    if args.pool:
        pool = static.find_pool(settings, args.pool)
        store = {pool.name: store.get(pool.name, {})}
    if args.json:
        out = {pool: {name: {k: v for k, v in vars(m).items() if k != "name"} for name, m in members.items()}
               for pool, members in store.items()}
        sys.stdout.write(json.dumps(out, indent=1, sort_keys=True) + "\n")
        return 0
    rows = [("POOL", "NAME", "ADDRESS", "WEIGHT", "FLAGS")]
    for pool_name, members in sorted(store.items()):
        for name, m in sorted(members.items()):
            address = f"[{m.address}]:{m.port}" if ":" in m.address else f"{m.address}:{m.port}"
            flags = ",".join(flag for flag, on in (("backup", m.backup), ("drain", m.drain)) if on) or "-"
            rows.append((pool_name, name, address, str(m.weight), flags))
    if len(rows) == 1:
        print("no static members")
        return 0
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0
