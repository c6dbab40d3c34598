"""The one-machine lab, driven through its own scripts, as a user would: up, boot, stop, kill, down;
and the lab's other pools: an api node, a cache node behind the TCP pool, a static member.

The lab runs in a temporary LAB_DIR on its own loopback network and free ports, so it never
meets a developer's running lab. Its processes are started by the scripts (in their own
sessions); the fixture's finaliser (kit.labrun.running_lab) runs lab/down.sh and then SIGKILLs
every PID still recorded under LAB_DIR, so nothing outlives the test even when it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
from kit.labrun import RequestLoop, running_lab
from kit.net import free_port, wait_until
from kit.paths import LAB, ROOT

pytestmark = pytest.mark.integration

NET = "127.0.77"  # web node N on 127.0.77.N: no other test or lab uses this network
POOLS_NET = "127.0.79"  # the pools test's (127.0.78 is test_autoscale's)
ROUTE_TIMEOUT = 30  # Serf coalesces member events (~1 s) and the hook reloads nginx
FAIL_TIMEOUT = 45  # Serf's failure detection (local profile: a few seconds) plus the reload


@pytest.fixture
def lab(tmp_path):
    with running_lab(tmp_path, NET) as lab:
        yield lab


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
    wait_until(lambda: "serf-web2" not in lab.pool(), ROUTE_TIMEOUT, "web2 out of nginx's pool")

    # hard kill: until Serf declares it failed nginx retries on the next node; then it is dropped
    only_web1 = "(1 backends: serf-web1); pushed"  # the lab's data plane is live: no reload
    pushes = lab.lbsync_log().count(only_web1)  # web1 alone was pushed once already, at boot
    loop = RequestLoop(lab)
    lab.sh("kill_web.sh", "3")
    wait_until(lambda: lab.members()["serf-web3"] == "failed", FAIL_TIMEOUT, "Serf to declare web3 failed")
    wait_until(lambda: lab.lbsync_log().count(only_web1) > pushes, ROUTE_TIMEOUT, "the pool pushed without web3")
    assert lab.pool() == {"serf-web1"}
    assert lab.lbsync_log().count("nginx reloaded") == 1  # the live structure, once at start; then pushes
    mark = len(loop.results)
    wait_until(lambda: len(loop.results) >= mark + 20, 30, "requests after web3 was dropped")
    results = loop.stop()
    assert loop.failures() == [], loop.failures()[:5]
    assert all(f"{NET}.3:" not in upstream for _, _, upstream in results[mark + 2:])

    lab.sh("boot_web.sh", "3")
    wait_until(lambda: lab.served() == {"serf-web1", "serf-web3"}, ROUTE_TIMEOUT, "web3 back in rotation")

    recorded = lab.pids()
    assert len(recorded) == 9, recorded  # nginx, LB serf, lbsync run; web1 and web3: web server, agent, serf
    lab.sh("down.sh")
    assert [pid for pid in recorded if _running(pid)] == [], "processes left behind by down.sh"


def test_lab_pools_api_node_cache_node_static_member_and_down(tmp_path):
    """boot_service.sh api/cache, static_web.sh and stop_service.sh, on the LB's three pools."""
    with running_lab(tmp_path, POOLS_NET) as lab:
        lab.sh("up.sh")
        api = int(lab.env["API_PORT"])
        status, body, _ = lab.get(api)
        assert status == 503 and "pool <b>api</b>" in body  # an empty pool: its own 503 page
        assert lab.echo("hello").endswith("closed the connection without an answer (no backend?)")

        booted = lab.sh("boot_service.sh", "api", "1")  # returns once the api pool serves it
        assert f"{POOLS_NET}.101:" in booted.stdout
        assert lab.served(6, port=api) == {"serf-api1"}
        lab.sh("boot_service.sh", "cache", "1")
        assert lab.echo("hello") == "cache-1: hello"  # through nginx's stream proxy
        assert lab.served(2) == {"HTTP 503"}  # neither joined the web pool

        added = lab.sh("static_web.sh", "1")
        web_port = lab.env["WEB_PORT"]
        assert f"member add web static-web1 {POOLS_NET}.201:{web_port}" in added.stdout  # shown as run
        assert lab.served(6) == {"static-web1"}  # applied by `member add` itself
        listed = lab.lbsync("member", "list")
        assert listed.returncode == 0 and f"web   static-web1  {POOLS_NET}.201:{web_port}" in listed.stdout
        lab.sh("boot_web.sh", "1")
        wait_until(lambda: lab.served() == {"serf-web1", "static-web1"}, ROUTE_TIMEOUT, "web1 beside the static member")
        assert lab.served(4, port=api) == {"serf-api1"}

        before = lab.pids()
        for script in (("boot_service.sh", "api", "1"), ("boot_service.sh", "cache", "1"), ("static_web.sh", "1")):
            assert "already running" in lab.sh(*script).stdout
        assert lab.pids() == before, "booting a running node started something"
        assert len(before) == 13, before  # LB 3; api1, cache1, web1: service, agent, serf; static1: web server

        lab.sh("stop_service.sh", "cache", "1")  # drains, leaves: the TCP pool is empty again
        wait_until(lambda: lab.echo("x").startswith("lab: "), ROUTE_TIMEOUT, "the cache pool emptied")
        recorded = lab.pids()
        lab.sh("down.sh")
        assert [pid for pid in recorded if _running(pid)] == [], "processes left behind by down.sh"
        assert lab.pids() == {}
        assert lab.lbsync("member", "list").stdout.strip() == "no static members"  # down.sh took it out


def test_the_lab_waits_for_nginx_to_answer_not_for_a_port_that_accepts(tmp_path):
    """`nginx -t` binds and listens on the free addresses of the config it checks, and lbsync runs
    it twice before the reload that opens a new pool's listener. So a port that accepts is not yet
    nginx serving: up.sh once returned in that window and the first GET was refused (CI: {'HTTP 0'}).
    Here `nginx -t` runs in a loop on a config listening on the port, and nothing else does."""
    port = free_port()
    conf = tmp_path / "checked.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
                    f"http {{ access_log off; server {{ listen 127.0.0.1:{port}; return 200; }} }}\n")
    checking = threading.Event()

    def check_in_a_loop() -> None:
        while not checking.is_set():
            subprocess.run(["nginx", "-t", "-q", "-p", str(tmp_path), "-c", str(conf)], capture_output=True,
                           timeout=30, check=False)

    def labtool(wait: str, timeout: float) -> int:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}  # as lab/env.sh sets it
        return subprocess.run([sys.executable, str(LAB / "labtool.py"), wait, "127.0.0.1", str(port),
                               "--timeout", str(timeout)], env=env, capture_output=True, timeout=60,
                              check=False).returncode

    checker = threading.Thread(target=check_in_a_loop)
    checker.start()
    try:
        assert labtool("wait-port", 30) == 0, "the premise: nginx -t's listener accepts connections"
        assert labtool("wait-http", 2) == 1, "a listener that never answers HTTP counted as nginx serving"
    finally:
        checking.set()
        checker.join(60)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
