"""The live data plane's nginx side, against a real nginx with the Lua module.

Each test renders lbsync/templates/lbs_upstream_live.conf.j2 and the shipped site block with
Jinja2 (StrictUndefined) into its own nginx prefix under tmp_path, starts nginx (2 workers, running
as nobody when the tests run as root, so only the master can read the root-only pool file) and
stops it by PID. Backends are tiny HTTP servers on 127.0.0.x answering their own name: in this
process when a test must see a request arrive or hold it (`Backend`), in a subprocess when one
must carry load or be killed hard (`start_web`). Pools are pushed over the control unix socket
exactly as the Python driver will: PUT /pools/<upstream> with the pool JSON.
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
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jinja2
import pytest
from kit.net import connects, free_port, wait_until
from kit.procs import Processes

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "lbsync" / "templates"
LUA_DIR = ROOT / "lbsync" / "lua"
UPSTREAM = "lbs_backend"
DIGEST = "0123456789abcdef0123456789abcdef"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

if not (Path("/usr/lib/nginx/modules/ngx_http_lua_module.so").exists() and os.path.exists(NGINX)):
    # `make test` installs both: a missing one is a failure, never a silent skip
    raise RuntimeError("nginx with libnginx-mod-http-lua is not installed: run `make test` (tools/system-deps.sh)")


# -- backends ------------------------------------------------------------------------------------

class Backend:
    """An HTTP server in this process on `ip`: answers its name; /slow is held until `release`.

    `arrived` is set when a /slow request is being held; `hits` counts requests by kind.
    """

    def __init__(self, name: str, ip: str):
        self.name, self.ip = name, ip
        self.hits: Counter = Counter()
        self.arrived, self.release = threading.Event(), threading.Event()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True   # see SERVER below

            def do_GET(self):  # noqa: N802 (http.server's naming)
                slow = self.path.startswith("/slow")
                backend.hits["slow" if slow else "fast"] += 1
                if slow:
                    backend.arrived.set()
                    backend.release.wait(20)
                body = f"{backend.name}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((ip, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backends():
    """make(name, ip) -> Backend; every one is closed at the end of the test."""
    made: list[Backend] = []

    def make(name: str, ip: str) -> Backend:
        made.append(Backend(name, ip))
        return made[-1]

    yield make
    for b in made:
        b.close()


# A backend in its own process, for load and for a hard kill. Each response is one write: a kill
# then lands before a response (nginx retries it elsewhere) or after it, never inside it (a
# response cut after its headers cannot be retried by any proxy). TCP_NODELAY: no Nagle delay.
SERVER = r"""
import sys, http.server
name, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = (name + "\n").encode()
response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        self.wfile.write(response)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer((ip, port), Handler)
server.daemon_threads = True
server.serve_forever()
"""


def start_web(procs: Processes, name: str, ip: str):
    """A backend subprocess on ip:<free port> answering `name`: (Proc, port)."""
    port = free_port(ip)
    proc = procs.start(f"web-{name}", [sys.executable, "-c", SERVER, name, ip, str(port)])
    wait_until(lambda: connects(ip, port) or _died(proc), 10, f"web server {name}")
    return proc, port


def _died(proc) -> bool:
    if not proc.alive():
        raise AssertionError(f"{proc.name} exited:\n{proc.output()[-2000:]}")
    return False


def member(name: str, address: str, port: int, **params) -> dict:
    """One backend of a pool, with the driver's defaults."""
    return {"name": name, "address": address, "port": port, "weight": 1, "drain": False,
            "backup": False, "down": False, **params}


def of(b: Backend, **params) -> dict:
    return member(b.name, b.ip, b.port, **params)


def pool(version: int, members: list[dict], upstream: str = UPSTREAM, digest: str = DIGEST) -> dict:
    return {"version": version, "digest": digest, "upstream": upstream, "backends": members}


# -- nginx ---------------------------------------------------------------------------------------

class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over the control socket."""

    def __init__(self, path: Path, timeout: float = 5.0):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


class LiveNginx:
    """A real nginx under `root`: the shipped site and the live upstream template, 2 workers."""

    def __init__(self, procs: Processes, root: Path, error_root: Path, algorithm: str = "round_robin",
                 keepalive: int = 16, hash_key: str = "$request_uri"):
        self.procs, self.prefix, self.error_root = procs, root / "nginx", error_root
        self.algorithm, self.keepalive, self.hash_key = algorithm, keepalive, hash_key
        self.port = free_port()
        self.run = root / "run"              # root-only, like /run/lbsync
        self.socket = self.run / "control.sock"
        self.pool_file = self.run / "pool.json"
        self.proc = None
        self.write_config()

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    def render(self) -> str:
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                                 undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        return env.get_template("lbs_upstream_live.conf.j2").render(
            upstream_name=UPSTREAM, algorithm=self.algorithm, hash_key=self.hash_key,
            keepalive=self.keepalive, lua_dir=str(LUA_DIR), pool_file=str(self.pool_file),
            control_socket=str(self.socket), version="test")

    def write_config(self) -> None:
        for sub in ("conf.d", "main.d", "tmp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        self.run.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.run, 0o700)
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                                 undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        # reuseport: the kernel spreads fresh connections over both workers.
        site = env.get_template("lbs_site.conf.j2").render(
            listen=[f"127.0.0.1:{self.port} reuseport"], upstream_name=UPSTREAM,
            error_root=str(self.error_root), read_timeout=5)
        (self.prefix / "conf.d" / "lbs_site.conf").write_text(site)
        (self.prefix / "conf.d" / "lbs_upstream_live.conf").write_text(self.render())
        shutil.copy(TEMPLATES / "lbs_main_lua.conf", self.prefix / "main.d" / "lbs_main_lua.conf")
        p = self.prefix
        self.conf.write_text(f"""\
pid {p}/nginx.pid;
error_log {p}/error.log info;
worker_processes 2;
include {p}/main.d/lbs_main_lua.conf;
events {{ worker_connections 1024; }}
http {{
    log_format lbsync_test '$pid $request_uri $upstream_addr $status';
    access_log {p}/access.log lbsync_test;
    client_body_temp_path {p}/tmp; proxy_temp_path {p}/tmp;
    fastcgi_temp_path {p}/tmp; uwsgi_temp_path {p}/tmp; scgi_temp_path {p}/tmp;
    include {p}/conf.d/*.conf;
}}
""")

    def command(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([NGINX, "-p", str(self.prefix), "-c", str(self.conf), "-e",
                               str(self.prefix / "error.log"), *args],
                              capture_output=True, text=True, timeout=30)

    def start(self) -> LiveNginx:
        self.proc = self.procs.start("nginx", [NGINX, "-p", str(self.prefix), "-c", str(self.conf),
                                               "-e", str(self.prefix / "error.log"),
                                               "-g", "daemon off;"])
        wait_until(lambda: (connects("127.0.0.1", self.port) and self.control_connects()) or self._died(),
                   10, "nginx to listen")
        return self

    def control_connects(self) -> bool:
        """The control socket accepts (its file appears at bind(), a moment before listen())."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(str(self.socket))
                return True
            except OSError:
                return False

    def _died(self) -> bool:
        if not self.proc.alive():
            raise AssertionError(f"nginx exited:\n{self.error_log()[-3000:]}")
        return False

    def stop(self) -> None:
        """Graceful stop (SIGQUIT) by PID, waiting for the master to exit."""
        self.proc.stop(signal.SIGQUIT, timeout=10)

    def workers(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True,
                             text=True).stdout
        return [int(x) for x in out.split()]

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def write_pool_file(self, doc: dict) -> None:
        """What the driver does before every push: the pool JSON, root-only, replaced atomically."""
        tmp = self.pool_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.pool_file)

    # control socket
    def control(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, dict]:
        conn = UnixHTTPConnection(self.socket)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
            try:
                data = json.loads(raw)
            except ValueError:
                data = {"raw": raw.decode(errors="replace")}
            return resp.status, data, dict(resp.getheaders())
        finally:
            conn.close()

    def push(self, doc: dict | bytes, upstream: str = UPSTREAM) -> tuple[int, dict]:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        status, data, _ = self.control("PUT", f"/pools/{upstream}", body,
                                       {"Content-Type": "application/json"})
        return status, data

    def apply(self, doc: dict) -> None:
        """File first, then push, as the driver does; the push must be accepted."""
        self.write_pool_file(doc)
        status, data = self.push(doc)
        assert status == 200, data
        assert data == {"version": doc["version"], "digest": doc["digest"]}

    def held(self) -> tuple[int, dict]:
        status, data, _ = self.control("GET", f"/pools/{UPSTREAM}")
        return status, data

    # the data path
    def get(self, path: str = "/", source: str | None = None, conn=None) -> tuple[int, str, str]:
        """(status, body, X-Upstream) of one GET (fresh connection unless `conn`)."""
        own = conn is None
        if own:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10,
                                              source_address=(source, 0) if source else None)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
            return resp.status, body.strip(), resp.getheader("X-Upstream") or ""
        finally:
            if own:
                conn.close()

    def served(self, n: int, path: str = "/") -> Counter:
        """Who answered n requests on fresh connections (non-200s as "HTTP <status>")."""
        out: Counter = Counter()
        for _ in range(n):
            status, body, _ = self.get(path)
            out[body if status == 200 else f"HTTP {status}"] += 1
        return out

    def bulk(self, total: int, threads: int = 4, path=lambda i: "/") -> list[tuple[int, str, str]]:
        """`total` requests over `threads` keep-alive connections: [(status, body, X-Upstream)]."""
        def worker(k: int):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            out = []
            try:
                for i in range(k, total, threads):
                    try:
                        out.append(self.get(path(i), conn=conn))
                    except (OSError, http.client.HTTPException) as exc:
                        out.append((0, repr(exc), ""))
                        conn.close()
                        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            finally:
                conn.close()
            return out

        with ThreadPoolExecutor(threads) as pool_:
            return [r for part in pool_.map(worker, range(threads)) for r in part]


@pytest.fixture(scope="module")
def error_root():
    """The 503 page in a world-readable directory of its own: the workers run as nobody (a test
    checks it) and can enter neither pytest's 0700 tmp_path nor a checkout under a 0700 parent."""
    root = Path(tempfile.mkdtemp(prefix="lbsync-503-"))
    try:
        root.chmod(0o755)
        shutil.copy(TEMPLATES / "lbs_503.html", root / "lbs_503.html")
        (root / "lbs_503.html").chmod(0o644)
        yield root
    finally:
        shutil.rmtree(root)


@pytest.fixture
def live(procs, tmp_path, error_root):
    """make(**options) -> a started LiveNginx (stopped by PID with the rest of `procs`)."""
    def make(start: bool = True, **options) -> LiveNginx:
        nginx = LiveNginx(procs, tmp_path, error_root, **options)
        return nginx.start() if start else nginx
    return make


def in_background(fn, *args):
    """Run fn(*args) in a thread; returns a zero-argument function that joins and returns its result."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args)
        except Exception as exc:  # surfaced by the joiner
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join(timeout: float = 30):
        thread.join(timeout)
        assert not thread.is_alive(), "background request did not finish"
        if "error" in box:
            raise box["error"]
        return box["value"]
    return join


# -- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm,keepalive", [("round_robin", 16), ("least_conn", 0),
                                                 ("ip_hash", 8), ("hash", 0)])
def test_rendered_config_passes_nginx_t_without_a_pool_file(procs, tmp_path, error_root, algorithm,
                                                             keepalive):
    nginx = LiveNginx(procs, tmp_path, error_root, algorithm=algorithm, keepalive=keepalive,
                      hash_key="$host$request_uri")
    text = nginx.render()
    assert f"upstream {UPSTREAM} {{" in text and "balancer_by_lua_block" in text
    assert ("keepalive 16;" in text) == (keepalive == 16)
    assert ("$lbsync_hash_key" in text) == (algorithm == "hash")
    assert ("log_by_lua_block" in text) == (algorithm == "least_conn")   # the only per-request hook
    assert not nginx.pool_file.exists()
    result = nginx.command("-t")
    assert result.returncode == 0, result.stderr
    nginx.pool_file.write_text("{not json")
    result = nginx.command("-t")
    assert result.returncode == 0, result.stderr


def test_nginx_t_on_a_running_nginx_changes_nothing_even_with_the_file_gone(live, backends):
    web1 = backends("web1", "127.0.0.101")
    nginx = live()
    doc = pool(3, [of(web1)])
    nginx.apply(doc)
    nginx.pool_file.unlink()
    assert nginx.command("-t").returncode == 0
    nginx.pool_file.write_text('{"version": "bad"}')
    assert nginx.command("-t").returncode == 0
    status, held = nginx.held()
    assert status == 200 and held["version"] == 3 and held["source"] == "push"
    assert nginx.served(4) == Counter({"web1": 4})


# -- balancing -----------------------------------------------------------------------------------

def test_weighted_round_robin_within_5_percent_over_10k_requests(live, procs):
    weights = {"w1": 1, "w2": 2, "w3": 3, "w4": 4}
    members = []
    for i, (name, weight) in enumerate(weights.items()):
        ip = f"127.0.0.{111 + i}"
        _, port = start_web(procs, name, ip)
        members.append(member(name, ip, port, weight=weight))
    nginx = live(keepalive=32)
    nginx.apply(pool(1, members))
    results = nginx.bulk(10_000, threads=4)
    assert all(status == 200 for status, _, _ in results), Counter(s for s, _, _ in results)
    counts = Counter(body for _, body, _ in results)
    total = sum(weights.values())
    for name, weight in weights.items():
        expected = 10_000 * weight / total
        assert abs(counts[name] - expected) <= 0.05 * expected, (name, counts)


def test_a_push_reaches_both_workers_on_their_next_request(live, backends):
    old, new = backends("old", "127.0.0.102"), backends("new", "127.0.0.103")
    nginx = live()
    nginx.apply(pool(1, [of(old)]))
    access = nginx.prefix / "access.log"
    workers = set(nginx.workers())
    assert len(workers) == 2

    def both_served_old() -> bool:  # both workers compiled the old pool before the push
        nginx.served(4, "/warm")
        pids = {int(line.split()[0]) for line in access.read_text().splitlines() if " /warm " in line}
        return pids == workers
    wait_until(both_served_old, 10, "both workers to serve the old pool")

    t0 = time.monotonic()
    nginx.apply(pool(2, [of(new)]))
    pushed = time.monotonic() - t0
    answers = [nginx.get(f"/after?{i}") for i in range(40)]
    assert [body for _, body, _ in answers] == ["new"] * 40
    lines = [line.split() for line in access.read_text().splitlines() if " /after?" in line]
    assert {int(fields[0]) for fields in lines} == workers, "the 40 requests did not reach both workers"
    assert pushed < 1.0


def test_drain_keeps_the_in_flight_request_and_sends_no_new_ones(live, backends):
    a, b = backends("a", "127.0.0.104"), backends("b", "127.0.0.105")
    nginx = live()
    nginx.apply(pool(1, [of(a)]))
    slow = in_background(nginx.get, "/slow")
    assert a.arrived.wait(10), "the slow request never reached a"
    nginx.apply(pool(2, [of(a, drain=True), of(b)]))
    assert nginx.served(20) == Counter({"b": 20})
    a.release.set()
    status, body, _ = slow()
    assert (status, body) == (200, "a")
    assert a.hits["fast"] == 0


def test_backup_only_when_no_primary_is_usable(live, backends, procs):
    p1, p2, spare = backends("p1", "127.0.0.106"), backends("p2", "127.0.0.107"), backends("spare", "127.0.0.108")
    nginx = live()
    nginx.apply(pool(1, [of(p1), of(p2), of(spare, backup=True)]))
    assert set(nginx.served(20)) == {"p1", "p2"}
    assert spare.hits["fast"] == 0
    nginx.apply(pool(2, [of(p1, drain=True), of(p2, down=True), of(spare, backup=True)]))
    assert nginx.served(10) == Counter({"spare": 10})
    nginx.apply(pool(3, [of(p1, drain=True), of(p2), of(spare, backup=True)]))
    assert nginx.served(10) == Counter({"p2": 10})
    # primaries that refuse connections: the request reaches the backup through retries
    dead = [member(f"dead{i}", "127.0.0.109", free_port("127.0.0.109")) for i in range(2)]
    nginx.apply(pool(4, dead + [of(spare, backup=True)]))
    assert nginx.served(10) == Counter({"spare": 10})


def test_hash_ring_moves_only_the_removed_backends_keys(live, backends):
    webs = [backends(f"h{i}", f"127.0.0.{120 + i}") for i in range(5)]
    nginx = live(algorithm="hash", hash_key="$request_uri")
    nginx.apply(pool(1, [of(w) for w in webs]))
    keys = [f"/item/{i}" for i in range(1000)]

    def owners() -> dict[str, str]:
        conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10)
        try:
            return {k: nginx.get(k, conn=conn)[1] for k in keys}
        finally:
            conn.close()

    before = owners()
    spread = Counter(before.values())
    assert set(spread) == {w.name for w in webs}
    assert min(spread.values()) >= 100, spread   # no backend starved (expected ~200 each)
    assert owners() == before                     # the same key, the same backend
    nginx.apply(pool(2, [of(w) for w in webs if w.name != "h2"]))
    after = owners()
    moved = [k for k in keys if after[k] != before[k]]
    assert all(before[k] == "h2" for k in moved), "a key moved between two remaining backends"
    assert len(moved) <= len(keys) * (1 / 5 + 0.05), len(moved)
    assert "h2" not in after.values()
    nginx.apply(pool(3, [of(w) for w in webs]))
    assert owners() == before                     # back in: it owns exactly its keys again
    # weight = more points: h0 at weight 4 takes keys from the others, and only h0 gains
    nginx.apply(pool(4, [of(w, weight=4 if w.name == "h0" else 1) for w in webs]))
    heavy = owners()
    gained = [k for k in keys if heavy[k] != before[k]]
    assert all(heavy[k] == "h0" for k in gained)
    assert Counter(heavy.values())["h0"] >= 2 * spread["h0"], Counter(heavy.values())


def test_ip_hash_is_sticky_per_client_network(live, backends):
    webs = [backends(f"i{i}", f"127.0.0.{130 + i}") for i in range(4)]
    nginx = live(algorithm="ip_hash")
    nginx.apply(pool(1, [of(w) for w in webs]))
    clients = [f"127.{n}.7.1" for n in range(1, 41)]
    first = {c: nginx.get("/", source=c)[1] for c in clients}
    assert len(set(first.values())) >= 3, Counter(first.values())
    for c in clients[:10]:
        assert {nginx.get(f"/again/{k}", source=c)[1] for k in range(5)} == {first[c]}
        same_24 = c.rsplit(".", 1)[0] + ".200"     # IPv4: the first three octets are the key
        assert nginx.get("/", source=same_24)[1] == first[c]
    gone = Counter(first.values()).most_common(1)[0][0]
    nginx.apply(pool(2, [of(w) for w in webs if w.name != gone]))
    after = {c: nginx.get("/", source=c)[1] for c in clients}
    assert all(after[c] == first[c] for c in clients if first[c] != gone)


def conns_in_flight(nginx: LiveNginx) -> dict[str, int]:
    """{backend name: requests in flight across all workers} as the control endpoint reports."""
    return {x["name"]: x["conns"] for x in nginx.held()[1]["backends"]}


def test_least_conn_prefers_the_idle_backend_across_workers(live, backends):
    a, b = backends("a", "127.0.0.140"), backends("b", "127.0.0.141")
    nginx = live(algorithm="least_conn")
    nginx.apply(pool(1, [of(a), of(b)]))
    slow = in_background(nginx.get, "/slow")
    wait_until(lambda: a.arrived.is_set() or b.arrived.is_set(), 10, "the slow request to arrive")
    busy, idle = (a, b) if a.arrived.is_set() else (b, a)
    assert conns_in_flight(nginx) == {busy.name: 1, idle.name: 0}
    served: Counter = Counter()
    for _ in range(12):            # fresh connections: both workers
        served += nginx.served(1)
        # a request's count ends in its log phase, which may run just after the client has read
        # the answer; the next request must see this one ended, or a tie with the busy backend
        # may fairly go either way
        wait_until(lambda: conns_in_flight(nginx)[idle.name] == 0, 5, "the request to be logged")
    assert served == Counter({idle.name: 12})
    busy.release.set()
    assert slow()[:2] == (200, busy.name)
    wait_until(lambda: set(conns_in_flight(nginx).values()) == {0}, 5,
               "the counters to drop back to 0")
    assert set(nginx.served(12)) == {"a", "b"}


def test_least_conn_max_conns_is_shared_by_the_workers_and_survives_a_push(live, backends):
    a, b = backends("a", "127.0.0.142"), backends("b", "127.0.0.143")
    nginx = live(algorithm="least_conn")
    nginx.apply(pool(1, [of(a)]))
    slow_a = in_background(nginx.get, "/slow")
    assert a.arrived.wait(10)
    nginx.apply(pool(2, [of(b)]))
    slow_b = in_background(nginx.get, "/slow")
    assert b.arrived.wait(10)
    # one request in flight on each; by connections per weight `a` (weight 256) is the least
    # loaded, but it is at max_conns: everything goes to `b`, whichever worker serves it
    nginx.apply(pool(3, [of(a, weight=256, max_conns=1), of(b)]))
    assert nginx.served(10) == Counter({"b": 10})
    a.release.set()
    assert slow_a()[:2] == (200, "a")
    wait_until(lambda: nginx.served(1) == Counter({"a": 1}), 5, "a to take requests again")
    b.release.set()
    assert slow_b()[:2] == (200, "b")


def test_retries_skip_dead_peers_and_passive_failures_keep_them_out(live, backends):
    ok = backends("ok", "127.0.0.144")
    dead = [member(f"dead{i}", "127.0.0.145", free_port("127.0.0.145")) for i in range(2)]
    nginx = live()
    nginx.apply(pool(1, dead + [of(ok)]))
    answers = [nginx.get(f"/r{i}") for i in range(20)]
    assert {(s, body) for s, body, _ in answers} == {(200, "ok")}
    attempts = [a.strip() for _, _, up in answers for a in up.split(",")]
    assert all(len(up.split(",")) == len(set(up.split(","))) for _, _, up in answers)
    dead_tries = sum(1 for a in attempts if a.startswith("127.0.0.145:"))
    assert 1 <= dead_tries <= 4, attempts   # at most once per dead peer per worker (max_fails=1)
    status, held = nginx.held()
    assert status == 200


def test_a_hard_killed_backend_costs_no_client_error(live, procs):
    webs = {}
    for i in range(3):
        ip = f"127.0.0.{150 + i}"
        proc, port = start_web(procs, f"k{i}", ip)
        webs[f"k{i}"] = (proc, member(f"k{i}", ip, port))
    nginx = live(keepalive=16)
    nginx.apply(pool(1, [m for _, m in webs.values()]))
    results: list[tuple[int, str, str]] = []
    stop = threading.Event()

    def client():  # keep-alive client, until told to stop
        conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10)
        while not stop.is_set():
            try:
                results.append(nginx.get("/", conn=conn))
            except (OSError, http.client.HTTPException) as exc:
                results.append((0, repr(exc), ""))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10)
        conn.close()

    clients = [threading.Thread(target=client, daemon=True) for _ in range(3)]
    for t in clients:
        t.start()
    wait_until(lambda: len(results) >= 300, 30, "traffic before the kill")
    killed_at = len(results)
    webs["k1"][0].stop(signal.SIGKILL)             # the kernel resets its connections
    wait_until(lambda: len(results) >= killed_at + 900, 30, "traffic after the kill")
    stop.set()
    for t in clients:
        t.join(10)
    assert [r for r in results if r[0] != 200] == []
    k1 = webs["k1"][1]
    retried = [up for _, _, up in results[killed_at:] if "," in up]
    assert any(up.startswith(f"{k1['address']}:{k1['port']}") for up in retried), retried[:5]
    assert {body for _, body, _ in results[killed_at + 300:]} == {"k0", "k2"}


def test_zero_backends_answer_the_sites_503_page(live, backends):
    web1 = backends("web1", "127.0.0.160")
    nginx = live()
    status, body, _ = nginx.get()
    assert status == 503 and "Service temporarily unavailable" in body   # nothing held yet
    nginx.apply(pool(1, [of(web1)]))
    assert nginx.get()[:2] == (200, "web1")
    nginx.apply(pool(2, []))
    status, body, _ = nginx.get()
    assert status == 503 and "Service temporarily unavailable" in body
    nginx.apply(pool(3, [of(web1, drain=True), member("web1b", "127.0.0.161", web1.port, down=True)]))
    status, body, _ = nginx.get()
    assert status == 503 and "Service temporarily unavailable" in body
    status, held = nginx.held()
    assert status == 200 and held["backends"] and held["version"] == 3


# -- persistence ---------------------------------------------------------------------------------

def test_start_reload_and_restart_restore_the_pool_from_the_file(live, backends):
    a, b, c = (backends(n, f"127.0.0.{170 + i}") for i, n in enumerate("abc"))
    nginx = live(start=False)
    nginx.write_pool_file(pool(7, [of(a)]))
    nginx.start()
    status, held = nginx.held()
    assert (status, held["version"], held["source"]) == (200, 7, "file")
    assert nginx.served(6) == Counter({"a": 6})
    # a push alone (no file) is served, then a reload loads the newer file
    status, _ = nginx.push(pool(8, [of(b)]))
    assert status == 200 and nginx.served(6) == Counter({"b": 6})
    nginx.write_pool_file(pool(9, [of(c)]))
    result = nginx.command("-s", "reload")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: nginx.held()[1].get("version") == 9, 10, "the reload to load the file")
    assert nginx.held()[1]["source"] == "file"
    assert nginx.served(6) == Counter({"c": 6})
    # restart: the shared dict is gone, the file brings the pool back before the first request
    nginx.stop()
    nginx.start()
    status, held = nginx.held()
    assert (status, held["version"], held["source"]) == (200, 9, "file")
    assert nginx.served(6) == Counter({"c": 6})
    # the workers run unprivileged: only the master could read the root-only file
    if os.geteuid() == 0:
        assert oct(nginx.pool_file.stat().st_mode & 0o777) == "0o600"
        users = {Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0]
                 for pid in nginx.workers()}
        assert users != {"0"}


def test_a_bad_pool_file_is_logged_and_changes_nothing(live, backends):
    a = backends("a", "127.0.0.175")
    nginx = live(start=False)
    nginx.pool_file.parent.mkdir(mode=0o700, exist_ok=True)
    nginx.pool_file.write_text('{"version": 1, "digest": "nope"}')
    nginx.start()
    assert nginx.held()[0] == 404
    assert nginx.get()[0] == 503
    assert "pool file" in nginx.error_log() and "rejected" in nginx.error_log()
    nginx.apply(pool(2, [of(a)]))
    nginx.pool_file.write_text("{broken")
    assert nginx.command("-s", "reload").returncode == 0
    wait_until(lambda: nginx.error_log().count("rejected") >= 2, 10, "the reload to log the bad file")
    assert nginx.held()[1]["version"] == 2
    assert nginx.served(4) == Counter({"a": 4})


def test_a_control_socket_left_by_a_crash_does_not_stop_nginx_from_starting(live, backends):
    a = backends("a", "127.0.0.176")
    nginx = live(start=False)
    nginx.write_pool_file(pool(1, [of(a)]))
    nginx.start()
    workers = nginx.workers()
    nginx.proc.stop(signal.SIGKILL)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() and
                               "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
                               for pid in workers), 5, "the workers to die")
    assert nginx.socket.exists()                  # left behind
    nginx.start()
    assert nginx.served(3) == Counter({"a": 3})
    assert "stale control socket" in nginx.error_log()


# -- the control endpoint ------------------------------------------------------------------------

def test_the_control_socket_is_only_a_unix_socket_in_a_root_only_directory(live):
    nginx = live()
    assert nginx.socket.is_socket()
    assert oct(nginx.run.stat().st_mode & 0o777) == "0o700"
    text = nginx.render()
    assert f"listen unix:{nginx.socket};" in text
    control = text[text.index("server {"):]
    assert [line.strip() for line in control.splitlines() if line.strip().startswith("listen")] == [
        f"listen unix:{nginx.socket};"]


def test_read_back_and_idempotent_push(live, backends):
    a = backends("a", "127.0.0.177")
    nginx = live()
    assert nginx.held()[0] == 404
    doc = pool(5, [of(a, weight=3, max_fails=2, fail_timeout=30, max_conns=7),
                   member("v6", "::1", 8080, down=True)])
    nginx.apply(doc)
    status, held = nginx.held()
    assert status == 200
    assert (held["version"], held["digest"], held["upstream"]) == (5, DIGEST, UPSTREAM)
    assert held["algorithm"] == "round_robin" and held["source"] == "push"
    got = {b["name"]: b for b in held["backends"]}
    for want in doc["backends"]:
        want = {"max_fails": 1, "fail_timeout": 10, "max_conns": 0, **want}
        assert {k: got[want["name"]][k] for k in want} == want
    assert {"conns", "fails", "failed"} <= set(got["a"])
    assert held["worker"]["pid"] in nginx.workers()
    status, brief, _ = nginx.control("GET", f"/pools/{UPSTREAM}?brief=1")
    assert status == 200 and brief == {k: held[k] for k in ("upstream", "version", "digest", "algorithm",
                                                             "source", "stored_at", "generation")}
    generation = held["generation"]
    assert nginx.push(doc) == (200, {"version": 5, "digest": DIGEST})
    assert nginx.held()[1]["generation"] == generation        # same bytes: nothing rebuilt
    status, data = nginx.push(pool(6, []))
    assert status == 200
    status, held = nginx.held()
    assert held["backends"] == [] and held["version"] == 6


def _bad_pushes(a: Backend) -> list[tuple[str, bytes, int]]:
    good = of(a)

    def doc(**top):
        return json.dumps({**pool(99, [good], digest="f" * 32), **top}).encode()

    def with_backend(**fields):
        return doc(backends=[{**good, **fields}])

    without = {k: v for k, v in good.items() if k != "port"}
    huge = b'{"version": 99, "pad": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    too_many = json.dumps(pool(99, [member(f"n{i}", f"1.0.{i // 256}.{i % 256}", 1) for i in range(10_001)],
                               digest="f" * 32), separators=(",", ":")).encode()
    return [
        ("bad JSON", b'{"version": 99,', 400),
        ("empty body", b"", 400),
        ("array", b"[]", 400),
        ("string", b'"pool"', 400),
        ("null", b"null", 400),
        ("NaN", doc().replace(b'"version": 99', b'"version": NaN'), 400),
        ("Infinity", doc().replace(b'"port": %d' % a.port, b'"port": Infinity'), 400),
        ("hex number", doc().replace(b'"version": 99', b'"version": 0x63'), 400),
        ("deep nesting", doc(extra=[[[[[[1]]]]]]), 400),
        ("version string", doc(version="99"), 400),
        ("version float", doc(version=99.5), 400),
        ("version zero", doc(version=0), 400),
        ("version negative", doc(version=-3), 400),
        ("version bool", doc(version=True), 400),
        ("digest uppercase", doc(digest="F" * 32), 400),
        ("digest short", doc(digest="f" * 31), 400),
        ("digest with newline", doc(digest="f" * 31 + "\n"), 400),
        ("upstream mismatch", doc(upstream="other"), 400),
        ("upstream missing", json.dumps({"version": 99, "digest": "f" * 32, "backends": []}).encode(), 400),
        ("backends object", doc(backends={"a": good}), 400),
        ("backends null", doc(backends=None), 400),
        ("backend not object", doc(backends=["web1"]), 400),
        ("unknown top field", doc(extra=1), 400),
        ("unknown backend field", with_backend(evil="x"), 400),
        ("missing port", doc(backends=[without]), 400),
        ("port string", with_backend(port=str(a.port)), 400),
        ("port zero", with_backend(port=0), 400),
        ("port too big", with_backend(port=65536), 400),
        ("port float", with_backend(port=80.5), 400),
        ("weight zero", with_backend(weight=0), 400),
        ("weight too big", with_backend(weight=257), 400),
        ("weight bool", with_backend(weight=True), 400),
        ("drain string", with_backend(drain="false"), 400),
        ("down number", with_backend(down=0), 400),
        ("max_fails negative", with_backend(max_fails=-1), 400),
        ("max_fails too big", with_backend(max_fails=1001), 400),
        ("fail_timeout zero", with_backend(fail_timeout=0), 400),
        ("fail_timeout too big", with_backend(fail_timeout=3601), 400),
        ("max_conns too big", with_backend(max_conns=100_001), 400),
        ("max_conns null", with_backend(max_conns=None), 400),
        ("name with ;", with_backend(name="web1;"), 400),
        ("name with newline", with_backend(name="web1\nserver evil:80;"), 400),
        ("name with }", with_backend(name="web1}"), 400),
        ("name with space", with_backend(name="web 1"), 400),
        ("name starting with -", with_backend(name="-web1"), 400),
        ("name empty", with_backend(name=""), 400),
        ("name too long", with_backend(name="a" * 129), 400),
        ("name with NUL", with_backend(name="web\u00001"), 400),
        ("name not ASCII", with_backend(name="wéb1"), 400),
        ("address with ;", with_backend(address="1.2.3.4; evil"), 400),
        ("address hostname", with_backend(address="example.com"), 400),
        ("address octet 256", with_backend(address="1.2.3.256"), 400),
        ("address leading zero", with_backend(address="01.2.3.4"), 400),
        ("address with port", with_backend(address="1.2.3.4:80"), 400),
        ("address unix", with_backend(address="unix:/tmp/x.sock"), 400),
        ("address v6 brackets", with_backend(address="[::1]"), 400),
        ("address v6 zone", with_backend(address="fe80::1%lo"), 400),
        ("address v6 two ::", with_backend(address="1::2::3"), 400),
        ("address v6 too many groups", with_backend(address="1:2:3:4:5:6:7:8:9"), 400),
        ("address number", with_backend(address=16909060), 400),
        ("duplicate name", doc(backends=[good, {**good, "port": a.port + 1}]), 400),
        ("duplicate endpoint", doc(backends=[good, {**good, "name": "other"}]), 400),
        ("10,001 backends", too_many, 400),
        ("5 MiB body", huge, 413),
    ]


def test_bad_pushes_change_nothing(live, backends):
    a, b = backends("a", "127.0.0.178"), backends("b", "127.0.0.179")
    nginx = live()
    nginx.apply(pool(3, [of(b)]))
    _, before = nginx.held()
    cases = _bad_pushes(a)
    assert len(cases[-2][1]) < 1024 * 1024, "the 10,001-backend case must fit under the body limit"
    for label, body, expected in cases:
        status, data = nginx.push(body)
        assert status == expected, (label, status, data)
        assert set(data) == {"error"} and isinstance(data["error"], str), (label, data)
        assert "\n" not in data["error"], label
    # the wrong upstream in the URL, other paths and methods
    assert nginx.push(pool(4, [of(a)], upstream="other"), upstream="other")[0] == 404
    assert nginx.control("GET", "/pools/other")[0] == 404
    assert nginx.control("GET", "/")[0] == 404
    assert nginx.control("GET", f"/pools/{UPSTREAM}/x")[0] == 404
    status, _, headers = nginx.control("DELETE", f"/pools/{UPSTREAM}")
    assert status == 405 and headers.get("Allow") == "GET, PUT"
    assert nginx.control("POST", f"/pools/{UPSTREAM}", b"{}")[0] == 405
    # chunked, too big: refused while reading
    chunked = UnixHTTPConnection(nginx.socket)
    try:
        chunked.putrequest("PUT", f"/pools/{UPSTREAM}")
        chunked.putheader("Transfer-Encoding", "chunked")
        chunked.endheaders()
        chunk = b"x" * 65536
        try:
            for _ in range(80):  # 5 MiB
                chunked.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            chunked.send(b"0\r\n\r\n")
        except OSError:
            pass  # nginx may close as soon as it has answered 413
        assert chunked.getresponse().status == 413
    finally:
        chunked.close()
    status, after = nginx.held()
    assert status == 200
    assert {k: after[k] for k in ("version", "digest", "backends", "generation")} == \
           {k: before[k] for k in ("version", "digest", "backends", "generation")}
    assert nginx.served(6) == Counter({"b": 6})
    assert a.hits["fast"] == 0
    assert "rejected" in nginx.error_log()
