"""What the pipeline passes along, from the membership to the data plane and on to the record.

These types sit below `sync`, the drivers and `state`, so none of them imports `sync` (no cycle):
`MemberSource` (where records come from), `Plan` (what the data plane must hold), `Applied` (what
a driver did) and `SyncResult` (what a reconcile reports).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .members import Member, Selection, Skip

if TYPE_CHECKING:
    from .config import Settings


class MemberSource(Protocol):
    """Where member records come from: the Serf agent over RPC, a snapshot in hand, a test list."""

    def members(self) -> list[dict]: ...


class Outcome(enum.Enum):
    UNCHANGED = "unchanged"
    UPDATED = "updated"
    DRY_RUN = "dry-run"


@dataclass(frozen=True)
class Structure:
    """What only a render + check + reload can change: the upstream's shape, not its members."""

    upstream_name: str
    algorithm: str
    hash_key: str
    keepalive: int
    template: str

    @classmethod
    def of(cls, settings: Settings) -> Structure:
        return cls(settings.upstream_name, settings.algorithm, settings.hash_key, settings.keepalive,
                   settings.template)


@dataclass(frozen=True)
class Plan:
    """What the data plane must hold: the validated backends, those failing health checks, and
    the structure around them."""

    selection: Selection
    unhealthy: frozenset[str]
    structure: Structure

    @property
    def backends(self) -> tuple[Member, ...]:
        return self.selection.backends

    @classmethod
    def of(cls, settings: Settings, selection: Selection, unhealthy: frozenset[str] = frozenset()) -> Plan:
        return cls(selection, unhealthy, Structure.of(settings))

    def down(self) -> list[str]:
        """Backends rendered down by health checks (draining ones are down by their own tag)."""
        return sorted(self.unhealthy & {m.name for m in self.backends})


@dataclass(frozen=True)
class Hold:
    """Backends the collapse guard kept in the pool this run, and since when it holds them."""

    since: float | None = None
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Served:
    """What nginx serves, as far as lbsync can read it back: `backends` are (name, endpoint, down)."""

    source: str  # e.g. "live pool v7" or "file /etc/nginx/conf.d/lbs_upstream.conf"
    backends: tuple[tuple[str, str, bool], ...] = ()
    error: str = ""  # why it could not be read


RELOADED, PUSHED = "nginx reloaded", "pushed"


@dataclass(frozen=True)
class Applied:
    """What a driver did: `outcome`, the change as a diff when it has one, and a verb for the log."""

    outcome: Outcome
    diff: str = ""
    action: str = ""  # RELOADED, PUSHED or "" (nothing done to nginx)


@dataclass(frozen=True)
class SyncResult:
    outcome: Outcome
    backends: tuple[Member, ...]
    skipped: tuple[Skip, ...]
    diff: str = ""
    selection: Selection | None = field(default=None, compare=False)
    action: str = ""  # what the driver did to nginx: "nginx reloaded", "pushed" or ""
    hold: Hold = field(default_factory=lambda: Hold())  # backends kept by the collapse guard
    pools: tuple[tuple[str, tuple[str, ...]], ...] = ()  # with [[pool]] tables: (pool, its backends)
    pools_down: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (pool, its backends down by health checks)

    @property
    def reloaded(self) -> bool:
        return self.action == RELOADED
