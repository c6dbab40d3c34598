"""`lbsync agent`: the web node's side. Puts the node in the cluster, answers load, drains.

It starts `serf agent` as its child with the node's tags (role, port, weight), or attaches to a
Serf agent that already answers on `agent.rpc_addr` and sets the tags over RPC. While running it
answers the Serf query `agent.load_query` with the node's 1-minute load average per CPU, so the
LB side can read fleet load without SSH.

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
import base64
import binascii
import contextlib
import ctypes
import json
import logging
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .config import AgentSettings, Settings, split_hostport
from .errors import ConfigError, SourceError
from .members import NAME_RE

log = logging.getLogger("lbsync")

POLL = 0.1  # how often the loops look at the stop flag, the child and the drain signal
START_TIMEOUT = 10.0  # for the child serf's RPC port to open
EXIT_TIMEOUT = 10.0  # for the child serf to exit after leave, before it is killed
DECIMAL_RE = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")
QUERY_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
PR_SET_PDEATHSIG = 1


def main(settings: Settings, args: argparse.Namespace) -> int:
    """Run the web node's agent until a signal, then drain and leave. Returns 0 after a drain."""
    agent = settings.agent
    validate(agent)
    stop = Stopper.install()
    with serf_agent(agent) as child:
        with _client(agent) as client:
            announce(client, agent, attached=child is None)
            responder = Responder(client, agent, child)
            responder.serve_until(lambda: stop.count > 0)
            log.info("%s received: draining (a second signal leaves at once)", stop.last)
            drain(client, agent, responder, urgent=lambda: stop.count > 1)
            log.info("leaving the cluster gracefully")
            client.leave()
        _wait_exit(child)
    log.info("left the cluster; bye")
    return 0


# -- configuration ------------------------------------------------------------------------------

def validate(agent: AgentSettings) -> None:
    """Refuse what would make a broken or invisible node, with the setting's name in the message."""
    if not agent.join:
        raise ConfigError("agent.join is empty: give the LB's Serf address with --join HOST[:PORT]")
    for address in agent.join:
        _check_address(f"agent.join {address!r}", address, port_optional=True)
    for key in ("bind", "rpc_addr") + (("advertise",) if agent.advertise else ()):
        _check_address(f"agent.{key}", getattr(agent, key), port_optional=key == "advertise")
    if agent.node_name and not NAME_RE.fullmatch(agent.node_name):
        raise ConfigError(f"agent.node_name {agent.node_name!r}: use letters, digits, '.', '_' and '-'")
    if not 1 <= agent.port <= 65535:
        raise ConfigError(f"agent.port must be 1..65535, not {agent.port}")
    if not 1 <= agent.weight <= 256:
        raise ConfigError(f"agent.weight must be 1..256, not {agent.weight}")
    if not QUERY_RE.fullmatch(agent.role) or not QUERY_RE.fullmatch(agent.load_query):
        raise ConfigError("agent.role and agent.load_query: use letters, digits, _ and -")
    if not 0 <= agent.drain_quiet <= agent.drain_timeout:
        raise ConfigError(f"agent.drain_quiet ({agent.drain_quiet:g}) must be between 0 and "
                          f"agent.drain_timeout ({agent.drain_timeout:g})")
    if agent.serf_config and not os.path.isfile(agent.serf_config):
        raise ConfigError(f"agent.serf_config {agent.serf_config} is not a file")
    if agent.encrypt_key:
        _check_key(agent.encrypt_key)


def _check_address(what: str, text: str, port_optional: bool = False) -> None:
    if port_optional and not re.search(r":[0-9]*$", text.rsplit("]", 1)[-1]):
        text += ":1"  # a bare host: Serf uses its default port
    try:
        split_hostport(text)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def _check_key(key: str) -> None:
    """Serf wants base64 of 16, 24 or 32 bytes; say so here rather than in Serf's log."""
    try:
        size = len(base64.b64decode(key, validate=True))
    except (binascii.Error, ValueError):
        size = -1
    if size not in (16, 24, 32):
        raise ConfigError("agent.encrypt_key must be base64 of 16, 24 or 32 bytes (see `serf keygen`)")


def serf_argv(agent: AgentSettings, secrets_file: str = "") -> list[str]:
    """The command line of the child `serf agent`.

    The gossip key and RPC token go in `secrets_file` (see `write_secrets`), not on the command
    line: argv is world-readable in ps, and serf 0.8 has no -rpc-auth flag anyway.
    """
    argv = [agent.serf_bin, "agent", "-node", agent.node_name or socket.gethostname(),
            "-bind", agent.bind, "-rpc-addr", agent.rpc_addr]
    if agent.advertise:
        argv += ["-advertise", agent.advertise]
    for key, value in tags(agent).items():
        argv += ["-tag", f"{key}={value}"]
    for address in agent.join:
        argv += ["-retry-join", address]
    for path in (agent.serf_config, secrets_file):
        if path:
            argv += ["-config-file", path]
    return argv


def write_secrets(agent: AgentSettings, directory: str) -> str:
    """A 0600 serf config file with the gossip key and RPC token; "" when neither is set."""
    secrets = {key: value for key, value in (("encrypt_key", agent.encrypt_key),
                                             ("rpc_auth", agent.rpc_auth)) if value}
    if not secrets:
        return ""
    path = os.path.join(directory, "secrets.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(secrets, handle)
    return path


def tags(agent: AgentSettings) -> dict[str, str]:
    return {"role": agent.role, "port": str(agent.port), "weight": str(agent.weight)}


# -- the Serf agent: spawn or attach ------------------------------------------------------------

@contextlib.contextmanager
def serf_agent(agent: AgentSettings) -> Iterator[subprocess.Popen | None]:
    """Yield the child serf we started, or None when one already answers on rpc_addr.

    Whatever happens inside, a child we started is not left running behind us.
    """
    host, port = split_hostport(agent.rpc_addr)
    if _connects(host, port):
        log.info("attaching to the serf agent already running at %s", agent.rpc_addr)
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="lbsync-agent-") as private:
        child = _spawn(serf_argv(agent, write_secrets(agent, private)))
        try:
            _wait_rpc(child, host, port)
            yield child
        finally:
            if child.poll() is None:
                child.terminate()
                _wait_exit(child)


def _spawn(argv: list[str]) -> subprocess.Popen:
    """Start serf in its own process group, so a Ctrl-C reaches only us and we drain first;
    and ask the kernel to kill it if we die, so no orphan keeps advertising an undrained node."""
    log.info("starting %s", " ".join(argv))
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, process_group=0,
                                preexec_fn=_die_with_parent)  # noqa: PLW1509 (no threads here)
    except OSError as exc:
        raise ConfigError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _wait_rpc(child: subprocess.Popen, host: str, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not _connects(host, port):
        if child.poll() is not None:
            raise SourceError(f"serf agent exited with status {child.returncode} at start (see its log)")
        if time.monotonic() > deadline:
            raise SourceError(f"serf agent did not open its RPC port {host}:{port} in {START_TIMEOUT:g} s")
        time.sleep(0.02)


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_exit(child: subprocess.Popen | None) -> None:
    if child is None:
        return
    try:
        child.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        log.warning("serf agent %d did not exit in %g s; killing it", child.pid, EXIT_TIMEOUT)
        child.kill()
        child.wait(5)


def _client(agent: AgentSettings):
    from .serf import SerfClient

    return SerfClient(agent.rpc_addr, agent.rpc_auth, timeout=5.0)


def announce(client, agent: AgentSettings, attached: bool) -> None:
    """An attached agent gets our tags (and loses a drain left by an earlier run) and a join."""
    if not attached:
        log.info("serf agent up; joining %s with tags %s", ", ".join(agent.join), tags(agent))
        return
    client.tags(set=tags(agent), delete=["drain"])
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


# -- drain --------------------------------------------------------------------------------------

def drain(client, agent: AgentSettings, responder: Responder, urgent: Callable[[], bool]) -> None:
    """Tag drain=1, then wait (bounded) until the LB has stopped sending us new requests."""
    client.tags(set={"drain": "1"})
    source = f"access log {agent.log_file}" if agent.log_file else f"connections to port {agent.port}"
    log.info("draining: drain=1 set; waiting for %g s without a new request (%s), at most %g s",
             agent.drain_quiet, source, agent.drain_timeout)
    started = time.monotonic()
    quiet = wait_quiet(activity_probe(agent), agent.drain_quiet, agent.drain_timeout,
                       responder.poll, urgent)
    took = time.monotonic() - started
    if quiet:
        log.info("drained: no new request for %g s (%.1f s after drain=1)", agent.drain_quiet, took)
    elif urgent():
        log.warning("second signal: leaving now without waiting for the drain")
    else:
        log.warning("drain timeout: requests still arrived after %g s; leaving anyway", took)


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
    return lambda: _connections(agent.port)


def _connections(port: int) -> frozenset:
    """Remote ends of TCP connections to our web port (a new one means a new request)."""
    import psutil

    try:
        conns = psutil.net_connections("tcp")
    except (psutil.Error, OSError):
        return frozenset()
    return frozenset(c.raddr for c in conns
                     if c.laddr and c.laddr.port == port and c.raddr and c.status == "ESTABLISHED")


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
