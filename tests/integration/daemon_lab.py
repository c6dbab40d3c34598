"""An LB for `lbsync run` tests: a real nginx, a real Serf agent without a handler, and the daemon
as a subprocess (so SIGTERM, reconnects and restarts are real). Web nodes are real Serf agents on
127.0.0.(10+n) with tiny web servers beside them. Everything is stopped by PID via `procs`.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from realparts import ROOT, LbLab, Proc, Processes, SerfNode, make_lb, require, start_serf

# Fast, test-friendly defaults; single tests override in their own TOML.
DAEMON_TOML = """\
[daemon]
poll_interval = 0.02
debounce_min = 0.05
debounce_max = 0.5
min_reload_interval = 0.2
reconnect_max = 0.5
"""


@dataclass
class DaemonLab(LbLab):
    """An LbLab whose LB runs `lbsync run` as a subprocess instead of a Serf handler."""

    daemon: Proc | None = None
    runs: int = 0

    def start_daemon(self) -> Proc:
        """`python -m lbsync -v run`; its log is `lbsync-run-<n>.log`."""
        self.runs += 1
        self.daemon = self.procs.start(f"lbsync-run-{self.runs}", [sys.executable, "-m", "lbsync", "-v", "run"],
                                       {**self.env, "PYTHONPATH": str(ROOT)})
        return self.daemon

    def stop_daemon(self) -> int | None:
        return self.daemon.stop(signal.SIGTERM)

    def log(self) -> str:
        return "".join(p.output() for p in self.procs.started if p.name.startswith("lbsync-run"))

    def restart_lb_agent(self, join: SerfNode | None = None) -> None:
        """Stop the LB's Serf agent and start a new one on the same RPC address."""
        self.lb.proc.stop(signal.SIGKILL)
        self.lb = start_serf(self.procs, self.lb.name, self.lb.ip, {"role": "lb"}, rpc_port=self.lb.rpc_port,
                             join=join.bind_addr if join else None)

    def state(self) -> dict:
        try:
            return json.loads((self.workdir / "state" / "daemon.json").read_text())
        except (OSError, ValueError):
            return {}

    def settled(self) -> bool:
        """The daemon now running has published the result of its first reconcile."""
        return self.state().get("pid") == self.daemon.pid and bool(self.state().get("last_reconcile"))


def make_daemon_lab(procs: Processes, workdir: Path, config: str = "") -> DaemonLab:
    """nginx on a free port and an LB Serf agent on 127.0.0.1; the daemon is started by the test."""
    config = config if "[daemon]" in config else config + DAEMON_TOML
    return make_lb(procs, workdir, config, lab_class=DaemonLab)


class HungServer:
    """A TCP port that completes handshakes (the kernel's backlog) but never answers a request."""

    def __init__(self, ip: str):
        self.sock = socket.create_server((ip, 0), backlog=64)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


def serf(*args: str) -> None:
    """The serf CLI (fails loudly when serf is not installed)."""
    subprocess.run([require("serf"), *args], check=True, capture_output=True, timeout=20)
