"""`lbsync agent`: the web node's side. Puts the node in the cluster, answers load, drains.

It starts `serf agent` as its child with the node's tags (role, port, weight; with `--service`
also port_ROLE and weight_ROLE per service, see serfagent.tags), or attaches to a Serf agent
that already answers on `agent.rpc_addr` and sets the tags over RPC. While running it answers
the Serf query `agent.load_query` with the node's 1-minute load average per CPU, so the LB side
can read fleet load without SSH.

On SIGTERM or SIGINT it drains, because a node that simply vanished would cost the requests in
flight and make the LB wait for Serf's failure detection:

1. set tag ``drain=1``: the LB renders the node ``down`` and stops sending *new* requests;
2. wait until no new request arrives for `drain_quiet` seconds, bounded by `drain_timeout`.
   The signal is the web server's access log (`log_file`): one line per finished request, so
   it also covers the requests still in flight, needs no privilege and costs one stat() per
   poll. Without a log file it falls back to the set of TCP connections on the web port
   (psutil), which can miss requests shorter than the poll interval;
3. a graceful Serf `leave`, so peers see *left* rather than *failed*; the child serf exits.

A second signal skips the wait and leaves at once. An attached Serf agent is left too: Serf's
`leave` ends the agent, which is what "this node is going away" means.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from .config import AgentSettings, Settings
from .drain import drain
from .errors import ConfigError, SourceError
from .rules import DECIMAL_RE, SERF_TAGS_MAX, tags_size
from .sdnotify import notify
from .serf import connect
from .serfagent import describe, serf_agent, tags, wait_exit

log = logging.getLogger("lbsync")

POLL = 0.1  # how often the loop looks at the stop flag and the child


def run_agent(settings: Settings, args: argparse.Namespace) -> int:
    """Run the web node's agent until a signal, then drain and leave. Returns 0 after a drain."""
    agent = settings.agent
    validate(agent)
    stop = Stopper.install()
    with serf_agent(agent) as child:
        with connect(agent) as client:
            announce(client, agent, attached=child is None)
            responder = Responder(client, agent, child)
            notify("READY=1", f"STATUS=in the cluster as {describe(agent)}")
            responder.serve_until(lambda: stop.count > 0)
            log.info("%s received: draining (a second signal leaves at once)", stop.last)
            notify("STOPPING=1", "STATUS=draining")
            drain(client, agent, responder.poll, urgent=lambda: stop.count > 1)
            log.info("leaving the cluster gracefully")
            client.leave()
        wait_exit(child)
    log.info("left the cluster; bye")
    return 0


def validate(agent: AgentSettings) -> None:
    """What the values' own rules cannot know: a node must join somewhere, its files must exist,
    its tags (with drain=1) must fit in what Serf takes."""
    if not agent.join:
        raise ConfigError("agent.join is empty: give the LB's Serf address with --join HOST[:PORT]")
    if agent.serf_config and not os.path.isfile(agent.serf_config):
        raise ConfigError(f"agent.serf_config {agent.serf_config} is not a file")
    size = tags_size({**tags(agent), "drain": "1"})
    if size > SERF_TAGS_MAX:
        raise ConfigError(f"agent.services: the node's tags take {size} bytes with drain=1; Serf's limit is "
                          f"{SERF_TAGS_MAX}: offer fewer services or give them shorter roles")


def announce(client, agent: AgentSettings, attached: bool) -> None:
    """An attached agent gets our tags and a join; it loses a drain and the services (port_ROLE,
    weight_ROLE) an earlier run left that we no longer offer."""
    if not attached:
        log.info("serf agent up; joining %s with tags %s", ", ".join(agent.join), tags(agent))
        return
    ours = tags(agent)
    stale = [key for key in client.stats().get("tags") or {}
             if key.startswith(("port_", "weight_")) and key not in ours]
    client.tags(set=ours, delete=["drain", *stale])
    try:
        joined = client.join(list(agent.join))
        log.info("tags %s set; joined %d of %s", tags(agent), joined, ", ".join(agent.join))
    except SourceError as exc:
        log.warning("tags set, but joining %s failed: %s", ", ".join(agent.join), exc)


# -- load queries -------------------------------------------------------------------------------

class Responder:
    """Answers load queries on the client whose stream received them (Serf needs that)."""

    def __init__(self, client, agent: AgentSettings, child: subprocess.Popen | None):
        self.client, self.agent, self.child = client, agent, child
        self.stream = client.stream(f"query:{agent.load_query}")

    def serve_until(self, done: Callable[[], bool]) -> None:
        while not done():
            self.poll(POLL)

    def poll(self, timeout: float) -> None:
        """Wait up to `timeout` for one query and answer it; fail if our serf died."""
        if self.child is not None and self.child.poll() is not None:
            raise SourceError(f"serf agent exited with status {self.child.returncode}")
        record = self.stream.next(timeout)
        if record and record.get("Event") == "query" and record.get("Name") == self.agent.load_query:
            self.answer(record.get("ID"))

    def answer(self, query_id) -> None:
        try:
            value = load_value(self.agent)
        except ValueError as exc:
            log.warning("not answering load query: %s", exc)
            return
        try:
            self.client.respond(query_id, value.encode())
        except SourceError as exc:  # e.g. the query timed out; a dead connection fails the next poll
            log.warning("load query %s not answered: %s", query_id, exc)


def load_value(agent: AgentSettings) -> str:
    """The 1-minute load average per CPU as ASCII decimal, e.g. "0.42".

    When `load_file` is set and exists, its number is the answer instead: a per-node load that a
    test or the lab controls. Raises ValueError when that file does not hold a plain decimal.
    """
    if agent.load_file:
        try:
            text = Path(agent.load_file).read_text().strip()
        except FileNotFoundError:
            text = None
        except OSError as exc:
            raise ValueError(f"cannot read {agent.load_file}: {exc.strerror}") from None
        if text is not None:
            if not DECIMAL_RE.fullmatch(text):
                raise ValueError(f"{agent.load_file} holds {text[:20]!r}, not a decimal number")
            return text
    import psutil

    return f"{psutil.getloadavg()[0] / (psutil.cpu_count() or 1):.2f}"


class Stopper:
    """Counts SIGTERM/SIGINT: the first starts the drain, a second one cuts it short."""

    def __init__(self) -> None:
        self.count = 0
        self.last = ""

    @classmethod
    def install(cls) -> Stopper:
        stopper = cls()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stopper._handle)
        return stopper

    def _handle(self, signum, frame) -> None:
        """Only count: logging here could re-enter a handler lock the main code holds."""
        self.count += 1
        self.last = signal.Signals(signum).name
