"""Member records: the one builder, in the shape Serf's RPC sends them.

Why raw bytes: Serf sends `Addr` as 4 or 16 raw bytes (msgpack bin), and decoding them is part of
what lbsync does. `record()` is exactly what goes over the wire (what the fake Serf serves);
`decoded()` is what `SerfClient.members()` hands on to `members.select` (an ip_address object),
for tests that start after the client.
"""

from __future__ import annotations

import ipaddress

from lbsync.serf import decode_addr


def record(name: str = "web1", ip: str = "10.0.0.1", status: str = "alive", role: str | None = "web",
           **tags: str) -> dict:
    """A member record as Serf's RPC sends it: Addr as raw bytes, tags as strings.

    `role=None` leaves the role tag out; other keyword arguments are further tags."""
    return {"Name": name, "Addr": ipaddress.ip_address(ip).packed, "Port": 7946, "Status": status,
            "Tags": ({"role": role} if role is not None else {}) | tags,
            "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
            "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4}


def decoded(rec: dict) -> dict:
    """`rec` as the RPC client hands it on: Addr decoded by the client's own decode_addr."""
    return {**rec, "Addr": decode_addr(rec["Addr"])}


def web_records(count: int, prefix: str = "web", net: str = "127.1") -> list[dict]:
    """`count` alive web members on distinct loopback addresses (<net>.X.Y), port 8080."""
    return [record(f"{prefix}{i:05d}", f"{net}.{i // 250}.{i % 250 + 1}", port="8080") for i in range(count)]
