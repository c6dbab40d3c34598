#!/usr/bin/env python3
"""Helpers for the lab's shell scripts: pid files, bounded waits with visible progress, config files.

The scripts stay short shell that shows the real `serf`/`nginx`/`lbsync` commands; the fiddly
parts (starting a process in its own session with a pid file, telling a live PID from a reused
one, polling with a deadline, rendering nginx's config) live here.

The nginx layout is the test kit's (kit.nginx), so the lab runs what the tests run.

Pid files hold "PID START_TIME": a PID alone could name an unrelated process after a reboot or
wrap-around, and the lab must never signal that.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

try:
    import psutil
except ImportError:
    print(f"lab: {sys.executable} lacks lbsync's dependencies (psutil, jinja2, msgpack): "
          "run 'make demo', or set PYTHON to a venv's python", file=sys.stderr)
    sys.exit(69)  # EX_UNAVAILABLE: the scripts stop on it

LAB = Path(__file__).resolve().parent
# The nginx layout, ports and "does it listen" come from the test kit (tests/kit, on PYTHONPATH
# through env.sh), imported where used: `labtool.py token` is also run by hand, without env.sh.
class Failed(Exception):
    """A one-line reason; the script prints it and stops."""


# -- processes ----------------------------------------------------------------------------------

def read_pid(pidfile: str) -> psutil.Process | None:
    """The running process a pid file names, or None (absent, dead, zombie or a reused PID)."""
    try:
        fields = Path(pidfile).read_text().split()
        proc = psutil.Process(int(fields[0]))
        if len(fields) > 1 and abs(proc.create_time() - float(fields[1])) > 0.01:
            return None
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


def write_pid(pidfile: str, pid: int) -> None:
    path = Path(pidfile)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{pid} {psutil.Process(pid).create_time()}\n")
    os.replace(tmp, path)


def cmd_spawn(args) -> None:
    """Start argv in its own session (it outlives this shell and its Ctrl-C); record its PID."""
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    with open(args.log, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    write_pid(args.pidfile, proc.pid)


def cmd_alive(args) -> None:
    if read_pid(args.pidfile) is None:
        raise SystemExit(1)


def cmd_stop(args) -> None:
    """Signal the recorded process, wait (showing progress) and SIGKILL it after the timeout."""
    proc = read_pid(args.pidfile)
    if proc is not None:
        proc.send_signal(getattr(signal, f"SIG{args.signal}"))
        if not wait(lambda: not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE,
                    args.timeout, args.what, fail=False):
            print(f"   {args.what or proc.pid}: still running after {args.timeout:g} s; SIGKILL", flush=True)
            proc.kill()
            proc.wait(5)
    Path(args.pidfile).unlink(missing_ok=True)


def cmd_record_child(args) -> None:
    """Record the first child of a recorded process (the agent's serf) in its own pid file."""
    parent = read_pid(args.parent)
    children = parent.children() if parent else []
    if not children:
        raise Failed(f"no child process under {args.parent}")
    write_pid(args.pidfile, children[0].pid)


def cmd_pids(args) -> None:
    """Every live PID recorded under the lab directory, one a line (for checks and cleanup)."""
    for pidfile in sorted(Path(args.lab_dir).rglob("*.pid")):
        proc = read_pid(str(pidfile))
        if proc is not None:
            print(proc.pid, pidfile)


# -- waits --------------------------------------------------------------------------------------

def wait(done, timeout: float, what: str | None, fail: bool = True) -> bool:
    """Poll `done` until true; print progress (dots, then the time taken) when `what` is given."""
    start = time.monotonic()
    shown, next_dot = False, start + 0.3
    while True:
        try:
            ok = done()
        except psutil.NoSuchProcess:
            ok = True
        if ok:
            if shown:
                print(f" {time.monotonic() - start:.1f} s", flush=True)
            return True
        if time.monotonic() - start > timeout:
            if shown:
                print(" timed out", flush=True)
            if fail:
                raise Failed(f"timed out after {timeout:g} s waiting for {what}")
            return False
        if what and time.monotonic() >= next_dot:  # a dot every 0.25 s after the first 0.3 s
            print("." if shown else f"   waiting for {what} ", end="", flush=True)
            shown, next_dot = True, next_dot + 0.25
        time.sleep(0.02)


def cmd_wait_port(args) -> None:
    from kit.net import connects

    def up() -> bool:
        if args.pidfile and read_pid(args.pidfile) is None:
            log = Path(args.pidfile).with_suffix(".log")
            raise Failed(f"{args.what} exited; see {log}")
        return connects(args.host, args.port)
    wait(up, args.timeout, args.what)


def get(host: str, port: int) -> tuple[int, str, str]:
    """(status, body first line, upstream address) of one GET on a fresh connection."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read().decode(errors="replace").strip()
        title = re.search(r"<title>(.*?)</title>", body)  # the 503 page: its title says it all
        first = title.group(1) if title else (body.splitlines() or [""])[0]
        return response.status, first, response.getheader("X-Upstream", "")
    except OSError as exc:
        return 0, f"{type(exc).__name__}: {exc}", ""
    finally:
        conn.close()


def cmd_requests(args) -> None:
    for _ in range(args.count):
        status, body, upstream = get(args.host, args.port)
        if status == 200:
            print(f"   GET http://{args.host}:{args.port}/ -> {status} {body}  (nginx used {upstream})")
        else:
            print(f"   GET http://{args.host}:{args.port}/ -> {status} {body[:60]}")


def cmd_wait_served(args) -> None:
    """Until `tries` requests in a row all succeed with `name` among them (or, with --gone,
    without it): one lucky answer is not "served", and no error may sit between the claim and the
    requests printed after it (with reloads, an old worker generation still answers for a moment)."""
    def check() -> bool:
        answers = [get(args.host, args.port)[:2] for _ in range(args.tries)]
        names = {body for status, body in answers}
        if any(status != 200 for status, _ in answers):
            return False
        return (args.name not in names) if args.gone else (args.name in names)
    verb = "to leave the LB's rotation" if args.gone else "to be served through the LB"
    wait(check, args.timeout, f"{args.name} {verb}")


# -- configuration ------------------------------------------------------------------------------

def cmd_lb_config(args) -> None:
    """Secrets (once), nginx's config, lbsync's config and the LB's serf config."""
    from kit.nginx import write_prefix

    lab, env = Path(args.lab_dir), os.environ
    key, token = _secrets(lab)
    prefix = lab / "nginx"
    listen = f"{env['LB_IP']}:{env['HTTP_PORT']}"
    upstream = write_prefix(prefix, listen)
    nginx = f"nginx -p {prefix} -c {prefix / 'nginx.conf'} -e stderr"
    write(lab / "lb" / "lbsync.toml", _toml({
        "rpc_addr": f"{env['LB_IP']}:{env['LB_RPC_PORT']}", "rpc_auth": token,
        "allowed_networks": [f"{env['LAB_NET']}.0/24"], "lb_listen": [listen],
        "output": str(upstream), "nginx_conf": str(prefix / "nginx.conf"), "nginx_prefix": str(prefix),
        "nginx_pid": str(prefix / "nginx.pid"), "control_socket": str(prefix / "run" / "control.sock"),
        "reload_command": f"{nginx} -s reload", "lock_file": str(lab / "lb" / "lbsync.lock"),
        "state_dir": str(lab / "lb" / "state"), "syslog": False,
    }, "lbsync on the lab's LB (on a real LB: /etc/lbsync/lbsync.toml)") + "\n" + _toml({
        "health_path": "/", "status_listen": f"{env['LB_IP']}:{env['STATUS_PORT']}",
    }, None, "daemon"), mode=0o600)
    _serf_json(lab / "lb" / "serf.json", key, token, lab / "lb" / "serf.snapshot")


def cmd_web_config(args) -> None:
    """The agent config of web node N: what /etc/lbsync/lbsync.toml holds on a real web host."""
    lab, env, n = Path(args.lab_dir), os.environ, args.n
    key, token = _secrets(lab)
    node = lab / f"web{n}"
    ip = f"{env['LAB_NET']}.{n}"
    _serf_json(node / "serf.json", None, None, node / "serf.snapshot")
    agent = {
        "node_name": f"serf-web{n}", "join": [f"{env['LB_IP']}:{env['LB_SERF_PORT']}"],
        "bind": f"{ip}:{env['WEB_SERF_PORT']}", "rpc_addr": f"{ip}:{env['WEB_RPC_PORT']}",
        "rpc_auth": token, "encrypt_key": key, "port": int(env["WEB_PORT"]),
        "serf_config": str(node / "serf.json"), "log_file": str(node / "access.log"),
        "load_file": str(node / "load"),
    }
    text = _toml({"syslog": False}, f"lbsync agent on lab node serf-web{n}") + "\n" + _toml(agent, None, "agent")
    write(node / "lbsync.toml", text, mode=0o600)


def _serf_json(path: Path, key: str | None, token: str | None, snapshot: Path) -> None:
    """`local` profile: loopback-fast failure detection, so a killed node is noticed in seconds;
    a snapshot, as on real hosts: a restarted agent remembers the cluster."""
    path.parent.mkdir(parents=True, exist_ok=True)
    config: dict = {"profile": "local", "snapshot_path": str(snapshot)}
    if key:
        config |= {"encrypt_key": key, "rpc_auth": token}
    write(path, json.dumps(config, indent=1) + "\n", mode=0o600)


def write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write only when different: an unchanged file keeps its mtime, so watchers stay quiet."""
    from kit.nginx import write_if_changed

    write_if_changed(path, text, mode)


def _secrets(lab: Path) -> tuple[str, str]:
    """The lab's gossip key and RPC token, made once and kept (0600) so re-runs keep the cluster."""
    path = lab / "secrets.json"
    if not path.exists():
        lab.mkdir(parents=True, exist_ok=True)
        data = {"encrypt_key": _b64(secrets.token_bytes(16)), "rpc_auth": secrets.token_hex(16)}
        path.write_text(json.dumps(data) + "\n")
        path.chmod(0o600)
    data = json.loads(path.read_text())
    return data["encrypt_key"], data["rpc_auth"]


def _b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode()


def _toml(values: dict, comment: str | None, table: str = "") -> str:
    lines = [f"# {comment}"] if comment else []
    lines += [f"[{table}]"] if table else []
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value) if not isinstance(value, bool) else str(value).lower()}")
    return "\n".join(lines) + "\n"


def cmd_boot_web(args) -> None:
    """Web node N: its web server, then `lbsync agent` (which starts the node's serf).

    One process does the whole boot because every interpreter start costs ~0.1 s, and the time
    from `boot_web.sh N` to the first request served is what a person watching the demo feels.
    """
    lab, env, n = Path(args.lab_dir), os.environ, args.n
    node, ip, name = lab / f"web{n}", f"{env['LAB_NET']}.{n}", f"serf-web{n}"
    if read_pid(str(lab / "lb" / "serf.pid")) is None:
        raise Failed("the LB is not running: run lab/up.sh first")
    if read_pid(str(node / "agent.pid")) is not None:
        print(f"{name} is already running (lab/stop_web.sh {n} stops it)")
        return
    node.mkdir(parents=True, exist_ok=True)
    cmd_web_config(args)
    python, port = env.get("PYTHON", sys.executable), int(env["WEB_PORT"])
    web = [python, str(LAB / "webserver.py"), "--name", name, "--bind", ip, "--port", str(port),
           "--access-log", str(node / "access.log")]
    if read_pid(str(node / "web.pid")) is None:
        _spawn(node / "web.pid", node / "web.log", web)
    agent = [python, "-m", "lbsync", "-c", str(node / "lbsync.toml"), "agent"]
    print("$", " ".join(agent), flush=True)
    _spawn(node / "agent.pid", node / "agent.log", agent)  # starts while the web server does
    try:
        _wait_up(ip, port, node / "web.pid", f"{name}'s web server")
    except Failed:
        cmd_stop(argparse.Namespace(pidfile=str(node / "agent.pid"), signal="INT", timeout=30, what=None))
        raise
    _wait_up(ip, int(env["WEB_RPC_PORT"]), node / "agent.pid", f"{name}'s serf agent")
    args.parent, args.pidfile = str(node / "agent.pid"), str(node / "serf.pid")
    cmd_record_child(args)
    print(f"{name}: http://{ip}:{port}/ joining the LB at {env['LB_IP']}:{env['LB_SERF_PORT']}"
          f" (log: {node / 'agent.log'})")


def _spawn(pidfile: Path, log: Path, argv: list[str]) -> None:
    cmd_spawn(argparse.Namespace(pidfile=str(pidfile), log=str(log), argv=argv))


def _wait_up(host: str, port: int, pidfile: Path, what: str) -> None:
    cmd_wait_port(argparse.Namespace(host=host, port=port, pidfile=str(pidfile), what=what, timeout=15.0))


def cmd_token(args) -> None:
    print(_secrets(Path(args.lab_dir))[1])


def cmd_free_port(args) -> None:
    """`preferred` when nothing listens on it (TCP and UDP), else a free port the kernel picks."""
    from kit.net import free_port

    try:
        print(free_port(args.host, args.preferred))
    except RuntimeError as exc:
        raise Failed(str(exc)) from None


# -- command line -------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = top.add_subparsers(required=True)

    def command(name, func, *arguments):
        p = sub.add_parser(name)
        p.set_defaults(func=func)
        for names, options in arguments:
            p.add_argument(*names, **options)
        return p

    what = (("--what",), {"default": None})
    timeout = (("--timeout",), {"type": float, "default": 30.0})
    host_port = ((("host",), {}), (("port",), {"type": int}))
    command("spawn", cmd_spawn, (("pidfile",), {}), (("log",), {}), (("argv",), {"nargs": argparse.REMAINDER}))
    command("alive", cmd_alive, (("pidfile",), {}))
    command("stop", cmd_stop, (("pidfile",), {}), (("--signal",), {"default": "TERM"}), timeout, what)
    command("record-child", cmd_record_child, (("parent",), {}), (("pidfile",), {}))
    command("pids", cmd_pids, (("lab_dir",), {}))
    command("wait-port", cmd_wait_port, *host_port, (("--pidfile",), {}), timeout, what)
    command("requests", cmd_requests, *host_port, (("count",), {"type": int}))
    command("wait-served", cmd_wait_served, *host_port, (("name",), {}), (("--gone",), {"action": "store_true"}),
            (("--tries",), {"type": int, "default": 6}), timeout)
    command("lb-config", cmd_lb_config, (("lab_dir",), {}))
    command("web-config", cmd_web_config, (("lab_dir",), {}), (("n",), {"type": int}))
    command("boot-web", cmd_boot_web, (("lab_dir",), {}), (("n",), {"type": int}))
    command("token", cmd_token, (("lab_dir",), {}))
    command("free-port", cmd_free_port, (("host",), {}), (("preferred",), {"type": int}))
    return top


def main() -> int:
    args = parser().parse_args()
    try:
        args.func(args)
    except Failed as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
