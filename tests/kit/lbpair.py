"""Two LBs, one address, on kit.hosts (issue 16): the pair, load at its VIP, and the failover proof.

`Lab(hosts, lbs={"lb": "hook", "lb2": "run"}, vip=VIP)` (kit.lbhosts) provisions an LB pair:
keepalived on both LBs (VRRP v3, unicast, 0.1 s adverts, nopreempt), nginx serving the VIP's port
on all addresses, lbsync (hook on lb, daemon on lb2) following the same Serf cluster. Here:

- `VipWatch(lab)`: which LB holds the VIP, from `ip -ts monitor address link` in each LB's network
  namespace (the harness's own, so a dead host is still watched): a holder has the address on an
  eth0 whose link is up. Event-driven, so it costs nothing between changes and misses none.
- `PacedLoad(client, VIP)`: about `rate` requests a second at the VIP from the client host, each on
  a fresh connection in its own thread (a request waiting for a SYN retry does not hold back the
  next), as a transient unit there; per request [start, end, status, first body line].
- `prove(lab, watch, load)`: the steps below under load, each with the time the VIP took to move,
  the requests that failed out of those started from 1 s before the step until it settled, and
  whether both LBs served the same pool (digest) once it had:
    1. nginx on the VIP holder (lb) killed: every nginx process at once -> the VIP moves to lb2;
    2. nginx on lb started again: lb becomes BACKUP, the VIP stays on lb2 (nopreempt);
    3. keepalived restarted on lb2, the planned way to move the VIP: it goes back to lb;
    4. lb dies as a machine (its link down, SIGKILL to its PID 1): the VIP moves to lb2;
    5. lb booted again: BACKUP again, the VIP stays on lb2, nothing fails (failback).
  Step 3 only puts the VIP back where step 4 can take a whole LB down under it.

Used by tests/hosts/test_lb_pair.py, bench/pair.py and lab/pair.sh.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from kit.hosts import Host
from kit.lbhosts import Lab
from kit.net import wait_until

VIP = "10.77.0.100/24"
VIP_IP = VIP.split("/")[0]
LBS = {"lb": "hook", "lb2": "run"}  # the first LB follows Serf by its hook, the second as a daemon
WINDOW_BEFORE = 1.0  # a step counts the requests started from this long before its action
SETTLE = 4.0  # ... until this long after the VIP settled


# ---------------------------------------------------------------- who holds the VIP


class VipWatch:
    """Which LB holds the VIP, and when each LB acquired it (time.time(), the client's clock too)."""

    def __init__(self, lab: Lab, vip: str = VIP_IP):
        self.vip, self.names = vip, [lb.name for lb in lab.lbs]
        self.netns = {lb.name: lb.netns for lb in lab.lbs}
        self.has_vip = dict.fromkeys(self.names, False)
        self.link_up = dict.fromkeys(self.names, False)
        self.events: list[tuple[float, str, str]] = []  # (time, LB, "vip+" | "vip-" | "up" | "down")
        self.lock = threading.Lock()
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> VipWatch:
        for name in self.names:  # the monitor first, then the state: no change falls in between
            proc = subprocess.Popen(["ip", "-n", self.netns[name], "-o", "monitor", "address", "link"],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
            self.procs.append(proc)
            threading.Thread(target=self._follow, args=(name, proc), daemon=True).start()
        time.sleep(0.05)
        for name in self.names:
            addrs = _ip(self.netns[name], "-o", "addr", "show", "dev", "eth0")
            flags = _flags(_ip(self.netns[name], "-o", "link", "show", "dev", "eth0"))
            with self.lock:
                self.has_vip[name] = f"inet {self.vip}/" in addrs
                self.link_up[name] = "UP" in flags
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:  # by PID: these are ours
            proc.kill()
            proc.wait()

    def _follow(self, name: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.time()
            with self.lock:
                if f"inet {self.vip}/" in line:
                    self.has_vip[name] = not line.startswith("Deleted")
                    self.events.append((now, name, "vip+" if self.has_vip[name] else "vip-"))
                elif re.match(r"\d+: eth0[@:]", line) and "link/" in line:
                    up = "UP" in _flags(line)
                    if up != self.link_up[name]:
                        self.link_up[name] = up
                        self.events.append((now, name, "up" if up else "down"))

    def holder(self) -> str | None:
        """The LB with the VIP on a live link; "lb+lb2" would be both (split brain: never expected)."""
        with self.lock:
            held = [n for n in self.names if self.has_vip[n] and self.link_up[n]]
        return "+".join(held) if held else None

    def acquired(self, after: float) -> list[tuple[float, str]]:
        """(time, LB) each time an LB added the VIP after `after`: one per failover, none in a failback."""
        with self.lock:
            return [(t, name) for t, name, kind in self.events if kind == "vip+" and t >= after]


def _flags(link_line: str) -> list[str]:
    return link_line.split("<", 1)[1].split(">", 1)[0].split(",") if "<" in link_line else []


def _ip(netns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=True).stdout


# ---------------------------------------------------------------- load at the VIP

# Runs in the client host: ~RATE requests a second at TARGET, each on a fresh connection in a thread
# of its own, until the stop file appears; one JSON line each: [start, end, status (0: no answer), body].
LOAD = r"""
import json, os, socket, sys, threading, time
out, stop, target, rate = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
lock = threading.Lock()
log = open(out, "w", buffering=1)
REQUEST = ("GET / HTTP/1.0\r\nHost: %s\r\n\r\n" % target).encode()
def one(start):
    try:
        with socket.create_connection((target, 80), timeout=3) as sock:
            sock.sendall(REQUEST)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
        answer = [int(head.split()[1]) if head.startswith("HTTP/") else 0, body.strip().split("\n")[0]]
    except OSError as exc:
        answer = [0, type(exc).__name__ + ": " + str(exc)]
    with lock:
        log.write(json.dumps([round(start, 4), round(time.time(), 4), *answer]) + "\n")
n, began = 0, time.monotonic()
while not os.path.exists(stop):
    threading.Thread(target=one, args=(time.time(),), daemon=True).start()
    n += 1
    time.sleep(max(0.0, began + n / rate - time.monotonic()))
time.sleep(3.5)  # the last requests finish (timeout 3 s)
"""


class PacedLoad:
    """`rate` requests a second at `target` from `client` while the block runs (a transient unit);
    `results()` reads [(start, end, status, body)] so far."""

    def __init__(self, client: Host, target: str = VIP_IP, rate: float = 100.0, name: str = "pairload"):
        self.client, self.target, self.rate, self.name = client, target, rate, name
        self.out, self.stop_file = f"/root/{name}.jsonl", f"/root/{name}.stop"

    def __enter__(self) -> PacedLoad:
        self.client.run(["rm", "-f", self.out, self.stop_file])
        self.client.run(["sh", "-c", "cat > /root/pairload.py"], input=LOAD)
        self.client.run(["systemd-run", "--quiet", "--collect", f"--unit={self.name}", "python3",
                         "/root/pairload.py", self.out, self.stop_file, self.target, str(self.rate)])
        wait_until(lambda: any(r[2] == 200 for r in self.results()), 10, f"{self.name}'s first answer")
        return self

    def __exit__(self, *exc) -> None:
        self.client.run(["touch", self.stop_file])
        wait_until(lambda: self.client.run(["systemctl", "is-active", "-q", self.name], check=False).returncode,
                   15, f"{self.name} to stop")

    def results(self) -> list[tuple]:
        text = self.client.run(["cat", self.out], check=False).stdout
        return [tuple(json.loads(line)) for line in text.splitlines() if line.endswith("]")]


def failed(result: tuple) -> bool:
    """Not a 200 from a web host (the web hosts answer with their name)."""
    return result[2] != 200 or not str(result[3]).startswith("web")


# ---------------------------------------------------------------- the proof


@dataclass
class Step:
    """One step of the proof, its figures, and what it expected."""

    name: str
    expect: str  # the LB that must hold the VIP after the step
    before: str | None = None  # who held it at the action
    after: str | None = None  # who held it once the step settled
    moved_s: float | None = None  # action -> VIP on `expect` (when it had to move)
    moves: int = 0  # VIP changes during the step (1 for a failover, 0 for a failback)
    failed: int = 0
    total: int = 0
    slowest_s: float | None = None  # the slowest request of the window (a lost SYN costs 1 s)
    window_s: float = 0.0
    pools_agree: bool | None = None  # the LBs whose nginx serves hold the same pool digest afterwards
    note: str = ""
    failures: tuple = ()  # the first few failed requests: (start, seconds after the action, status, why)

    @property
    def failed_pct(self) -> float:
        return 100.0 * self.failed / self.total if self.total else 0.0

    @property
    def rate(self) -> float:
        """Requests a second the client started in the window."""
        return self.total / self.window_s if self.window_s else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "failed_pct": round(self.failed_pct, 2), "rate": round(self.rate, 1)}


def vrrp_state(host: Host) -> str:
    """keepalived's last state on `host` (MASTER, BACKUP, FAULT), from its journal this boot."""
    out = host.run("journalctl -b -u keepalived -o cat --no-pager | grep -o 'Entering [A-Z]* STATE' | tail -1",
                   check=False).stdout
    return out.split()[1] if out.strip() else ""


def pools_agree(lab: Lab, lbs: list[Host]) -> bool:
    """The LBs whose nginx holds a pool all hold the same one (an LB whose nginx is down holds none)."""
    digests = {lab.served(lb).get("digest") for lb in lbs} - {None}
    return len(digests) == 1


def power_off(host: Host) -> None:
    """An LB that dies as a machine does: its link goes silent as its processes die. (Host.kill()
    alone leaves a moment in which the host's network namespace, which outlives its processes,
    refuses connections with resets, as no dead machine does.)"""
    subprocess.run(["ip", "-n", host.netns, "link", "set", "eth0", "down"], check=True)
    host.kill()


def run_step(lab: Lab, watch: VipWatch, load: PacedLoad, name: str, expect: str, action: Callable[[], object],
             ready: Callable[[], object] | None = None, timeout: float = 30.0) -> Step:
    """Act, wait until `expect` holds the VIP (and `ready`, e.g. an LB back as BACKUP), let it
    settle under load, then count. Returns the figures; asserts nothing (the caller does)."""
    step = Step(name, expect, before=watch.holder())
    began = time.time()
    action()
    try:
        wait_until(lambda: watch.holder() == expect, timeout, f"{expect} to hold the VIP ({name})", interval=0.005)
        arrived = [t for t, lb in watch.acquired(began) if lb == expect]
        if step.before != expect and arrived:
            step.moved_s = round(arrived[0] - began, 3)
        if ready is not None:
            wait_until(ready, timeout, f"{name}: ready")
    except AssertionError as exc:
        step.note = str(exc)
    time.sleep(SETTLE)
    ended = time.time()
    step.after = watch.holder()
    step.moves = len(watch.acquired(began))
    time.sleep(3.2)  # requests started before `ended` finish (3 s timeout)
    window = [r for r in load.results() if began - WINDOW_BEFORE <= r[0] <= ended]
    step.total, step.failed = len(window), sum(1 for r in window if failed(r))
    step.failures = tuple((r[0], round(r[0] - began, 3), r[2], str(r[3])[:80]) for r in window if failed(r))[:5]
    step.slowest_s = round(max((r[1] - r[0] for r in window), default=0.0), 3)
    step.window_s = round(ended - began + WINDOW_BEFORE, 1)
    alive = [lb for lb in lab.lbs if lb.alive]
    step.pools_agree = _settled(lambda: pools_agree(lab, alive))
    return step


def _settled(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    try:
        return bool(wait_until(check, timeout, "both LBs to hold the same pool"))
    except AssertionError:
        return False


def prove(lab: Lab, watch: VipWatch, load: PacedLoad, report: Callable[[Step], None] = lambda step: None) -> list[Step]:
    """The five steps (module docstring); `report` gets each step as it ends."""
    lb, lb2 = lab.hosts["lb"], lab.hosts["lb2"]
    wait_until(lambda: watch.holder() == "lb", 10, "lb to hold the VIP at the start")
    time.sleep(WINDOW_BEFORE + 1.0)  # steady load before the first step's window opens
    steps: list[Step] = []

    def step(*args, **kwargs) -> None:
        steps.append(run_step(lab, watch, load, *args, **kwargs))
        report(steps[-1])

    step("nginx on lb killed (all processes)", "lb2", lambda: lb.run(["systemctl", "kill", "-s", "KILL", "nginx"]))
    step("nginx on lb started again", "lb2", lambda: lb.run(["systemctl", "start", "nginx"]),
         ready=lambda: vrrp_state(lb) == "BACKUP")
    step("keepalived restarted on lb2 (planned move)", "lb", lambda: lb2.run(["systemctl", "restart", "keepalived"]),
         ready=lambda: vrrp_state(lb2) == "BACKUP")
    step("lb killed (link down, SIGKILL PID 1)", "lb2", lambda: power_off(lb))
    step("lb booted again", "lb2", lambda: (lb.start(), lb.wait_running()),
         ready=lambda: vrrp_state(lb) == "BACKUP" and lab.in_rotation(lb) == sorted(w.name for w in lab.webs),
         timeout=120)
    return steps
