"""lbsync on kit.hosts: an LB and web hosts provisioned like the Vagrant lab, from a wheel (issue 17).

The hosts get what a Vagrant VM gets: `provision/` and the cluster's secrets under /vagrant, and
the same `provision/lb.sh` / `web.sh` command lines (provision/plan.rb's arguments on this
harness's addresses). They have no route out, so they also get a wheelhouse (`--wheels`): lbsync's
wheel and its dependencies', built on this machine.

- `wheelhouse()` builds that wheelhouse once per content of what goes into the wheel
  (pyproject.toml, README.md, LICENSE, lbsync/**), into `.cache/hosts/wheels-<digest>/`, from a
  copy of those files (the checkout gets no build/ or egg-info) with a fixed SOURCE_DATE_EPOCH.
  The build backend's venv and the dependencies' wheels are made once per pyproject requirements
  (`wheel-tools-<digest>/`), so a changed source costs a build of about 2 s, not a fresh env.
- `make_secrets(dir)` makes the gossip key and RPC token the way plan.rb does, on this machine.
- `Lab` boots `lb`, `web1..N`, further LBs and a `client` (which runs nothing of lbsync's) on one
  `Hosts` run and provisions them: the first LB, then the others in parallel (they join it). With
  `vip=ADDR/PREFIX` the LBs are a pair: keepalived moves that address (kit.lbpair, issue 16).
  `converge()` waits until nginx on every LB serves every web host; `served(lb)` reads what nginx
  holds from its control socket. `ClientLoop` sends requests from `client` while a step runs.

Used by tests/hosts/test_host_story.py and lab/hostlab.py (`lab/hosts.sh`).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kit.hosts import DEFAULT_CACHE, REPO, SUBNET, Host, HostError, Hosts
from kit.net import wait_until

WHEEL_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "lbsync")
GUEST_SRC = "/vagrant"  # where the Vagrantfile's VMs see the checkout
PROVISION = f"{GUEST_SRC}/provision"
SECRETS = f"{PROVISION}/.secrets"
WHEELS = f"{GUEST_SRC}/wheels"
SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01, the earliest time a zip can hold


def _inputs(repo: Path) -> list[Path]:
    files = []
    for name in WHEEL_INPUTS:
        path = repo / name
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [p for p in files if "__pycache__" not in p.parts and p.suffix != ".pyc"]


def source_digest(repo: Path = REPO) -> str:
    """What the wheel is built from: paths, modes and bytes of every input file."""
    digest = hashlib.sha256()
    for path in _inputs(repo):
        digest.update(f"{path.relative_to(repo)}\0{path.stat().st_mode & 0o777:o}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def wheelhouse(cache_dir: Path | str | None = None, repo: Path = REPO) -> Path:
    """lbsync's wheel and its dependencies' wheels, built (or reused) for this source."""
    cache = Path(cache_dir or DEFAULT_CACHE)
    house = cache / f"wheels-{source_digest(repo)}"
    if house.is_dir():
        return house
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".wheels.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not house.is_dir():
            _build_wheels(house, repo, _wheel_tools(cache, repo))
        for old in [*cache.glob("wheels-*"), *cache.glob(".wheels-*")]:  # the source moved on
            if old != house:
                shutil.rmtree(old, ignore_errors=True)
    return house


def _wheel_tools(cache: Path, repo: Path) -> Path:
    """What every build of the wheel reuses, made once per pyproject's requirements: a venv with
    the build backend (so a build takes a second, not a fresh isolated env each time) and the
    dependencies' wheels."""
    project = tomllib.loads((repo / "pyproject.toml").read_text())
    build_requires = project["build-system"]["requires"]
    dependencies = project["project"]["dependencies"]
    key = hashlib.sha256(json.dumps([sys.version_info[:2], build_requires, dependencies]).encode())
    tools = cache / f"wheel-tools-{key.hexdigest()[:16]}"
    if tools.is_dir():
        return tools
    for old in cache.glob("wheel-tools-*"):
        shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wheels-", dir=cache))
    try:
        _pip(sys.executable, "-m", "venv", tmp / "venv")
        _pip(tmp / "venv/bin/python", "-m", "pip", "install", "-q", *build_requires)
        _pip(tmp / "venv/bin/python", "-m", "pip", "wheel", "-q", "-w", tmp / "deps", *dependencies)
        tmp.rename(tools)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tools


def _build_wheels(house: Path, repo: Path, tools: Path) -> None:
    """lbsync's wheel, from a copy of its inputs (the checkout gets no build/ or egg-info), next
    to the dependencies' wheels."""
    tmp = Path(tempfile.mkdtemp(prefix=".wheels-", dir=house.parent))
    try:
        src = tmp / "src"
        for path in _inputs(repo):
            (src / path.relative_to(repo)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / path.relative_to(repo))
        _pip(tools / "venv/bin/python", "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             "-w", tmp / "wheels", src)
        if len(list((tmp / "wheels").glob("lbsync-*.whl"))) != 1:
            raise HostError(f"pip wheel made no lbsync wheel in {tmp / 'wheels'}")
        for wheel in (tools / "deps").glob("*.whl"):
            shutil.copy2(wheel, tmp / "wheels")
        (tmp / "wheels").rename(house)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pip(*argv) -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode:
        raise HostError(f"{' '.join(map(str, argv))} failed ({done.returncode}): {done.stderr.strip()[-3000:]}")


def make_secrets(directory: Path) -> Path:
    """The gossip key (base64 of 32 random bytes, as `serf keygen`) and the RPC token, 0600,
    made once on this machine like provision/plan.rb does for the Vagrant lab."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    values = {"serf.key": base64.b64encode(secrets.token_bytes(32)).decode(),
              "rpc.token": secrets.token_urlsafe(32), "vrrp.pass": secrets.token_urlsafe(6)}
    for name, value in values.items():
        path = directory / name
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(value + "\n")
    return directory


class Lab:
    """LBs and web hosts on one Hosts run, provisioned by provision/*.sh from a wheel.

    `Lab(hosts, webs=2, lbs={"lb": "hook"}).up()` boots `lb`, `web1`, `web2` and `client` (in that
    order, so at .10, .11, .12, .13 as in the Vagrant plan), then provisions the first LB, then the
    rest in parallel: web hosts join the first LB, further LBs (`--join`) too. `lab.provision(host,
    mode=...)` runs a host's script again. `timings` holds seconds per step."""

    def __init__(self, hosts: Hosts, webs: int = 2, lbs: dict[str, str] | None = None, client: bool = True,
                 secrets_dir: Path | None = None, subnet: str = SUBNET, vip: str | None = None):
        self.hosts, self.subnet, self.secrets, self.vip = hosts, subnet, secrets_dir, vip
        self.modes = dict(lbs or {"lb": "hook"})
        first, *others = self.modes
        self.names = [first, *(f"web{n}" for n in range(1, webs + 1)), *others] + (["client"] if client else [])
        self.timings: dict[str, float] = {}

    @property
    def lbs(self) -> list[Host]:
        return [self.hosts[name] for name in self.modes]

    @property
    def lb(self) -> Host:
        return self.lbs[0]

    @property
    def webs(self) -> list[Host]:
        return [self.hosts[n] for n in self.names if n.startswith("web")]

    @property
    def client(self) -> Host:
        return self.hosts["client"]

    def token(self) -> str:
        return (self.secrets / "rpc.token").read_text().strip()

    def up(self) -> Lab:
        began = time.monotonic()
        wheels = wheelhouse()
        self.timings["wheelhouse"] = time.monotonic() - began
        if self.secrets is None:
            self.secrets = make_secrets(self.hosts.workdir / "secrets")
        began = time.monotonic()
        self.hosts.boot(*self.names)
        self.timings["boot"] = time.monotonic() - began
        began = time.monotonic()
        for host in [*self.lbs, *self.webs]:
            host.copy_in(REPO / "provision", PROVISION, exclude=(".secrets",))
            host.copy_in(self.secrets, SECRETS)
            host.copy_in(wheels, WHEELS)
        self.provision(self.lb)
        rest = [*self.lbs[1:], *self.webs]
        with ThreadPoolExecutor(len(rest) or 1) as pool:
            list(pool.map(self.provision, rest))
        self.timings["provision"] = time.monotonic() - began
        return self

    def args(self, host: Host) -> list[str]:
        """provision/plan.rb's arguments for this host, on the harness's addresses, plus --wheels."""
        common = ["--name", host.name, "--ip", host.ip, "--secrets", SECRETS, "--wheels", WHEELS]
        if host.name not in self.modes:
            return ["sh", f"{PROVISION}/web.sh", *common, "--join", self.lb.ip]
        join = ["--join", self.lb.ip] if host is not self.lb else []
        return ["sh", f"{PROVISION}/lb.sh", *common, "--network", self.subnet, "--mode", self.modes[host.name],
                *join, *self.pair_args(host)]

    def pair_args(self, host: Host) -> list[str]:
        """With a `vip`: an LB pair (keepalived), the other LBs as VRRP peers; the first LB has the
        higher priority, which decides only the first election (nopreempt)."""
        if not self.vip:
            return []
        peers = [arg for lb in self.lbs if lb is not host for arg in ("--peer", lb.ip)]
        return ["--vip", self.vip, *peers, "--priority", "100" if host is self.lb else "90"]

    def provision(self, host: Host, mode: str | None = None) -> str:
        """Run the host's provision script; its stdout. A failure raises HostError with the
        script's stderr and the host's last journal lines of warning and worse (the why)."""
        if mode:
            self.modes[host.name] = mode
        done = host.run(self.args(host), timeout=300, check=False)
        if done.returncode:
            journal = host.run(["journalctl", "-b", "-p", "warning", "-n", "30", "--no-pager"], check=False)
            raise HostError(f"{host.name}: {' '.join(self.args(host))} exited with {done.returncode}:\n"
                            f"{done.stderr.strip()[-2000:]}\n--- journal (warning and worse):\n{journal.stdout}")
        return done.stdout

    def served(self, lb: Host) -> dict:
        """What nginx on `lb` holds, from its live data plane's control socket: {"version",
        "digest", "source", "backends": [...], ...}; {} when it holds no pool."""
        done = lb.run(["curl", "-s", "--unix-socket", CONTROL_SOCKET, f"http://lbsync/pools/{UPSTREAM}"],
                      check=False)
        try:
            pool = json.loads(done.stdout)
        except ValueError:
            return {}
        return pool if "backends" in pool else {}

    def converge(self, webs: list[str] | None = None, timeout: float = 30) -> float:
        """Wait until nginx on every LB sends new requests to exactly `webs` (default: every web
        host); the seconds it took. Provisioning returns before the LBs have followed Serf."""
        webs = sorted(webs if webs is not None else [web.name for web in self.webs])
        began = time.monotonic()
        for lb in self.lbs:
            wait_until(lambda: self.in_rotation(lb) == webs, timeout, f"nginx on {lb.name} to serve {webs}")
        return time.monotonic() - began

    def in_rotation(self, lb: Host) -> list[str]:
        """Names of the backends nginx on `lb` sends new requests to (not down, not draining)."""
        return sorted(b["name"] for b in self.served(lb).get("backends", ()) if not (b["down"] or b["drain"]))


CONTROL_SOCKET = "/run/lbsync/nginx-control.sock"
UPSTREAM = "lbs_backend"

# Runs in the client host: GETs / from each target in turn on fresh connections until the stop
# file appears; one JSON line per request: [time, target, status (0: no answer), first line of body].
LOOP = r"""
import http.client, json, os, sys, time
out, stop, targets = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(out, "w", buffering=1) as log:
    n = 0
    while not os.path.exists(stop):
        target = targets[n % len(targets)]
        n += 1
        conn = http.client.HTTPConnection(target, 80, timeout=5)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            answer = [response.status, response.read().decode(errors="replace").strip().split("\n")[0]]
        except OSError as exc:
            answer = [0, f"{type(exc).__name__}: {exc}"]
        finally:
            conn.close()
        log.write(json.dumps([round(time.time(), 3), target, *answer]) + "\n")
        time.sleep(0.005)
"""


class ClientLoop:
    """Requests from `client` to `targets` in a loop (a transient unit there) while a step runs:
    `with ClientLoop(client, [lb.ip]) as loop: ...`; then `loop.results` is [(time, target, status,
    body)] and `loop.failures` those that were not a 200 from a web host."""

    def __init__(self, client: Host, targets: list[str], name: str = "loop"):
        self.client, self.targets, self.name = client, targets, name
        self.out, self.stop_file = f"/root/{name}.jsonl", f"/root/{name}.stop"
        self.results: list[tuple] = []

    def __enter__(self) -> ClientLoop:
        self.client.run(["rm", "-f", self.out, self.stop_file])
        self.client.run(["sh", "-c", "cat > /root/loop.py"], input=LOOP)
        self.client.run(["systemd-run", "--quiet", "--collect", f"--unit={self.name}", "python3", "/root/loop.py",
                         self.out, self.stop_file, *self.targets])
        wait_until(lambda: len(self._read()) >= len(self.targets), 10, f"{self.name} to get its first answers")
        return self

    def __exit__(self, *exc) -> None:
        self.client.run(["touch", self.stop_file])
        wait_until(lambda: self.client.run(["systemctl", "is-active", "-q", self.name], check=False).returncode,
                   10, f"{self.name} to stop")
        self.results = self._read()

    def _read(self) -> list[tuple]:
        text = self.client.run(["cat", self.out], check=False).stdout
        return [tuple(json.loads(line)) for line in text.splitlines() if line.endswith("]")]

    def poll(self) -> ClientLoop:
        """Read the results so far (while the loop runs)."""
        self.results = self._read()
        return self

    @property
    def failures(self) -> list[tuple]:
        return [r for r in self.results if r[2] != 200 or not r[3].startswith("web")]

    def answered_by(self, since: float = 0.0) -> dict[str, int]:
        """How many answers each web host gave (after `since`, a time from the results)."""
        counts: dict[str, int] = {}
        for _, _, status, body in (r for r in self.results if r[0] >= since):
            if status == 200:
                counts[body] = counts.get(body, 0) + 1
        return counts
