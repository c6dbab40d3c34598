"""The daemon's view of the world, published after each reconcile for people and for Prometheus.

`state_dir/daemon.json` is what `lbsync status` prints; `daemon.metrics_file` is Prometheus text
format for node_exporter's textfile collector. Both are replaced atomically, so a reader never
sees half a file. A failure to write them is logged and never stops the daemon.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from . import state
from .files import write_atomic
from .plan import SyncResult

log = logging.getLogger("lbsync")

WINDOW = 60.0  # "reloads in the last minute"


@dataclass
class View:
    """What the daemon knows: membership, health, and how its reconciles went."""

    started: float = field(default_factory=time.time)
    connected: bool = False
    reconnects: int = 0
    outcomes: Counter = field(default_factory=Counter)  # unchanged / updated / error
    throttled: int = 0
    last_reconcile: float | None = None
    last_outcome: str = ""
    last_error: str = ""
    last_reload: float | None = None
    reload_times: deque = field(default_factory=deque)
    by_status: dict = field(default_factory=dict)
    backends: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    health: dict = field(default_factory=dict)

    def record(self, result: SyncResult, now: float) -> None:
        """Fold one successful reconcile into the view."""
        outcome = result.outcome.value
        self.outcomes[outcome] += 1
        self.last_reconcile, self.last_outcome, self.last_error = now, outcome, ""
        if result.reloaded:
            self.last_reload = now
            self.reload_times.append(now)
        if result.selection is not None:
            self.by_status = {k: list(v) for k, v in sorted(result.selection.by_status.items())}
        self.backends = [m.name for m in result.backends]
        self.skipped = {s.name: s.reason for s in result.skipped}

    def record_error(self, error: Exception, now: float) -> None:
        self.outcomes["error"] += 1
        self.last_reconcile, self.last_outcome, self.last_error = now, "error", str(error)

    def reloads_last_minute(self, now: float) -> int:
        while self.reload_times and self.reload_times[0] < now - WINDOW:
            self.reload_times.popleft()
        return len(self.reload_times)


def to_json(view: View, now: float) -> dict:
    return {
        "pid": os.getpid(),
        "started": view.started,
        "serf_connected": view.connected,
        "members": view.by_status,
        "backends": view.backends,
        "unhealthy": sorted(n for n, h in view.health.items() if not h["healthy"]),
        "health": view.health,
        "skipped": view.skipped,
        "last_reconcile": view.last_reconcile,
        "last_outcome": view.last_outcome,
        "last_error": view.last_error,
        "last_reload": view.last_reload,
        "reloads_last_minute": view.reloads_last_minute(now),
        "reconciles": dict(view.outcomes),
        "throttled": view.throttled,
        "reconnects": view.reconnects,
    }


def to_prometheus(view: View, now: float) -> str:
    """Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP lbsync_{name} {help_text}")
        lines.append(f"# TYPE lbsync_{name} {kind}")
        lines.extend(f"lbsync_{name}{labels} {value}" for labels, value in samples)

    unhealthy = sum(1 for h in view.health.values() if not h["healthy"])
    metric("backends", "gauge", "Backends rendered into the upstream.", [("", len(view.backends))])
    metric("backends_unhealthy", "gauge", "Rendered backends marked down by health checks.",
           [("", unhealthy)])
    metric("members", "gauge", "Members of our role by Serf status.",
           [(f'{{status="{s}"}}', len(n)) for s, n in sorted(view.by_status.items())])
    metric("skipped_members", "gauge", "Members refused (bad tags, policy).", [("", len(view.skipped))])
    metric("reconciles_total", "counter", "Reconciles by outcome.",
           [(f'{{outcome="{o}"}}', view.outcomes.get(o, 0)) for o in ("unchanged", "updated", "error")])
    metric("reloads_last_minute", "gauge", "nginx reloads in the last 60 s.",
           [("", view.reloads_last_minute(now))])
    metric("throttled_total", "counter", "Reconciles delayed by min_reload_interval.",
           [("", view.throttled)])
    metric("serf_connected", "gauge", "1 while the RPC connection to Serf is up.",
           [("", int(view.connected))])
    metric("serf_reconnects_total", "counter", "Reconnects to the Serf agent.", [("", view.reconnects)])
    for name, value in (("last_reconcile_timestamp_seconds", view.last_reconcile),
                        ("last_reload_timestamp_seconds", view.last_reload)):
        if value is not None:
            metric(name, "gauge", name.replace("_", " ").capitalize() + ".", [("", value)])
    return "\n".join(lines) + "\n"


def publish(settings, view: View) -> None:
    """Write daemon.json and the metrics file atomically; log, never raise, on failure."""
    now = time.time()
    try:
        state.write(settings.state_dir, state.DAEMON, to_json(view, now))
        if settings.daemon.metrics_file:
            write_atomic(Path(settings.daemon.metrics_file), to_prometheus(view, now))
    except OSError as exc:
        log.warning("cannot write daemon state: %s", exc)
