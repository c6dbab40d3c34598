"""Real serf agents, a real nginx and tiny web servers on loopback addresses, for tests and benches.

Every process is started with Popen and stopped by its PID (`Proc.stop`), and `Processes` stops
all it started even when the test fails. Waits poll with a deadline; nothing sleeps for
correctness. Only 127.0.0.0/8 addresses are ever used.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "lbsync" / "templates"


def require(binary: str) -> str:
    """The path of `binary`; a missing one fails the test loudly (the README setup installs it)."""
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if path is None:
        raise RuntimeError(f"{binary} is not installed: run `make test` (it installs serf and nginx)")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` (and UDP too: Serf gossips over both)."""
    for _ in range(100):
        with socket.socket() as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no free port on {host}")


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02):
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Proc:
    """One child process, its log, and how to stop it by PID."""

    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Send `sig`, wait up to `timeout`, then SIGKILL. Returns the exit status."""
        if self.alive():
            os.kill(self.pid, sig)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
        return self.popen.wait(5)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Processes:
    """Starts processes and stops every one of them, newest first."""

    workdir: Path
    started: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict | None = None) -> Proc:
        log = self.workdir / f"{name}.log"
        handle = open(log, "ab")
        popen = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env={**os.environ, **(env or {})}, start_new_session=True)
        handle.close()
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            try:
                proc.stop(timeout=5)
            except Exception:  # keep stopping the others
                pass


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
               join: str | None = None, handler: str | None = None, extra: list[str] = (),
               env: dict | None = None, rpc_port: int | None = None) -> SerfNode:
    """A real `serf agent` on `ip` with the LAN-fast `local` profile; waits until RPC answers.

    `env` reaches the agent and so its event handler (Serf passes its environment on).
    """
    bind_port = free_port(ip)
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
    proc = procs.start(f"serf-{name}", argv, env)
    wait_until(lambda: connects(ip, rpc_port) or died(proc), 10, f"serf agent {name} RPC")
    return SerfNode(name, ip, bind_port, rpc_port, proc)


def connects(host: str, port: int) -> bool:
    """Something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def died(proc: Proc) -> bool:
    """False while `proc` runs; raises with its last output once it exited (ends a wait early)."""
    if not proc.alive():
        raise AssertionError(f"{proc.name} exited {proc.popen.returncode}:\n{proc.output()[-2000:]}")
    return False


def serf_members(node: SerfNode) -> list[dict]:
    out = subprocess.run([require("serf"), "members", "-rpc-addr", node.rpc_addr, "-format", "json"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return json.loads(out)["members"]


sys.path.insert(0, str(ROOT / "lab"))
from labtool import write_nginx_prefix  # noqa: E402  (lab and tests: one nginx layout)


@dataclass
class Nginx:
    """A real nginx under its own prefix on a high port, fronting the shipped server block."""

    prefix: Path
    port: int
    proc: Proc | None = None

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def upstream(self) -> Path:
        return self.prefix / "conf.d" / "lbs_upstream.conf"

    @property
    def reload_command(self) -> str:
        return f"{require('nginx')} -p {self.prefix} -c {self.conf} -e stderr -s reload"

    def write_config(self, upstream_name: str = "lbs_backend") -> None:
        write_nginx_prefix(self.prefix, f"127.0.0.1:{self.port}", upstream_name)

    def start(self, procs: Processes) -> Nginx:
        self.write_config()
        self.proc = procs.start("nginx", [require("nginx"), "-p", str(self.prefix), "-c", str(self.conf),
                                          "-e", "stderr", "-g", "daemon off;"])
        wait_until(lambda: connects("127.0.0.1", self.port) or died(self.proc), 10, "nginx to listen")
        return self

    def get(self, path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
        return http_get("127.0.0.1", self.port, path, timeout)

    def settings_overrides(self, workdir: Path, rpc_addr: str) -> dict[str, str]:
        """LBSYNC_* environment that points lbsync at this nginx and a Serf agent."""
        return {
            "LBSYNC_RPC_ADDR": rpc_addr,
            "LBSYNC_OUTPUT": str(self.upstream),
            "LBSYNC_NGINX_CONF": str(self.conf),
            "LBSYNC_NGINX_PREFIX": str(self.prefix),
            "LBSYNC_RELOAD_COMMAND": self.reload_command,
            "LBSYNC_LOCK_FILE": str(workdir / "lbsync.lock"),
            "LBSYNC_STATE_DIR": str(workdir / "state"),
            "LBSYNC_SYSLOG": "false",
            "LBSYNC_LB_LISTEN": f"127.0.0.1:{self.port}",
            "LBSYNC_CONFIG": str(workdir / "lbsync.toml"),
        }


def http_get(host: str, port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of one GET on a fresh connection; (0, error) when it cannot connect."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except OSError as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


WEB_SERVER = ROOT / "lab" / "webserver.py"


def start_web(procs: Processes, name: str, ip: str, port: int) -> Proc:
    """A tiny HTTP server on ip:port that answers with its node name."""
    proc = procs.start(f"web-{name}", [sys.executable, str(WEB_SERVER), "--name", name,
                                       "--bind", ip, "--port", str(port)])
    wait_until(lambda: connects(ip, port) or died(proc), 10, f"web server {name}")
    return proc


@dataclass
class LbLab:
    """An LB under test: a real nginx, the LB's Serf agent, and web nodes joined to it.

    `env` holds the LBSYNC_* settings that point lbsync at this nginx and agent.
    """

    procs: Processes
    workdir: Path
    nginx: Nginx
    lb: SerfNode
    env: dict

    def web(self, n: int, port: int | str | None = None, serve: bool = True, join: bool = True,
            **tags) -> SerfNode:
        """Web node n on 127.0.0.(10+n): a tiny web server answering `serf-web<n>` and a Serf agent."""
        ip = f"127.0.0.{10 + n}"
        port = port or free_port(ip)
        if serve:
            start_web(self.procs, f"serf-web{n}", ip, port)
        tags = {"role": "web", "port": str(port), **tags}
        return start_serf(self.procs, f"web{n}", ip, tags, join=self.lb.bind_addr if join else None)

    def lbsync(self, *args: str) -> subprocess.CompletedProcess:
        """Run `python -m lbsync ARGS` against this LB."""
        return subprocess.run([sys.executable, "-m", "lbsync", *args], capture_output=True, text=True,
                              env={**os.environ, **self.env, "PYTHONPATH": str(ROOT)}, timeout=60, cwd=ROOT)

    def served_by(self, tries: int = 6, timeout: float = 5.0) -> set[str]:
        """Who answered `tries` fresh requests through the LB ("HTTP <status>" for non-200s)."""
        names = set()
        for _ in range(tries):
            status, body = self.nginx.get(timeout=timeout)
            names.add(body.strip() if status == 200 else f"HTTP {status}")
        return names

    def reloads(self) -> int:
        """Reloads nginx received (it logs "reconfiguring" twice per reload; SIGHUP once)."""
        return (self.nginx.prefix / "error.log").read_text().count("signal 1 (SIGHUP) received")

    def upstream(self) -> str:
        return self.nginx.upstream.read_text()


def make_lb(procs: Processes, workdir: Path, config: str = "", lb_ip: str = "127.0.0.1",
            join: SerfNode | None = None, handler: str | None = None, lab_class: type = LbLab):
    """nginx on a free port and the LB's Serf agent (running `handler` on member events, if any)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "lbsync.toml").write_text(config)
    nginx = Nginx(workdir / "nginx", free_port()).start(procs)
    rpc_port = free_port(lb_ip)
    env = {"PYTHONPATH": str(ROOT), **nginx.settings_overrides(workdir, f"{lb_ip}:{rpc_port}")}
    lb = start_serf(procs, f"lb-{lb_ip}", lb_ip, {"role": "lb"}, join=join.bind_addr if join else None,
                    handler=handler, env=env, rpc_port=rpc_port)
    return lab_class(procs, workdir, nginx, lb, env)
