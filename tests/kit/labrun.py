"""The one-machine lab (lab/*.sh) driven through its own scripts, as a user would, for tests.

Why through the scripts: the lab is documentation that runs (README, `make demo`), so tests run
exactly what a reader runs. Each lab gets a temporary LAB_DIR, its own loopback network and free
ports, so it never meets a developer's running lab. On exit `running_lab` runs lab/down.sh and
then SIGKILLs, by PID, whatever is still recorded under LAB_DIR, even when the test failed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kit.net import free_port
from kit.paths import LAB
from kit.procs import require


@dataclass
class Lab:
    dir: Path
    env: dict

    def sh(self, script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """lab/<script> ARGS; a failure fails the test with the script's output."""
        result = subprocess.run([str(LAB / script), *args], env=self.env, capture_output=True,
                                text=True, timeout=timeout, check=False)
        assert result.returncode == 0, f"{script} {' '.join(args)}: {result.stdout}\n{result.stderr}"
        if script == "up.sh":  # the ports it chose: a preferred one taken meanwhile was replaced
            chosen = (self.dir / "lab.env").read_text().splitlines()
            self.env.update(line.split("=", 1) for line in chosen if "=" in line)
        return result

    @property
    def port(self) -> int:
        """The web pool's listener (HTTP_PORT); the api pool's is API_PORT, the TCP pool's TCP_PORT."""
        return int(self.env["HTTP_PORT"])

    def get(self, port: int | None = None) -> tuple[int, str, str]:
        """(status, body, the upstream address nginx used) of one GET on a fresh connection to
        the web pool (or the pool on `port`)."""
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=10)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            return response.status, response.read().decode().strip(), response.getheader("X-Upstream", "")
        except OSError as exc:
            return 0, repr(exc), ""
        finally:
            conn.close()

    def served(self, tries: int = 9, port: int | None = None) -> set[str]:
        return {body if status == 200 else f"HTTP {status}" for status, body, _ in
                (self.get(port) for _ in range(tries))}

    def echo(self, line: str) -> str:
        """One line through the TCP pool (lab/labtool.py echo, as the demo shows it): the answer,
        or the tool's complaint (no backend: nginx closes the connection)."""
        done = subprocess.run([sys.executable, str(LAB / "labtool.py"), "echo", "127.0.0.1", self.env["TCP_PORT"],
                               line], capture_output=True, text=True, timeout=30, check=False, env=self.env)
        return (done.stdout or done.stderr).strip()

    def lbsync(self, *args: str) -> subprocess.CompletedProcess:
        """lbsync on the lab LB's config (its exit status is the caller's to check)."""
        return subprocess.run([sys.executable, "-m", "lbsync", "-c", str(self.dir / "lb" / "lbsync.toml"), *args],
                              env=self.env, capture_output=True, text=True, timeout=60, check=False)

    def lbsync_log(self) -> str:
        return (self.dir / "lb" / "lbsync.log").read_text()

    def pool(self, name: str = "web") -> set[str]:
        """The backends nginx's live balancer holds now for an HTTP pool (upstream lbs_NAME; read
        back from its control socket)."""
        from lbsync import control

        status, reply = control.call(str(self.dir / "nginx" / "run" / "control.sock"), "GET",
                                     f"/pools/lbs_{name}")
        return {backend["name"] for backend in reply["backends"]} if status == 200 else set()

    def members(self) -> dict[str, str]:
        with self.client() as client:
            return {m["Name"]: m["Status"] for m in client.members()}

    def client(self):
        """lbsync's RPC client on the lab LB's agent, with the lab's token."""
        from lbsync.serf import SerfClient

        token = json.loads((self.dir / "secrets.json").read_text())["rpc_auth"]
        return SerfClient(f"127.0.0.1:{self.env['LB_RPC_PORT']}", token)

    def pids(self) -> dict[int, str]:
        """Every live PID the lab recorded: {pid: pid file} (labtool.py pids)."""
        out = subprocess.run([sys.executable, str(LAB / "labtool.py"), "pids", str(self.dir)],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return {int(line.split()[0]): line.split()[1] for line in out.splitlines()}


@contextlib.contextmanager
def running_lab(tmp_path: Path, net: str) -> Iterator[Lab]:
    """A lab in tmp_path on loopback network `net` (web node N on <net>.N; api, cache and static
    node N on <net>.(100+N), .(150+N), .(200+N)) with free ports."""
    require("serf"), require("nginx")
    lab_dir = tmp_path / "lab"
    env = {**os.environ, "LAB_DIR": str(lab_dir), "LAB_NET": net, "PYTHON": sys.executable,
           "LB_IP": "127.0.0.1", "LB_SERF_PORT": str(free_port()), "LB_RPC_PORT": str(free_port()),
           "HTTP_PORT": str(free_port()), "API_PORT": str(free_port()), "TCP_PORT": str(free_port()),
           "STATUS_PORT": str(free_port()), "WEB_PORT": str(free_port(f"{net}.1")),
           "CACHE_PORT": str(free_port(f"{net}.151")),  # cache node N: <net>.(150+N)
           "WEB_SERF_PORT": str(free_port(f"{net}.1")), "WEB_RPC_PORT": str(free_port(f"{net}.1"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}:/usr/sbin"
    lab = Lab(lab_dir, env)
    try:
        yield lab
    finally:
        subprocess.run([str(LAB / "down.sh")], env=env, capture_output=True, timeout=120, check=False)
        for pid in lab.pids():  # whatever down.sh could not stop
            os.kill(pid, signal.SIGKILL)


@dataclass
class RequestLoop:
    """Sequential GETs through the LB on fresh connections, in a thread; bounded in count and time."""

    lab: Lab
    limit: int = 20000
    max_seconds: float = 120
    pace: float = 0.005  # a steady rate, not a flood: the machine is shared
    results: list[tuple[int, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and len(self.results) < self.limit and time.monotonic() < deadline:
            self.results.append(self.lab.get())
            self._stop.wait(self.pace)

    def stop(self) -> list[tuple[int, str, str]]:
        self._stop.set()
        self._thread.join(30)
        return self.results

    def failures(self) -> list[tuple[int, str, str]]:
        return [r for r in self.results if r[0] != 200]
