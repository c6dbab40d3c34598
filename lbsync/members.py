"""Members: parse Serf's member records into typed, validated `Member`s and pick the backends.

Pure functions, no I/O. Names and tags come from the network, so this module is the boundary:
only the fields of a `Member`, each checked for type and range, ever reach a template. A member
that fails a check becomes a `Skip` with a reason an operator can act on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from . import rules

if TYPE_CHECKING:
    from .config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

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
    # "serf", or "static" (`lbsync member add`); out of repr, so fingerprints of files rendered
    # before static members existed stay the same (the pools context lists static names itself)
    source: str = field(default="serf", repr=False)

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
class Selection:
    """The outcome of `select`: what to render, what was refused, and the rest by status."""

    backends: tuple[Member, ...]
    skipped: tuple[Skip, ...]
    by_status: dict[str, tuple[str, ...]]


# (tag, (low, high)): integer tags and their bounds
INT_TAGS = (("port", rules.PORT), ("weight", rules.WEIGHT), ("max_fails", rules.MAX_FAILS),
            ("fail_timeout", rules.FAIL_TIMEOUT), ("max_conns", rules.MAX_CONNS))


def serves(tags: Any, role: str) -> bool:
    """Whether a member's tags put it in the pool following `role`: its role tag, or one of the
    services a node running several advertises (`lbsync agent --service ROLE:PORT`: port_ROLE)."""
    return isinstance(tags, dict) and (tags.get("role") == role or f"port_{role}" in tags)


def as_role(raw: dict, role: str) -> dict:
    """The record as the pool following `role` sees it: a node whose primary role is another
    one is seen with that service's port (port_ROLE) and weight (weight_ROLE, else 1)."""
    tags = raw.get("Tags") or {}
    if not isinstance(tags, dict) or tags.get("role") == role:
        return raw
    view = {key: value for key, value in tags.items() if key != "weight"}
    view.update(role=role, port=tags.get(f"port_{role}"))
    if f"weight_{role}" in tags:
        view["weight"] = tags[f"weight_{role}"]
    return {**raw, "Tags": view}


def parse(raw: dict) -> Member:
    """One Serf member record -> Member. Raises ValueError with the reason to log."""
    name = raw.get("Name")
    try:
        rules.node_name(name)
    except ValueError as exc:
        raise ValueError(f"name {exc}") from None
    tags = raw.get("Tags") or {}
    if not isinstance(tags, dict):
        raise ValueError("tags are not a map")
    values: dict[str, Any] = {}
    for tag, (low, high) in INT_TAGS:
        if tag in tags:
            values[tag] = _tag(tag, tags[tag], lambda v: rules.bounded_int(_seconds(tag, v), low, high))
    return Member(
        name=str(name),
        addr=_address(raw.get("Addr")),
        status=str(raw.get("Status", "")),
        role=str(tags.get("role", "")),
        draining=_tag("drain", tags.get("drain", ""), rules.boolean),
        backup=_tag("backup", tags.get("backup", ""), rules.boolean),
        source="static" if raw.get("Source") == "static" else "serf",
        **values,
    )


def select(records: Iterable[dict], policy: Settings, held: Mapping[str, str] | None = None) -> Selection:
    """Keep alive members with our role that pass every check of `policy`, sorted by name.

    `held` (endpoint -> name) is what the last applied pool served: it settles who keeps an
    endpoint that two members claim.
    """
    checks = _Checks(policy)
    backends: dict[str, Member] = {}
    skipped: list[Skip] = []
    by_status: dict[str, list[str]] = {}
    for raw in records:
        if not serves(raw.get("Tags"), policy.role):
            continue
        raw = as_role(raw, policy.role)
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
    kept, duplicates = _unique_endpoints(sorted(backends.values(), key=lambda m: m.name), held or {})
    return Selection(
        backends=tuple(kept),
        skipped=tuple(sorted(skipped + duplicates, key=lambda s: s.name)),
        by_status={status: tuple(sorted(names)) for status, names in by_status.items()},
    )


class _Checks:
    """The policy's checks, with its networks and listen addresses parsed once per select()."""

    def __init__(self, policy: Settings):
        self.networks = [ipaddress.ip_network(cidr, strict=False) for cidr in policy.allowed_networks]
        self.listen = [rules.split_hostport(listen) for listen in policy.lb_listen]
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


def _unique_endpoints(members: list[Member], held: Mapping[str, str]) -> tuple[list[Member], list[Skip]]:
    """One member per host:port, never chosen by name: a second name on an endpoint could
    otherwise take over its tags (drain, weight) or double its share.

    The member that served the endpoint in the last applied pool keeps it; newcomers are skipped.
    When none of the claimants served it, all are skipped: a conflict for the operator to see.
    """
    claims: dict[str, list[Member]] = {}
    for member in members:
        claims.setdefault(member.endpoint, []).append(member)
    kept, dropped = [], []
    for endpoint, claimants in claims.items():
        holder = held.get(endpoint)
        if len(claimants) == 1:
            kept.append(claimants[0])
        elif any(m.name == holder for m in claimants):
            kept += [m for m in claimants if m.name == holder]
            dropped += [Skip(m.name, f"{endpoint} is already served by {holder}") for m in claimants
                        if m.name != holder]
        else:
            names = " and ".join(m.name for m in claimants)
            dropped += [Skip(m.name, f"{names} both claim {endpoint} and neither served it before: "
                                     "a conflict, refused until one leaves") for m in claimants]
    return sorted(kept, key=lambda m: m.name), dropped


def to_record(member: Member) -> dict:
    """A member back as a Serf record (JSON-safe): `parse(to_record(m)) == m`, so a held member
    re-enters the pipeline through the same checks as any other."""
    tags = {"role": member.role, "port": str(member.port), "weight": str(member.weight),
            "drain": "1" if member.draining else "0", "backup": "1" if member.backup else "0"}
    for key in ("max_fails", "fail_timeout", "max_conns"):
        if getattr(member, key) is not None:
            tags[key] = str(getattr(member, key))
    record = {"Name": member.name, "Addr": str(member.addr), "Status": member.status, "Tags": tags}
    return record | {"Source": "static"} if member.source == "static" else record


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


def _seconds(tag: str, value: Any) -> Any:
    """nginx writes fail_timeout with a unit; accept `10s` as well as `10`."""
    text = str(value)
    return text[:-1] if tag == "fail_timeout" and text.endswith("s") else value


def _tag(tag: str, value: Any, parse) -> Any:
    try:
        return parse(value)
    except ValueError:
        raise ValueError(f"tag {tag}={value!r} is not {_ALLOWED[tag]}") from None


_ALLOWED = {tag: f"an integer in {low}..{high}" for tag, (low, high) in INT_TAGS}
_ALLOWED |= {"drain": "1/true or 0/false", "backup": "1/true or 0/false"}
