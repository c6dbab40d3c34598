"""Drain command: tag node NAME drain=1, wait until it has had no request for 2 s, then leave."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from opslib import CFG, RUN, note

name = sys.argv[2]
note("drain", name)
rpc = open(f"{RUN}/{name}.rpc").read()


def serf(*args: str) -> None:
    subprocess.run([CFG["serf"], *args, "-rpc-addr", rpc], check=True, timeout=20, capture_output=True)


serf("tags", "-set", "drain=1")
since, access = time.time(), f"{RUN}/{name}.access"
deadline = time.monotonic() + 30
while time.time() - max(since, os.path.getmtime(access) if os.path.exists(access) else 0) < 2.0:
    if time.monotonic() > deadline:
        print(f"{name} still gets requests")
        sys.exit(1)
    time.sleep(0.1)
serf("leave")
