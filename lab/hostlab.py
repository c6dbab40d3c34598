#!/usr/bin/env python3
"""The lab on real Debian hosts: the Vagrant experience without VMs (lab/hosts.sh is the front).

`up` boots `lb`, `web1..N` and `client` as systemd-nspawn containers on a private bridge
(10.77.0.0/24: lb .10, webN .10+N, client after them) and provisions them with provision/lb.sh and
web.sh from a wheel (tests/kit/lbhosts.py, the host tests' own harness). The containers belong to
an owner process that `up` leaves running in the background: it boots a host again after
`systemctl reboot` inside, and takes everything down on `down` (SIGTERM), leaving nothing behind.
The other commands enter a host's namespaces with nsenter, like `vagrant ssh -c`.

State (the owner's PID, each host's address and PID 1, its log) is in $LAB_DIR/hosts/ (default
lab/state/hosts). Needs root. Hosts are not kept across `down` (it is `vagrant destroy`). Run it
through lab/hosts.sh: lab/env.sh puts the test kit (tests/) on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kit.hosts import GUEST_ENV, REBOOT_STATUS, Hosts, _start_time
from kit.lbhosts import CONTROL_SOCKET, UPSTREAM, Lab

REPO = Path(__file__).resolve().parents[1]

STATE = Path(os.environ.get("LAB_DIR", REPO / "lab" / "state")) / "hosts"
STATE_FILE, LOG = STATE / "lab.json", STATE / "owner.log"


class Failed(Exception):
    """A one-line reason; printed, exit 1."""


# -- the owner: holds the containers ------------------------------------------------------------

def serve(webs: int, mode: str) -> None:
    """Boot and provision, then keep the hosts until SIGTERM: a host that rebooted is booted again,
    one that was killed (`kill`) stays down until `start` asks for it."""
    state = {"owner": [os.getpid(), _start_time(os.getpid())], "mode": mode, "ready": False, "hosts": {}}
    with Hosts() as hosts:
        lab = Lab(hosts, webs=webs, lbs={"lb": mode})
        state["run_id"] = hosts.run_id
        try:
            lab.up()
            lab.timings["LB serving every web host"] = lab.converge()
            state.update(ready=True, timings=lab.timings)
            _save(state, hosts)
            while True:
                for host in hosts.hosts.values():
                    request = STATE / f"start-{host.name}"
                    if host.proc.poll() == REBOOT_STATUS or (request.exists() and not host.alive):
                        request.unlink(missing_ok=True)
                        host._reap()
                        host.start()
                        host.wait_running()
                        print(f"{host.name}: booted again", flush=True)
                        _save(state, hosts)
                    request.unlink(missing_ok=True)
                time.sleep(0.1)
        except KeyboardInterrupt:  # SIGTERM from `down`: Hosts turns it into this
            print("stopping every host", flush=True)


def _save(state: dict, hosts: Hosts) -> None:
    state["hosts"] = {host.name: {"ip": host.ip, "pid1": host.pid1 if host.alive else None,
                                  "since": _start_time(host.pid1) if host.alive else None}
                      for host in hosts.hosts.values()}
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, STATE_FILE)


# -- the commands -------------------------------------------------------------------------------

def load() -> dict | None:
    """The running lab's state; None when there is none (a dead owner's file is removed)."""
    try:
        state = json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return None
    pid, started = state["owner"]
    if _start_time(pid) != started:
        STATE_FILE.unlink(missing_ok=True)
        return None
    return state


def cmd_up(args) -> None:
    if os.geteuid() != 0:
        raise Failed("needs root: containers, network namespaces and cgroups")
    state = load()
    if state is None:
        STATE.mkdir(parents=True, exist_ok=True)
        with open(LOG, "w") as log:
            owner = subprocess.Popen([sys.executable, __file__, "serve", "--webs", str(args.webs),
                                      "--mode", args.mode], stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        print(f"booting lb, web1..web{args.webs} and client, provisioning them with provision/*.sh "
              f"(owner pid {owner.pid}, log {LOG})", flush=True)
        deadline = time.monotonic() + 600  # a first run builds the image (about a minute)
        while not (state := load()) or not state["ready"]:
            if owner.poll() is not None:
                raise Failed(f"the owner exited ({owner.returncode}):\n{_tail(LOG)}")
            if time.monotonic() > deadline:
                raise Failed(f"not up after 600 s; see {LOG}")
            time.sleep(0.2)
        print("   " + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in state["timings"].items()))
    cmd_status(args)


def cmd_status(args) -> None:
    state = load()
    if state is None:
        print("no hosts lab running (lab/hosts.sh up)")
        return
    print(f"hosts lab {state['run_id']} ({state['mode']} mode), owner pid {state['owner'][0]}:")
    for name, host in state["hosts"].items():
        print(f"   {name:<7} {host['ip']:<11} {'running' if _alive(host) else 'down'}")


def cmd_down(args) -> None:
    state = load()
    if state is None:
        print("no hosts lab running")
        return
    pid = state["owner"][0]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 90
    while _start_time(pid) == state["owner"][1]:
        if time.monotonic() > deadline:
            raise Failed(f"owner {pid} still running after 90 s; see {LOG}")
        time.sleep(0.1)
    from kit.hosts import leftovers

    left = leftovers(state["run_id"])
    STATE_FILE.unlink(missing_ok=True)
    if left:
        raise Failed("left behind: " + "; ".join(left))
    print(f"hosts lab {state['run_id']} down: containers, bridge, namespaces and cgroups removed")


def guest_argv(name: str, argv: list[str], env: dict | None = None) -> list[str]:
    state = load()
    if state is None:
        raise Failed("no hosts lab running (lab/hosts.sh up)")
    host = state["hosts"].get(name)
    if host is None:
        raise Failed(f"no host {name!r}; hosts: {', '.join(state['hosts'])}")
    if not _alive(host):
        raise Failed(f"{name} is down (lab/hosts.sh start {name})")
    environ = [f"{k}={v}" for k, v in {**GUEST_ENV, **(env or {})}.items()]
    return ["nsenter", "-t", str(host["pid1"]), "-a", "--", "env", "-i", *environ, *argv]


def cmd_run(args) -> None:
    if not args.argv:
        raise Failed("usage: run NAME COMMAND [ARG...]")
    argv = guest_argv(args.name, args.argv)
    os.execvp(argv[0], argv)


def cmd_shell(args) -> None:
    argv = guest_argv(args.name, ["bash", "-l"], {"TERM": os.environ.get("TERM", "xterm")})
    os.execvp(argv[0], argv)


def cmd_kill(args) -> None:
    """A hard crash: SIGKILL to the host's PID 1; it stays down until `start`."""
    state = load()
    guest_argv(args.name, ["true"])  # checks that it exists and runs
    os.kill(state["hosts"][args.name]["pid1"], signal.SIGKILL)
    print(f"{args.name}: PID 1 killed (lab/hosts.sh start {args.name} boots it again)")


def cmd_start(args) -> None:
    state = load()
    if state is None or args.name not in state["hosts"]:
        raise Failed(f"no host {args.name!r} in a running lab")
    (STATE / f"start-{args.name}").touch()
    deadline = time.monotonic() + 60
    while not _alive((load() or {"hosts": {args.name: {}}})["hosts"][args.name]):
        if time.monotonic() > deadline:
            raise Failed(f"{args.name} not booted after 60 s; see {LOG}")
        time.sleep(0.1)
    print(f"{args.name}: running")


def cmd_wait_served(args) -> None:
    """Until nginx on the LB sends new requests to NAME (or, with --gone, no longer does)."""
    query = ["curl", "-s", "--unix-socket", CONTROL_SOCKET, f"http://lbsync/pools/{UPSTREAM}"]
    began = time.monotonic()
    while True:
        done = subprocess.run(guest_argv("lb", query), capture_output=True, text=True)
        try:
            backends = json.loads(done.stdout).get("backends", [])
        except ValueError:
            backends = []
        serving = {b["name"] for b in backends if not (b["down"] or b["drain"])}
        if (args.name in serving) != args.gone:
            print(f"   nginx on lb {'no longer sends to' if args.gone else 'sends to'} {args.name} "
                  f"({time.monotonic() - began:.1f} s)")
            return
        if time.monotonic() - began > args.timeout:
            raise Failed(f"timed out after {args.timeout:g} s waiting for {args.name}")
        time.sleep(0.1)


def _alive(host: dict) -> bool:
    return bool(host.get("pid1")) and _start_time(host["pid1"]) == host["since"]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab/hosts.sh", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="boot and provision the hosts (reuses a running lab)")
    up.add_argument("--webs", type=int, default=int(os.environ.get("WEB_NODES", "2")), choices=range(1, 10),
                    metavar="N", help="web hosts (default WEB_NODES or 2)")
    up.add_argument("--mode", choices=("hook", "run"), default=os.environ.get("LAB_MODE", "hook"),
                    help="the LB's mode (default LAB_MODE or hook)")
    serve_ = sub.add_parser("serve", help=argparse.SUPPRESS)
    serve_.add_argument("--webs", type=int, default=2)
    serve_.add_argument("--mode", default="hook")
    sub.add_parser("status", help="hosts, addresses, running or down")
    sub.add_parser("down", help="stop and remove every host")
    run = sub.add_parser("run", help="run a command in a host")
    run.add_argument("name")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    for name, text in (("shell", "a login shell in a host"), ("kill", "crash a host (SIGKILL its PID 1)"),
                       ("start", "boot a killed host again")):
        sub.add_parser(name, help=text).add_argument("name")
    served = sub.add_parser("wait-served", help="wait until nginx on lb sends to NAME (or, --gone, not)")
    served.add_argument("name")
    served.add_argument("--gone", action="store_true")
    served.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            serve(args.webs, args.mode)
        else:
            globals()[f"cmd_{args.command.replace('-', '_')}"](args)
    except Failed as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
