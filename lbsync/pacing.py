"""When to reconcile: spot a change cheaply, wait for a burst to settle, respect the reload budget,
and pace reconnects. Pure state and arithmetic on the times the caller passes in, so the rules are
tested without clocks, sockets or nginx.
"""

from __future__ import annotations

from dataclasses import dataclass

BACKOFF_START = 0.1


def member_key(records: list[dict]) -> tuple:
    """What makes two snapshots render alike: name, status, address, port and tags of each.

    Runs on every poll, so it avoids formatting: address objects compare as they are, tags as a
    frozenset (Serf's map order is random on the wire), records in name order (names are unique).
    """
    return tuple((r.get("Name"), r.get("Status"), r.get("Addr"), r.get("Port"),
                  frozenset((r.get("Tags") or {}).items()))
                 for r in sorted(records, key=_name))


def _name(record: dict) -> str:
    return str(record.get("Name"))


def stats_key(stats: dict) -> tuple:
    """Serf's cheap change counters: a join, leave, failure or reap moves one of them.

    Not a tag update from a peer (its Lamport time is witnessed, not counted), so the full list
    is still polled every `members_interval`.
    """
    serf = stats.get("serf") if isinstance(stats, dict) else None
    serf = serf if isinstance(serf, dict) else {}
    return tuple(serf.get(key) for key in ("member_time", "members", "failed", "left"))


@dataclass
class Snapshot:
    """The members already polled, as a MemberSource: reconcile() needs no second RPC."""

    records: list[dict]

    def members(self) -> list[dict]:
        return list(self.records)


@dataclass
class Debounce:
    """Trailing-edge debounce with a cap: wait for `quiet` seconds without change, at most `cap`
    seconds from the first change, so a burst of joins becomes one reload."""

    first: float | None = None
    last: float | None = None
    forced: bool = False

    @property
    def pending(self) -> bool:
        return self.forced or self.first is not None

    def note(self, now: float) -> None:
        self.first = now if self.first is None else self.first
        self.last = now

    def force(self) -> None:
        """Due at once (connect, resync, edited files): nothing to wait for."""
        self.forced = True

    def due(self, now: float, quiet: float, cap: float) -> bool:
        if self.forced:
            return True
        if self.first is None or self.last is None:
            return False
        return now - self.last >= quiet or now - self.first >= cap

    def clear(self) -> None:
        self.first = self.last = None
        self.forced = False


@dataclass
class Backoff:
    """Capped exponential delay between reconnect attempts."""

    cap: float
    delay: float = BACKOFF_START

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return min(delay, self.cap)

    def reset(self) -> None:
        self.delay = BACKOFF_START


def throttle_left(now: float, last_reload: float | None, min_interval: float) -> float:
    """Seconds until another reload is allowed (0 when it is)."""
    if last_reload is None:
        return 0.0
    return max(0.0, last_reload + min_interval - now)
