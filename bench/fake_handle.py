"""`lbsync handle`, but with members read from a JSON file instead of a Serf agent.

Used by bench_handle.py to time the hook as Serf runs it (a fresh interpreter per event) at
1,000 and 10,000 members, which no single machine can host as real agents. Everything after
the snapshot (select, fingerprint, render, nginx -t, install, reload) is the real code path.
Usage: BENCH_FAKE_MEMBERS=members.json SERF_EVENT=member-join python bench/fake_handle.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lbsync.sync  # noqa: E402
from lbsync.cli import main  # noqa: E402


class FileSource:
    """Member records as the RPC client returns them (Addr as text, which members.py accepts)."""

    def __init__(self, settings=None):
        self.path = os.environ["BENCH_FAKE_MEMBERS"]

    def members(self) -> list[dict]:
        with open(self.path) as handle:
            return json.load(handle)


if __name__ == "__main__":
    lbsync.sync.SerfSource = FileSource  # cmd_handle looks it up when an event arrives
    sys.exit(main(["handle"]))
