"""The lab as the autoscaler's provider (the command provider with every step):
`lab_nodes.py LAB_DIR list` prints "serf-webN webN" for each lab node whose agent or web server
runs (the provider's inventory); `lab_nodes.py LAB_DIR drain N` sends the node's `lbsync agent`
SIGTERM, as `systemctl stop lbsync-agent` (a cloud node's drain-query handler) does: drain=1,
wait until the LB lets go, leave. It returns at once; the autoscaler waits until the node left."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def pid_of(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


lab, action = Path(sys.argv[1]), sys.argv[2]
if action == "list":
    for node in sorted(lab.glob("web[0-9]*")):
        if pid_of(node / "agent.pid") or pid_of(node / "web.pid"):
            print(f"serf-{node.name} {node.name}")
elif action == "drain":
    pid = pid_of(lab / f"web{sys.argv[3]}" / "agent.pid")
    if pid is None:
        print(f"serf-web{sys.argv[3]} has no running agent")
        sys.exit(1)
    os.kill(pid, signal.SIGTERM)
