"""The data-plane seam: a driver makes nginx hold a plan, and says what it did.

A driver is chosen by config and is the only part of the pipeline that touches nginx. Adding
one means a module here with a class that has `name` and `apply`, and a line in `choose`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..config import Settings
    from ..plan import Applied, Plan


class Driver(Protocol):
    name: str

    def apply(self, plan: Plan, dry_run: bool) -> Applied:
        """Bring nginx to `plan` (or, with `dry_run`, only say what that would change).

        Idempotent: a plan nginx already holds is UNCHANGED and costs no reload. Raises an
        LbsyncError when nginx cannot be brought there; the last good pool keeps serving.
        """
        ...


def choose(settings: Settings) -> Driver:
    """The driver `settings` ask for."""
    from .reload import ReloadDriver

    return ReloadDriver(settings)
