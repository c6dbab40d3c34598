"""`lbsync status`: what Serf reports, what is rendered, what is skipped and why, recent results.

Reads only: the Serf agent (all members of our role, every status) and the state files that the
hook, the daemon and the autoscaler leave in `state_dir`. Names and reasons come from the
network, so every one is escaped before it reaches the terminal.
"""

from __future__ import annotations

import argparse
import json
import time

from . import state
from .config import Settings
from .drivers.base import choose
from .guard import Memory
from .members import select
from .plan import Served
from .rules import printable

STATE_FILES = (("daemon", state.DAEMON), ("autoscale", state.AUTOSCALE))


def show_status(settings: Settings, args: argparse.Namespace) -> int:
    print(report(settings, args.source_factory(settings).members()))
    return 0


def report(settings: Settings, records: list[dict], served: Served | None = None) -> str:
    """What Serf says, what that renders to, what nginx serves (and any drift), recent results."""
    selection = select(records, settings, Memory.recall(settings.state_dir).endpoints)
    served = served if served is not None else choose(settings).served()
    lines = [f"serf agent {settings.rpc_addr}, role {settings.role!r}:"]
    for status in sorted(selection.by_status):
        names = ", ".join(printable(name) for name in selection.by_status[status])
        lines.append(f"  {printable(status):<8} {names}")
    if not selection.by_status:
        lines.append("  (no member has this role)")
    rendered = ", ".join(f"{m.name} {m.endpoint}{' (draining)' if m.draining else ''}"
                         for m in selection.backends)
    lines.append(f"rendered ({len(selection.backends)}): {rendered or 'none'}")
    lines += _served(served, {(m.name, m.endpoint) for m in selection.backends})
    for skip in selection.skipped:
        lines.append(f"skipped  {printable(skip.name)}: {printable(skip.reason)}")
    lines.append(_last_sync(settings))
    for title, name in STATE_FILES:
        data = state.read(settings.state_dir, name)
        if data is not None:
            lines.append(f"{title}: " + printable(json.dumps(data, sort_keys=True), limit=100000))
    return "\n".join(lines)


def _served(served: Served, rendered: set[tuple[str, str]]) -> list[str]:
    """nginx's side, and a drift line when it is not what the membership renders."""
    if served.error:
        return [f"nginx serves: unknown ({printable(served.error)})"]
    names = ", ".join(f"{name} {endpoint}{' (down)' if down else ''}" for name, endpoint, down in served.backends)
    lines = [f"nginx serves ({served.source}, {len(served.backends)}): {names or 'none'}"]
    held = {(name, endpoint) for name, endpoint, _ in served.backends}
    if held != rendered:
        extra = ", ".join(sorted(n for n, _ in held - rendered)) or "-"
        missing = ", ".join(sorted(n for n, _ in rendered - held)) or "-"
        lines.append(f"drift: nginx serves {extra} beyond the membership and lacks {missing}; "
                     "`lbsync sync` repairs it")
    return lines


def _last_sync(settings: Settings) -> str:
    data = state.read(settings.state_dir, state.LAST_SYNC)
    if data is None:
        return f"last sync: none recorded in {settings.state_dir}"
    age = time.time() - data.get("time", 0)
    return (f"last sync: {data.get('outcome')} {age:.0f} s ago, "
            f"{len(data.get('backends', []))} backends")
