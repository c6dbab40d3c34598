"""Static members: backends an operator adds to a pool by hand, beside the ones Serf reports.

An appliance or a legacy host runs no Serf agent; `lbsync member add POOL NAME ADDR:PORT` puts
it in a pool the way Octavia's `member create` does. The store is one JSON file in `state_dir`
(`static-members.json`, written atomically and durably under the run lock). Every reconcile turns
each entry into a Serf-like record (Source "static") and passes it through the same `select` as
a Serf member: allowed_networks, never the LB's own listeners, name rules, one member per
endpoint. A static member whose name a Serf member of the pool also has is skipped, logged, and
the Serf member is used; `add` refuses such a name up front.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from . import rules, state
from .errors import ConfigError, LbsyncError

if TYPE_CHECKING:
    from .config import PoolSettings, Settings

STORE = "static-members.json"


@dataclass(frozen=True)
class StaticMember:
    """One hand-added backend, as stored."""

    name: str
    address: str
    port: int
    weight: int = 1
    backup: bool = False
    drain: bool = False

    def record(self, role: str) -> dict:
        """As Serf would report it, so the selector checks it like any member."""
        tags = {"role": role, "port": str(self.port), "weight": str(self.weight),
                "backup": "1" if self.backup else "0", "drain": "1" if self.drain else "0"}
        return {"Name": self.name, "Addr": self.address, "Status": "alive", "Tags": tags, "Source": "static"}


Store = dict[str, dict[str, StaticMember]]  # pool name -> member name -> member


def load(state_dir: str) -> Store:
    """The store; an entry that does not parse (a hand edit) is left out rather than trusted."""
    data = state.read(state_dir, STORE) or {}
    pools = data.get("pools")
    out: Store = {}
    if not isinstance(pools, dict):
        return out
    for pool, members in pools.items():
        if not isinstance(members, dict):
            continue
        for name, fields in members.items():
            try:
                out.setdefault(pool, {})[name] = StaticMember(name=name, **fields)
            except TypeError:
                continue
    return out


def save(state_dir: str, store: Store) -> None:
    data = {"pools": {pool: {name: {k: v for k, v in asdict(m).items() if k != "name"}
                             for name, m in sorted(members.items())}
                      for pool, members in sorted(store.items()) if members}}
    try:
        state.write(state_dir, STORE, data, durable=True)
        os.chmod(state.path(state_dir, STORE), 0o644)
    except OSError as exc:
        raise LbsyncError(f"cannot write {state.path(state_dir, STORE)}: {exc.strerror or exc}") from None


def records(store: Store, pool: PoolSettings) -> list[dict]:
    return [member.record(pool.follows) for _, member in sorted(store.get(pool.name, {}).items())]


def member_from(name: str, endpoint: str, weight: int, backup: bool, drain: bool) -> StaticMember:
    """A StaticMember from command-line words, each checked by the rule a Serf tag would meet."""
    try:
        rules.node_name(name)
        host, port = rules.split_hostport(endpoint)
        address = ipaddress.ip_address(host)
        rules.bounded_int(weight, *rules.WEIGHT)
    except ValueError as exc:
        raise ConfigError(f"member {rules.printable(name)}: {exc}") from None
    if address.version == 6 and not endpoint.startswith("["):
        raise ConfigError(f"member {name}: write an IPv6 address in brackets, e.g. [{address}]:{port}")
    return StaticMember(name, str(address), port, weight, backup, drain)


def find_pool(settings: Settings, name: str) -> PoolSettings:
    for pool in settings.pools:
        if pool.name == name:
            return pool
    known = ", ".join(p.name for p in settings.pools) or "none: this LB has no [[pool]] tables"
    raise ConfigError(f"no pool named {rules.printable(name)} (pools: {known})")

