"""Members: parse Serf's member records into typed, validated `Member`s and pick the backends.

Pure functions, no I/O. Names and tags come from the network, so this module is the boundary:
only the fields of a `Member`, each checked for type and range, ever reach a template. A member
that fails a check becomes a `Skip` with a reason an operator can act on.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .config import split_hostport

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
INT_RE = re.compile(r"[0-9]{1,6}")
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")
NO_BACKUP_ALGORITHMS = ("ip_hash", "hash")  # nginx refuses `backup` with these


@dataclass(frozen=True)
class Member:
    """One Serf member, validated and typed. Only these fields can reach nginx's config."""

    name: str
    addr: IPAddress
    status: str
    role: str
    port: int = 80
    weight: int = 1
    draining: bool = False
    backup: bool = False
    max_fails: int | None = None
    fail_timeout: int | None = None
    max_conns: int | None = None

    @cached_property
    def endpoint(self) -> str:
        """host:port as nginx wants it: IPv6 in brackets (cached: it is a key in several places)."""
        host = f"[{self.addr}]" if self.addr.version == 6 else str(self.addr)
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Skip:
    """A member that claimed our role but cannot be rendered, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class Policy:
    """What the LB accepts as a backend (from Settings)."""

    role: str = "web"
    allowed_networks: tuple[str, ...] = ()
    lb_listen: tuple[str, ...] = ()
    algorithm: str = "round_robin"

    @classmethod
    def from_settings(cls, settings: Any) -> Policy:
        return cls(settings.role, settings.allowed_networks, settings.lb_listen, settings.algorithm)


@dataclass(frozen=True)
class Selection:
    """The outcome of `select`: what to render, what was refused, and the rest by status."""

    backends: tuple[Member, ...]
    skipped: tuple[Skip, ...]
    by_status: dict[str, tuple[str, ...]]


# (tag, low, high): integer tags and their bounds
INT_TAGS = (("port", 1, 65535), ("weight", 1, 256), ("max_fails", 0, 1000),
            ("fail_timeout", 1, 3600), ("max_conns", 0, 100000))


def parse(raw: dict) -> Member:
    """One Serf member record -> Member. Raises ValueError with the reason to log."""
    name = raw.get("Name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"name {name!r} is not [A-Za-z0-9._-], 1-128 characters")
    tags = raw.get("Tags") or {}
    if not isinstance(tags, dict):
        raise ValueError("tags are not a map")
    values: dict[str, Any] = {}
    for tag, low, high in INT_TAGS:
        if tag in tags:
            values[tag] = _bounded_int(tag, tags[tag], low, high)
    return Member(
        name=name,
        addr=_address(raw.get("Addr")),
        status=str(raw.get("Status", "")),
        role=str(tags.get("role", "")),
        draining=_flag("drain", tags.get("drain", "")),
        backup=_flag("backup", tags.get("backup", "")),
        **values,
    )


def select(records: Iterable[dict], policy: Policy) -> Selection:
    """Keep alive members with our role that pass every check, sorted by name."""
    checks = _Checks(policy)
    backends: dict[str, Member] = {}
    skipped: list[Skip] = []
    by_status: dict[str, list[str]] = {}
    for raw in records:
        tags = raw.get("Tags") or {}
        if not isinstance(tags, dict) or tags.get("role") != policy.role:
            continue
        name = str(raw.get("Name"))
        by_status.setdefault(str(raw.get("Status")), []).append(name)
        if raw.get("Status") != "alive":
            continue
        try:
            member = parse(raw)
            checks.apply(member)
        except ValueError as exc:
            skipped.append(Skip(name, str(exc)))
            continue
        backends[member.name] = member
    kept, duplicates = _unique_endpoints(sorted(backends.values(), key=lambda m: m.name))
    return Selection(
        backends=tuple(kept),
        skipped=tuple(sorted(skipped + duplicates, key=lambda s: s.name)),
        by_status={status: tuple(sorted(names)) for status, names in by_status.items()},
    )


class _Checks:
    """The policy's checks, with its networks and listen addresses parsed once per select()."""

    def __init__(self, policy: Policy):
        self.networks = [ipaddress.ip_network(cidr, strict=False) for cidr in policy.allowed_networks]
        self.listen = [split_hostport(listen) for listen in policy.lb_listen]
        self.no_backup = policy.algorithm in NO_BACKUP_ALGORITHMS
        self.algorithm = policy.algorithm

    def apply(self, member: Member) -> None:
        """Raise ValueError with the reason when `member` must not receive traffic."""
        addr = member.addr
        if addr.is_unspecified or addr.is_multicast:
            raise ValueError(f"address {addr} cannot receive traffic")
        if self.networks and not any(addr in network for network in self.networks):
            raise ValueError(f"address {addr} is outside allowed_networks")
        for host, port in self.listen:
            if port == member.port and (host in ("", "*", "0.0.0.0", "::") or host == str(addr)):
                raise ValueError(f"{member.endpoint} is the load balancer's own listen address")
        if member.backup and self.no_backup:
            raise ValueError(f"tag backup is not supported with algorithm {self.algorithm}")


def _unique_endpoints(members: list[Member]) -> tuple[list[Member], list[Skip]]:
    """Two members on one host:port would double its share; the first by name wins."""
    seen: dict[str, str] = {}
    kept, dropped = [], []
    for member in members:
        if member.endpoint in seen:
            dropped.append(Skip(member.name, f"{member.endpoint} is already served by {seen[member.endpoint]}"))
        else:
            seen[member.endpoint] = member.name
            kept.append(member)
    return kept, dropped


def _address(value: Any) -> IPAddress:
    """Serf's Addr (bytes from RPC, an ipaddress object or text) -> an address object."""
    if isinstance(value, ipaddress.IPv4Address):  # what SerfClient already decoded
        return value
    try:
        addr = ipaddress.ip_address(value)
    except (TypeError, ValueError):
        raise ValueError(f"address {value!r} is not an IP address") from None
    if addr.version == 6 and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def _bounded_int(tag: str, value: Any, low: int, high: int) -> int:
    text = str(value)
    if tag == "fail_timeout" and text.endswith("s"):
        text = text[:-1]
    if not INT_RE.fullmatch(text) or not low <= int(text) <= high:
        raise ValueError(f"tag {tag}={value!r} is not an integer in {low}..{high}")
    return int(text)


def _flag(tag: str, value: Any) -> bool:
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError(f"tag {tag}={value!r} is not 1/true or 0/false")
