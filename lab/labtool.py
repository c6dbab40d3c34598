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
from dataclasses import dataclass
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


def cmd_wait_http(args) -> None:
    """Until a GET on a fresh connection gets an HTTP answer, whatever its status. A port that
    accepts is not enough: `nginx -t` listens on the free addresses of the config it checks, so
    while lbsync checks a new pool's config its port accepts and then resets."""
    wait(lambda: get(args.host, args.port)[0] != 0, args.timeout, args.what)


def get(host: str, port: int) -> tuple[int, str, str]:
    """(status, body first line, upstream address) of one GET on a fresh connection."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read().decode(errors="replace").strip()
        title = re.search(r"<title>(.*?)</title>", body)  # a pool's 503 page: its title and first sentence
        said = re.search(r"<p>(.*?)(?:\.|</p>)", body)
        first = title.group(1) if title else (body.splitlines() or [""])[0]
        if title and said:
            first += ": " + re.sub(r"<[^>]*>", "", said.group(1))
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
            print(f"   GET http://{args.host}:{args.port}/ -> {status} {body[:100]}")


def cmd_wait_served(args) -> None:
    """Until `tries` requests in a row all succeed with `name` among them (or, with --gone,
    without it): one lucky answer is not "served", and no error may sit between the claim and the
    requests printed after it (with reloads, an old worker generation still answers for a moment)."""
    verb = "to leave the LB's rotation" if args.gone else "to be served through the LB"
    wait(lambda: served(args.host, args.port, args.name, args.tries, args.gone), args.timeout, f"{args.name} {verb}")


def served(host: str, port: int, name: str, tries: int = 6, gone: bool = False, tcp: bool = False) -> bool:
    """One round of wait-served's check; `tcp`: lines through a TCP pool, answered `name: line`."""
    if tcp:
        answers = [echo_line(host, port, "ping") for _ in range(tries)]
        if any(answer is None for answer in answers):
            return False
        names = {str(answer).split(":")[0] for answer in answers}
    else:
        replies = [get(host, port)[:2] for _ in range(tries)]
        if any(status != 200 for status, _ in replies):
            return False
        names = {body for _, body in replies}
    return (name not in names) if gone else (name in names)


# -- configuration ------------------------------------------------------------------------------

def cmd_lb_config(args) -> None:
    """Secrets (once), nginx's config, lbsync's config and the LB's serf config.

    The LB runs three pools ([[pool]]): `web` (HTTP, the tour's), `api` (HTTP) and `cache` (TCP).
    nginx has no site of its own: the pools file (conf.d/, http level) holds the HTTP pools'
    listeners, the stream file (main.d/, after the modules it needs) the TCP pool's. The HTTP
    pools' read timeout is short, as the lab's backends answer at once (a hung one is retried).
    """
    from kit.nginx import write_prefix

    lab, env = Path(args.lab_dir), os.environ
    key, token = _secrets(lab)
    prefix = lab / "nginx"
    pools_file = write_prefix(prefix, site=False)
    nginx = f"nginx -p {prefix} -c {prefix / 'nginx.conf'} -e stderr"
    text = _toml({
        "rpc_addr": f"{env['LB_IP']}:{env['LB_RPC_PORT']}", "rpc_auth": token,
        "allowed_networks": [f"{env['LAB_NET']}.0/24"], "output": str(pools_file),
        "stream_output": str(prefix / "main.d" / "lbs_stream.conf"),  # sorts after every load_module
        "nginx_conf": str(prefix / "nginx.conf"), "nginx_prefix": str(prefix),
        "nginx_pid": str(prefix / "nginx.pid"), "control_socket": str(prefix / "run" / "control.sock"),
        "reload_command": f"{nginx} -s reload", "lock_file": str(lab / "lb" / "lbsync.lock"),
        "state_dir": str(lab / "lb" / "state"), "syslog": False,
    }, "lbsync on the lab's LB (on a real LB: /etc/lbsync/lbsync.toml); every pool's listener "
       "counts as the LB's own address (never a backend)")
    text += "\n" + _toml({"health_path": "/", "status_listen": f"{env['LB_IP']}:{env['STATUS_PORT']}"},
                         None, "daemon")
    for name, protocol, port in (("web", "http", "HTTP_PORT"), ("api", "http", "API_PORT"),
                                 ("cache", "tcp", "TCP_PORT")):
        pool = {"name": name, "role": name, "protocol": protocol, "listen": [f"{env['LB_IP']}:{env[port]}"]}
        text += "\n" + _toml(pool | ({"timeout": 2.0} if protocol == "http" else {}), None, "[pool]")
    write(lab / "lb" / "lbsync.toml", text, mode=0o600)
    _serf_json(lab / "lb" / "serf.json", key, token, lab / "lb" / "serf.snapshot")


# -- lab nodes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    """A kind of lab node: where node N lives on $LAB_NET, what it serves, whether Serf knows it."""

    offset: int  # node N's address: $LAB_NET.(offset + N)
    limit: int  # the highest N
    agent: bool  # runs `lbsync agent` (and serf); a static member does not
    server: str  # what its service is: web (lab/webserver.py) or echo (lab/echoserver.py)


KINDS = {
    "web": Kind(0, 99, True, "web"),  # the tour's web nodes: serf-webN on .N
    "api": Kind(100, 49, True, "web"),  # the api pool's: serf-apiN on .(100+N)
    "cache": Kind(150, 49, True, "echo"),  # the TCP pool's: serf-cacheN on .(150+N), echo cache-N
    "static": Kind(200, 49, False, "web"),  # the web pool's static members: static-webN on .(200+N)
}


@dataclass(frozen=True)
class Node:
    """Lab node N of a kind: its directory, address, names and service port."""

    kind: str
    n: int
    lab: Path

    @property
    def spec(self) -> Kind:
        return KINDS[self.kind]

    @property
    def dir(self) -> Path:
        return self.lab / f"{self.kind}{self.n}"

    @property
    def ip(self) -> str:
        return f"{os.environ['LAB_NET']}.{self.spec.offset + self.n}"

    @property
    def name(self) -> str:
        """The Serf node name (static: the member's name)."""
        return f"static-web{self.n}" if self.kind == "static" else f"serf-{self.kind}{self.n}"

    @property
    def answers(self) -> str:
        """What its service answers with: the node name; the echo service: cache-N."""
        return f"{self.kind}-{self.n}" if self.spec.server == "echo" else self.name

    @property
    def port(self) -> int:
        return int(os.environ["CACHE_PORT" if self.spec.server == "echo" else "WEB_PORT"])

    @property
    def server_pid(self) -> Path:
        return self.dir / f"{self.spec.server}.pid"


def node_of(args) -> Node:
    if not 1 <= args.n <= KINDS[args.kind].limit:
        raise Failed(f"N must be 1..{KINDS[args.kind].limit} for a {args.kind} node, not {args.n}")
    return Node(args.kind, args.n, Path(args.lab_dir))


def cmd_node_config(args) -> None:
    """Node N's agent config: what /etc/lbsync/lbsync.toml holds on a real web host. A web node
    has role/port (and a load file); the others offer their service as `services` (what
    `lbsync agent --service ROLE:PORT` publishes)."""
    node, env = node_of(args), os.environ
    key, token = _secrets(node.lab)
    if not node.spec.agent:
        raise Failed(f"a {node.kind} node runs no agent")
    _serf_json(node.dir / "serf.json", None, None, node.dir / "serf.snapshot")
    agent = {
        "node_name": node.name, "join": [f"{env['LB_IP']}:{env['LB_SERF_PORT']}"],
        "bind": f"{node.ip}:{env['WEB_SERF_PORT']}", "rpc_addr": f"{node.ip}:{env['WEB_RPC_PORT']}",
        "rpc_auth": token, "encrypt_key": key, "serf_config": str(node.dir / "serf.json"),
    }
    if node.kind == "web":
        agent |= {"port": node.port, "log_file": str(node.dir / "access.log"), "load_file": str(node.dir / "load")}
    else:
        agent |= {"services": [f"{node.kind}:{node.port}"]}
        if node.spec.server == "web":  # a draining agent watches its web server's access log
            agent["log_file"] = str(node.dir / "access.log")
    text = _toml({"syslog": False}, f"lbsync agent on lab node {node.name}") + "\n" + _toml(agent, None, "agent")
    write(node.dir / "lbsync.toml", text, mode=0o600)


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
    """`table`: "agent" writes [agent]; "[pool]" one entry of the array of tables [[pool]]."""
    lines = [f"# {comment}"] if comment else []
    lines += [f"[{table}]"] if table else []
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value) if not isinstance(value, bool) else str(value).lower()}")
    return "\n".join(lines) + "\n"


def cmd_boot(args) -> None:
    """Node N of a kind: its service (web server or echo service), then `lbsync agent` (which
    starts the node's serf); a static web node instead becomes a static member of the web pool
    (`lbsync member add`).

    One process does the whole boot because every interpreter start costs ~0.1 s, and the time
    from `boot_web.sh N` to the first request served is what a person watching the demo feels.
    """
    node, env = node_of(args), os.environ
    lab, name = node.lab, node.name
    if read_pid(str(lab / "lb" / "serf.pid")) is None:
        raise Failed("the LB is not running: run lab/up.sh first")
    running = node.dir / ("agent.pid" if node.spec.agent else f"{node.spec.server}.pid")
    if read_pid(str(running)) is not None and (node.spec.agent or _static_member(node)):
        stop = f"lab/stop_web.sh {node.n}" if node.kind == "web" else f"lab/stop_service.sh {node.kind} {node.n}"
        print(f"{name} is already running ({stop} stops it)")
        return
    node.dir.mkdir(parents=True, exist_ok=True)
    python = env.get("PYTHON", sys.executable)
    server = [python, str(LAB / f"{node.spec.server}server.py"), "--name", node.answers,
              "--bind", node.ip, "--port", str(node.port)]
    if node.spec.server == "web":
        server += ["--access-log", str(node.dir / "access.log")]
    what = f"{node.answers}'s {'echo service' if node.spec.server == 'echo' else 'web server'}"
    if read_pid(str(node.server_pid)) is None:
        _spawn(node.server_pid, node.dir / f"{node.spec.server}.log", server)
    if not node.spec.agent:
        _wait_up(node.ip, node.port, node.server_pid, what)
        _member_add(node)
        return
    cmd_node_config(args)
    agent = [python, "-m", "lbsync", "-c", str(node.dir / "lbsync.toml"), "agent"]
    print("$", " ".join(agent), flush=True)
    _spawn(node.dir / "agent.pid", node.dir / "agent.log", agent)  # starts while the service does
    try:
        _wait_up(node.ip, node.port, node.server_pid, what)
    except Failed:
        cmd_stop(argparse.Namespace(pidfile=str(node.dir / "agent.pid"), signal="INT", timeout=30, what=None))
        raise
    _wait_up(node.ip, int(env["WEB_RPC_PORT"]), node.dir / "agent.pid", f"{name}'s serf agent")
    args.parent, args.pidfile = str(node.dir / "agent.pid"), str(node.dir / "serf.pid")
    cmd_record_child(args)
    scheme = "tcp" if node.spec.server == "echo" else "http"
    print(f"{name}: {scheme}://{node.ip}:{node.port}/ joining the LB at {env['LB_IP']}:{env['LB_SERF_PORT']}"
          f" (log: {node.dir / 'agent.log'})", flush=True)
    if node.kind != "web":  # the tour times web nodes' boots and waits itself; here, a ready pool
        port = int(env["TCP_PORT" if scheme == "tcp" else "API_PORT"])
        wait(lambda: served(env["LB_IP"], port, node.answers, tcp=scheme == "tcp"), 30,
             f"{node.answers} to be served through the LB's {node.kind} pool")


def _lbsync(lab: Path, *argv: str) -> list[str]:
    """lbsync on the lab LB's config, as run here (and shown: it is what a person types)."""
    return [os.environ.get("PYTHON", sys.executable), "-m", "lbsync", "-c", str(lab / "lb" / "lbsync.toml"), *argv]


def _static_member(node: Node) -> bool:
    """Whether the web pool lists this static node already (`lbsync member list web --json`)."""
    out = subprocess.run(_lbsync(node.lab, "member", "list", "web", "--json"), capture_output=True, text=True,
                         timeout=60, check=False)
    if out.returncode:
        raise Failed(f"lbsync member list: {out.stderr.strip()}")
    return node.name in json.loads(out.stdout).get("web", {})


def _member_add(node: Node) -> None:
    if _static_member(node):
        print(f"{node.name} is already a static member of pool web")
        return
    argv = _lbsync(node.lab, "member", "add", "web", node.name, f"{node.ip}:{node.port}")
    print("$", " ".join(argv), flush=True)
    if subprocess.run(argv, timeout=120, check=False).returncode:
        raise Failed(f"lbsync member add failed; {node.name}'s web server still runs "
                     f"(lab/stop_service.sh static {node.n} stops it)")
    print(f"{node.name}: http://{node.ip}:{node.port}/ in pool web, no Serf agent (lbsync member list)")


def cmd_unmember(args) -> None:
    """Take static node N out of the web pool (`lbsync member remove`), when it is listed."""
    node = node_of(args)
    if not _static_member(node):
        return
    argv = _lbsync(node.lab, "member", "remove", "web", node.name)
    print("$", " ".join(argv), flush=True)
    if subprocess.run(argv, timeout=120, check=False).returncode:
        raise Failed("lbsync member remove failed")


def _spawn(pidfile: Path, log: Path, argv: list[str]) -> None:
    cmd_spawn(argparse.Namespace(pidfile=str(pidfile), log=str(log), argv=argv))


def _wait_up(host: str, port: int, pidfile: Path, what: str) -> None:
    cmd_wait_port(argparse.Namespace(host=host, port=port, pidfile=str(pidfile), what=what, timeout=15.0))


def cmd_echo(args) -> None:
    """One line through a TCP service (the cache pool) and its answer: what `nc` would show,
    for hosts without nc."""
    try:
        answer = echo_line(args.host, args.port, " ".join(args.line), errors=True)
    except OSError as exc:
        raise Failed(f"{args.host}:{args.port}: {exc}") from None
    if answer is None:
        raise Failed(f"{args.host}:{args.port} closed the connection without an answer (no backend?)")
    print(answer)


def echo_line(host: str, port: int, line: str, errors: bool = False) -> str | None:
    """Send one line, read one back; None when the connection is closed or reset without an
    answer, as nginx does when a TCP pool has no backend (or cannot be made, unless `errors`)."""
    import socket

    data = b""
    try:
        conn = socket.create_connection((host, port), timeout=5)
    except OSError:
        if errors:
            raise
        return None
    with conn:
        try:
            conn.sendall(line.encode() + b"\n")
            while not data.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
    return data.decode(errors="replace").rstrip("\n") if data.endswith(b"\n") else None


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
    command("wait-http", cmd_wait_http, *host_port, timeout, what)
    command("requests", cmd_requests, *host_port, (("count",), {"type": int}))
    command("wait-served", cmd_wait_served, *host_port, (("name",), {}), (("--gone",), {"action": "store_true"}),
            (("--tries",), {"type": int, "default": 6}), timeout)
    command("lb-config", cmd_lb_config, (("lab_dir",), {}))
    node = ((("lab_dir",), {}), (("kind",), {"choices": sorted(KINDS)}), (("n",), {"type": int}))
    command("node-config", cmd_node_config, *node)
    command("boot", cmd_boot, *node)
    command("unmember", cmd_unmember, *node)
    command("echo", cmd_echo, *host_port, (("line",), {"nargs": "+"}))
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
