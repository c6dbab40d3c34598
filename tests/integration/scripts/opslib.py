"""What the operator scripts of test_autoscale.py share: their config, the ops log, pid files.

Each script is run as `python SCRIPT CONFIG ARG` by `lbsync autoscale` (or by the test), where
CONFIG is the JSON file `Ops.write()` leaves: where to keep pid files and logs, whom to join.
Every process a script starts is recorded in `<run>/<name>.<role>.pid`, so the test's finaliser
can stop it by PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

CFG = json.loads(open(sys.argv[1]).read())
RUN = CFG["run"]


def note(*words: object) -> None:
    """One line in the ops log: time, action, argument (what the test asserts on)."""
    with open(CFG["log"], "a") as handle:
        handle.write(" ".join([f"{time.time():.3f}", *map(str, words)]) + "\n")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def start(name: str, role: str, argv: list[str]) -> None:
    """argv in its own session, output to <run>/<name>.<role>.log, its PID recorded."""
    with open(f"{RUN}/{name}.{role}.log", "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    with open(f"{RUN}/{name}.{role}.pid", "w") as handle:
        handle.write(str(proc.pid))
