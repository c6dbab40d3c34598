"""The web node's own Serf agent: start it as our child with the node's tags, or attach to one.

The gossip key and RPC token go in a private 0600 config file, never on the command line (argv is
world-readable in ps, and serf 0.8 has no -rpc-auth flag anyway). A child we started is killed by
the kernel if we die, so no orphan keeps advertising an undrained node.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from .config import AgentSettings
from .errors import ConfigError, SourceError
from .rules import service_parts, split_hostport

log = logging.getLogger("lbsync")

START_TIMEOUT = 10.0  # for the child serf's RPC port to open
EXIT_TIMEOUT = 10.0  # for the child serf to exit after leave, before it is killed
PR_SET_PDEATHSIG = 1


def serf_argv(agent: AgentSettings, secrets_file: str = "") -> list[str]:
    """The command line of the child `serf agent`; secrets only through `secrets_file`."""
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
    """The node's tags (drain=1 is added while draining). Without services: role, port, weight.
    With services (`--service ROLE:PORT[:WEIGHT]`): the first one as role, port and weight (its
    spec's weight, else `weight`), so every LB reads it; and every one, the first included, as
    port_ROLE, plus weight_ROLE when its spec gives a weight, for the pool following ROLE."""
    offered = [service_parts(spec) for spec in agent.services]
    if not offered:
        return {"role": agent.role, "port": str(agent.port), "weight": str(agent.weight)}
    role, port, weight = offered[0]
    out = {"role": role, "port": str(port), "weight": str(agent.weight if weight is None else weight)}
    for role, port, weight in offered:
        out[f"port_{role}"] = str(port)
        if weight is not None:
            out[f"weight_{role}"] = str(weight)
    return out


def describe(agent: AgentSettings) -> str:
    """What the node offers, for logs and systemd's status: 'web on port 8000, api on port 9000'."""
    offered = [service_parts(spec)[:2] for spec in agent.services] or [(agent.role, agent.port)]
    return ", ".join(f"{role} on port {port}" for role, port in offered)


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
                wait_exit(child)


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


def wait_exit(child: subprocess.Popen | None) -> None:
    if child is None:
        return
    try:
        child.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        log.warning("serf agent %d did not exit in %g s; killing it", child.pid, EXIT_TIMEOUT)
        child.kill()
        child.wait(5)
