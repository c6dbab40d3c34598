"""The one in-memory member source: what `reconcile()` reads instead of a Serf agent.

Why: the pipeline only needs `members() -> list[dict]` (the MemberSource protocol in
lbsync.plan), so tests of the pipeline and the benchmarks at sizes no machine can host as real
agents hand it records directly. Records are served decoded, as SerfClient returns them.
"""

from __future__ import annotations

from pathlib import Path

from kit.records import decoded, record


class ListSource:
    """Serves `records` (decoded, as the RPC client returns them) on every `members()` call."""

    def __init__(self, records: list[dict]):
        self.records = [decoded(r) if isinstance(r["Addr"], bytes) else r for r in records]
        self.calls = 0

    @classmethod
    def of(cls, *names: str) -> ListSource:
        """Alive web members named `names` on 10.0.0.1, 10.0.0.2, ... (no port tag: port 80)."""
        return cls([record(name, f"10.0.0.{i + 1}") for i, name in enumerate(names)])

    @classmethod
    def from_msgpack(cls, path: str | Path) -> ListSource:
        """A members reply saved as Serf's msgpack body ({"Members": [...]}, raw Addr bytes)."""
        import msgpack

        return cls(msgpack.unpackb(Path(path).read_bytes())["Members"])

    def members(self) -> list[dict]:
        self.calls += 1
        return self.records
