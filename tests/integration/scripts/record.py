"""`record.py LOG ACTION ARG COMMAND...`: note "time ACTION ARG" in LOG, then run COMMAND.

Wraps the lab's boot_web.sh/stop_web.sh as the autoscaler's commands, so the test sees when
each ran and with what."""

import subprocess
import sys
import time

with open(sys.argv[1], "a") as log:
    log.write(f"{time.time():.3f} {sys.argv[2]} {sys.argv[3]}\n")
sys.exit(subprocess.run(sys.argv[4:]).returncode)
