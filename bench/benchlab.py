"""One load balancer under test, in one of three modes, with web nodes to join and leave.

Modes share everything but the piece that follows Serf, so their figures compare like with like:
  handle  the LB's Serf agent runs `python -m lbsync handle` as its event handler
  run     the LB's Serf agent has no handler; `python -m lbsync run` follows it over RPC
  naive   the LB's Serf agent runs bench/peers/naive_handler.sh (the classic demo's data flow)
A real nginx fronts the pool on a free high port; every web node is a real `serf agent` on its
own 127.0.x.y address, and one bench/multiweb.py process answers for all their web servers.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from common import BENCH, ROOT
from realparts import Nginx, Proc, Processes, SerfNode, died, free_port, http_get, start_serf, wait_until

MODES = ("handle", "run", "naive")
NAIVE = BENCH / "peers" / "naive_handler.sh"
# `lbsync run` as an operator would deploy it: shipped defaults plus active health checks
RUN_TOML = '[daemon]\nhealth_path = "/"\n'
SERVER_RE = re.compile(r"^\s*server\s+(\S+?)(\s[^;#]*)?;", re.M)


@dataclass
class WebNode:
    name: str
    ip: str
    port: int
    serf: SerfNode | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass
class BenchLab:
    mode: str
    procs: Processes
    workdir: Path
    nginx: Nginx
    lb: SerfNode
    nodes: dict[str, WebNode] = field(default_factory=dict)
    daemon: Proc | None = None
    failures: Counter = field(default_factory=Counter)  # failed client requests, by kind

    def start_agent(self, node: WebNode, join: bool = False) -> SerfNode:
        """The node's Serf agent, joined to the LB now or left for `join()` to time.

        Started again once if it dies at start: free_port() picks the gossip and RPC ports one
        after the other, and with hundreds of agents the two picks occasionally coincide."""
        for attempt in (1, 2):
            try:
                tags = {"role": "web", "port": str(node.port)}
                node.serf = start_serf(self.procs, node.name, node.ip, tags, extra=["-log-level", "info"],
                                       join=self.lb.bind_addr if join else None)
                return node.serf
            except AssertionError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def join(self, node: WebNode, attempts: int = 5, via: str | None = None) -> int:
        """Join the node to the LB (or to the member at `via`); retried, as serf's retry_join
        does, when the peer is too busy to finish the push-pull in time. Returns the retries."""
        from lbsync.errors import SourceError
        from lbsync.serf import SerfClient

        for attempt in range(attempts):
            try:
                with SerfClient(node.serf.rpc_addr, timeout=15) as client:
                    client.join([via or self.lb.bind_addr])
                return attempt
            except SourceError:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))  # back off, as retry_join does
        return attempts

    def leave(self, node: WebNode) -> None:
        """Graceful leave: Serf's agent leaves the cluster on SIGINT, then exits."""
        node.serf.proc.send(signal.SIGINT)

    def served(self, timeout: float = 2.0) -> str:
        """Who answered one fresh request: a node name, or 'HTTP <status>' / 'error'."""
        status, body = http_get("127.0.0.1", self.nginx.port, "/", timeout)
        if status == 200:
            return body.strip()
        kind = f"HTTP {status}" if status else "error"
        self.failures[kind if status else body.split(":")[0]] += 1
        return kind

    def failures_since(self, before: Counter) -> dict[str, int]:
        return dict(self.failures - before)

    def reloads(self) -> int:
        """Reloads nginx's master received (it logs two "reconfiguring" lines per reload)."""
        log = (self.nginx.prefix / "error.log").read_text(errors="replace")
        return log.count("signal 1 (SIGHUP) received")

    def config_servers(self) -> list[str]:
        """Endpoints the upstream file routes to (includes inlined, `down` servers left out)."""
        text = self.nginx.upstream.read_text()
        for include in re.findall(r"include\s+([^;]+);", text):
            text += Path(include.strip()).read_text()
        return servers_in(text)

    def config_valid(self) -> bool:
        import subprocess

        return subprocess.run(["nginx", "-t", "-q", "-p", str(self.nginx.prefix), "-c", str(self.nginx.conf)],
                              capture_output=True, timeout=30).returncode == 0


def servers_in(text: str) -> list[str]:
    """Sorted endpoints of the `server` lines in an upstream block, `down` ones left out."""
    return sorted(m.group(1) for m in SERVER_RE.finditer(text) if "down" not in (m.group(2) or "").split())


def make_lab(mode: str, procs: Processes, workdir: Path, nodes: list[WebNode]) -> BenchLab:
    """nginx, the web servers for `nodes`, and the LB's Serf agent following `mode`."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    workdir.mkdir(parents=True, exist_ok=True)
    nginx = Nginx(workdir / "nginx", free_port()).start(procs)
    _start_web(procs, nodes)
    rpc_port = free_port("127.0.0.1")
    env = _lb_env(mode, nginx, workdir, f"127.0.0.1:{rpc_port}")
    handler = {"handle": f"{sys.executable} -m lbsync handle",
               "naive": f"member-join,member-leave,member-failed={NAIVE}"}.get(mode)
    lb = start_serf(procs, f"lb-{mode}", "127.0.0.1", {"role": "lb"}, handler=handler, env=env,
                    rpc_port=rpc_port)
    lab = BenchLab(mode, procs, workdir, nginx, lb, {n.name: n for n in nodes})
    if mode == "run":
        lab.daemon = procs.start("lbsync-run", [sys.executable, "-m", "lbsync", "run"], env)
        wait_until(lambda: nginx.upstream.read_text().startswith("# lbsync") or died(lab.daemon), 30,
                   "lbsync run to reconcile once")
    return lab


def _lb_env(mode: str, nginx: Nginx, workdir: Path, rpc_addr: str) -> dict:
    """Environment of the LB agent (and so of its handler) or of the daemon."""
    (workdir / "lbsync.toml").write_text(RUN_TOML if mode == "run" else "")
    env = {"PYTHONPATH": str(ROOT), "PYTHONPYCACHEPREFIX": str(workdir / "pycache"),
           **nginx.settings_overrides(workdir, rpc_addr)}
    if mode == "naive":
        servers = workdir / "naive_servers.conf"
        servers.write_text("")
        env.update(NAIVE_SERVERS=str(servers), NAIVE_UPSTREAM=str(nginx.upstream),
                   NAIVE_RELOAD=nginx.reload_command)
    env["PYTHONDONTWRITEBYTECODE"] = ""  # empty = unset: cache bytecode as an installed host has it
    return env


def _start_web(procs: Processes, nodes: list[WebNode]) -> Proc:
    specs = [f"{n.name}={n.ip}:{n.port}" for n in nodes]
    proc = procs.start("multiweb", [sys.executable, str(BENCH / "multiweb.py"), *specs])
    wait_until(lambda: "serving" in proc.output() or died(proc), 30, "multiweb to listen")
    return proc


def nodes_for(prefix: str, subnet: str, count: int, first: int = 1) -> list[WebNode]:
    """`count` web nodes named <prefix><n> on <subnet>.<n>, each on a free port."""
    out = []
    for n in range(first, first + count):
        ip = f"{subnet}.{n}"
        out.append(WebNode(f"{prefix}{n}", ip, free_port(ip)))
    return out


def now() -> float:
    return time.monotonic()
