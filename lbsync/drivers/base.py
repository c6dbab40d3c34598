"""The data-plane seam: a driver makes nginx hold a plan, and says what it did.

A driver is chosen by config and is the only part of the pipeline that touches nginx. Adding
one means a module here with a class that has `name` and `apply`, and a line in `choose`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..config import Settings
    from ..plan import Applied, Plan, Served


class Driver(Protocol):
    name: str

    def served(self) -> Served:
        """What nginx serves now, read back for `lbsync status` (never raises)."""
        ...

    def apply(self, plan: Plan, dry_run: bool) -> Applied:
        """Bring nginx to `plan` (or, with `dry_run`, only say what that would change).

        Idempotent: a plan nginx already holds is UNCHANGED and costs no reload. Raises an
        LbsyncError when nginx cannot be brought there; the last good pool keeps serving.
        """
        ...


def choose(settings: Settings) -> Driver:
    """The driver `settings` ask for; `auto` is live when nginx's Lua module is installed."""
    if data_plane(settings) == "live":
        from .live import LiveDriver

        return LiveDriver(settings)
    from .reload import ReloadDriver

    return ReloadDriver(settings)


def data_plane(settings: Settings) -> str:
    """"live" or "reload": what `data_plane` resolves to on this host."""
    if settings.data_plane != "auto":
        return settings.data_plane
    return "live" if all(os.path.exists(module) for module in settings.lua_modules) else "reload"


def pushes_only(settings: Settings) -> bool:
    """Whether a membership change never costs a reload: the live data plane, and no TCP pool
    (those are always rendered and reloaded). The daemon budgets reloads only when it may."""
    return data_plane(settings) == "live" and all(pool.protocol == "http" for pool in settings.pools)
