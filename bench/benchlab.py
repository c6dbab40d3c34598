"""One load balancer under test, in one of five modes (columns), with web nodes to join and leave.

Modes share everything but the piece that follows Serf and the data plane, so their figures
compare like with like:
  handle       the LB's Serf agent runs `lbsync handle` as its event handler; reload driver
  run          the LB's Serf agent has no handler; `python -m lbsync run` follows it over RPC; reload
  handle-live  as handle, with the live driver (pushes to nginx's Lua balancer, no reload)
  run-live     as run, with the live driver
  naive        the LB's Serf agent runs bench/peers/naive_handler.sh (the classic demo's data flow)
A real nginx (with the Lua module loaded when installed, as the kit's layout does) fronts the
pool on a free high port; every web node is a real `serf agent` on its own 127.0.x.y address,
and one bench/multiweb.py process answers for all their web servers.
"""

from __future__ import annotations

import dataclasses
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import multiweb
from common import BENCH
from kit.lb import HOOK, LoadBalancer, nginx_for, start_lb
from kit.net import connects, free_port, wait_until
from kit.procs import Proc, Processes, died, require
from kit.serfnode import SerfNode, start_serf

MODES = ("handle", "run", "handle-live", "run-live", "naive")
NAIVE = BENCH / "peers" / "naive_handler.sh"
# `lbsync run` as an operator would deploy it: shipped defaults plus active health checks
RUN_TOML = '[daemon]\nhealth_path = "/"\n'
# A web node's agent stands for another host: on this box it runs at the lowest CPU priority, so a
# hundred of them joining at once cannot take the CPU the LB side (nginx, its Serf agent, lbsync)
# would have to itself on a real LB; they still get all the CPU the LB side leaves. Every mode
# (the naive peer included) is measured this way.
WEB_NICE = 19
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

    column: str = ""  # one of MODES
    nodes: dict[str, WebNode] = field(default_factory=dict)
    failures: Counter = field(default_factory=Counter)
    handler: str | None = None  # the LB agent's event handler (hook modes), kept for a restart

    @property
    def live(self) -> bool:
        """lbsync's live driver: the pool is in nginx's Lua balancer, not in the upstream file."""
        return self.column.endswith("-live")

    def start_agent(self, node: WebNode, join: bool = False) -> SerfNode:
        """The node's Serf agent, joined to the LB now or left for `join()` to time.

        Started again once if it dies at start: free_port() picks the gossip and RPC ports one
        after the other, and with hundreds of agents the two picks occasionally coincide."""
        for attempt in (1, 2):
            try:
                tags = {"role": "web", "port": str(node.port)}
                node.serf = start_serf(self.procs, node.name, node.ip, tags, extra=["-log-level", "info"],
                                       join=self.lb.bind_addr if join else None, nice=WEB_NICE)
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
        """Endpoints nginx is configured to route to, `down` and drained ones left out: the
        upstream file (and its includes) for the reload driver and the naive peer, the pool read
        back from nginx's control socket for the live driver."""
        if self.live:
            return sorted(endpoint for endpoint, routed in self.pool().items() if routed)
        text = self.nginx.upstream.read_text()
        for include in re.findall(r"include\s+([^;]+);", text):
            text += Path(include.strip()).read_text()
        return servers_in(text)

    def pool(self) -> dict[str, bool]:
        """Live driver: {endpoint: takes new requests} of the pool nginx holds ({} when none)."""
        from lbsync import control
        from lbsync.errors import PushError

        try:
            status, reply = control.call(str(self.nginx.control_socket), "GET", "/pools/lbs_backend")
        except PushError:
            return {}
        return pool_endpoints(reply) if status == 200 else {}

    def pool_version(self) -> int | None:
        """Live driver: the version of the pool nginx holds (a brief read-back), None if none."""
        from lbsync import control
        from lbsync.errors import PushError

        try:
            status, reply = control.call(str(self.nginx.control_socket), "GET", "/pools/lbs_backend?brief=1")
        except PushError:
            return None
        return reply.get("version") if status == 200 and isinstance(reply, dict) else None

    def config_valid(self) -> bool:
        return self.nginx.test_config()

    def alive_web(self, client=None) -> set[str]:
        """Names of the alive web members the LB's Serf agent knows now."""
        from lbsync.serf import SerfClient

        if client is not None:
            return {m["Name"] for m in client.members_filtered(tags={"role": "web"}, status="alive")}
        with SerfClient(self.lb.rpc_addr) as own:
            return self.alive_web(own)

    def serf_done_with(self, names: set[str]) -> bool:
        """The LB's Serf agent holds none of `names` as alive or leaving (left, failed or reaped):
        until then its memberlist still probes them and the survivors still gossip to them."""
        from lbsync.serf import SerfClient

        with SerfClient(self.lb.rpc_addr) as client:
            return not any(m["Name"] in names and m["Status"] in ("alive", "leaving") for m in client.members())

    def restart_lb_agent_as(self, snapshot: Path | None) -> None:
        """SIGKILL the LB's Serf agent and start it again on the same addresses, handler and
        environment, with `-snapshot` (it rejoins whom it knew) or without (it knows only itself)."""
        self.lb.proc.stop(signal.SIGKILL)
        old = self.lb
        # a later -bind wins over start_serf's own: the web nodes know the LB at this address
        extra = ["-bind", old.bind_addr] + (["-snapshot", str(snapshot)] if snapshot else [])
        for attempt in range(50):  # the ports may linger a moment after SIGKILL
            try:
                node = start_serf(self.procs, old.name, old.ip, {"role": "lb"}, handler=self.handler,
                                  env=self.env, rpc_port=old.rpc_port, extra=extra)
                self.lb = dataclasses.replace(node, bind_port=old.bind_port)
                return
            except AssertionError:
                if attempt == 49:
                    raise
                time.sleep(0.1)


def pool_endpoints(reply: object) -> dict[str, bool]:
    """{endpoint: routed} from the control endpoint's GET answer; drained and down are not routed."""
    backends = reply.get("backends", []) if isinstance(reply, dict) else []
    return {f"{b['address']}:{b['port']}": not (b.get("drain") or b.get("down")) for b in backends}


def servers_in(text: str) -> list[str]:
    """Sorted endpoints of the `server` lines in an upstream block, `down` ones left out."""
    return sorted(m.group(1) for m in SERVER_RE.finditer(text) if "down" not in (m.group(2) or "").split())


def make_lab(mode: str, procs: Processes, workdir: Path, nodes: list[WebNode], config: str = "",
             env: dict | None = None, handler: str | None = None, daemon: bool = True) -> BenchLab:
    """nginx, the web servers for `nodes`, and the LB's Serf agent following `mode`.

    `config` (top-level keys) starts lbsync.toml (run modes add RUN_TOML), `env` to the environment of the
    agent, its handler and the daemon; `handler` replaces the hook modes' `lbsync handle`, and
    `daemon=False` leaves the run modes' daemon for the caller to start."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    workdir.mkdir(parents=True, exist_ok=True)
    _start_web(procs, workdir, nodes)
    env = {"PYTHONPYCACHEPREFIX": str(workdir / "pycache"),
           "PYTHONDONTWRITEBYTECODE": "", **(env or {})}  # empty = unset: cache bytecode as an installed host has it
    if mode == "naive":  # a hook too, with the naive peer's script and files
        servers, nginx = workdir / "naive_servers.conf", nginx_for(workdir)
        servers.write_text("")
        env.update(NAIVE_SERVERS=str(servers), NAIVE_UPSTREAM=str(nginx.upstream), NAIVE_RELOAD=nginx.reload_command)
        handler = f"member-join,member-leave,member-failed={NAIVE}"
    elif mode.startswith("handle"):
        handler = handler or HOOK
    runs = mode.startswith("run")
    base = start_lb(procs, workdir, config + (RUN_TOML if runs else ""), mode="run" if runs else "hook",
                    handler=handler, env=env, data_plane="live" if mode.endswith("-live") else "reload")
    lab = BenchLab(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)}, column=mode,
                   nodes={n.name: n for n in nodes}, handler=handler)
    if runs and daemon:
        proc = lab.start_daemon(verbose=False)
        wait_until(lambda: lab.nginx.upstream.read_text().startswith("# lbsync") or died(proc), 30,
                   "lbsync run to reconcile once")
    return lab


def _start_web(procs: Processes, workdir: Path, nodes: list[WebNode]) -> Proc:
    """One nginx answering for every node in `nodes` (bench/multiweb.py)."""
    specs = [multiweb.parse_spec(f"{n.name}={n.ip}:{n.port}") for n in nodes]
    proc = procs.start("multiweb", multiweb.argv(require("nginx"), workdir / "multiweb", specs))
    ends = {specs[0][1:], specs[-1][1:]} if specs else set()
    wait_until(lambda: all(connects(*end) for end in ends) or died(proc), 30, "multiweb to listen")
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
