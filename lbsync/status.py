"""`lbsync status`: what Serf reports, what is rendered, what is skipped and why, recent results.

Reads only: the Serf agent (all members of our role, every status) and the state files that the
hook, the daemon and the autoscaler leave in `state_dir`.
"""

from __future__ import annotations

import argparse
import json
import time

from .config import Settings
from .members import Policy, select
from .sync import SerfSource, load_state

STATE_FILES = (("daemon", "daemon.json"), ("autoscale", "autoscale.json"))


def main(settings: Settings, args: argparse.Namespace) -> int:
    print(report(settings, SerfSource(settings).members()))
    return 0


def report(settings: Settings, records: list[dict]) -> str:
    selection = select(records, Policy.from_settings(settings))
    lines = [f"serf agent {settings.rpc_addr}, role {settings.role!r}:"]
    for status in sorted(selection.by_status):
        lines.append(f"  {status:<8} {', '.join(selection.by_status[status])}")
    if not selection.by_status:
        lines.append("  (no member has this role)")
    rendered = ", ".join(f"{m.name} {m.endpoint}{' (draining)' if m.draining else ''}"
                         for m in selection.backends)
    lines.append(f"rendered ({len(selection.backends)}): {rendered or 'none'}")
    for skip in selection.skipped:
        lines.append(f"skipped  {skip.name}: {skip.reason}")
    lines.append(_last_sync(settings))
    for title, name in STATE_FILES:
        state = load_state(settings, name)
        if state is not None:
            lines.append(f"{title}: " + json.dumps(state, sort_keys=True))
    return "\n".join(lines)


def _last_sync(settings: Settings) -> str:
    state = load_state(settings)
    if state is None:
        return f"last sync: none recorded in {settings.state_dir}"
    age = time.time() - state.get("time", 0)
    return (f"last sync: {state.get('outcome')} {age:.0f} s ago, "
            f"{len(state.get('backends', []))} backends")

