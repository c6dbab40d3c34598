"""Real Debian 12 hosts on one machine: systemd containers on a private bridge (issue 17).

Why: lbsync ships provision scripts, serf drop-ins and sandboxed systemd units for real hosts. Only
a host with systemd as PID 1, its own address and its own machine-id shows that they work. This
machine cannot run VMs, but it can boot Debian under `systemd-nspawn` in well under a second.

How it is put together
- `base_image()` builds Debian 12 with debootstrap (systemd, serf, nginx + Lua and stream modules,
  keepalived, Python, ...) once, under `<repo>/.cache/hosts/debian12-<digest>/`. The digest covers
  the package list and the build recipe, so changing either rebuilds. A build runs in a temp dir
  that is renamed into place, so an interrupted build is never reused. Cold: about a minute.
- `Hosts` is one run, named `lbsh-<6 hex>`. A network namespace `<run>-br` holds bridge `br0`; each
  host has a network namespace `<run>-<name>` whose `eth0` is a veth with its peer on `br0` and an
  address in 10.77.0.0/24 (.10, .11, ... in the order hosts are added). Nothing routes out, and the
  machine's own namespace never sees these addresses. Packages therefore live in the image.
- Each host is `systemd-nspawn --boot` on an overlay: the image is the read-only lower layer, the
  host's writes go to `<workdir>/<name>/upper`, so a reboot keeps them. nspawn runs with
  `--register=no --keep-unit` (there is no host systemd or D-Bus) and is started inside its own
  cgroup `/sys/fs/cgroup/<hierarchy>/<run>/<name>`, so each container's `payload/` is its own.
- `Host.run()` enters the namespaces of the container's PID 1 with nsenter: no D-Bus needed.
- Every process is stopped by PID: nspawn gets SIGTERM (the container halts), then SIGKILL of the
  container's PID 1 if it hangs. `Hosts.close()` then kills, by PID, anything still listed in the
  run's cgroups, removes the cgroup dirs, deletes the namespaces (their veths and bridge go with
  them) and the workdir. It is idempotent, runs on exceptions, on SIGTERM (turned into
  KeyboardInterrupt while a run is open) and at exit; a run whose owner was SIGKILLed is swept by
  the next `Hosts()` (its record in /run/lbsh/ names the owner PID and start time).

Prerequisites: root; `apt-get install systemd-container debootstrap iproute2 util-linux` (see
TOOLS); a kernel with overlayfs, network namespaces, veth and bridge. `check_host()` raises
HostError with every reason at once; nothing is skipped silently.

Build (or find) the image alone, e.g. in CI before the tests::

    PYTHONPATH=tests python3 -c "from kit.hosts import base_image; print(base_image())"

From a script run with tests/ on PYTHONPATH (as lab/env.sh and `make bench` put it)::

    from kit.hosts import Hosts
    with Hosts() as hosts:                    # builds or reuses the image, sweeps dead runs
        lb, web1 = hosts.boot("lb", "web1")   # boots in parallel, waits for running/degraded
        web1.run("systemctl start nginx")
        print(lb.run(["curl", "-s", f"http://{web1.ip}/"]).stdout)
        web1.copy_in("dist/", "/srv/dist")    # a file or a directory tree
        web1.reboot()                         # comes back on the same overlay
    # everything is gone here

Provisioning: the image has every apt package provision/*.sh asks for, and the hosts have no route
out, so pip needs a wheelhouse. kit.lbhosts builds one (`wheelhouse()`, cached per source digest),
copies it in with the secrets and provision/, and runs provision/lb.sh and web.sh with `--wheels`
(`Lab`). serf, nginx and keepalived are installed but disabled: a host runs none of them until a
test or a provision script starts them.

From pytest: a fixture `with Hosts() as hosts: yield hosts`. Leftovers of a run can be listed with
`leftovers(run_id)`; `sweep_stale()` removes those of dead runs; `rm -rf .cache/hosts` drops the
image. Set LBSH_MIRROR to build from another Debian mirror.
"""

from __future__ import annotations

import atexit
import fcntl
import fnmatch
import hashlib
import io
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

PREFIX = "lbsh"
RUN_ID = re.compile(rf"^{PREFIX}-[0-9a-f]{{6}}")
REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / ".cache" / "hosts"
RECORDS = Path("/run/lbsh")
NETNS = Path("/run/netns")
CGROUP_FS = Path("/sys/fs/cgroup")
SUITE = "bookworm"
MIRROR = os.environ.get("LBSH_MIRROR", "http://deb.debian.org/debian")
SUBNET = "10.77.0.0/24"
TOOLS = {"systemd-nspawn": "systemd-container", "debootstrap": "debootstrap", "ip": "iproute2",
         "nsenter": "util-linux", "chroot": "coreutils"}
PACKAGES = ("systemd", "systemd-sysv", "dbus", "serf", "nginx", "libnginx-mod-http-lua", "lua-cjson",
            "libnginx-mod-stream", "keepalived", "python3", "python3-venv", "python3-pip", "iproute2",
            "iputils-ping", "curl", "ca-certificates")
# Runs in the fresh rootfs (chroot) after debootstrap; part of the cache key.
RECIPE = r"""set -eu
# A booted host runs nothing of its own until a test or provision script starts it: serf would
# gossip with a default config, nginx would serve the default site. The timers would reach for a
# network or disks the hosts do not have and leave units failed.
systemctl disable -q serf nginx keepalived e2scrub_reap.service apt-daily.timer \
    apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer
# Each host makes its own machine-id at first boot. systemd falls back to dbus's copy when
# /etc/machine-id is empty, so that copy must not hold the build's id either.
: > /etc/machine-id
ln -sf /etc/machine-id /var/lib/dbus/machine-id
rm -f /etc/hostname
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > /etc/hosts
apt-get clean
rm -rf /var/lib/apt/lists/*
"""
GUEST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
             "LANG": "C.UTF-8", "TERM": "dumb", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
# Moves the shell into each cgroup named before "--", then becomes the command after it, so
# nspawn and everything it forks start inside the host's own cgroup.
JOIN_CGROUPS = 'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs"; shift; done; shift; exec "$@"'
REBOOT_STATUS = 133  # systemd-nspawn's exit status when the container asked for a reboot


class HostError(RuntimeError):
    """The machine refused something, or a host did not come up. The message says why."""


class CommandFailed(subprocess.CalledProcessError):
    """A command inside a host exited non-zero; str() names the host and shows stderr."""

    def __init__(self, host: str, result: subprocess.CompletedProcess):
        super().__init__(result.returncode, result.args, result.stdout, result.stderr)
        self.host = host

    def __str__(self) -> str:
        return f"{self.host}: {self.cmd!r} exited with {self.returncode}: {self.stderr.strip()[-2000:]}"


# ---------------------------------------------------------------- the machine


_REFUSAL: list[str] = []


def check_host() -> None:
    """Raise HostError with every reason this machine cannot run hosts; print it only once."""
    if _REFUSAL:
        raise HostError(_REFUSAL[0])
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (network namespaces, cgroups, systemd-nspawn)")
    missing = [f"{tool} (apt: {pkg})" for tool, pkg in TOOLS.items() if not _which(tool)]
    if missing:
        problems.append("missing " + ", ".join(missing))
    if not _cgroup_roots():
        problems.append(f"no writable cgroup hierarchy under {CGROUP_FS}")
    if not _has_overlayfs():
        problems.append("the kernel has no overlay filesystem (modprobe overlay)")
    if problems:
        _REFUSAL.append("kit.hosts cannot run here: " + "; ".join(problems))
        print(_REFUSAL[0], file=sys.stderr)
        raise HostError(_REFUSAL[0])


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _has_overlayfs() -> bool:
    if "overlay" not in Path("/proc/filesystems").read_text():
        subprocess.run(["modprobe", "overlay"], capture_output=True)
    return "overlay" in Path("/proc/filesystems").read_text()


def _cgroup_roots() -> list[Path]:
    """Where a container's cgroup goes: the named systemd v1 hierarchy and the cgroup2 one
    (hybrid hosts like this one have both; a pure cgroup2 host has /sys/fs/cgroup only)."""
    roots = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mount, kind, options = fields[4], fields[-3], fields[-1]
        if kind == "cgroup2" or (kind == "cgroup" and "name=systemd" in options.split(",")):
            roots.append(Path(mount))
    return [root for root in roots if os.access(root, os.W_OK)]


def _sh(*args, timeout: float = 120) -> str:
    """Run a host-side command; a refusal becomes a HostError quoting the command and its stderr."""
    argv = [str(a) for a in args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostError(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode:
        raise HostError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-3000:]}")
    return done.stdout


# ---------------------------------------------------------------- the image


def recipe_digest() -> str:
    """The cache key: whatever changes the image's content changes the digest."""
    recipe = json.dumps([SUITE, PACKAGES, RECIPE])
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def base_image(cache_dir: Path | str | None = None) -> Path:
    """The cached Debian 12 rootfs for hosts: reused when present, else built (on the machine's
    network, since the hosts have none) under a lock, into a temp dir renamed into place."""
    cache = Path(cache_dir or DEFAULT_CACHE)
    image = cache / f"debian12-{recipe_digest()}"
    if image.is_dir():
        return image
    check_host()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder finishes first; we then reuse
        if not image.is_dir():
            _prune(cache)
            _build(image)
    return image


def _prune(cache: Path) -> None:
    """Drop half builds (their builder died: we hold the lock) and images of older recipes."""
    for old in [*cache.glob(".build-*"), *cache.glob("debian12-*")]:
        _remove_tree(old)


def _build(image: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=image.parent))
    try:
        tmp.chmod(0o755)  # it becomes the hosts' /, which sandboxed services must traverse
        _sh("debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE, tmp, MIRROR,
            timeout=1800)
        _sh("chroot", tmp, "/bin/sh", "-c", RECIPE)
        tmp.rename(image)
    except BaseException:
        _remove_tree(tmp)
        raise


def _remove_tree(path: Path) -> None:
    """rm -rf that first unmounts whatever a killed debootstrap left mounted inside (proc, sys,
    bind-mounted dev nodes), so it never reaches into the machine's own /proc, /sys or /dev."""
    for mount in sorted(_mounts_under(path), key=lambda m: -len(m.parts)):
        subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)
    if _mounts_under(path):
        raise HostError(f"not removing {path}: cannot unmount {_mounts_under(path)}")
    shutil.rmtree(path, ignore_errors=True)


def _mounts_under(path: Path) -> list[Path]:
    path = path.resolve()
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    points = [Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), p)) for p in points]
    return [p for p in points if p == path or path in p.parents]


# ---------------------------------------------------------------- the network


class Network:
    """The hosts' LAN: a bridge in a network namespace of its own, reachable only from the hosts."""

    def __init__(self, run_id: str, subnet: str = SUBNET):
        self.run_id = run_id
        self.netns = f"{run_id}-br"
        self.subnet = ipaddress.ip_network(subnet)
        _sh("ip", "netns", "add", self.netns)
        self._ip("link", "add", "br0", "type", "bridge")
        self._ip("link", "set", "br0", "up")

    def _ip(self, *args) -> str:
        return _sh("ip", "-n", self.netns, *args)

    def address(self, index: int) -> str:
        """The index-th host's address: .10, .11, ... (the Vagrant plan's lb, web1, web2)."""
        return str(self.subnet.network_address + 10 + index)

    def attach(self, name: str, netns: str, address: str) -> None:
        """Wire a host's namespace to the bridge: `eth0` there, its veth peer `v-<name>` on br0.
        Both ends carry the run id as alias, so a leaked interface can be traced to its run."""
        port = f"v-{name}"
        self._ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns)
        self._ip("link", "set", port, "alias", self.run_id, "master", "br0", "up")
        guest = ("ip", "-n", netns)
        _sh(*guest, "link", "set", "eth0", "alias", self.run_id)
        _sh(*guest, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        _sh(*guest, "link", "set", "lo", "up")
        _sh(*guest, "link", "set", "eth0", "up")


# ---------------------------------------------------------------- one host


class Host:
    """One Debian host: systemd as PID 1 in a container on an overlay of the image."""

    def __init__(self, name: str, ip: str, run_id: str, image: Path, workdir: Path, network: Network):
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,12}", name):
            raise ValueError(f"host name {name!r}: lower-case letters, digits, '-', at most 13")
        self.name, self.ip, self.image = name, ip, image
        self.prefixlen = network.subnet.prefixlen
        self.machine = self.netns = f"{run_id}-{name}"
        self.dir = workdir / name
        self.upper = self.dir / "upper"
        self.cgroups = [root / run_id / name for root in _cgroup_roots()]
        self.proc: subprocess.Popen | None = None
        self._pid1: int | None = None
        self.upper.mkdir(parents=True)
        _sh("ip", "netns", "add", self.netns)
        network.attach(name, self.netns, ip)

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.ip!r})"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def nspawn_argv(self) -> list[str]:
        return ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
                f"--directory={self.image}", f"--overlay={self.image}:{self.upper}:/",
                f"--machine={self.machine}", f"--hostname={self.name}",
                f"--network-namespace-path={NETNS / self.netns}",
                # its own network namespace, so it may configure it (an LB pair's keepalived adds
                # the VIP); nspawn grants this only for networks it made itself
                "--capability=CAP_NET_ADMIN",
                "--console=read-only", "--link-journal=no", "--resolv-conf=off", "--timezone=off"]

    def start(self) -> None:
        """Boot, or boot again after a stop, kill or reboot, on the same overlay (files survive).
        Returns at once; wait_running() waits for systemd."""
        if self.alive:
            raise HostError(f"{self.name}: already running")
        self._write_identity()
        for cgroup in self.cgroups:
            cgroup.mkdir(parents=True, exist_ok=True)
        # A machine boots with its own address only: what a killed host's programs added (an LB
        # pair's VIP, which a crashed keepalived never removed) does not survive, as on hardware.
        _sh("ip", "-n", self.netns, "addr", "flush", "dev", "eth0")
        _sh("ip", "-n", self.netns, "addr", "add", f"{self.ip}/{self.prefixlen}", "dev", "eth0")
        _sh("ip", "-n", self.netns, "link", "set", "eth0", "up")
        with open(self.dir / "console.log", "ab") as log:
            self.proc = subprocess.Popen(["sh", "-c", JOIN_CGROUPS, "sh", *map(str, self.cgroups), "--",
                                          *self.nspawn_argv()],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._pid1 = None

    def _write_identity(self) -> None:
        """Hostname and /etc/hosts in the overlay before the first boot, as an installer would."""
        etc = self.upper / "etc"
        if (etc / "hostname").exists():
            return
        etc.mkdir(mode=0o755, exist_ok=True)
        (etc / "hostname").write_text(self.name + "\n")
        (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n{self.ip}\t{self.name}\n")

    @property
    def pid1(self) -> int:
        """The container's systemd as seen from here: nspawn's child that is PID 1 in its own
        namespace and has exec'd systemd (so its mount namespace is the finished one)."""
        deadline = time.monotonic() + 20
        while self._pid1 is None:
            self._raise_if_exited()
            self._pid1 = next((pid for pid in _children(self.proc.pid) if _is_container_init(pid)), None)
            if self._pid1 is None and time.monotonic() > deadline:
                raise HostError(f"{self.name}: no container init after 20 s\n{self.console_tail()}")
            time.sleep(0.01)
        return self._pid1

    def _raise_if_exited(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            status = None if self.proc is None else self.proc.returncode
            raise HostError(f"{self.name}: not running (systemd-nspawn status {status})\n{self.console_tail()}")

    def console_tail(self, lines: int = 25) -> str:
        """The end of the boot console, for error messages (nspawn's own errors land here too)."""
        path = self.dir / "console.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
        return "\n".join(text.splitlines()[-lines:])

    def run(self, cmd: str | list, check: bool = True, timeout: float = 60, input: str | bytes | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """Run cmd (an argv list, or a string for sh -c) inside the host as root with a clean
        environment. Returns text stdout/stderr; raises CommandFailed on a non-zero exit if check.
        On timeout the whole process group is killed (by the PID of its leader)."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else [str(a) for a in cmd]
        environ = [f"{k}={v}" for k, v in {**GUEST_ENV, **(env or {})}.items()]
        full = ["nsenter", "-t", str(self.pid1), "-a", "--", "env", "-i", *environ, *argv]
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        data = input.encode() if isinstance(input, str) else input
        try:
            out, err = proc.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        result = subprocess.CompletedProcess(argv, proc.returncode, out.decode(errors="replace"),
                                             err.decode(errors="replace"))
        if check and result.returncode:
            raise CommandFailed(self.name, result)
        return result

    def wait_running(self, timeout: float = 90) -> str:
        """Wait until systemd reports `running` or `degraded` (then print which units failed).
        A guest-initiated reboot (nspawn status 133) is followed by booting again."""
        deadline = time.monotonic() + timeout
        state = ""
        while state not in ("running", "degraded"):
            if self.proc is not None and self.proc.poll() == REBOOT_STATUS:
                self._reap()
                self.start()
            if time.monotonic() > deadline:
                raise HostError(f"{self.name}: not up after {timeout:.0f} s (state {state!r}, failed units "
                                f"{self._failed_or_unknown()})\n{self.console_tail()}")
            time.sleep(0.02)
            state = self.run(["systemctl", "is-system-running"], check=False, timeout=10).stdout.strip()
        if state == "degraded":
            print(f"kit.hosts: {self.name} is degraded; failed units: {self.failed_units()}", file=sys.stderr)
        return state

    def failed_units(self) -> list[str]:
        out = self.run(["systemctl", "list-units", "--failed", "--plain", "--no-legend"]).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def _failed_or_unknown(self) -> list[str] | str:
        try:
            return self.failed_units()
        except (HostError, subprocess.SubprocessError) as exc:
            return f"unknown ({exc})"

    def copy_in(self, src: Path | str, dest: str, exclude: tuple[str, ...] = ()) -> None:
        """Copy a file to the path dest, or a directory's contents into the directory dest,
        owned by root. exclude: glob patterns matched against each relative path and name."""
        src = Path(src)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            if src.is_dir():
                for path in sorted(src.rglob("*")):
                    rel = path.relative_to(src)
                    if not _excluded(rel, exclude):
                        tar.add(path, arcname=str(rel), recursive=False, filter=_as_root)
                target = dest
            else:
                tar.add(src, arcname=Path(dest).name, filter=_as_root)
                target = str(Path(dest).parent)
        self.run(["sh", "-c", 'mkdir -p "$1" && tar -x -C "$1"', "sh", target], input=buf.getvalue())

    def reboot(self, timeout: float = 90) -> str:
        """`systemctl reboot` inside; nspawn exits with 133 and is started again on the same
        overlay and network namespace, so files and the address survive. Returns wait_running()."""
        self.run(["systemctl", "reboot"], check=False)
        status = self._wait_exit(timeout)
        if status != REBOOT_STATUS:
            raise HostError(f"{self.name}: reboot ended nspawn with status {status}\n{self.console_tail()}")
        self.start()
        return self.wait_running(timeout)

    def kill(self) -> None:
        """A hard crash: SIGKILL to the container's PID 1 (the kernel kills the rest of it) and the
        link goes down, so peers see silence, not refused connections. start() boots it again."""
        if self.alive:
            os.kill(self.pid1, signal.SIGKILL)
            self._wait_exit(20)
        self._reap()

    def terminate(self) -> None:
        """Ask for a clean halt without waiting: nspawn turns SIGTERM into the container's halt."""
        if self.alive:
            self.proc.terminate()

    def stop(self, timeout: float = 20) -> None:
        """Halt cleanly; after timeout, SIGKILL the container's PID 1, then nspawn."""
        if self.alive:
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._force_stop()
        self._reap()

    def _force_stop(self) -> None:
        for pid in (self._pid1, self.proc.pid):
            if pid is not None:
                _kill(pid)
        self.proc.wait(10)

    def _wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._force_stop()
            raise HostError(f"{self.name}: nspawn still running after {timeout:.0f} s; killed") from None

    def _reap(self) -> None:
        """After nspawn ended: take the link down, empty and remove the host's cgroup dirs."""
        self._pid1 = None
        subprocess.run(["ip", "-n", self.netns, "link", "set", "eth0", "down"], capture_output=True)
        for cgroup in self.cgroups:
            _remove_cgroup(cgroup)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _is_container_init(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    nspid = next(line for line in status.splitlines() if line.startswith("NSpid:")).split()
    return len(nspid) > 2 and nspid[-1] == "1" and comm == "systemd"


def _excluded(rel: Path, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(str(rel), p) or any(fnmatch.fnmatch(part, p) for part in rel.parts)
               for p in patterns)


def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


# ---------------------------------------------------------------- one run of hosts


class Hosts:
    """A run of hosts on one bridge; a context manager that always cleans up after itself.

    boot("lb", "web1", "web2") adds hosts (addresses .10, .11, .12), starts them in parallel and
    waits for systemd in each. hosts["web1"] looks one up. timings holds seconds per step."""

    def __init__(self, image: Path | str | None = None, subnet: str = SUBNET, workdir: Path | str | None = None):
        self._image, self._subnet, self._workdir_base = image, subnet, workdir
        self.hosts: dict[str, Host] = {}
        self.timings: dict[str, float] = {}
        self.run_id = ""
        self._old_sigterm = None

    def __enter__(self) -> Hosts:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def open(self) -> None:
        """Check the machine, sweep dead runs, get the image, then claim a run id and a bridge."""
        check_host()
        sweep_stale()
        began = time.monotonic()
        self.image = Path(self._image) if self._image else base_image()
        self.timings["image"] = time.monotonic() - began
        if not (self.image / "usr/lib/systemd/systemd").exists():
            raise HostError(f"{self.image} is not a host image (no systemd): use base_image()")
        self.run_id = f"{PREFIX}-{secrets.token_hex(3)}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.run_id}-", dir=self._workdir_base))
        _write_record(self.run_id, self.workdir)  # before anything it names exists
        self._trap_sigterm()
        atexit.register(self.close)
        self.network = Network(self.run_id, self._subnet)

    def add(self, name: str, ip: str | None = None) -> Host:
        """A host wired to the bridge, not yet started."""
        if name in self.hosts:
            raise HostError(f"host {name} exists already")
        ip = ip or self.network.address(len(self.hosts))
        self.hosts[name] = Host(name, ip, self.run_id, self.image, self.workdir, self.network)
        return self.hosts[name]

    def boot(self, *names: str, timeout: float = 90) -> list[Host]:
        """Add, start (all at once) and wait for each host; returns them in order."""
        began = time.monotonic()
        booted = [self.add(name) for name in names]
        for host in booted:
            host.start()
        for host in booted:
            host.wait_running(timeout)
        self.timings[f"boot {len(booted)}"] = time.monotonic() - began
        return booted

    def close(self) -> None:
        """Stop every host (all halts requested at once), then purge what the run made. Idempotent."""
        if not self.run_id:
            return
        for host in self.hosts.values():
            host.terminate()
        try:
            for host in self.hosts.values():
                host.stop()
        finally:
            _purge(self.run_id)
            self.hosts.clear()
            self._restore_sigterm()
            atexit.unregister(self.close)

    def _trap_sigterm(self) -> None:
        """A SIGTERMed test run unwinds (finalisers run) instead of leaving containers behind."""
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._old_sigterm = signal.signal(signal.SIGTERM, _interrupt)

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# ---------------------------------------------------------------- records, purge, leftovers


def _write_record(run_id: str, workdir: Path) -> None:
    record = RECORDS / run_id
    record.mkdir(parents=True)
    (record / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    (record / "workdir").write_text(str(workdir))


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks: with the PID, it names one process for good."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_alive(run_id: str) -> bool:
    try:
        pid, started = (RECORDS / run_id / "owner").read_text().split()
    except (OSError, ValueError):
        return False
    return _start_time(int(pid)) == started


def _run_ids() -> set[str]:
    """Every run id that left a trace: records, network namespaces, cgroup dirs."""
    names = [p.name for p in RECORDS.glob("*")] + [p.name for p in NETNS.glob(f"{PREFIX}-*")]
    names += [p.name for root in _cgroup_roots() for p in root.glob(f"{PREFIX}-*")]
    return {m.group(0) for m in map(RUN_ID.match, names) if m}


def sweep_stale() -> list[str]:
    """Purge every run whose owner process is gone (a SIGKILLed pytest, a crashed lab script)."""
    stale = sorted(run_id for run_id in _run_ids() if not _owner_alive(run_id))
    for run_id in stale:
        print(f"kit.hosts: removing what dead run {run_id} left", file=sys.stderr)
        _purge(run_id)
    return stale


def _purge(run_id: str) -> None:
    """Remove all a run made: its processes (by PID, from its cgroups), cgroup dirs, network
    namespaces (their veths and the bridge go with them), workdir and record."""
    for root in _cgroup_roots():
        _remove_cgroup(root / run_id)
    for netns in NETNS.glob(f"{run_id}-*"):
        _sh("ip", "netns", "delete", netns.name)
    record = RECORDS / run_id
    workdir = record / "workdir"
    if workdir.exists():
        _remove_tree(Path(workdir.read_text().strip()))
    shutil.rmtree(record, ignore_errors=True)


def _remove_cgroup(cgroup: Path, timeout: float = 10) -> None:
    """SIGKILL, by PID, whatever is still in the cgroup tree, then remove its dirs deepest first."""
    deadline = time.monotonic() + timeout
    while cgroup.exists():
        for pid in _cgroup_pids(cgroup):
            _kill(pid)
        dirs = sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for path in [*dirs, cgroup]:
            try:
                path.rmdir()
            except OSError:
                pass
        if cgroup.exists() and time.monotonic() > deadline:
            raise HostError(f"cannot remove {cgroup}: processes {_cgroup_pids(cgroup)} remain")
        time.sleep(0.01 if cgroup.exists() else 0)


def _cgroup_pids(cgroup: Path) -> list[int]:
    pids = []
    for procs in cgroup.rglob("cgroup.procs"):
        try:
            pids += [int(p) for p in procs.read_text().split()]
        except OSError:
            pass
    return pids


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def leftovers(run_id: str) -> list[str]:
    """What of a run still exists: cgroup dirs, network namespaces, mounts, links in this
    namespace, processes, workdir, record. Empty after a clean close (tests assert that)."""
    found = [f"cgroup {root / run_id}" for root in _cgroup_roots() if (root / run_id).exists()]
    found += [f"netns {p.name}" for p in NETNS.glob(f"{run_id}-*")]
    found += [f"mount {line}" for line in Path("/proc/self/mountinfo").read_text().splitlines() if run_id in line]
    found += [f"link {line}" for line in _sh("ip", "-o", "link", "show").splitlines() if run_id in line]
    found += [f"process {pid}" for pid in _pids_mentioning(run_id)]
    found += [f"record {p}" for p in [RECORDS / run_id] if p.exists()]
    found += [f"workdir {p}" for p in Path(tempfile.gettempdir()).glob(f"{run_id}-*")]
    return found


def _pids_mentioning(run_id: str) -> list[int]:
    """Live processes whose command line or cgroup names the run (nspawn's --machine carries it).
    Zombies are left out: an nspawn orphaned by a killed owner is the machine's init's to reap."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            text = (proc / "cmdline").read_bytes().decode(errors="replace") + (proc / "cgroup").read_text()
        except (OSError, IndexError):
            continue
        if run_id in text and int(proc.name) != os.getpid():
            pids.append(int(proc.name))
    return pids
