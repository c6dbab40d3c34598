"""The one-machine lab, driven through its own scripts, as a user would: up, boot, stop, kill, down.

The lab runs in a temporary LAB_DIR on its own loopback network and free ports, so it never
meets a developer's running lab. Its processes are started by the scripts (in their own
sessions); the fixture's finaliser (kit.labrun.running_lab) runs lab/down.sh and then SIGKILLs
every PID still recorded under LAB_DIR, so nothing outlives the test even when it fails.
"""

from __future__ import annotations

import pytest
from kit.labrun import RequestLoop, running_lab
from kit.net import wait_until

pytestmark = pytest.mark.integration

NET = "127.0.77"  # web node N on 127.0.77.N: no other test or lab uses this network
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


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
