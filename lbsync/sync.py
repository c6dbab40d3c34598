"""reconcile(): the one idempotent pipeline every trigger runs; this module is its table of contents.

snapshot -> select -> plan -> apply through a data-plane driver -> record. State always comes
from the full membership the local Serf agent reports, never from an event's delta, so a missed
or repeated event cannot make nginx drift. What the last run applied (state) guards two things:
a membership that vanished without a trace is held for a grace (`guard`), and an endpoint two
members claim stays with the one that served it. The run holds an flock, so a hook, a daemon and
a manual run never interleave; a dry run writes nothing and takes no lock.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING

from . import pair, state
from .drivers.base import Driver, choose
from .files import locked
from .guard import Memory, hold
from .members import Selection, select
from .plan import Applied, MemberSource, Outcome, Plan, SyncResult
from .rules import printable

if TYPE_CHECKING:
    from .config import Settings
    from .health import Target
    from .pools import PoolPlan

log = logging.getLogger("lbsync")


def reconcile(settings: Settings, source: MemberSource, dry_run: bool = False,
              unhealthy: frozenset[Target] = frozenset(), driver: Driver | None = None) -> SyncResult:
    """Bring nginx to exactly what the current membership says; say what changed."""
    started = time.monotonic()
    with contextlib.nullcontext() if dry_run else locked(settings.lock_file, settings.lock_timeout):
        try:
            last = state.read(settings.state_dir, state.LAST_SYNC) or {}  # read once: guard and record
            memory = Memory.of(last)
            records, held = hold(source.members(), memory, time.time(), settings.collapse_grace)  # snapshot
            selection, plan, plans = plan_all(settings, records, memory, unhealthy)
            applying = time.monotonic()
            applied = apply(settings, plan, plans, dry_run, driver)
        except Exception as exc:  # recorded under the lock for `lbsync status` and the metrics
            if not dry_run:
                state.record_failure(settings, exc, time.monotonic() - started)
            raise
        result = SyncResult(applied.outcome, selection.backends, selection.skipped, applied.diff,
                            selection, applied.action, held,
                            tuple((p.pool.name, tuple(m.name for m in p.plan.backends)) for p in plans),
                            tuple((p.pool.name, tuple(p.plan.down())) for p in plans))
        if applied.outcome is not Outcome.DRY_RUN:
            done = time.monotonic()
            state.record_sync(settings, result, (done - started, done - applying), last)
            pair.publish(settings, plan)  # an LB pair's pool digest as a Serf tag; nothing without `vip`
    return result


def plan_all(settings: Settings, records: list[dict], memory: Memory,
             unhealthy: frozenset[Target]) -> tuple[Selection, Plan, tuple[PoolPlan, ...]]:
    """select + plan: the single pool, or every [[pool]] (then `plan` is their union, for the
    record and the LB pair's digest, and each pool's own plan comes third)."""
    if settings.pools:
        from .pools import merged, plan_pools

        plans = plan_pools(settings, records, memory.endpoints, unhealthy)
        selection = merged(plans)
        down = frozenset().union(*(p.plan.unhealthy for p in plans))
    else:
        plans, selection, down = (), select(records, settings, memory.endpoints), frozenset()
        if unhealthy:  # only `lbsync run` has verdicts: the Serf hook does not import health
            from .health import failing

            down = failing(unhealthy, selection.backends)
    log_skips(selection)
    return selection, Plan.of(settings, selection, down), plans


def apply(settings: Settings, plan: Plan, plans: tuple[PoolPlan, ...], dry_run: bool,
          driver: Driver | None) -> Applied:
    """Through the data-plane driver: every pool at once with [[pool]] tables."""
    if settings.pools:
        from .drivers.pools import PoolsDriver

        return PoolsDriver(settings).apply(plans, dry_run)
    return (driver or choose(settings)).apply(plan, dry_run)


def log_skips(selection: Selection) -> None:
    """One warning per refused member, its name and reason escaped: both come from the network."""
    for skip in selection.skipped:
        log.warning("skipping member %s: %s", printable(skip.name), printable(skip.reason))
