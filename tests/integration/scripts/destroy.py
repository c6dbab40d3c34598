"""Scale-in command: stop web node INDEX (its serf agent, then its web server) by PID."""

from __future__ import annotations

import os
import signal
import sys
import time

from opslib import RUN, note, pid_alive

name = f"web{sys.argv[2]}"
note("destroy", sys.argv[2])
for role in ("serf", "web"):
    pid = int(open(f"{RUN}/{name}.{role}.pid").read())
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
