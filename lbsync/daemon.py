"""`lbsync run`: the long-running LB mode.

Serf coalesces member events (handlers and RPC event streams alike) for about a second, but the
agent's member list is current within milliseconds, and its log says so as it happens. So the
daemon follows the agent's log on a second connection (`serflog`, `daemon.follow_log`) and reads
the member list on one persistent connection when a member event is logged, and at least every
`idle_interval` as a safety net. While the log is not followed it polls instead: Serf's `stats`
every `poll_interval` (counters that move on every join, leave and failure) and the full list
when they moved, and at least every `members_interval` (a peer's tag update, such as drain,
moves no counter). Any change, a health verdict flipping, an edited template or config, a
(re)connect and a periodic timer are all just triggers for the same `reconcile()` the hook runs,
fed the snapshot already in hand. One loop, one thread per connection to Serf (a client is not
thread-safe); the log reader, health probes and the file watcher run in their own threads and
only raise flags, each of which also wakes the loop.

Per tick: apply requested reloads -> (re)connect -> poll -> note changes -> reconcile when due.
With the live data plane a change is pushed as soon as it is seen: a push costs no reload. With
the reload driver the debounce window (quiet `debounce_min`, capped at `debounce_max`) and the
reload budget (`min_reload_interval`) turn a burst into one reload.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import metrics, sync
from .config import Settings
from .drivers.base import pushes_only
from .errors import LbsyncError, SourceError
from .health import Checker
from .layers import config_path, load
from .pacing import Backoff, Debounce, Snapshot, member_key, stats_key, throttle_left
from .plan import SyncResult
from .pools import health_checked, health_targets, roles
from .sdnotify import notify
from .serf import RpcTarget, SerfClient, connect, lb_members
from .serflog import LogWatch

if TYPE_CHECKING:
    from .statuspage import StatusServer
    from .watch import Watcher

log = logging.getLogger("lbsync")

Reconcile = Callable[..., SyncResult]


class Flag(threading.Event):
    """An Event that also wakes the daemon's loop when set (from a signal handler or a thread)."""

    def __init__(self, wakeup: threading.Event):
        super().__init__()
        self._wakeup = wakeup

    def set(self) -> None:
        super().set()
        self._wakeup.set()


def run_daemon(settings: Settings, args: argparse.Namespace) -> int:
    """`lbsync run`: follow Serf until SIGTERM; SIGHUP re-reads the same layers."""
    def reload_settings() -> Settings:
        return load(args.config, overrides=args.overrides, flags=args.flags)

    path = str(config_path(args.config, os.environ)[0])
    return Daemon(settings, reload_settings, path).run()


class Daemon:
    """The loop's state: the Serf connection, the last snapshot, what is pending and why.

    `client_factory` and `reconcile` are the seams tests drive the loop through (a fake Serf
    client, a recording pipeline); by default they are the real ones.
    """

    def __init__(self, settings: Settings, load_settings: Callable[[], Settings], config_path: str,
                 client_factory: Callable[[RpcTarget], SerfClient] = connect,
                 reconcile: Reconcile = sync.reconcile):
        self.settings = settings
        self.load_settings = load_settings
        self.config_path = config_path
        self.client_factory, self.reconcile = client_factory, reconcile
        self.client: SerfClient | None = None
        self.records: list[dict] = []
        self.records_key: tuple = ()  # member_key(records), kept with them
        self.seen: tuple | None = None  # (member key, unhealthy) last observed
        self.counters: tuple | None = None  # Serf's stats key at the last full poll
        self.next_members = 0.0
        self.live = pushes_only(settings)
        self.ready = False  # READY=1 sent to systemd
        self.debounce = Debounce()
        self.backoff = Backoff(settings.daemon.reconnect_max)
        self.next_connect = 0.0
        self.outage_since: float | None = None
        self.next_resync = 0.0
        self.last_reload: float | None = None
        self.throttle_logged = False
        self.view = metrics.View()
        self.published: dict = {}  # what daemon.json says now; the status page serves the same
        self.health: Checker | None = None
        self.watcher: Watcher | None = None
        self.page: StatusServer | None = None
        self.wakeup = threading.Event()  # any flag below, a member event, a health verdict
        self.stopping = Flag(self.wakeup)
        self.config_changed = Flag(self.wakeup)
        self.template_changed = Flag(self.wakeup)
        self.serf_log: LogWatch | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def run(self) -> int:
        """Loop until SIGTERM/SIGINT; an unreachable agent is waited for, never a reason to exit."""
        self._install_signals()
        self._log_start()
        self._set_health(self.settings)
        self._watch()
        self._serve_page(self.settings)
        self._publish()  # daemon.json names this pid from the start: the hook leaves the textfile to us
        try:
            while not self.stopping.is_set():
                self.tick(time.monotonic())
                self.wakeup.wait(self._sleep_time())
                self.wakeup.clear()  # the flags themselves stay set until tick() handles them
        finally:
            self._shutdown()
        return 0

    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: self.config_changed.set())

    def _log_start(self) -> None:
        d = self.settings.daemon
        health = (f"health checks every {d.health_interval:g} s" + (f" (GET {d.health_path})" if d.health_path else "")
                  if health_checked(self.settings) else "health off")
        follow = (f"serf's log for member events (full list every {d.idle_interval:g} s), else poll"
                  if d.follow_log else "poll")
        pacing = ("live data plane: changes pushed at once" if self.live else
                  f"reload driver: debounce {d.debounce_min:g}-{d.debounce_max:g} s, min reload interval "
                  f"{d.min_reload_interval:g} s")
        log.info("run: following serf at %s (role %s): %s %g s (full list every %g s), %s, resync every "
                 "%g s, %s", self.settings.rpc_addr, ", ".join(roles(self.settings)), follow, d.poll_interval,
                 d.members_interval, pacing, d.resync_interval, health)

    def _shutdown(self) -> None:
        log.info("run: stopping")
        notify("STOPPING=1")
        if self.watcher is not None:
            self.watcher.stop()
        if self.health is not None:
            self.health.stop()
        self._stop_log()
        if self.page is not None:
            self.page.stop()
        self._drop_client()
        self.view.stopped = time.time()
        self._publish()

    def _publish(self) -> None:
        self.published = metrics.publish(self.settings, self.view)

    def _sleep_time(self) -> float:
        """Idle: `idle_interval` while serf's log is followed (a member event wakes the loop at
        once), else `poll_interval`. With a change pending, poll at the quiet window's pace, so a
        slow idle poll does not also stretch the debounce."""
        if self.client is None:
            return max(0.005, min(self.next_connect - time.monotonic(), 1.0))
        d = self.settings.daemon
        if self.debounce.pending:
            return max(0.005, min(d.poll_interval, d.debounce_min))
        return d.idle_interval if self._following() else d.poll_interval

    def _following(self) -> bool:
        return self.serf_log is not None and self.serf_log.up

    # -- one tick -----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Reloads requested -> connect -> poll -> note changes -> reconcile when due."""
        self._handle_requests()
        if self.client is None and (now < self.next_connect or not self._connect(now)):
            return
        if not self._poll(now):
            return
        self._observe(now)
        if now >= self.next_resync:
            self.debounce.force()
        d = self.settings.daemon
        quiet = 0.0 if self.live else d.debounce_min
        if self.debounce.due(now, quiet, d.debounce_max) and not self._throttled(now):
            self._reconcile(now)

    def _connect(self, now: float) -> bool:
        s = self.settings
        try:
            self.client = self.client_factory(s)
        except SourceError as exc:
            self._lost(now, exc)
            return False
        if self.outage_since is not None:
            log.info("reconnected to serf agent at %s after %.1f s; full resync", s.rpc_addr,
                     now - self.outage_since)
            self.view.reconnects += 1
        self.outage_since = None
        self.backoff.reset()
        self.view.set_connected(True, time.time())
        self.debounce.force()  # a full resync after every (re)connect
        self._follow_log()
        return True

    def _poll(self, now: float) -> bool:
        """The full member list when serf logged a member event, its counters moved, a resync is
        due, or it is time; following the log, the counters are not asked for."""
        assert self.client is not None  # tick() connects first
        d = self.settings.daemon
        following = self._following()
        logged = self.serf_log is not None and self.serf_log.take()
        try:
            counters = self.counters if following else stats_key(self.client.stats())
            if logged or counters != self.counters or now >= self.next_members or self.debounce.forced:
                self.records = lb_members(self.client, self.settings)
                self.records_key = member_key(self.records)  # once per fetch, not per tick
                self.counters = counters
                self.next_members = now + (d.idle_interval if following else d.members_interval)
            return True
        except SourceError as exc:
            self._lost(now, exc)
            return False

    def _lost(self, now: float, exc: SourceError) -> None:
        """Drop the connection and schedule a retry; log once per outage, not per attempt."""
        self.view.set_connected(False, time.time(), str(exc))
        self._drop_client()
        if self.outage_since is None:
            self.outage_since = now
            log.warning("%s; nginx keeps its current backends; retrying with backoff up to %g s",
                        exc, self.settings.daemon.reconnect_max)
            self._publish()  # status shows serf_connected: false
        self.next_connect = now + self.backoff.next()

    def _drop_client(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        self._stop_log()
        self.view.set_connected(False, time.time())

    def _follow_log(self) -> None:
        """Follow serf's log beside the RPC connection (started again after every reconnect)."""
        if not self.settings.daemon.follow_log or (self.serf_log is not None and self.serf_log.alive):
            return
        settings = self.settings
        self.serf_log = LogWatch(lambda: self.client_factory(settings), self.wakeup.set)
        self.serf_log.start()

    def _stop_log(self) -> None:
        if self.serf_log is not None:
            self.serf_log.stop()
            self.serf_log = None

    def _observe(self, now: float) -> None:
        unhealthy = self.health.unhealthy() if self.health else frozenset()
        inputs = (self.records_key, unhealthy)
        if inputs != self.seen:
            self.seen = inputs
            self.debounce.note(now)

    def _throttled(self, now: float) -> bool:
        """The reload budget; pushes to the live data plane are not budgeted."""
        if self.live:
            return False
        left = throttle_left(now, self.last_reload, self.settings.daemon.min_reload_interval)
        if left and not self.throttle_logged and self.last_reload is not None:
            log.info("throttled: last reload %.2f s ago; reconciling in %.2f s (min_reload_interval %g s)",
                     now - self.last_reload, left, self.settings.daemon.min_reload_interval)
            self.view.throttled += 1
            self.throttle_logged = True
        return left > 0

    def _reconcile(self, now: float) -> None:
        """Run the pipeline on the snapshot in hand; a failure keeps the live file and the loop."""
        unhealthy = self.seen[1] if self.seen else frozenset()
        waited = now - self.debounce.first if self.debounce.first is not None else 0.0
        self.debounce.clear()
        self.throttle_logged = False
        self.next_resync = now + self.settings.daemon.resync_interval
        self.view.set_health(self.health.snapshot() if self.health else {}, time.time())
        try:
            result = self.reconcile(self.settings, Snapshot(self.records), unhealthy=unhealthy)
            log.debug("reconcile took %.0f ms, %.0f ms after the first change it covers",
                      (time.monotonic() - now) * 1000, waited * 1000)
        except LbsyncError as exc:
            log.error("%s; retrying at the next change or resync", exc)
            self.view.record_error(exc, time.time())
            self._notify(f"STATUS=last run failed: {exc}")
        except Exception as exc:  # a bug must not take the LB's follower down; say what it was
            log.error("reconcile failed unexpectedly (%s: %s); retrying at the next change or resync",
                      type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            self.view.record_error(exc, time.time())
            self._notify(f"STATUS=last run failed unexpectedly: {type(exc).__name__}")
        else:
            self._notify(f"STATUS={len(result.backends)} backends, last run {result.outcome.value}")
            self.view.record(result, time.time())
            if result.reloaded:
                self.last_reload = now
            if result.hold.since is not None:  # the guard holds a pool: look again when its grace ends
                left = result.hold.since + self.settings.collapse_grace - time.time()
                self.next_resync = min(self.next_resync, now + max(left, 0.0) + 0.01)
            if self.health is not None:
                self.health.set_targets(health_targets(self.settings, result.backends))
        self._publish()

    def _notify(self, status: str) -> None:
        """systemd: ready after the first attempt, whatever its outcome (the loop retries on its
        own, and a unit stuck in "activating" would only time out), then a status line per run."""
        if self.ready:
            notify(status)
        else:
            notify("READY=1", status)
            self.ready = True

    # -- hot reload ---------------------------------------------------------------------------

    def _handle_requests(self) -> None:
        if self.config_changed.is_set():
            self.config_changed.clear()
            self._reload_settings()
        if self.template_changed.is_set():
            self.template_changed.clear()
            log.info("template %s changed on disk; re-rendering", self.settings.template)
            self.debounce.force()

    def _reload_settings(self) -> None:
        """Re-read the config; invalid new settings leave the old ones in force."""
        try:
            new = self.load_settings()
        except LbsyncError as exc:
            log.error("config reload failed, keeping the previous settings: %s", exc)
            return
        if new == self.settings:
            log.info("config reloaded: no change")
            return
        old, self.settings = self.settings, new
        self.live = pushes_only(new)
        log.info("config reloaded; re-rendering")
        if (old.rpc_addr, old.rpc_auth, old.rpc_timeout) != (new.rpc_addr, new.rpc_auth, new.rpc_timeout):
            self._drop_client()
            self.next_connect = 0.0
        elif old.daemon.follow_log != new.daemon.follow_log:
            self._stop_log()
            self._follow_log()
        self.backoff.cap = new.daemon.reconnect_max
        self._set_health(new)
        if old.template != new.template:
            self._watch()
        if old.daemon.status_listen != new.daemon.status_listen:
            self._serve_page(new)
        self.debounce.force()

    def _set_health(self, settings: Settings) -> None:
        """Start, retune or stop the checker: on while `daemon.health_path` or a pool asks for checks."""
        if health_checked(settings) and self.health is None:
            self.health = Checker(settings.daemon, on_change=self.wakeup.set)
            self.health.start()
        elif health_checked(settings) and self.health is not None:
            self.health.settings = settings.daemon
        elif self.health is not None:
            self.health.stop()
            self.health = None

    def _serve_page(self, settings: Settings) -> None:
        """Start, move or stop the status page to match `daemon.status_listen`; a page that
        cannot bind is logged and the daemon goes on without it."""
        if self.page is not None:
            self.page.stop()
            self.page, self.view.status_url = None, ""
        if settings.daemon.status_listen:
            from .statuspage import StatusServer

            self.page = StatusServer.start_on(settings.daemon.status_listen, self._page_inputs)
            self.view.status_url = self.page.url if self.page else ""

    def _page_inputs(self) -> tuple[Settings, list[dict], dict]:
        """What the page shows, from the page's thread: references the loop replaces whole."""
        return self.settings, self.records, self.published

    def _watch(self) -> None:
        from .watch import Watcher

        if self.watcher is not None:
            self.watcher.stop()
        self.watcher = Watcher({
            Path(self.settings.template): self.template_changed,
            Path(self.config_path): self.config_changed,
        })
        self.watcher.start()
