"""`lbsync handle`, but with members read from a file instead of a Serf agent.

Used by bench_handle.py to time the hook as Serf runs it (a fresh interpreter per event) at
1,000 and 10,000 members, which no single machine can host as real agents. Everything after
the snapshot (select, fingerprint, render, nginx -t, install, reload) is the real code path,
and the snapshot itself is decoded as the RPC client decodes it (msgpack, raw Addr bytes), by
the test kit's in-memory source, handed to the CLI through its `source_factory` seam.
Usage: PYTHONPATH=.:tests BENCH_FAKE_MEMBERS=members.msgpack SERF_EVENT=member-join python bench/fake_handle.py
"""

from __future__ import annotations

import os
import sys

from kit.source import ListSource

from lbsync.cli import main


def file_source(settings) -> ListSource:
    return ListSource.from_msgpack(os.environ["BENCH_FAKE_MEMBERS"])


if __name__ == "__main__":
    sys.exit(main(["handle"], source_factory=file_source))
