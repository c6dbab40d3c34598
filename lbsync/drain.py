"""Draining a web node: tag drain=1, then wait (bounded) until the LB has stopped sending.

The signal that the LB has let go is the web server's access log (`log_file`): one line per
finished request, so it also covers requests still in flight, needs no privilege and costs one
stat() per poll. Without a log file it falls back to the set of TCP connections on the web port
(psutil), which can miss requests shorter than the poll interval.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from .config import AgentSettings
from .errors import SourceError
from .rules import service_parts

log = logging.getLogger("lbsync")

POLL = 0.1  # how often the wait looks at the stop flag and the drain signal


def drain(client, agent: AgentSettings, pause: Callable[[float], None], urgent: Callable[[], bool]) -> None:
    """Tag drain=1, then wait (bounded) until the LB has stopped sending us new requests."""
    client.tags(set={"drain": "1"})
    push_state(client, agent)
    ports = ", ".join(map(str, served_ports(agent)))
    source = f"access log {agent.log_file}" if agent.log_file else f"connections to port {ports}"
    log.info("draining: drain=1 set; waiting for %g s without a new request (%s), at most %g s",
             agent.drain_quiet, source, agent.drain_timeout)
    started = time.monotonic()
    quiet = wait_quiet(activity_probe(agent), agent.drain_quiet, agent.drain_timeout,
                       pause, urgent)
    took = time.monotonic() - started
    if quiet:
        log.info("drained: no new request for %g s (%.1f s after drain=1)", agent.drain_quiet, took)
    elif urgent():
        log.warning("second signal: leaving now without waiting for the drain")
    else:
        log.warning("drain timeout: requests still arrived after %g s; leaving anyway", took)


def push_state(client, agent: AgentSettings) -> None:
    """Join the LB again: a join is a full state exchange, so the LB learns of drain=1 now.

    Serf gossips a tag update, but seen here: now and then the LB missed it until the next
    periodic push-pull, 10-17 s later, and kept sending a node that wanted to drain.
    """
    try:
        client.join(list(agent.join))
    except SourceError as exc:
        log.warning("drain=1 set, but telling the LB at once failed (%s); it learns by gossip", exc)


def wait_quiet(probe: Callable[[], object], quiet: float, timeout: float,
               pause: Callable[[float], None], abort: Callable[[], bool]) -> bool:
    """True once `probe()` has not changed for `quiet` s; False at `timeout` or on `abort()`."""
    start = since = time.monotonic()
    last = probe()
    while not abort():
        now = time.monotonic()
        if now - since >= quiet:
            return True
        if now - start >= timeout:
            return False
        pause(min(POLL, max(0.0, quiet - (now - since))))
        current = probe()
        if current != last:
            last, since = current, time.monotonic()
    return False


def activity_probe(agent: AgentSettings) -> Callable[[], object]:
    """A function whose value changes whenever the web server gets a new request."""
    if agent.log_file:
        path = agent.log_file

        def log_state() -> object:
            try:
                stat = os.stat(path)
            except OSError:
                return None
            return stat.st_size, stat.st_mtime_ns, stat.st_ino
        return log_state
    ports = frozenset(served_ports(agent))
    return lambda: _connections(ports)


def served_ports(agent: AgentSettings) -> list[int]:
    """The ports the node serves on: every --service's, else `port`."""
    return [service_parts(spec)[1] for spec in agent.services] or [agent.port]


def _connections(ports: frozenset[int]) -> frozenset:
    """Remote ends of TCP connections to our service ports (a new one means a new request)."""
    import psutil

    try:
        conns = psutil.net_connections("tcp")
    except (psutil.Error, OSError):
        return frozenset()
    return frozenset(c.raddr for c in conns
                     if c.laddr and c.laddr.port in ports and c.raddr and c.status == "ESTABLISHED")
