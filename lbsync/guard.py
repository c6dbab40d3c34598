"""What the last applied pool remembers, and the rule that leans on it: a membership that
collapses without evidence is held for a grace instead of emptying the pool.

A Serf agent restarted without its snapshot (or a lost snapshot file, or a fresh LB agent)
knows only itself: every web node vanishes from its member list at once, without ever being
reported `left` or `failed`. Rendering that would answer 503 until the nodes re-join (seen: 33 s
with `lbsync run`). So when at least half of the applied backends vanish without a trace, they
stay in the pool for `collapse_grace` seconds, logged and recorded for `lbsync status`; genuine
departures (a `left` or `failed` record) still apply at once. In hook mode the grace is checked
at the next event: there is no timer between events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from . import state
from .plan import Hold

log = logging.getLogger("lbsync")


@dataclass(frozen=True)
class Memory:
    """The last applied pool: member records by name, endpoint holders, and a collapse held since."""

    pool: dict[str, dict] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)
    collapse_since: float | None = None

    @classmethod
    def recall(cls, state_dir: str) -> Memory:
        return cls.of(state.read(state_dir, state.LAST_SYNC) or {})

    @classmethod
    def of(cls, data: dict) -> Memory:
        """From last_sync.json's content, already read."""
        pool, endpoints = data.get("pool"), data.get("endpoints")
        since = data.get("collapse_since")
        return cls(pool if isinstance(pool, dict) else {}, endpoints if isinstance(endpoints, dict) else {},
                   since if isinstance(since, (int, float)) else None)


def hold(records: list[dict], memory: Memory, now: float, grace: float) -> tuple[list[dict], Hold]:
    """`records`, plus the applied backends that vanished without a trace while a collapse lasts."""
    present = {record.get("Name") for record in records}
    vanished = sorted(name for name in memory.pool if name not in present)
    if not vanished or 2 * len(vanished) < len(memory.pool):
        return records, Hold()
    since = memory.collapse_since if memory.collapse_since is not None else now
    if now - since >= grace:
        log.warning("membership collapse held %.0f s (collapse_grace): dropping %s", now - since,
                    ", ".join(vanished))
        return records, Hold()
    log.warning("membership collapsed: %d of %d backends vanished from Serf without leaving or failing "
                "(agent restarted without its snapshot?); keeping %s for %.0f s more", len(vanished),
                len(memory.pool), ", ".join(vanished), grace - (now - since))
    kept = [{**memory.pool[name], "Status": "alive"} for name in vanished]
    return records + kept, Hold(since, tuple(vanished))
