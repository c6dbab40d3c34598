"""reconcile(): the one idempotent pipeline every trigger runs; this module is its table of contents.

snapshot -> select -> plan -> apply through a data-plane driver -> record. State always comes
from the full membership the local Serf agent reports, never from an event's delta, so a missed
or repeated event cannot make nginx drift. The run holds an flock, so a hook, a daemon and a
manual run never interleave.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import state
from .drivers.base import Driver, choose
from .files import locked
from .members import Selection, select
from .plan import MemberSource, Outcome, Plan, SyncResult
from .rules import printable

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger("lbsync")


def reconcile(settings: Settings, source: MemberSource, dry_run: bool = False,
              unhealthy: frozenset[str] = frozenset(), driver: Driver | None = None) -> SyncResult:
    """Bring nginx to exactly what the current membership says; say what changed."""
    with locked(settings.lock_file, settings.lock_timeout):
        selection = select(source.members(), settings)  # snapshot, then select
        log_skips(selection)
        plan = Plan.of(settings, selection, unhealthy)
        applied = (driver or choose(settings)).apply(plan, dry_run)
    result = SyncResult(applied.outcome, selection.backends, selection.skipped, applied.diff, selection,
                        applied.action)
    if applied.outcome is not Outcome.DRY_RUN:
        state.record_sync(settings.state_dir, result)
    return result


def log_skips(selection: Selection) -> None:
    """One warning per refused member, its name and reason escaped: both come from the network."""
    for skip in selection.skipped:
        log.warning("skipping member %s: %s", printable(skip.name), printable(skip.reason))
