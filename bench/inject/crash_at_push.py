#!/usr/bin/env python3
"""A fault injector for bench/faultsuite.py: lbsync's CLI (`run` or `handle`), except that the
process SIGKILLs itself as it is about to push a pool to nginx's control socket, once, when the
trigger file $BENCH_CRASH_TRIGGER exists.

That is the live driver's crash point between "install" and "apply": the pool file on disk is
already the new one, nginx still holds the old pool. Everything else is lbsync unchanged: only
`lbsync.control.call` is wrapped, in this process.
Usage: PYTHONPATH=<checkout> crash_at_push.py run|handle
"""

from __future__ import annotations

import os
import signal
import sys

from lbsync import control
from lbsync.cli import main

TRIGGER = os.environ.get("BENCH_CRASH_TRIGGER", "")
_call = control.call


def call(socket_path: str, method: str, path: str, body: bytes = b"", timeout: float = 2.0):
    if method == "PUT" and TRIGGER:
        try:
            os.unlink(TRIGGER)
        except FileNotFoundError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    return _call(socket_path, method, path, body, timeout)


control.call = call

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
