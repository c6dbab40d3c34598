"""Several pools on one LB ([[pool]] tables): two HTTP pools and a TCP pool, each following its own
Serf role, static members beside Serf members, all through real serf agents and a real nginx with
Debian's stream module.

The LB is a Serf agent on 127.0.0.1 whose handler is `lbsync handle`; every backend is
a real `serf agent` on its own loopback address beside a tiny web or echo server.
"""

from __future__ import annotations

import json
import socket

import pytest
from kit.lb import LoadBalancer, start_echo, start_lb, start_web
from kit.net import free_port, http_get, wait_until
from kit.serfnode import serf, start_serf

pytestmark = pytest.mark.integration

ROUTE_TIMEOUT = 15  # Serf coalesces member events for ~1 s before it runs a handler


def pools_config(web: int, api: int, db: int) -> str:
    return f"""\
allowed_networks = ["127.0.0.0/8"]

[[pool]]
name = "web"
listen = ["127.0.0.1:{web}"]

[[pool]]
name = "api"
listen = ["127.0.0.1:{api}"]
algorithm = "least_conn"
path = "/v1/"

[[pool]]
name = "db"
protocol = "tcp"
listen = ["127.0.0.1:{db}"]
timeout = 5
"""


class PoolsLab:
    def __init__(self, lb: LoadBalancer, ports: dict[str, int]):
        self.lb, self.ports = lb, ports

    PATHS = {"api": "/v1/users"}  # the api pool proxies /v1/ only

    def served(self, pool: str, tries: int = 6) -> set[str]:
        names = set()
        for _ in range(tries):
            status, body = http_get("127.0.0.1", self.ports[pool], self.PATHS.get(pool, "/"), 5)
            names.add(body.strip() if status == 200 else f"HTTP {status}")
        return names

    def echo(self, line: str = "ping") -> str:
        """One line through the TCP pool; '' when nginx closes (or resets) the connection without
        an answer, as it does when the pool has no backend."""
        data = b""
        with socket.create_connection(("127.0.0.1", self.ports["db"]), timeout=5) as conn:
            conn.sendall(line.encode() + b"\n")
            while not data.endswith(b"\n"):
                try:
                    chunk = conn.recv(4096)
                except ConnectionResetError:
                    return ""
                if not chunk:
                    break
                data += chunk
        return data.decode().strip()

    def lbsync(self, *args: str):
        return self.lb.lbsync(*args)


@pytest.fixture(params=["live", "reload"])
def lab(request, procs, tmp_path) -> PoolsLab:
    """The LB with three pools; HTTP pools on the live data plane (pushes) or the reload one."""
    ports = {"web": free_port(), "api": free_port(), "db": free_port()}
    workdir = tmp_path / "lb"
    output = workdir / "nginx" / "conf.d" / "lbs_pools.conf"  # beside the kit's own site, which stays
    lb = start_lb(procs, workdir, pools_config(**ports), mode="hook", env={"LBSYNC_OUTPUT": str(output)},
                  data_plane=request.param)
    return PoolsLab(lb, ports)


def db_node(procs, lab: PoolsLab, n: int):
    ip = f"127.0.0.{40 + n}"
    port = free_port(ip)
    start_echo(procs, f"echo{n}", ip, port)
    return start_serf(procs, f"db{n}", ip, {"role": "db", "port": str(port)}, join=lab.lb.lb.bind_addr)


def test_each_pool_follows_its_own_role_http_and_tcp(procs, lab):
    lab.lb.web(1)
    lab.lb.web(2, role="api")
    db_node(procs, lab, 1)
    wait_until(lambda: lab.served("web") == {"serf-web1"}, ROUTE_TIMEOUT, "web pool routes web1")
    wait_until(lambda: lab.served("api") == {"serf-web2"}, ROUTE_TIMEOUT, "api pool routes web2")
    wait_until(lambda: lab.echo("ping") == "echo1: ping", ROUTE_TIMEOUT, "bytes round-trip the TCP pool")
    assert lab.echo("x" * 2000) == "echo1: " + "x" * 2000
    assert lab.lb.nginx.test_config()
    stream = lab.lb.nginx.stream.read_text()
    assert "upstream lbs_db {" in stream and "# db1" in stream and "stream {" in stream
    status = json.loads(lab.lbsync("status", "--json").stdout)
    pools = {p["name"]: p for p in status["pools"]}
    assert set(pools) == {"web", "api", "db"}
    assert [b["name"] for b in pools["db"]["backends"] if b["in_nginx"]] == ["db1"]
    assert pools["db"]["protocol"] == "tcp" and pools["api"]["listen"] == [f"127.0.0.1:{lab.ports['api']}"]
    assert pools["db"]["data_plane"] == "reload" and pools["web"]["data_plane"] == lab.lb.env["LBSYNC_DATA_PLANE"]
    assert [b["name"] for b in pools["api"]["backends"] if b["in_nginx"]] == ["web2"]


def test_a_node_with_several_services_is_in_each_of_their_pools(procs, lab):
    ip = "127.0.0.31"
    web_port, api_port = free_port(ip), free_port(ip)
    start_web(procs, "multi-web", ip, web_port)
    start_web(procs, "multi-api", ip, api_port)
    start_serf(procs, "multi", ip, {"role": "web", "port": str(web_port), "port_web": str(web_port),
                                    "port_api": str(api_port), "weight_api": "3"},
               join=lab.lb.lb.bind_addr)
    wait_until(lambda: lab.served("web") == {"multi-web"}, ROUTE_TIMEOUT, "web service routed")
    wait_until(lambda: lab.served("api") == {"multi-api"}, ROUTE_TIMEOUT, "api service routed")
    api = next(p for p in json.loads(lab.lbsync("status", "--json").stdout)["pools"] if p["name"] == "api")
    assert [(b["name"], b["address"]) for b in api["backends"]] == [("multi", f"{ip}:{api_port}")]


def test_a_reload_nginx_could_not_apply_is_retried_by_the_next_run(procs, tmp_path):
    """`nginx -t` takes an address in use for a running nginx's and passes, so a pool listener
    another process holds passes both gates; the reload then fails inside the master, which keeps
    its old configuration. The reload stays pending, and the next run retries it (seen in CI: a
    test's ports collided with Serf's)."""
    ports = {"web": free_port(), "api": free_port(), "db": free_port()}
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", ports["web"]))
    blocker.listen()
    output = tmp_path / "lb" / "nginx" / "conf.d" / "lbs_pools.conf"
    lab = PoolsLab(start_lb(procs, tmp_path / "lb", pools_config(**ports), mode="hook",
                            env={"LBSYNC_OUTPUT": str(output)}, data_plane="reload"), ports)
    error_log = tmp_path / "lb" / "nginx" / "error.log"
    try:
        lab.lb.web(1)
        # Serf may run the hook once (the LB's own join and web1's in one batch) or twice; either
        # way web1 is rendered and the last reload fails while the port is held. This sync queues
        # behind the hook's lock, so when it returns no run is left that could reload successfully.
        wait_until(lambda: output.exists() and "web1" in output.read_text(), ROUTE_TIMEOUT, "web1 rendered")
        held = lab.lbsync("sync")
        assert "old workers still accept" in held.stderr, held.stderr
        wait_until(lambda: "still could not bind()" in error_log.read_text(), ROUTE_TIMEOUT,
                   "nginx's master to give up binding")
    finally:
        blocker.close()
    done = lab.lbsync("sync")
    assert done.returncode == 0 and "retried the reload that failed last time" in done.stderr, done.stderr
    wait_until(lambda: lab.served("web") == {"serf-web1"}, ROUTE_TIMEOUT, "web pool routes web1")


def test_empty_tcp_pool_closes_connections_and_the_config_stays_valid(procs, lab):
    lab.lb.web(1)  # a change, so the hook renders every pool (the db pool is empty)
    wait_until(lambda: lab.served("web") == {"serf-web1"}, ROUTE_TIMEOUT, "web pool routes web1")
    assert lab.echo("ping") == ""
    assert "placeholder: no primary backend, connections are closed" in lab.lb.nginx.stream.read_text()
    assert lab.lb.nginx.test_config()
    status, body = http_get("127.0.0.1", lab.ports["api"], "/v1/", 5)  # the empty HTTP pool: its own page
    assert status == 503 and "pool <b>api</b>" in body


def test_static_member_is_routed_listed_and_removed(procs, lab):
    lab.lb.web(1)
    wait_until(lambda: lab.served("web") == {"serf-web1"}, ROUTE_TIMEOUT, "web1 routed")
    ip = "127.0.0.35"
    port = free_port(ip)
    start_web(procs, "legacy", ip, port)
    added = lab.lbsync("member", "add", "web", "legacy", f"{ip}:{port}", "--weight", "2")
    assert added.returncode == 0, added.stderr
    assert "added legacy" in added.stdout
    live = lab.lb.env["LBSYNC_DATA_PLANE"] == "live"
    assert ("pushed to nginx, no reload" if live else "nginx reloaded") in added.stdout
    assert lab.served("web", 8) == {"serf-web1", "legacy"}  # applied by the command itself
    listed = lab.lbsync("member", "list")
    assert "legacy" in listed.stdout and f"{ip}:{port}" in listed.stdout
    status = json.loads(lab.lbsync("status", "--json").stdout)
    web = next(p for p in status["pools"] if p["name"] == "web")
    assert {b["name"]: b["source"] for b in web["backends"]} == {"web1": "serf", "legacy": "static"}
    removed = lab.lbsync("member", "remove", "web", "legacy")
    assert removed.returncode == 0, removed.stderr
    assert lab.served("web", 8) == {"serf-web1"}
    assert lab.lbsync("member", "list").stdout.strip() == "no static members"


def test_static_member_rules(procs, lab):
    web1 = lab.lb.web(1)
    wait_until(lambda: lab.served("web") == {"serf-web1"}, ROUTE_TIMEOUT, "web1 routed")
    clash = lab.lbsync("member", "add", "web", "web1", "127.0.0.36:80")
    assert clash.returncode == 78 and "already has a Serf member named web1" in clash.stderr
    outside = lab.lbsync("member", "add", "web", "far", "10.1.2.3:80")
    assert outside.returncode == 78 and "outside allowed_networks" in outside.stderr
    own = lab.lbsync("member", "add", "web", "loop", f"127.0.0.1:{lab.ports['api']}")
    assert own.returncode == 78 and "own listen address" in own.stderr
    unknown = lab.lbsync("member", "add", "nope", "x", "127.0.0.36:80")
    assert unknown.returncode == 78 and "no pool named nope" in unknown.stderr
    assert lab.lbsync("member", "list").stdout.strip() == "no static members"
    # a static member first, then a Serf member takes its name: skipped and logged, Serf's is used
    ip = "127.0.0.37"
    port = free_port(ip)
    start_web(procs, "static-web9", ip, port)
    assert lab.lbsync("member", "add", "web", "web9", f"{ip}:{port}").returncode == 0
    assert lab.served("web", 8) == {"serf-web1", "static-web9"}
    lab.lb.web(9)
    wait_until(lambda: lab.served("web", 8) == {"serf-web1", "serf-web9"}, ROUTE_TIMEOUT, "Serf's web9 used")
    synced = lab.lbsync("sync")
    assert "skipping member web9: pool web: static member: a Serf member" in synced.stderr
    serf("leave", "-rpc-addr", web1.rpc_addr)


def test_a_tcp_pool_s_connect_check_takes_a_dead_service_out_and_back(procs, tmp_path):
    """`lbsync run` with `health_check = "connect"` on the TCP pool: the echo service stops while its
    Serf agent stays alive; the pool renders it down (an HTTP GET would have failed it from the start)."""
    ports = {"web": free_port(), "api": free_port(), "db": free_port()}
    config = (pools_config(**ports).replace("timeout = 5", 'timeout = 5\nhealth_check = "connect"')
              + "[daemon]\nhealth_path = \"/\"\nhealth_interval = 0.2\nhealth_timeout = 0.5\n"
                "poll_interval = 0.02\nmin_reload_interval = 0.2\ndebounce_min = 0.02\n")
    workdir = tmp_path / "lb"
    lb = start_lb(procs, workdir, config, mode="run", data_plane="reload",
                  env={"LBSYNC_OUTPUT": str(workdir / "nginx" / "conf.d" / "lbs_pools.conf")})
    lab = PoolsLab(lb, ports)
    lb.start_daemon()
    wait_until(lb.settled, ROUTE_TIMEOUT, "the daemon's first reconcile")
    ip = "127.0.0.45"
    port = free_port(ip)
    echo = start_echo(procs, "echo5", ip, port)
    start_serf(procs, "db5", ip, {"role": "db", "port": str(port)}, join=lb.lb.bind_addr)
    wait_until(lambda: lab.echo("ping") == "echo5: ping", ROUTE_TIMEOUT, "db5 routed")
    assert "failing health checks" not in lb.nginx.stream.read_text()  # never GET-probed
    echo.stop()
    wait_until(lambda: "down;  # db5 (failing health checks)" in lb.nginx.stream.read_text(), ROUTE_TIMEOUT,
               "db5 down by its connect check")
    wait_until(lambda: lab.echo("ping") == "", ROUTE_TIMEOUT, "nginx refusing the pool's only, dead, backend")
    start_echo(procs, "echo5", ip, port)
    wait_until(lambda: "failing health checks" not in lb.nginx.stream.read_text(), ROUTE_TIMEOUT,
               "db5 back in the pool after it accepts again")
    wait_until(lambda: lab.echo("ping") == "echo5: ping", ROUTE_TIMEOUT, "db5 routed again")
    assert "health checks every 0.2 s" in lb.log()


def test_a_pool_s_path_is_all_it_proxies(procs, lab):
    lab.lb.web(2, role="api")
    wait_until(lambda: lab.served("api") == {"serf-web2"}, ROUTE_TIMEOUT, "api routed under /v1/")
    assert http_get("127.0.0.1", lab.ports["api"], "/", 5)[0] == 404
    assert http_get("127.0.0.1", lab.ports["api"], "/v2/x", 5)[0] == 404
