"""Real `serf agent`s on loopback addresses, one address per node, for tests, lab and bench.

Why one address per node: Serf identifies members by address and the LB renders `addr:port`,
so nodes sharing 127.0.0.1 would hide exactly the bugs a cluster has. Linux routes all of
127.0.0.0/8 to loopback, so every node gets its own 127.x.y.z with no setup.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kit.net import connects, free_port, wait_until
from kit.procs import Proc, Processes, died, require


@dataclass
class SerfNode:
    name: str
    ip: str
    bind_port: int
    rpc_port: int
    proc: Proc

    @property
    def rpc_addr(self) -> str:
        return f"{self.ip}:{self.rpc_port}"

    @property
    def bind_addr(self) -> str:
        return f"{self.ip}:{self.bind_port}"


def start_serf(procs: Processes, name: str, ip: str, tags: dict[str, str] | None = None,
               join: str | None = None, handler: str | None = None, extra: list[str] | tuple = (),
               env: dict | None = None, rpc_port: int | None = None, bind_port: int | None = None,
               nice: int = 0) -> SerfNode:
    """A real `serf agent` on `ip` with the LAN-fast `local` profile; waits until RPC answers.

    `env` reaches the agent and so its event handler (Serf passes its environment on); `extra`
    are more command-line arguments (a later `-log-level` wins over the default debug);
    `bind_port` reuses a gossip port (an agent restarted where it ran before); `nice`: see
    `Processes.start`."""
    bind_port = bind_port or free_port(ip)
    while rpc_port is None or rpc_port == bind_port:  # two free_port() calls can agree
        rpc_port = free_port(ip)
    argv = [require("serf"), "agent", "-node", name, "-bind", f"{ip}:{bind_port}",
            "-rpc-addr", f"{ip}:{rpc_port}", "-profile", "local", "-log-level", "debug", *extra]
    for key, value in (tags or {}).items():
        argv += ["-tag", f"{key}={value}"]
    if join:
        argv += ["-join", join]
    if handler:
        argv += ["-event-handler", handler]
    proc = procs.start(f"serf-{name}", argv, env, nice=nice)
    wait_until(lambda: connects(ip, rpc_port) or died(proc), 10, f"serf agent {name} RPC")
    return SerfNode(name, ip, bind_port, rpc_port, proc)


def start_serf_from(procs: Processes, root: Path, name: str, ip: str, workdir: Path, join: str | None = None,
                    syslog: bool | None = None, edit: Callable[[dict], None] | None = None,
                    extra: list[str] | tuple = ()) -> SerfNode:
    """A real `serf agent` reading every root/etc/serf/*.json that a provisioner or `lbsync
    install` wrote, as shipped but for what ties a file to a host: addresses become `ip` with free
    ports, the snapshot goes to `workdir`, retry_join to `join`, enable_syslog follows /dev/log
    (or `syslog`). `edit(config)` may change more, e.g. record events instead of running lbsync;
    `extra` are command-line arguments before the config files."""
    bind_port, rpc_port = free_port(ip), free_port(ip)
    while rpc_port == bind_port:
        rpc_port = free_port(ip)
    bind, rpc = f"{ip}:{bind_port}", f"{ip}:{rpc_port}"
    confdir = workdir / f"serf-{name}"
    confdir.mkdir(parents=True)
    argv = [require("serf"), "agent", *extra]
    for path in sorted((root / "etc/serf").glob("*.json")):
        config = json.loads(path.read_text())
        host_values = {"bind": bind, "advertise": bind, "rpc_addr": rpc,
                       "snapshot_path": str(workdir / f"{name}.snapshot"), "retry_join": [join]}
        config.update({key: value for key, value in host_values.items() if key in config})
        if "enable_syslog" in config:
            config["enable_syslog"] = os.path.exists("/dev/log") if syslog is None else syslog
        if edit:
            edit(config)
        (confdir / path.name).write_text(json.dumps(config))
        argv += ["-config-file", str(confdir / path.name)]
    proc = procs.start(f"serf-{name}", argv)
    wait_until(lambda: connects(ip, rpc_port) or died(proc), 10, f"serf {name} RPC")
    return SerfNode(name, ip, bind_port, rpc_port, proc)


def serf(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The serf CLI (`serf leave -rpc-addr ...`); fails loudly when serf is missing or, with
    `check`, when the command fails."""
    return subprocess.run([require("serf"), *args], check=check, capture_output=True, text=True, timeout=20)


def serf_members(node: SerfNode, auth: str = "") -> list[dict]:
    """`serf members -format json` of `node`, as the operator sees them."""
    args = ["members", "-rpc-addr", node.rpc_addr, "-format", "json"] + (["-rpc-auth", auth] if auth else [])
    return json.loads(serf(*args).stdout)["members"]
