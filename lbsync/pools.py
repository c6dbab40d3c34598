"""Pools: an LB with `[[pool]]` tables runs each pool through the single-pool selection and plan.

Each pool is seen as the single-pool Settings the rest of the pipeline already knows (its role,
upstream name, algorithm, hash key, keepalive), with every pool's listeners added to `lb_listen`
so no member can be one of the LB's own listeners. Its members are the Serf members that serve
its role (their role tag, or a `port_ROLE` tag from `lbsync agent --service`) plus its static
members (`static`). What reaches nginx is all pools at once (drivers/pools).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import rules, static
from .health import Target, failing, targets_for
from .members import Member, Selection, Skip, select, serves
from .plan import Plan

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .config import PoolSettings, Settings

@dataclass(frozen=True)
class PoolPlan:
    """One pool's part of the plan: its table, its settings as a single pool (`settings_for`)
    and what its upstream must hold."""

    pool: PoolSettings
    single: Settings
    plan: Plan


def roles(settings: Settings) -> list[str]:
    """The Serf roles an LB follows: its one role, or every pool's."""
    return sorted({pool.follows for pool in settings.pools}) if settings.pools else [settings.role]


def settings_for(settings: Settings, pool: PoolSettings, own: tuple[str, ...] | None = None) -> Settings:
    """`settings` as the single pool `pool` (what select, Plan and the drivers take); `own`: the
    LB's listeners as `own_listeners` finds them (asked when None). Each pool's live pool file
    is the default one of its upstream (`pool_file` names the single pool's)."""
    own = own_listeners(settings) if own is None else own
    return dataclasses.replace(settings, role=pool.follows, upstream_name=pool.upstream,
                               algorithm=pool.algorithm, hash_key=pool.key, keepalive=pool.keepalive,
                               lb_listen=settings.lb_listen + own, pool_file="", pools=())


def own_listeners(settings: Settings) -> tuple[str, ...]:
    """Every pool's listeners as addresses a member could have: a wildcard one (`*:80`,
    `[::]:80`) stands for each of this host's addresses of its family, so a member on this
    host's port 80 is refused while web nodes elsewhere on port 80 are not."""
    out: list[str] = []
    for pool in settings.pools:
        for listen in pool.listen:
            host, port = rules.split_hostport(listen)
            if host in ("*", "0.0.0.0", "::"):
                out += [f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
                        for addr in local_addresses(6 if host == "::" else 4)]
            else:
                out.append(listen)
    return tuple(out)


def local_addresses(version: int) -> list[str]:
    """This host's addresses of one IP version, now (an LB pair's address comes and goes)."""
    import socket

    import psutil

    family = socket.AF_INET if version == 4 else socket.AF_INET6
    return sorted({a.address.split("%")[0] for addrs in psutil.net_if_addrs().values()
                   for a in addrs if a.family == family})


def plan_pools(settings: Settings, records: list[dict], held: Mapping[str, str],
               unhealthy: frozenset[Target]) -> tuple[PoolPlan, ...]:
    """Every pool's selection (Serf and static members) and plan, its backends failing their
    pool's health check rendered down."""
    store = static.load(settings.state_dir)
    own = own_listeners(settings)
    plans = []
    for pool in settings.pools:
        single = settings_for(settings, pool, own)
        serf_names = {str(r.get("Name")) for r in records if serves(r.get("Tags"), pool.follows)}
        mine, clashes = [], []
        for record in static.records(store, pool):
            if record["Name"] in serf_names:
                clashes.append(Skip(record["Name"], "static member: a Serf member of this pool has the same "
                                                    "name and is used instead (`lbsync member remove` it)"))
            else:
                mine.append(record)
        selection = select(records + mine, single, held)
        selection = dataclasses.replace(selection, skipped=selection.skipped + tuple(clashes))
        check = pool_check(settings, pool)  # verdicts of its own checks only
        down = failing(unhealthy, selection.backends, check) if check else frozenset()
        plans.append(PoolPlan(pool, single, Plan.of(single, selection, down)))
    return tuple(plans)


def merged(plans: tuple[PoolPlan, ...]) -> Selection:
    """All pools' selections as one, for the record, the health checks and the log: a skip
    names its pool; a node in two pools is one backend per pool."""
    by_status: dict[str, set[str]] = {}
    for p in plans:
        for status, names in p.plan.selection.by_status.items():
            by_status.setdefault(status, set()).update(names)
    return Selection(
        backends=tuple(m for p in plans for m in p.plan.backends),
        skipped=tuple(Skip(s.name, f"pool {p.pool.name}: {s.reason}") for p in plans for s in p.plan.selection.skipped),
        by_status={status: tuple(sorted(names)) for status, names in by_status.items()},
    )


def health_targets(settings: Settings, backends: tuple[Member, ...]) -> tuple[Target, ...]:
    """What `lbsync run` probes: a single pool's backends with the daemon's health_path; with
    [[pool]] tables each backend as its pool's `health_check` says (a TCP pool's: none unless
    "connect"; an HTTP GET would fail on a TCP service)."""
    if not settings.pools:
        return targets_for(backends) if settings.daemon.health_path else ()
    out: list[Target] = []
    for pool in settings.pools:
        check = pool_check(settings, pool)
        if check:
            out += targets_for((m for m in backends if m.role == pool.follows), check)
    return tuple(dict.fromkeys(out))


def pool_check(settings: Settings, pool: PoolSettings) -> str:
    """The check a pool's backends get: a path, "connect", or "" for none."""
    if pool.health_check == "off":
        return ""
    if pool.health_check:
        return pool.health_check
    return settings.daemon.health_path if pool.protocol == "http" else ""


def health_checked(settings: Settings) -> bool:
    """Whether `lbsync run` runs active health checks at all."""
    return bool(settings.daemon.health_path) or any(pool_check(settings, pool) for pool in settings.pools)
