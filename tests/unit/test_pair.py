"""An LB pair (issue 16) without hosts: the pool digest and its Serf tag (published after a
reconcile, cheaply on the hook path), `lbsync check`'s verdicts, and the pair's view for `lbsync
status`. Installing the pair: test_pair_install.py; the failover on real hosts:
tests/hosts/test_lb_pair.py."""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kit.fake_nginx import pipeline_settings
from kit.records import decoded, record
from kit.source import ListSource

from lbsync import pair, paircheck
from lbsync.cli import build_parser
from lbsync.drivers.live import Pool
from lbsync.members import select
from lbsync.plan import Plan
from lbsync.sync import reconcile

ROOT = Path(__file__).resolve().parents[2]
VIP = "192.168.56.100/24"


def plan_of(settings, *names: str) -> Plan:
    records = [decoded(record(name, f"10.0.0.{i + 1}")) for i, name in enumerate(names)]
    return Plan.of(settings, select(records, settings))


def lbs(*tagged: tuple[str, str | None, str]) -> list[dict]:
    """LB members: (name, pool digest or None, Serf status)."""
    return [record(name, f"10.0.1.{i + 1}", status=status, role="lb", **({"pool": digest} if digest else {}))
            for i, (name, digest, status) in enumerate(tagged)]


def tag_requests(serf) -> list[dict]:
    return [body for header, body in serf.requests if header["Command"] == "tags"]


# --- the digest and its tag ---------------------------------------------------------------------

def test_the_digest_is_the_live_pool_digest_with_health_checks_left_out(tmp_path):
    settings = pipeline_settings(tmp_path)
    plan = plan_of(settings, "web1", "web2")
    assert pair.pool_digest(plan) == Pool.of(plan).digest
    down = dataclasses.replace(plan, unhealthy=frozenset({"web1"}))
    assert Pool.of(down).digest != Pool.of(plan).digest and pair.pool_digest(down) == pair.pool_digest(plan)
    assert pair.pool_digest(plan_of(settings, "web1")) != pair.pool_digest(plan)


def test_without_a_vip_nothing_is_published(tmp_path, fake_serf, monkeypatch):
    serf = fake_serf()
    monkeypatch.delenv("SERF_EVENT", raising=False)
    settings = pipeline_settings(tmp_path, rpc_addr=serf.addr)
    pair.publish(settings, plan_of(settings, "web1"))
    assert serf.commands == []


def test_the_hook_publishes_only_when_serf_says_its_tag_differs(tmp_path, fake_serf, monkeypatch):
    serf = fake_serf()
    settings = pipeline_settings(tmp_path, rpc_addr=serf.addr, vip=VIP)
    plan = plan_of(settings, "web1")
    monkeypatch.setenv("SERF_EVENT", "member-join")
    monkeypatch.setenv("SERF_TAG_POOL", pair.pool_digest(plan))
    pair.publish(settings, plan)
    assert serf.commands == []  # the agent's tags came with the event: no RPC
    monkeypatch.setenv("SERF_TAG_POOL", "an-older-digest")
    pair.publish(settings, plan)
    assert tag_requests(serf) == [{"Tags": {"pool": pair.pool_digest(plan)}, "DeleteTags": []}]


def test_other_callers_publish_once_per_digest(tmp_path, fake_serf, monkeypatch):
    serf = fake_serf()
    monkeypatch.delenv("SERF_EVENT", raising=False)
    settings = pipeline_settings(tmp_path, rpc_addr=serf.addr, vip=VIP)
    for names in (("web1",), ("web1",), ("web1", "web2")):
        pair.publish(settings, plan_of(settings, *names))
    assert [body["Tags"]["pool"] for body in tag_requests(serf)] == \
        [pair.pool_digest(plan_of(settings, "web1")), pair.pool_digest(plan_of(settings, "web1", "web2"))]
    assert pair.published(settings) == pair.pool_digest(plan_of(settings, "web1", "web2"))


def test_a_tag_that_cannot_be_set_is_a_warning_not_a_failed_sync(tmp_path, fake_serf, monkeypatch, caplog):
    serf = fake_serf()
    serf.close()
    monkeypatch.delenv("SERF_EVENT", raising=False)
    settings = pipeline_settings(tmp_path, rpc_addr=serf.addr, vip=VIP, rpc_timeout=0.5)
    result = reconcile(settings, ListSource.of("web1"))
    assert result.outcome.value == "updated"
    assert "cannot publish pool digest" in caplog.text and pair.published(settings) == ""


def test_a_reconcile_publishes_the_digest_of_what_it_applied(tmp_path, fake_serf, monkeypatch):
    serf = fake_serf()
    monkeypatch.delenv("SERF_EVENT", raising=False)
    settings = pipeline_settings(tmp_path, rpc_addr=serf.addr, vip=VIP)
    reconcile(settings, ListSource.of("web1", "web2"))
    reconcile(settings, ListSource.of("web1", "web2"))  # unchanged: no second RPC
    assert [b["Tags"]["pool"] for b in tag_requests(serf)] == [pair.pool_digest(plan_of(settings, "web1", "web2"))]


def test_the_hook_in_a_pair_stays_light(tmp_path, fake_serf):
    """With a VIP and an unchanged pool the hook needs no RPC for the tag and no heavy import."""
    serf = fake_serf([record("web1", "10.0.0.1")])
    settings = pipeline_settings(tmp_path, rpc_addr=serf.addr, vip=VIP)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LBSYNC_RPC_ADDR": serf.addr, "LBSYNC_VIP": VIP,
           "LBSYNC_NGINX_BIN": settings.nginx_bin, "LBSYNC_RELOAD_COMMAND": settings.reload_command,
           "LBSYNC_OUTPUT": settings.output, "LBSYNC_LOCK_FILE": settings.lock_file,
           "LBSYNC_STATE_DIR": settings.state_dir, "LBSYNC_SYSLOG": "0", "LBSYNC_CONFIG": os.devnull,
           "LBSYNC_DATA_PLANE": "reload", "SERF_EVENT": "member-update", "SERF_SELF_NAME": "lb",
           "SERF_TAG_ROLE": "lb", "SERF_TAG_POOL": pair.pool_digest(plan_of(settings, "web1"))}
    hook = [sys.executable, "-X", "importtime", "-m", "lbsync", "handle"]
    subprocess.run(hook, env=env, capture_output=True, text=True, timeout=30, check=True)
    done = subprocess.run(hook, env=env, capture_output=True, text=True, timeout=30)
    assert "unchanged" in done.stderr, done.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert not {"jinja2", "subprocess", "argparse", "http.client", "lbsync.paircheck", "lbsync.install"} & imported
    assert "tags" not in serf.commands


# --- lbsync check ---------------------------------------------------------------------------------

@pytest.mark.parametrize("look, since, ok, words", [
    (paircheck.Look(expected="aa"), None, True, "holds the membership's pool"),
    (paircheck.Look(expected="aa", pending=True, peers={"lb2": {"status": "alive", "digest": "aa"}}), 95, True,
     "a change may be in flight"),
    (paircheck.Look(expected="aa", pending=True, peers={"lb2": {"status": "alive", "digest": "aa"}}), 80, False,
     "lb2 serves it: giving the VIP away"),
    (paircheck.Look(expected="aa", pending=True, peers={"lb2": {"status": "alive", "digest": "bb"}}), 80, True,
     "no peer serves it either: keeping the VIP"),
    (paircheck.Look(expected="aa", pending=True, peers={"lb2": {"status": "failed", "digest": "aa"}}), 80, True,
     "keeping the VIP"),
    (paircheck.Look(error="cannot reach serf agent"), 80, False, "cannot reach serf agent for 20 s"),
])
def test_judge_fails_only_past_the_grace_and_only_for_a_fresh_peer(look, since, ok, words):
    verdict, reason = paircheck.judge(look, since, now=100.0, grace=10.0)
    assert verdict is ok and words in reason, reason


def test_check_passes_when_nginx_holds_the_pool_fails_when_stale_past_the_grace(tmp_path, fake_serf):
    serf = fake_serf(name="lb")
    settings = pipeline_settings(tmp_path, rpc_addr=serf.addr, vip=VIP, pair_grace=5.0)
    webs = [record("web1", "10.0.0.1"), record("web2", "10.0.0.2")]
    old, new = pair.pool_digest(plan_of(settings, "web1")), pair.pool_digest(plan_of(settings, "web1", "web2"))
    reconcile(settings, ListSource(webs[:1]))  # nginx holds web1
    serf.members = webs[:1] + lbs(("lb", None, "alive"), ("lb2", old, "alive"))
    first = paircheck.check(settings, now=1000.0)
    assert first["ok"] and first["expected"] == old and first["own"] == old  # the lost tag put back
    assert tag_requests(serf)[-1] == {"Tags": {"pool": old}, "DeleteTags": []}
    serf.members = webs + lbs(("lb", old, "alive"), ("lb2", new, "alive"))  # web2 joined; lb2 applied it
    assert paircheck.check(settings, now=1001.0)["ok"]  # within the grace
    late = paircheck.check(settings, now=1007.0)
    assert not late["ok"] and late["stale_since"] == 1001.0 and "lb2 serves it" in late["reason"]
    reconcile(settings, ListSource(webs))  # lbsync caught up
    assert paircheck.check(settings, now=1008.0)["ok"]
    assert (paircheck.state.read(settings.state_dir, paircheck.CHECK_STATE) or {})["stale_since"] is None


def test_a_health_verdict_nginx_holds_is_not_a_stale_pool(tmp_path):
    """`check` dry-runs the pipeline with nginx's own down backends: read back as the failing
    probes that put them there, they plan the same pool, so nothing is pending."""
    from lbsync.health import Target
    from lbsync.plan import Outcome

    settings = pipeline_settings(tmp_path)
    webs = ListSource([record("web1", "10.0.0.1", port="8080"), record("web2", "10.0.0.2", port="8080")])
    failing = Target("web1", "10.0.0.1", 8080)
    assert reconcile(settings, webs, unhealthy=frozenset({failing})).outcome is Outcome.UPDATED
    assert paircheck.down_in_nginx(settings) == {failing}
    assert reconcile(settings, webs, dry_run=True, unhealthy=paircheck.down_in_nginx(settings)).outcome \
        is Outcome.UNCHANGED
    assert reconcile(settings, webs, dry_run=True).outcome is Outcome.DRY_RUN  # the verdict matters


def test_check_exits_1_and_says_why_when_serf_is_gone_past_the_grace(tmp_path, fake_serf, capsys):
    serf = fake_serf()
    serf.close()
    settings = pipeline_settings(tmp_path, rpc_addr=serf.addr, vip=VIP, pair_grace=0.0, rpc_timeout=0.5)
    assert paircheck.run_check(settings, argparse.Namespace(verbose=False)) == 1
    assert capsys.readouterr().out.startswith("failing: cannot reach serf agent")


def test_the_cli_knows_check():
    assert build_parser(["check"]).parse_args(["check"]).func.__name__ == "run"


# --- the view for status --------------------------------------------------------------------------

@pytest.mark.parametrize("peers, agree", [
    ((("lb2", "d1", "alive"),), True),
    ((("lb2", "d2", "alive"),), False),
    ((("lb2", None, "alive"),), None),
    ((("lb2", "d2", "failed"),), None),
])
def test_view_says_whether_both_lbs_agree_on_the_pool(tmp_path, fake_serf, peers, agree, monkeypatch):
    serf = fake_serf(lbs(("lb", "d1", "alive"), *peers), name="lb")
    settings = pipeline_settings(tmp_path, rpc_addr=serf.addr, vip=VIP)
    monkeypatch.setattr(serf, "_answer", _with_tags(serf._answer, {"role": "lb", "pool": "d1"}))
    data = paircheck.view(settings)
    assert (data["vip"], data["name"], data["digest"], data["agree"]) == (VIP, "lb", "d1", agree)
    assert data["holds_vip"] is False  # no interface here has 192.168.56.100
    assert [p["name"] for p in data["peers"]] == ["lb2"]
    text = "\n".join(paircheck.view_lines(data))
    assert text.startswith(f"LB pair: VIP {VIP} not held here")
    assert {True: ": agree", False: ": DISAGREE", None: ": cannot compare"}[agree] in text


def _with_tags(answer, tags):
    """The fake agent's stats, with the local agent's tags as `serf agent` reports them."""
    def wrapped(command, body):
        error, reply = answer(command, body)
        return (error, {**reply, "tags": tags}) if command == "stats" else (error, reply)
    return wrapped


def test_view_outside_a_pair_is_just_that(tmp_path):
    assert paircheck.view(pipeline_settings(tmp_path)) == {"vip": None}
    assert paircheck.view_lines({"vip": None}) == []


def test_view_of_an_unreachable_agent_says_so(tmp_path, fake_serf):
    serf = fake_serf()
    serf.close()
    data = paircheck.view(pipeline_settings(tmp_path, rpc_addr=serf.addr, vip=VIP, rpc_timeout=0.5))
    assert data["error"] and data["agree"] is None
    assert "pool digests: unknown" in "\n".join(paircheck.view_lines(data))
