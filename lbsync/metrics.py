"""The daemon's view of the world, published after each reconcile for people and for Prometheus.

`state_dir/daemon.json` is what `lbsync status` reads; `daemon.metrics_file` is the Prometheus
textfile for node_exporter (built by `exposition` from the run record every runner shares, plus
this view). Both are replaced atomically, so a reader never sees half a file; a failure to write
them is logged and never stops the daemon. The view also keeps the last hour for the status
page's plot (pool size, reloads, pushes) and the daemon's own events (Serf lost and back, health
verdicts flipping), beside the membership events every run records (`record`).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from . import state
from .errors import LbsyncError
from .plan import PUSHED, SyncResult

log = logging.getLogger("lbsync")

HOUR = 3600.0
MAX_POINTS = 2000  # plot points kept (a change every 2 s for an hour)
MAX_EVENTS = 100


@dataclass
class View:
    """What the daemon knows: membership, health, and how its reconciles went."""

    started: float = field(default_factory=time.time)
    stopped: float | None = None
    connected: bool = False
    reconnects: int = 0
    outcomes: Counter = field(default_factory=Counter)  # unchanged / updated / error
    throttled: int = 0
    reloads: int = 0
    pushes: int = 0
    last_reconcile: float | None = None
    last_outcome: str = ""
    last_error: str = ""
    last_reload: float | None = None
    last_push: float | None = None
    by_status: dict = field(default_factory=dict)
    backends: list = field(default_factory=list)
    draining: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    health: dict = field(default_factory=dict)
    health_since: dict = field(default_factory=dict)  # backend -> when its verdict last changed
    status_url: str = ""
    points: deque = field(default_factory=lambda: deque(maxlen=MAX_POINTS))  # (time, pool size, up)
    applies: deque = field(default_factory=lambda: deque(maxlen=MAX_POINTS))  # (time, "reload"|"push")
    events: deque = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))  # [time, kind, name, detail]

    def record(self, result: SyncResult, now: float) -> None:
        """Fold one successful reconcile into the view."""
        outcome = result.outcome.value
        self.outcomes[outcome] += 1
        self.last_reconcile, self.last_outcome, self.last_error = now, outcome, ""
        if result.reloaded:
            self.reloads, self.last_reload = self.reloads + 1, now
            self.applies.append((now, "reload"))
        elif result.action == PUSHED:
            self.pushes, self.last_push = self.pushes + 1, now
            self.applies.append((now, "push"))
        if result.selection is not None:
            self.by_status = {k: list(v) for k, v in sorted(result.selection.by_status.items())}
        self.backends = [m.name for m in result.backends]
        self.draining = [m.name for m in result.backends if m.draining]
        self.skipped = {s.name: s.reason for s in result.skipped}
        self.point(now)

    def record_error(self, error: Exception, now: float) -> None:
        self.outcomes["error"] += 1
        self.last_reconcile, self.last_outcome, self.last_error = now, "error", str(error)

    def set_connected(self, connected: bool, now: float, why: str = "") -> None:
        if connected != self.connected:
            self.event(now, "serf", "", "connected" if connected else f"lost: {why}" if why else "disconnected")
        self.connected = connected

    def set_health(self, health: dict, now: float) -> None:
        """The checker's snapshot; a verdict that flips is an event and restarts its `since`."""
        for name, verdict in health.items():
            before = self.health.get(name)
            if before is None or before["healthy"] != verdict["healthy"]:
                self.health_since[name] = now
                if before is not None:
                    detail = "healthy again" if verdict["healthy"] else f"down: {verdict.get('error', '')}"
                    self.event(now, "health", name, detail)
        self.health_since = {n: t for n, t in self.health_since.items() if n in health}
        self.health = health

    def event(self, now: float, kind: str, name: str, detail: str) -> None:
        self.events.append([now, kind, name, detail])

    def point(self, now: float) -> None:
        """One plot point: pool size and backends taking requests (not draining, not down)."""
        unhealthy = {n for n, h in self.health.items() if not h["healthy"]}
        up = len([n for n in self.backends if n not in unhealthy and n not in self.draining])
        self.points.append((now, len(self.backends), up))


def to_json(view: View, now: float) -> dict:
    """daemon.json: this daemon's view, for `lbsync status` and the status page."""
    recent = now - HOUR
    return {
        "pid": os.getpid(),
        "started": view.started,
        "stopped": view.stopped,
        "status_url": view.status_url,
        "serf_connected": view.connected,
        "members": view.by_status,
        "backends": view.backends,
        "unhealthy": sorted(n for n, h in view.health.items() if not h["healthy"]),
        "health": {n: {**h, "since": view.health_since.get(n)} for n, h in view.health.items()},
        "skipped": view.skipped,
        "last_reconcile": view.last_reconcile,
        "last_outcome": view.last_outcome,
        "last_error": view.last_error,
        "last_reload": view.last_reload,
        "last_push": view.last_push,
        "reloads": view.reloads,
        "pushes": view.pushes,
        "reconciles": dict(view.outcomes),
        "throttled": view.throttled,
        "reconnects": view.reconnects,
        "events": list(view.events),
        "points": [list(p) for p in view.points if p[0] >= recent],
        "applies": [list(a) for a in view.applies if a[0] >= recent],
    }


def publish(settings, view: View) -> dict:
    """Write daemon.json and the metrics file atomically; log, never raise, on failure.
    Returns what daemon.json now says (the status page serves the same)."""
    data = to_json(view, time.time())
    try:
        state.write(settings.state_dir, state.DAEMON, data)
    except (OSError, LbsyncError) as exc:
        log.warning("cannot write daemon state: %s", exc)
    if settings.daemon.metrics_file:
        from .exposition import write_textfile

        try:
            write_textfile(Path(settings.daemon.metrics_file), settings,
                           state.read(settings.state_dir, state.LAST_SYNC) or {}, data)
        except (OSError, LbsyncError) as exc:
            log.warning("cannot write %s: %s", settings.daemon.metrics_file, exc)
    return data
