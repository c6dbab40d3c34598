"""Two LBs, one address (issue 16), on real Debian hosts: keepalived moves a VIP between `lb` (hook
mode) and `lb2` (run mode), both provisioned by provision/lb.sh with --vip/--peer like the Vagrant
pair, with `web1`, `web2` and a `client` that sends the traffic at the VIP.

What is checked: keepalived takes the config lbsync installs (`keepalived -t`); one LB holds the
VIP and serves both web hosts through it; both publish the same pool digest and agree again after
a change; `lbsync check` fails on an LB whose data plane went stale while its peer serves the
right pool, and passes again once it catches up; the failover proof (kit.lbpair.prove): the VIP
moves when nginx dies and when a whole LB dies, stays put when they come back (nopreempt). The
figures (seconds, failed requests) are printed, not asserted: `make bench` measures them
(bench/pair.py). Every wait polls with a deadline.
"""

from __future__ import annotations

import json
import sys

import pytest
from kit.hosts import Hosts, leftovers
from kit.lbhosts import Lab
from kit.lbpair import LBS, VIP, VIP_IP, PacedLoad, VipWatch, failed, prove, vrrp_state
from kit.net import wait_until

pytestmark = [pytest.mark.hosts, pytest.mark.integration]

WEBS = ["web1", "web2"]
VIEW = ("import json; from lbsync.layers import load; from lbsync.paircheck import view; "
        "print(json.dumps(view(load())))")


def note(text: str) -> None:
    print(f"\n[pair] {text}", file=sys.stderr)


@pytest.fixture(scope="module")
def lab():
    with Hosts() as hosts:
        lab = Lab(hosts, webs=2, lbs=dict(LBS), vip=VIP).up()
        note(", ".join(f"{step} {seconds:.1f} s" for step, seconds in lab.timings.items()))
        lab.converge(timeout=60)
        yield lab
        run_id = hosts.run_id
    assert leftovers(run_id) == []


@pytest.fixture(scope="module")
def watch(lab):
    with VipWatch(lab) as watch:
        yield watch


def view(lb) -> dict:
    return json.loads(lb.run(["/opt/lbsync/bin/python", "-c", VIEW]).stdout)


def answers(lab, n: int = 8) -> list[str]:
    return lab.client.run(f"for i in $(seq {n}); do curl -sS --max-time 5 http://{VIP_IP}/; done").stdout.split()


def test_keepalived_accepts_the_installed_config_which_says_there_is_no_vrrp_authentication(lab):
    for lb in lab.lbs:
        done = lb.run(["keepalived", "-t", "-f", "/etc/keepalived/keepalived.conf"], check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        conf = lb.run(["cat", "/etc/keepalived/keepalived.conf"]).stdout
        assert "VRRP version 3 (RFC 5798) has no authentication" in conf and "authentication {" not in conf
        assert "nopreempt" in conf and "state BACKUP" in conf and f"{VIP} dev eth0" in conf
        assert lb.run(["systemctl", "is-active", "keepalived", "nginx", "serf"]).stdout.split() == ["active"] * 3


def test_one_lb_holds_the_vip_and_serves_both_web_hosts_through_it(lab, watch):
    wait_until(lambda: watch.holder() == "lb", 10, "lb (provisioned first) to hold the VIP")
    assert vrrp_state(lab.hosts["lb"]) == "MASTER" and vrrp_state(lab.hosts["lb2"]) == "BACKUP"
    assert set(answers(lab)) == set(WEBS)
    assert [view(lb)["holds_vip"] for lb in lab.lbs] == [True, False]


def test_both_lbs_publish_the_same_pool_digest_and_agree_again_after_a_change(lab):
    def agreed() -> str | None:
        views = [view(lb) for lb in lab.lbs]
        digests = {v["digest"] for v in views} | {lab.served(lb)["digest"] for lb in lab.lbs}
        return views[0]["digest"] if all(v["agree"] for v in views) and len(digests) == 1 else None

    before = wait_until(agreed, 20, "both LBs to publish the digest nginx holds")
    lab.hosts["web1"].run(["systemctl", "stop", "lbsync-agent"])  # drains, then leaves
    lab.converge(["web2"], timeout=20)
    after = wait_until(agreed, 20, "both LBs to agree on the pool without web1")
    assert after != before
    lab.hosts["web1"].run(["systemctl", "start", "lbsync-agent"])
    lab.converge(timeout=30)
    assert wait_until(agreed, 20, "both LBs to agree with web1 back") == before
    status = lab.lb.run(["lbsync", "status"]).stdout  # what an operator runs on either LB
    assert f"VIP {VIP} held here" in status and ": agree" in status, status
    other = json.loads(lab.hosts["lb2"].run(["lbsync", "status", "--json"]).stdout)["pair"]
    assert other["holds_vip"] is False and other["agree"] is True, other


def test_lbsync_check_fails_on_a_stale_lb_while_its_peer_serves_the_pool(lab):
    lb, lb2 = lab.hosts["lb"], lab.hosts["lb2"]
    check = ["lbsync", "--set", "pair_grace=1", "check"]
    assert lb2.run(check, check=False).returncode == 0
    lb2.run(["systemctl", "stop", "lbsync-run"])  # lb2 no longer follows Serf
    try:
        lab.hosts["web2"].run(["systemctl", "stop", "lbsync-agent"])
        wait_until(lambda: lab.in_rotation(lb) == ["web1"], 20, "lb to drop web2")
        assert lab.in_rotation(lb2) == WEBS  # stale
        done = wait_until(lambda: (d := lb2.run(check, check=False)).returncode == 1 and d, 15,
                          "the check on lb2 to fail")
        assert "lb serves it: giving the VIP away" in done.stdout, done.stdout
        assert lb.run(check, check=False).returncode == 0  # the fresh one keeps passing
    finally:
        lb2.run(["systemctl", "start", "lbsync-run"])
        lab.hosts["web2"].run(["systemctl", "start", "lbsync-agent"])
    lab.converge(timeout=30)
    wait_until(lambda: lb2.run(check, check=False).returncode == 0, 15, "the check on lb2 to pass again")
    wait_until(lambda: vrrp_state(lb2) == "BACKUP", 15, "lb2 back to BACKUP")


def test_the_vip_moves_when_nginx_or_a_whole_lb_dies_and_stays_when_they_come_back(lab, watch):
    lab.converge(timeout=30)
    wait_until(lambda: vrrp_state(lab.hosts["lb2"]) == "BACKUP", 15, "lb2 to be BACKUP")
    with PacedLoad(lab.client) as load:
        steps = prove(lab, watch, load, report=lambda s: note(
            f"{s.name}: VIP {s.before} -> {s.after}, moved in {s.moved_s} s, {s.failed}/{s.total} failed, "
            f"({s.rate:.0f}/s), slowest {s.slowest_s} s, pools agree {s.pools_agree} {s.note} {s.failures}"))
        results = load.results()
    assert [(s.before, s.after) for s in steps] == [("lb", "lb2"), ("lb2", "lb2"), ("lb2", "lb"), ("lb", "lb2"),
                                                    ("lb2", "lb2")], [s.as_dict() for s in steps]
    assert [s.moves for s in steps] == [1, 0, 1, 1, 0]  # no bounce back: nopreempt held
    assert all(s.pools_agree for s in steps), [s.as_dict() for s in steps]
    # failback and a failed LB's return are invisible to clients
    assert steps[1].failed == steps[4].failed == 0, [s.as_dict() for s in steps]
    assert sum(1 for r in results if not failed(r)) > 0.9 * len(results)


def test_a_killed_keepalived_starts_again_and_gives_up_the_address_it_left(lab, watch):
    """Killing keepalived is not a dead LB: its host keeps the VIP while the peer takes it too.
    The unit's drop-in restarts it, which removes the VIP here; the peer keeps serving it."""
    holder = watch.holder()
    assert holder in ("lb", "lb2")
    other = "lb" if holder == "lb2" else "lb2"
    lab.hosts[holder].run(["systemctl", "kill", "-s", "KILL", "keepalived"])  # parent and VRRP child
    wait_until(lambda: watch.holder() == other, 10, f"the VIP on {other} only")
    wait_until(lambda: vrrp_state(lab.hosts[holder]) == "BACKUP", 15, f"keepalived on {holder} back as BACKUP")
    assert watch.holder() == other and set(answers(lab)) == set(WEBS)
