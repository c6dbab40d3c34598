"""The one-machine lab, driven through its own scripts, as a user would: up, boot, stop, kill, down.

The lab runs in a temporary LAB_DIR on its own loopback network and free ports, so it never
meets a developer's running lab. Its processes are started by the scripts (in their own
sessions); the fixture's finaliser runs lab/down.sh and then SIGKILLs every PID still recorded
under LAB_DIR, so nothing outlives the test even when it fails.
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

import pytest
from realparts import ROOT, free_port, require, wait_until

pytestmark = pytest.mark.integration

NET = "127.0.77"  # web node N on 127.0.77.N: no other test or lab uses this network
ROUTE_TIMEOUT = 30  # Serf coalesces member events (~1 s) and the hook reloads nginx
FAIL_TIMEOUT = 45  # Serf's failure detection (local profile: a few seconds) plus the reload


@dataclass
class Lab:
    dir: Path
    env: dict

    def sh(self, script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run([str(ROOT / "lab" / script), *args], env=self.env, capture_output=True,
                                text=True, timeout=timeout, check=False)
        assert result.returncode == 0, f"{script} {' '.join(args)}: {result.stdout}\n{result.stderr}"
        return result

    @property
    def port(self) -> int:
        return int(self.env["HTTP_PORT"])

    def get(self) -> tuple[int, str, str]:
        """(status, body, the upstream address nginx used) of one GET on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            return response.status, response.read().decode().strip(), response.getheader("X-Upstream", "")
        except OSError as exc:
            return 0, repr(exc), ""
        finally:
            conn.close()

    def served(self, tries: int = 9) -> set[str]:
        return {body if status == 200 else f"HTTP {status}" for status, body, _ in
                (self.get() for _ in range(tries))}

    def lbsync_log(self) -> str:
        return (self.dir / "lb" / "lbsync.log").read_text()

    def upstream(self) -> str:
        return (self.dir / "nginx" / "conf.d" / "lbs_upstream.conf").read_text()

    def members(self) -> dict[str, str]:
        with self.client() as client:
            return {m["Name"]: m["Status"] for m in client.members()}

    def client(self):
        from lbsync.serf import SerfClient

        token = json.loads((self.dir / "secrets.json").read_text())["rpc_auth"]
        return SerfClient(f"127.0.0.1:{self.env['LB_RPC_PORT']}", token)

    def pids(self) -> dict[int, str]:
        out = subprocess.run([sys.executable, str(ROOT / "lab" / "labtool.py"), "pids", str(self.dir)],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return {int(line.split()[0]): line.split()[1] for line in out.splitlines()}


@contextlib.contextmanager
def running_lab(tmp_path: Path, net: str) -> Iterator[Lab]:
    """A lab in tmp_path on loopback network `net` with free ports; everything it started is
    stopped on exit (down.sh, then SIGKILL for any PID still recorded), even when a test fails."""
    require("serf"), require("nginx")
    lab_dir = tmp_path / "lab"
    env = {**os.environ, "LAB_DIR": str(lab_dir), "LAB_NET": net, "PYTHON": sys.executable,
           "LB_IP": "127.0.0.1", "LB_SERF_PORT": str(free_port()), "LB_RPC_PORT": str(free_port()),
           "HTTP_PORT": str(free_port()), "WEB_PORT": str(free_port(f"{net}.1")),
           "WEB_SERF_PORT": str(free_port(f"{net}.1")), "WEB_RPC_PORT": str(free_port(f"{net}.1"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}:/usr/sbin"
    lab = Lab(lab_dir, env)
    try:
        yield lab
    finally:
        subprocess.run([str(ROOT / "lab" / "down.sh")], env=env, capture_output=True, timeout=120, check=False)
        for pid in lab.pids():  # whatever down.sh could not stop
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def lab(tmp_path):
    with running_lab(tmp_path, NET) as lab:
        yield lab


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


def test_lab_boot_drain_kill_reboot_and_down(lab):
    lab.sh("up.sh")
    assert lab.served(2) == {"HTTP 503"}
    for n in (1, 2, 3):
        lab.sh("boot_web.sh", str(n))
    everyone = {"serf-web1", "serf-web2", "serf-web3"}
    wait_until(lambda: lab.served() == everyone, ROUTE_TIMEOUT, "all three nodes served through the LB")

    before = lab.pids()
    assert "already running" in lab.sh("boot_web.sh", "1").stdout
    assert lab.pids() == before, "booting a running node started something"

    (lab.dir / "web1" / "load").write_text("0.75\n")
    def loads_from_all() -> dict[str, bytes] | None:
        with lab.client() as client:
            answers = client.query("load", timeout=1.0)
        return answers if set(answers) == everyone else None
    loads = wait_until(loads_from_all, 20, "a load answer from every web node")
    assert set(loads) == everyone and loads["serf-web1"] == b"0.75"
    assert all(float(value) >= 0 for value in loads.values()), loads

    # graceful: drain=1, the LB stops sending, then leave; a steady client sees no error
    loop = RequestLoop(lab)
    wait_until(lambda: len(loop.results) >= 30, 30, "the request loop to get going")
    lab.sh("stop_web.sh", "2")
    mark = len(loop.results)
    wait_until(lambda: len(loop.results) >= mark + 30, 30, "requests after the leave")
    results = loop.stop()
    assert loop.failures() == [], loop.failures()[:5]
    assert "serf-web2" in {body for _, body, _ in results[:mark]}
    assert "serf-web2" not in {body for _, body, _ in results[mark:]}
    wait_until(lambda: lab.members()["serf-web2"] == "left", ROUTE_TIMEOUT, "peers to see web2 left")
    wait_until(lambda: "serf-web2" not in lab.upstream(), ROUTE_TIMEOUT, "web2 out of the upstream")

    # hard kill: until Serf declares it failed nginx retries on the next node; then it is dropped
    only_web1 = "(1 backends: serf-web1); nginx reloaded"
    reloads = lab.lbsync_log().count(only_web1)  # web1 alone was rendered once already, at boot
    loop = RequestLoop(lab)
    lab.sh("kill_web.sh", "3")
    wait_until(lambda: lab.members()["serf-web3"] == "failed", FAIL_TIMEOUT, "Serf to declare web3 failed")
    wait_until(lambda: lab.lbsync_log().count(only_web1) > reloads, ROUTE_TIMEOUT, "nginx reloaded without web3")
    assert "serf-web3" not in lab.upstream()
    mark = len(loop.results)
    wait_until(lambda: len(loop.results) >= mark + 20, 30, "requests after web3 was dropped")
    results = loop.stop()
    assert loop.failures() == [], loop.failures()[:5]
    assert all(f"{NET}.3:" not in upstream for _, _, upstream in results[mark + 2:])

    lab.sh("boot_web.sh", "3")
    wait_until(lambda: lab.served() == {"serf-web1", "serf-web3"}, ROUTE_TIMEOUT, "web3 back in rotation")

    recorded = lab.pids()
    assert len(recorded) == 8, recorded  # nginx, LB serf; web1 and web3: web server, agent, serf
    lab.sh("down.sh")
    assert [pid for pid in recorded if _running(pid)] == [], "processes left behind by down.sh"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
