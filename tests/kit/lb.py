"""The one LB setup: a real nginx, the LB's real Serf agent, lbsync following it, web nodes.

Modes differ only in what follows Serf, so tests and benchmarks compare like with like:
  hook  the LB's agent runs `handler` on member events: `lbsync handle` (HOOK) by default
        (the benchmarks pass their naive peer's script instead)
  run   the agent has no handler; `start_daemon()` runs `python -m lbsync -v run` as a process,
        so SIGTERM, SIGHUP, reconnects and restarts are real
lbsync is pointed at all of it through LBSYNC_* variables (`env`), and `lbsync.toml` in the
work directory holds a test's own settings. Web node n is a real `serf agent` on 127.0.0.(10+n)
beside a tiny web server answering `serf-web<n>`. `procs` stops every process by PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kit.net import connects, free_port, wait_until
from kit.nginx import Nginx, start_nginx
from kit.paths import ECHO_SERVER, ROOT, WEB_SERVER
from kit.procs import Proc, Processes, died
from kit.serfnode import SerfNode, start_serf

# Serf's hook as `lbsync install` writes it: the console script (/usr/local/bin/lbsync there), not
# `python -m`, whose runpy start-up costs every event a few ms more than a real LB pays
SCRIPT = Path(sys.executable).with_name("lbsync")
HOOK = f"{SCRIPT} handle" if SCRIPT.exists() else f"{sys.executable} -m lbsync handle"
# `run` mode's defaults, fast enough for tests; a config with its own [daemon] table replaces them
FAST_DAEMON = """\
[daemon]
poll_interval = 0.02
debounce_min = 0.05
debounce_max = 0.5
min_reload_interval = 0.2
reconnect_max = 0.5
"""


def start_web(procs: Processes, name: str, ip: str, port: int, *extra: str) -> Proc:
    """lab/webserver.py on ip:port answering `name` (`extra`: e.g. --access-log FILE)."""
    proc = procs.start(f"web-{name}", [sys.executable, str(WEB_SERVER), "--name", name,
                                       "--bind", ip, "--port", str(port), *extra])
    wait_until(lambda: connects(ip, port) or died(proc), 10, f"web server {name}")
    return proc


def start_echo(procs: Processes, name: str, ip: str, port: int) -> Proc:
    """lab/echoserver.py on ip:port: a TCP backend answering each line with `name: line`."""
    proc = procs.start(f"echo-{name}", [sys.executable, str(ECHO_SERVER), "--name", name,
                                        "--bind", ip, "--port", str(port)])
    wait_until(lambda: connects(ip, port) or died(proc), 10, f"echo server {name}")
    return proc


@dataclass
class LoadBalancer:
    """An LB under test (see the module docstring); `lb` is its Serf agent."""

    procs: Processes
    workdir: Path
    nginx: Nginx
    lb: SerfNode
    env: dict
    mode: str
    daemon: Proc | None = None
    runs: int = 0

    # -- web nodes ---------------------------------------------------------------------------

    def web(self, n: int, port: int | str | None = None, serve: bool = True, join: bool = True,
            **tags: str) -> SerfNode:
        """Web node n on 127.0.0.(10+n): a web server answering `serf-web<n>` (unless not
        `serve`) and a Serf agent tagged role=web, port (joined to the LB unless not `join`)."""
        ip = f"127.0.0.{10 + n}"
        port = port or free_port(ip)
        if serve:
            start_web(self.procs, f"serf-web{n}", ip, int(port))
        tags = {"role": "web", "port": str(port), **tags}
        return start_serf(self.procs, f"web{n}", ip, tags, join=self.lb.bind_addr if join else None)

    # -- what a client and an operator see ----------------------------------------------------

    def served_by(self, tries: int = 6, timeout: float = 5.0) -> set[str]:
        """Who answered `tries` fresh requests through the LB ("HTTP <status>" for non-200s)."""
        names = set()
        for _ in range(tries):
            status, body = self.nginx.get(timeout=timeout)
            names.add(body.strip() if status == 200 else f"HTTP {status}")
        return names

    def upstream(self) -> str:
        return self.nginx.upstream.read_text()

    def reloads(self) -> int:
        return self.nginx.reloads()

    def lbsync(self, *args: str) -> subprocess.CompletedProcess:
        """Run `python -m lbsync ARGS` against this LB."""
        return subprocess.run([sys.executable, "-m", "lbsync", *args], capture_output=True, text=True,
                              env={**os.environ, **self.env}, timeout=60, cwd=ROOT)

    # -- run mode ----------------------------------------------------------------------------

    def start_daemon(self, verbose: bool = True) -> Proc:
        """`python -m lbsync [-v] run`; its log is `lbsync-run-<n>.log` in the work directory."""
        self.runs += 1
        argv = [sys.executable, "-m", "lbsync", *(["-v"] if verbose else []), "run"]
        self.daemon = self.procs.start(f"lbsync-run-{self.runs}", argv, self.env)
        return self.daemon

    def stop_daemon(self) -> int | None:
        assert self.daemon is not None
        return self.daemon.stop(signal.SIGTERM)

    def log(self) -> str:
        """Every daemon run's log, in order."""
        return "".join(p.output() for p in self.procs.started if p.name.startswith("lbsync-run"))

    def state(self) -> dict:
        """The daemon's published state (state/daemon.json), {} until there is one."""
        try:
            return json.loads((self.workdir / "state" / "daemon.json").read_text())
        except (OSError, ValueError):
            return {}

    def settled(self) -> bool:
        """The daemon now running has published the result of its first reconcile."""
        state = self.state()
        return self.daemon is not None and state.get("pid") == self.daemon.pid and bool(state.get("last_reconcile"))

    def restart_lb_agent(self, join: SerfNode | None = None) -> None:
        """SIGKILL the LB's Serf agent and start a new one on the same RPC address."""
        self.lb.proc.stop(signal.SIGKILL)
        # on its old gossip port, as a restarted host's agent is: under a new address with the same
        # name, peers that still hold the killed one would vote the newcomer out (name conflict)
        self.lb = start_serf(self.procs, self.lb.name, self.lb.ip, {"role": "lb"}, rpc_port=self.lb.rpc_port,
                             bind_port=self.lb.bind_port, join=join.bind_addr if join else None)


def nginx_for(workdir: Path) -> Nginx:
    """The nginx `start_lb` runs for `workdir` (its prefix, files and reload command), known
    before it starts: a handler's environment may need to name them."""
    return Nginx(workdir / "nginx", 0)


def start_lb(procs: Processes, workdir: Path, config: str = "", *, mode: str = "hook",
             handler: str | None = None, lb_ip: str = "127.0.0.1", join: SerfNode | None = None,
             env: dict | None = None, data_plane: str = "reload") -> LoadBalancer:
    """nginx on a free port and the LB's Serf agent on `lb_ip` (joined to `join`, if given).

    `config` is lbsync.toml's text (run mode adds FAST_DAEMON unless it has a [daemon] table);
    `env` is added to the environment of the agent, its handler and the daemon. `data_plane`
    picks lbsync's driver: "reload" (render + reload, what most tests look at in the upstream
    file), "live" (pushes to nginx's Lua balancer) or "auto"."""
    if mode not in ("hook", "run"):
        raise ValueError(f"mode {mode!r}: expected hook or run")
    if mode == "run" and "[daemon]" not in config:
        config += FAST_DAEMON
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "lbsync.toml").write_text(config)
    nginx = start_nginx(procs, nginx_for(workdir).prefix)
    rpc_port = free_port(lb_ip)
    lb_env = {"PYTHONPATH": str(ROOT), **nginx.settings_env(workdir, f"{lb_ip}:{rpc_port}"),
              "LBSYNC_DATA_PLANE": data_plane, **(env or {})}
    lb = start_serf(procs, f"lb-{lb_ip}", lb_ip, {"role": "lb"}, join=join.bind_addr if join else None,
                    handler=(handler or HOOK) if mode == "hook" else None, env=lb_env, rpc_port=rpc_port)
    return LoadBalancer(procs, workdir, nginx, lb, lb_env, mode)
