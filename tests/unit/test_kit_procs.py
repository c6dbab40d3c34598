"""The test kit's process starter: a `nice` process is niced, its session's autogroup too.

Why it matters: with autogroup scheduling each session is one scheduling group, so the
benchmark's hundred web agents (each standing for another host) would otherwise get a hundred
shares of this machine's CPU against the one share of the LB under test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from kit.net import wait_until


def nice_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[16])  # field 19


def test_a_nice_process_is_niced_with_its_autogroup(procs):
    proc = procs.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], nice=19)
    wait_until(lambda: Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(sys.executable.encode()), 10,
               "the sleeper to exec")
    assert nice_of(proc.pid) == 19
    assert os.getsid(proc.pid) == proc.pid  # still its own session, stopped by its PID
    autogroup = Path(f"/proc/{proc.pid}/autogroup")
    if not autogroup.exists():
        pytest.skip("this kernel has no autogroup scheduling")
    assert autogroup.read_text().split()[-1] == "19"  # "/autogroup-123 nice 19"


def test_processes_start_at_normal_priority_by_default(procs):
    proc = procs.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    assert nice_of(proc.pid) == nice_of(os.getpid())
