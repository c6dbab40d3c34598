"""`lbsync handle`, but with members read from a file instead of a Serf agent.

Used by bench_handle.py to time the hook as Serf runs it (a fresh interpreter per event) at
1,000 and 10,000 members, which no single machine can host as real agents. Everything after
the snapshot (select, fingerprint, render, nginx -t, install, reload) is the real code path,
and the snapshot itself is decoded as the RPC client decodes it (msgpack, raw Addr bytes).
Usage: BENCH_FAKE_MEMBERS=members.msgpack SERF_EVENT=member-join python bench/fake_handle.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lbsync.cli import main  # noqa: E402


class FileSource:
    """A members reply saved as Serf's msgpack body, decoded like SerfClient.members_filtered."""

    def __init__(self, settings=None):
        self.path = os.environ["BENCH_FAKE_MEMBERS"]

    def members(self) -> list[dict]:
        import msgpack

        from lbsync.serf import decode_addr

        with open(self.path, "rb") as handle:
            body = msgpack.unpackb(handle.read())
        return [{**member, "Addr": decode_addr(member["Addr"])} for member in body["Members"]]


if __name__ == "__main__":
    sys.exit(main(["handle"], source_factory=FileSource))
