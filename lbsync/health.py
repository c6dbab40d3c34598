"""Active health checks: OSS nginx has none, so a backend that Serf still reports alive but that
hangs would keep receiving (and stalling) requests until Serf's failure detector gave up on it.

Each rendered backend gets `GET daemon.health_path` (with [[pool]] tables: its pool's
`health_check`, a path to GET or a TCP connect) every `health_interval` seconds with a
`health_timeout`. Like Octavia's health monitor, `health_fall` consecutive failures mark it down
and `health_rise` consecutive successes bring it back. A new backend starts healthy, so a join is
routed at once. A verdict belongs to one target (name, endpoint, check): a node serving two
pools is judged in each on its own. The checker only reports the failing targets; reconcile()
renders their backends `down` in the pool they were probed for (`failing`).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .control import status_code

log = logging.getLogger("lbsync")

MAX_WORKERS = 16  # probes of one round run in parallel; a hung backend must not delay the others
STATUS_LINE_MAX = 256  # bytes read at most to find the status line


@dataclass(frozen=True)
class Target:
    """What to probe: a rendered backend's name and endpoint, and how: `check` is a path to GET,
    "connect" (a TCP connect: a TCP pool's backend) or "" (GET the daemon's health_path)."""

    name: str
    host: str
    port: int
    check: str = ""


@dataclass(frozen=True)
class BackendHealth:
    """Counters for one backend: streaks decide, `healthy` is the verdict."""

    healthy: bool = True
    oks: int = 0
    fails: int = 0
    error: str = ""


def observe(state: BackendHealth, ok: bool, error: str, rise: int, fall: int) -> BackendHealth:
    """One probe result -> the next state. Pure, so the rise/fall rules are tested without sockets."""
    if ok:
        oks = state.oks + 1
        return BackendHealth(state.healthy or oks >= rise, oks, 0, "")
    fails = state.fails + 1
    return BackendHealth(state.healthy and fails < fall, 0, fails, error)


def probe(target: Target, path: str, timeout: float) -> str:
    """GET `path` on the backend ("connect": only connect); '' when it answered 2xx/3xx (or
    accepted) within `timeout` in all, else why not."""
    if path == "connect":
        return connect_probe(target, timeout)
    try:
        status = http_status(target, path, time.monotonic() + timeout)
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}" if (exc.strerror or str(exc)) else type(exc).__name__
    except ValueError as exc:  # it answered, but not HTTP
        return str(exc)
    return "" if 200 <= status < 400 else f"HTTP {status}"


def http_status(target: Target, path: str, deadline: float) -> int:
    """The status code of `GET path` (HTTP/1.0, Connection: close); only the status line is read.

    On a bare socket, not http.client: a round probes every backend every few seconds, and
    http.client parses each reply's headers with the email package, which at a hundred backends
    cost `lbsync run` most of its CPU and held the GIL its loop needs during a join storm."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    request = (f"GET {path} HTTP/1.0\r\nHost: {host}:{target.port}\r\nUser-Agent: lbsync-health\r\n"
               "Connection: close\r\n\r\n").encode()
    with socket.create_connection((target.host, target.port), timeout=_left(deadline)) as sock:
        sock.settimeout(_left(deadline))
        sock.sendall(request)
        head = b""
        while b"\r\n" not in head and len(head) < STATUS_LINE_MAX:
            sock.settimeout(_left(deadline))
            chunk = sock.recv(STATUS_LINE_MAX)
            if not chunk:
                break
            head += chunk
    status = status_code(head)
    if status is None:
        raise ValueError(f"not an HTTP reply: {head[:40]!r}" if head else "closed without a reply")
    return status


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


class Checker:
    """Probes the current targets in a background thread; `unhealthy()` is safe from any thread."""

    def __init__(self, daemon_settings, probe_fn=probe, on_change: Callable[[], None] = lambda: None):
        self.settings = daemon_settings
        self.on_change = on_change  # a verdict flipped: the daemon's loop wakes up
        self._probe = probe_fn
        self._targets: tuple[Target, ...] = ()
        self._states: dict[Target, BackendHealth] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lbsync-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def set_targets(self, targets: tuple[Target, ...]) -> None:
        """Probe these from now on; counters of targets no longer probed are forgotten."""
        with self._lock:
            self._targets = targets
            self._states = {t: s for t, s in self._states.items() if t in targets}

    def unhealthy(self) -> frozenset[Target]:
        """The targets marked down (see `failing` for the backends that makes down)."""
        with self._lock:
            return frozenset(t for t, s in self._states.items() if not s.healthy)

    def snapshot(self) -> dict[str, dict]:
        """Per backend name: verdict, streaks and last error, for daemon.json. A node probed for
        several pools shows a failing check first: it is down somewhere."""
        with self._lock:
            states = {}
            for t in self._targets:
                state = self._states.get(t, BackendHealth())
                if t.name not in states or not state.healthy:
                    states[t.name] = state
        return {n: {"healthy": s.healthy, "oks": s.oks, "fails": s.fails, "error": s.error}
                for n, s in sorted(states.items())}

    def run_round(self, pool: ThreadPoolExecutor) -> None:
        """Probe every target once, in parallel, and fold the results into the counters."""
        with self._lock:
            targets = self._targets
        cfg = self.settings
        futures = [(t, pool.submit(self._probe, t, t.check or cfg.health_path, cfg.health_timeout)) for t in targets]
        for target, future in futures:
            self._record(target, future.result())

    def _record(self, target: Target, error: str) -> None:
        cfg = self.settings
        with self._lock:
            if target not in self._targets:
                return  # it left while being probed
            before = self._states.get(target, BackendHealth())
            after = observe(before, not error, error, cfg.health_rise, cfg.health_fall)
            self._states[target] = after
        if before.healthy and not after.healthy:
            log.warning("backend %s %s:%d failed %d health checks (%s): marking it down",
                        target.name, target.host, target.port, after.fails, error)
            self.on_change()
        elif after.healthy and not before.healthy:
            log.info("backend %s %s:%d passed %d health checks: back in rotation",
                     target.name, target.host, target.port, after.oks)
            self.on_change()

    def _loop(self) -> None:
        with ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="lbsync-probe") as pool:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    self.run_round(pool)
                except Exception as exc:  # noqa: BLE001 -- a dead checker would freeze every verdict
                    log.error("health check round failed: %s", exc)
                left = self.settings.health_interval - (time.monotonic() - started)
                self._stop.wait(max(left, 0.01))


def targets_for(backends, check: str = "") -> tuple[Target, ...]:
    """Members rendered as backends -> what to probe (draining ones are already down)."""
    return tuple(Target(m.name, str(m.addr), m.port, check) for m in backends if not m.draining)


def failing(unhealthy: frozenset[Target], backends, check: str = "") -> frozenset[str]:
    """Names of the `backends` (one pool's) whose probe with `check` is marked down."""
    return frozenset(t.name for t in targets_for(backends, check) if t in unhealthy)


def connect_probe(target: Target, timeout: float) -> str:
    """A TCP connect to the backend: '' when it accepted in time, else why not."""
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout):
            return ""
    except TimeoutError:
        return f"no connection within {timeout:g} s"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"

