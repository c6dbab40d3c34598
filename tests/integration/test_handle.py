"""`lbsync handle` as the event handler of a real Serf agent, in front of a real nginx.

Every web node is a real `serf agent` on its own loopback address with a tiny web server beside
it; the LB is a Serf agent on 127.0.0.1 whose handler is `lbsync handle`.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from kit.lb import LoadBalancer, start_lb
from kit.net import wait_until
from kit.paths import ROOT
from kit.procs import Processes
from kit.serfnode import SerfNode, serf

from lbsync.serf import SerfClient

pytestmark = pytest.mark.integration

PAGE_503 = (ROOT / "lbsync" / "templates" / "lbs_503.html").read_text()
ROUTE_TIMEOUT = 15  # Serf coalesces member events for ~1 s before it runs a handler


def make_lab(procs: Processes, workdir: Path, config: str = "", lb_ip: str = "127.0.0.1",
             join: SerfNode | None = None) -> LoadBalancer:
    """nginx on a free port, then an LB Serf agent whose handler is `lbsync handle`."""
    return start_lb(procs, workdir, config, mode="hook", lb_ip=lb_ip, join=join)


@pytest.fixture
def lab(procs, tmp_path) -> LoadBalancer:
    return make_lab(procs, tmp_path / "lb")


def test_join_routes_and_leave_unroutes(lab):
    assert lab.served_by(2) == {"HTTP 503"}
    web1, web2 = lab.web(1), lab.web(2)
    wait_until(lambda: lab.served_by() == {"serf-web1", "serf-web2"}, ROUTE_TIMEOUT, "both nodes routed")
    web1.proc.stop(signal.SIGINT)  # serf's graceful leave on interrupt
    wait_until(lambda: lab.served_by() == {"serf-web2"}, ROUTE_TIMEOUT, "web1 out of rotation")
    serf("leave", "-rpc-addr", web2.rpc_addr)
    wait_until(lambda: lab.served_by(4) == {"HTTP 503"}, ROUTE_TIMEOUT, "empty pool answers 503")
    # nginx reloads asynchronously: an old worker may take one more connection, so poll.
    wait_until(lambda: lab.nginx.get() == (503, PAGE_503), 5, "the 503 page")
    assert "placeholder" in lab.upstream()
    assert lab.nginx.test_config()  # nginx -t -q


def test_tag_updates_rerender(lab):
    web1 = lab.web(1)
    lab.web(2)
    wait_until(lambda: "web2" in lab.upstream() and "web1" in lab.upstream(), ROUTE_TIMEOUT, "two backends")
    serf("tags", "-rpc-addr", web1.rpc_addr, "-set", "weight=7")
    wait_until(lambda: "weight=7;  # web1" in lab.upstream(), ROUTE_TIMEOUT, "weight re-rendered")
    serf("tags", "-rpc-addr", web1.rpc_addr, "-set", "drain=1")
    wait_until(lambda: "down;  # web1 (draining)" in lab.upstream(), ROUTE_TIMEOUT, "drain rendered down")
    wait_until(lambda: lab.served_by() == {"serf-web2"}, ROUTE_TIMEOUT, "drained node gets no new requests")


def test_hostile_members_skipped_others_served(procs, tmp_path):
    lab = make_lab(procs, tmp_path / "lb", config='allowed_networks = ["127.0.0.0/28"]\n')
    lab.web(1)
    lab.web(2, serve=False, port="8080; } server { listen 9999")
    lab.web(3, serve=False, port="80\nserver 127.0.0.1:22;")
    lab.web(9, serve=False)  # 127.0.0.19: outside allowed_networks
    wait_until(lambda: lab.served_by() == {"serf-web1"}, ROUTE_TIMEOUT, "web1 served")
    wait_until(lambda: all(f"web{n}" in lab.lbsync("status").stdout for n in (2, 3, 9)), 10, "all joined")
    status = lab.lbsync("status").stdout
    assert "skipped  web2: tag port=" in status and "skipped  web9: address 127.0.0.19 is outside" in status
    upstream = lab.upstream()
    assert "9999" not in upstream and ":22" not in upstream and "web9" not in upstream
    assert upstream.count("server ") == 1


def test_rejected_candidate_leaves_live_file_and_nginx(procs, tmp_path):
    template = tmp_path / "picky.j2"
    good = (ROOT / "lbsync" / "templates" / "lbs_upstream.conf.j2").read_text()
    template.write_text("{% if backends | length > 1 %}upstream broken { {% endif %}\n" + good)
    lab = make_lab(procs, tmp_path / "lb", config=f'template = "{template}"\n')
    lab.web(1)
    wait_until(lambda: lab.served_by() == {"serf-web1"}, ROUTE_TIMEOUT, "web1 served")
    live = lab.upstream()
    lab.web(2)
    rejected = lab.nginx.upstream.with_name("lbs_upstream.conf.rejected")
    wait_until(rejected.exists, ROUTE_TIMEOUT, "the candidate to be rejected")
    result = lab.lbsync("sync")
    assert result.returncode == os.EX_DATAERR, result.stderr
    assert "nginx rejected the candidate config" in result.stderr and len(result.stderr.splitlines()) <= 3
    assert lab.upstream() == live
    assert "[emerg]" in rejected.with_name(rejected.name + ".err").read_text()
    assert lab.served_by() == {"serf-web1"}


def test_second_run_without_change_neither_writes_nor_reloads(lab):
    lab.web(1)
    wait_until(lambda: lab.served_by() == {"serf-web1"}, ROUTE_TIMEOUT, "web1 served")
    wait_until(lambda: "unchanged" in lab.lbsync("sync").stderr, 10, "a settled sync")
    before, reloads = lab.nginx.upstream.stat(), lab.reloads()
    result = lab.lbsync("sync")
    assert result.returncode == 0 and "unchanged (1 backends); not reloading" in result.stderr
    after = lab.nginx.upstream.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert lab.reloads() == reloads


def test_two_load_balancers_render_identical_bytes(procs, tmp_path):
    """Each web node joins both LBs, as a pair's web nodes do (`join` lists both): joined through
    one LB only, the other hears of it by gossip, and a gossip message lost on this busy machine
    left it without that node until Serf's next push-pull, 15 s later (a flaky timeout here)."""
    first = make_lab(procs, tmp_path / "lb1")
    second = make_lab(procs, tmp_path / "lb2", lb_ip="127.0.0.2", join=first.lb)
    for node in (first.web(1), first.web(2, weight="3")):
        with SerfClient(node.rpc_addr) as client:
            assert client.join([second.lb.bind_addr]) == 1
    for lab in (first, second):
        wait_until(lambda: "# backends: 2" in lab.upstream(), ROUTE_TIMEOUT, "both LBs see two backends")
    assert first.upstream() == second.upstream()
