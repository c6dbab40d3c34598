"""The live data plane end to end: real Serf agents, a real nginx with its Lua module, lbsync's
live driver in hook mode and in `run` mode. Membership changes must reach nginx without a reload
and without a lost request; structure changes still pass both nginx gates; nginx restarted or
reloaded comes back with the last pool; without the module `auto` falls back to reloads."""

from __future__ import annotations

import http.client
import json
import shlex
import signal
import subprocess
import threading

import pytest
from kit.lb import FAST_DAEMON, start_lb
from kit.net import free_port, wait_until
from kit.nginx import start_nginx
from kit.paths import TEMPLATES
from kit.serfnode import serf

from lbsync import control, paircheck
from lbsync.health import Target
from lbsync.layers import load

pytestmark = pytest.mark.integration

CONVERGE = 15  # generous deadlines: the machine is shared; speed is measured in bench/


class KeepAliveClient:
    """GETs on one persistent connection, in a thread: what a reload used to cost is visible here."""

    def __init__(self, port: int):
        self.port, self.results = port, []
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self.stop_flag.is_set():
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                self.results.append((response.status, response.read().decode().strip()))
            except (OSError, http.client.HTTPException) as exc:
                self.results.append((0, repr(exc)))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            self.stop_flag.wait(0.005)
        conn.close()

    def stop(self) -> list[tuple[int, str]]:
        self.stop_flag.set()
        self.thread.join(10)
        return self.results


def held(lb) -> dict:
    status, reply = control.call(str(lb.nginx.control_socket), "GET", "/pools/lbs_backend")
    return reply if status == 200 else {}


def test_hook_mode_routes_joins_and_leaves_without_a_reload(procs, tmp_path):
    lb = start_lb(procs, tmp_path / "lb", data_plane="live")
    lb.web(1)
    wait_until(lambda: lb.served_by() == {"serf-web1"}, CONVERGE, "web1 routed")
    reloads = lb.reloads()  # the first event installed the live structure: one reload, then none
    client = KeepAliveClient(lb.nginx.port)
    web2 = lb.web(2)
    wait_until(lambda: lb.served_by() == {"serf-web1", "serf-web2"}, CONVERGE, "web2 routed")
    serf("leave", "-rpc-addr", web2.rpc_addr)
    wait_until(lambda: lb.served_by() == {"serf-web1"}, CONVERGE, "web2 gone")
    results = client.stop()
    assert lb.reloads() == reloads
    assert len(results) > 20 and [r for r in results if r[0] != 200] == []
    assert {b["name"] for b in held(lb)["backends"]} == {"web1"}
    status = lb.lbsync("status").stdout
    assert "nginx serves live pool v" in status and "drift" not in status, status
    assert "127.0.0.11" not in lb.upstream()  # the pool lives in nginx's balancer, not in the file


def test_run_mode_pushes_at_once_and_a_killed_backend_costs_no_request(procs, tmp_path):
    lb = start_lb(procs, tmp_path / "lb", mode="run", data_plane="live")
    lb.start_daemon()
    wait_until(lb.settled, CONVERGE, "the daemon's first reconcile")
    reloads = lb.reloads()
    nodes = {n: lb.web(n) for n in (1, 2, 3)}
    wait_until(lambda: lb.served_by(9) == {"serf-web1", "serf-web2", "serf-web3"}, CONVERGE, "three routed")
    client = KeepAliveClient(lb.nginx.port)
    wait_until(lambda: len(client.results) > 20, CONVERGE, "requests flowing")
    web3 = [p for p in procs.started if p.name == "web-serf-web3"][0]
    web3.stop(signal.SIGKILL)  # the web server dies; Serf still says alive: nginx retries elsewhere
    nodes[3].proc.stop(signal.SIGKILL)
    wait_until(lambda: "web3" not in {b["name"] for b in held(lb).get("backends", [])}, 30, "web3 failed out")
    serf("leave", "-rpc-addr", nodes[2].rpc_addr)
    wait_until(lambda: lb.served_by() == {"serf-web1"}, CONVERGE, "web2 gone")
    results = client.stop()
    assert [r for r in results if r[0] != 200] == [] and len(results) > 50
    assert lb.reloads() == reloads and "pushed pool v" in lb.log()


def test_a_structure_change_passes_both_gates_and_a_broken_one_leaves_the_pool_serving(procs, tmp_path):
    template = tmp_path / "live.j2"
    template.write_text((TEMPLATES / "lbs_upstream_live.conf.j2").read_text())
    lb = start_lb(procs, tmp_path / "lb", f'live_template = "{template}"\n', data_plane="live")
    lb.web(1)
    lb.web(2)
    wait_until(lambda: lb.served_by() == {"serf-web1", "serf-web2"}, CONVERGE, "both routed")
    before = lb.reloads()
    done = lb.lbsync("--set", "algorithm=least_conn", "sync")
    assert done.returncode == 0, done.stderr
    assert lb.reloads() == before + 1 and '"least_conn"' in lb.upstream()
    assert lb.served_by() == {"serf-web1", "serf-web2"}  # the pool came back with the new structure
    template.write_text(template.read_text() + "lua_shared_dict_typo lbsync_live 1m;\n")  # nginx refuses it
    broken = lb.lbsync("--set", "algorithm=round_robin", "sync")
    assert broken.returncode == 65 and "nginx rejected the candidate" in broken.stderr
    assert (lb.nginx.upstream.parent / "lbs_upstream.conf.rejected").exists()
    assert lb.reloads() == before + 1 and lb.served_by() == {"serf-web1", "serf-web2"}


def test_nginx_restarted_or_reloaded_comes_back_with_the_last_pool(procs, tmp_path):
    lb = start_lb(procs, tmp_path / "lb", data_plane="live")
    lb.web(1)
    lb.web(2)
    wait_until(lambda: lb.served_by() == {"serf-web1", "serf-web2"}, CONVERGE, "both routed")
    lb.nginx.proc.stop(signal.SIGTERM)  # lbsync is not asked: the pool comes from its file
    lb.nginx = start_nginx(procs, lb.nginx.prefix, port=lb.nginx.port)
    wait_until(lambda: held(lb).get("source") == "file", CONVERGE, "the pool loaded from disk")
    assert lb.served_by(6) == {"serf-web1", "serf-web2"}
    pool = held(lb)["digest"]
    subprocess.run(shlex.split(lb.nginx.reload_command), check=True, capture_output=True, timeout=30)
    wait_until(lambda: held(lb).get("digest") == pool and lb.served_by(6) == {"serf-web1", "serf-web2"},
               CONVERGE, "the same pool after a reload")


def test_drift_is_shown_and_repaired(procs, tmp_path):
    lb = start_lb(procs, tmp_path / "lb", data_plane="live")
    lb.web(1)
    wait_until(lambda: lb.served_by() == {"serf-web1"}, CONVERGE, "web1 routed")
    stray = {"version": 99, "digest": "0" * 32, "upstream": "lbs_backend",
             "backends": [{"name": "stray", "address": "127.0.0.99", "port": 9, "weight": 1,
                           "drain": False, "backup": False, "down": False}]}
    status, _ = control.call(str(lb.nginx.control_socket), "PUT", "/pools/lbs_backend", json.dumps(stray).encode())
    assert status == 200
    report = lb.lbsync("status").stdout
    assert "drift: nginx serves stray beyond the membership and lacks web1" in report, report
    assert lb.lbsync("sync").returncode == 0
    assert {b["name"] for b in held(lb)["backends"]} == {"web1"}
    assert "drift" not in lb.lbsync("status").stdout


def test_a_backend_down_by_health_checks_reads_back_as_its_failing_probe(procs, tmp_path):
    """`lbsync run` pushes a backend that fails its check as down; what nginx holds reads back
    (for the LB pair's check) as that backend's probe: name, address, port."""
    config = FAST_DAEMON + 'health_path = "/"\nhealth_interval = 0.2\nhealth_timeout = 0.5\n'
    lb = start_lb(procs, tmp_path / "lb", config, mode="run", data_plane="live")
    lb.web(1)
    port = free_port("127.0.0.12")
    lb.web(2, port=port, serve=False)  # a member whose web server is not there
    lb.start_daemon()
    wait_until(lb.settled, CONVERGE, "the daemon's first reconcile")
    wait_until(lambda: {b["name"]: b["down"] for b in held(lb).get("backends", [])} == {"web1": False, "web2": True},
               CONVERGE, "web2 pushed down by its health checks")
    assert paircheck.down_in_nginx(load(env=lb.env)) == {Target("web2", "127.0.0.12", port)}


def test_auto_without_the_lua_module_renders_and_reloads(procs, tmp_path):
    lb = start_lb(procs, tmp_path / "lb", data_plane="auto",
                  env={"LBSYNC_LUA_MODULES": str(tmp_path / "absent" / "ngx_http_lua_module.so")})
    lb.web(1)
    wait_until(lambda: lb.served_by() == {"serf-web1"}, CONVERGE, "web1 routed")
    assert "server 127.0.0.11:" in lb.upstream() and "balancer_by_lua" not in lb.upstream()
