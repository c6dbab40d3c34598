"""One load balancer under test, in one of three modes, with web nodes to join and leave.

Modes share everything but the piece that follows Serf, so their figures compare like with like:
  handle  the LB's Serf agent runs `python -m lbsync handle` as its event handler
  run     the LB's Serf agent has no handler; `python -m lbsync run` follows it over RPC
  naive   the LB's Serf agent runs bench/peers/naive_handler.sh (the classic demo's data flow)
A real nginx fronts the pool on a free high port; every web node is a real `serf agent` on its
own 127.0.x.y address, and one bench/multiweb.py process answers for all their web servers.
"""

from __future__ import annotations

import dataclasses
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from common import BENCH
from kit.lb import LoadBalancer, nginx_for, start_lb
from kit.net import free_port, wait_until
from kit.procs import Proc, Processes, died
from kit.serfnode import SerfNode, start_serf

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
class BenchLab(LoadBalancer):
    """The kit's LB (nginx, the LB's Serf agent, what follows it) plus the benchmark's web nodes
    and a count of the requests that failed, by kind."""

    column: str = ""  # handle, run or naive
    nodes: dict[str, WebNode] = field(default_factory=dict)
    failures: Counter = field(default_factory=Counter)

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
        status, body = self.nginx.get("/", timeout)
        if status == 200:
            return body.strip()
        kind = f"HTTP {status}" if status else "error"
        self.failures[kind if status else body.split(":")[0]] += 1
        return kind

    def failures_since(self, before: Counter) -> dict[str, int]:
        return dict(self.failures - before)

    def config_servers(self) -> list[str]:
        """Endpoints the upstream file routes to (includes inlined, `down` servers left out)."""
        text = self.nginx.upstream.read_text()
        for include in re.findall(r"include\s+([^;]+);", text):
            text += Path(include.strip()).read_text()
        return servers_in(text)

    def config_valid(self) -> bool:
        return self.nginx.test_config()


def servers_in(text: str) -> list[str]:
    """Sorted endpoints of the `server` lines in an upstream block, `down` ones left out."""
    return sorted(m.group(1) for m in SERVER_RE.finditer(text) if "down" not in (m.group(2) or "").split())


def make_lab(mode: str, procs: Processes, workdir: Path, nodes: list[WebNode]) -> BenchLab:
    """nginx, the web servers for `nodes`, and the LB's Serf agent following `mode`."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    workdir.mkdir(parents=True, exist_ok=True)
    _start_web(procs, nodes)
    env = {"PYTHONPYCACHEPREFIX": str(workdir / "pycache"),
           "PYTHONDONTWRITEBYTECODE": ""}  # empty = unset: cache bytecode as an installed host has it
    handler = None
    if mode == "naive":  # a hook too, with the naive peer's script and files
        servers, nginx = workdir / "naive_servers.conf", nginx_for(workdir)
        servers.write_text("")
        env.update(NAIVE_SERVERS=str(servers), NAIVE_UPSTREAM=str(nginx.upstream), NAIVE_RELOAD=nginx.reload_command)
        handler = f"member-join,member-leave,member-failed={NAIVE}"
    base = start_lb(procs, workdir, RUN_TOML if mode == "run" else "", mode="run" if mode == "run" else "hook",
                    handler=handler, env=env)
    lab = BenchLab(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)}, column=mode,
                   nodes={n.name: n for n in nodes})
    if mode == "run":
        daemon = lab.start_daemon(verbose=False)
        wait_until(lambda: lab.nginx.upstream.read_text().startswith("# lbsync") or died(daemon), 30,
                   "lbsync run to reconcile once")
    return lab


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
