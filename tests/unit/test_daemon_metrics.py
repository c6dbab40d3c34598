"""What lbsync publishes for machines: daemon.json, the Prometheus textfile and /metrics.

The exposition is prometheus_client's; these tests hold it to both parsers, to zero series that
stay, and to counters every runner (hook, manual sync, daemon) shares through last_sync.json.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from lbsync import exposition, record, state
from lbsync.config import DaemonSettings, Settings
from lbsync.members import Member, Selection, Skip
from lbsync.metrics import View, publish
from lbsync.plan import PUSHED, RELOADED, Hold, Outcome, SyncResult


def member(name: str, n: int, draining: bool = False) -> Member:
    return Member(name, ipaddress.ip_address(f"127.0.0.{10 + n}"), "alive", "web", 8080, draining=draining)


def result(*members: Member, action: str = RELOADED, outcome: Outcome = Outcome.UPDATED,
           skipped: tuple[Skip, ...] = (), left: tuple[str, ...] = ()) -> SyncResult:
    alive = tuple(sorted([m.name for m in members] + [s.name for s in skipped]))
    selection = Selection(tuple(members), skipped, {"alive": alive, **({"left": left} if left else {})})
    return SyncResult(outcome, tuple(members), skipped, selection=selection, action=action)


def settings_in(tmp_path, **daemon) -> Settings:
    return Settings(state_dir=str(tmp_path / "state"), upstream_name="lbs_backend", data_plane="live",
                    daemon=DaemonSettings(metrics_file=str(tmp_path / "lbsync.prom"), **daemon))


def samples(families) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_the_textfile_and_the_openmetrics_exposition_parse_and_agree(tmp_path):
    settings = settings_in(tmp_path)
    state.record_sync(settings, result(member("web1", 1), member("web2", 2, draining=True),
                                       skipped=(Skip("web9", "address 10.0.0.9 is outside allowed_networks"),),
                                       left=("web3",)), (0.03, 0.01))
    state.record_failure(settings, RuntimeError("nginx control socket: refused"), 0.2)
    last = state.read(settings.state_dir, state.LAST_SYNC)
    view = View(connected=True)
    view.set_health({"web1": {"healthy": False, "oks": 0, "fails": 2, "error": "timeout"}}, 1000.0)
    daemon = {**publish(settings, view), "members": {"alive": ["web1", "web2", "web9"], "left": ["web3"]}}
    text = exposition.text(settings, last, daemon).decode()
    openmetrics = exposition.text(settings, last, daemon, openmetrics=True).decode()
    assert text.startswith("# HELP") and openmetrics.rstrip().endswith("# EOF")
    prometheus_samples = samples(parse_prometheus(text))
    openmetrics_samples = samples(parse_openmetrics(openmetrics))
    assert prometheus_samples == openmetrics_samples  # the same numbers whichever a scraper reads
    s = prometheus_samples
    assert s[("lbsync_reconciles_total", (("outcome", "updated"),))] == 1
    assert s[("lbsync_reconciles_total", (("outcome", "error"),))] == 1
    assert s[("lbsync_reconciles_total", (("outcome", "unchanged"),))] == 0  # zero series kept
    assert s[("lbsync_reloads_total", ())] == 1 and s[("lbsync_pushes_total", ())] == 0
    assert s[("lbsync_skips_total", (("reason", "not_allowed"),))] == 1
    assert s[("lbsync_skips_total", (("reason", "bad_tag"),))] == 0
    for status, count in (("alive", 3), ("left", 1), ("failed", 0), ("leaving", 0), ("none", 0)):
        assert s[("lbsync_members", (("status", status),))] == count, status
    assert s[("lbsync_backend_up", (("backend", "web1"), ("pool", "lbs_backend")))] == 0  # down by health
    assert s[("lbsync_backend_up", (("backend", "web2"), ("pool", "lbs_backend")))] == 0  # draining
    assert s[("lbsync_backends", (("pool", "lbs_backend"),))] == 2
    assert s[("lbsync_reconcile_duration_seconds_count", ())] == 2
    assert s[("lbsync_reconcile_duration_seconds_bucket", (("le", "0.05"),))] == 1
    assert s[("lbsync_apply_duration_seconds_count", ())] == 1
    assert s[("lbsync_last_run_ok", ())] == 0 and s[("lbsync_serf_connected", ())] == 1
    build = [key for key in s if key[0] == "lbsync_build_info"]
    assert len(build) == 1 and ("data_plane", "live") in build[0][1]


def test_a_hostile_backend_name_stays_one_label_value(tmp_path):
    settings = settings_in(tmp_path)
    last = {"backends": ['we"b\n1'], "members": {'we"b\n1': {"state": "serving"}}}
    families = list(parse_prometheus(exposition.text(settings, last).decode()))
    up = [s for f in families for s in f.samples if s.name == "lbsync_backend_up"]
    assert [s.labels["backend"] for s in up] == ['we"b\n1']


def test_counters_accumulate_across_runs_and_skips_count_once_per_refusal(tmp_path):
    settings = settings_in(tmp_path)
    skip = (Skip("web9", "tag port='x' is not an integer in 1..65535"),)
    state.record_sync(settings, result(member("web1", 1), skipped=skip), (0.01, 0.005))
    state.record_sync(settings, result(member("web1", 1), member("web2", 2), action=PUSHED, skipped=skip), (0.2, 0.1))
    state.record_sync(settings, result(member("web1", 1), member("web2", 2), action="",
                                       outcome=Outcome.UNCHANGED, skipped=skip), (0.002, 0.001))
    counters = state.read(settings.state_dir, state.LAST_SYNC)["counters"]
    assert counters["reconciles"] == {"updated": 2, "unchanged": 1}
    assert (counters["reloads"], counters["pushes"]) == (1, 1)
    assert counters["skips"] == {"bad_tag": 1}  # the same refusal again is not a new skip
    assert sum(counters["reconcile_seconds"]["counts"]) == 3
    assert counters["reconcile_seconds"]["counts"][0] == 1  # 2 ms: the first bucket (5 ms)


def test_members_carry_their_state_since_and_changes_are_events(tmp_path):
    settings = settings_in(tmp_path)
    state.record_sync(settings, result(member("web1", 1), member("web2", 2)))
    first = state.read(settings.state_dir, state.LAST_SYNC)
    state.record_sync(settings, result(member("web1", 1), member("web2", 2, draining=True),
                                       skipped=(Skip("web7", "name is not valid"),), action=PUSHED))
    last = state.read(settings.state_dir, state.LAST_SYNC)
    assert last["members"]["web1"]["since"] == first["members"]["web1"]["since"]
    assert last["members"]["web2"]["state"] == "draining" and last["members"]["web2"]["since"] > first["time"] - 1
    kinds = [(e[1], e[2]) for e in last["events"]]
    assert ("drain", "web2") in kinds and ("skip", "web7") in kinds and ("push", "") in kinds


def test_a_held_member_is_labelled_held():
    held = SyncResult(Outcome.UPDATED, (member("web1", 1),), (), hold=Hold(100.0, ("web1",)),
                      selection=Selection((member("web1", 1),), (), {"alive": ("web1",)}))
    assert record.labels(held)["web1"]["state"] == "held"


def test_the_hook_rewrites_the_textfile_only_when_it_shows_something_new(tmp_path):
    settings = settings_in(tmp_path)
    textfile = tmp_path / "lbsync.prom"
    state.record_sync(settings, result(member("web1", 1)))
    assert "lbsync_backends" in textfile.read_text()
    os.utime(textfile, (1000, 1000))
    before = textfile.read_text()
    state.record_sync(settings, result(member("web1", 1), action="", outcome=Outcome.UNCHANGED))
    assert textfile.read_text() == before and textfile.stat().st_mtime > 1000  # touched, not rewritten
    state.record_sync(settings, result(member("web1", 1), member("web2", 2), action=PUSHED))
    assert 'backend="web2"' in textfile.read_text()
    assert 'lbsync_reconciles_total{outcome="unchanged"} 1.0' in textfile.read_text()  # it caught up


def test_a_running_daemon_owns_the_textfile(tmp_path):
    settings = settings_in(tmp_path)
    state.write(settings.state_dir, state.DAEMON, {"pid": os.getpid()})
    state.record_sync(settings, result(member("web1", 1)))
    assert not (tmp_path / "lbsync.prom").exists()
    state.write(settings.state_dir, state.DAEMON, {"pid": os.getpid(), "stopped": 1.0})
    state.record_sync(settings, result(member("web1", 1)))
    assert (tmp_path / "lbsync.prom").exists()


def test_publish_writes_status_and_metrics_atomically(tmp_path):
    settings = settings_in(tmp_path)
    view, now = View(connected=True), time.time()
    view.record(result(member("web1", 1), action=PUSHED), now - 7200)  # older than the plot's hour
    view.record(result(member("web1", 1), skipped=(Skip("web9", "address outside allowed_networks"),),
                       left=("web2",)), now)
    view.set_health({"web1": {"healthy": False, "oks": 0, "fails": 2, "error": "timeout"}}, now)
    publish(settings, view)
    data = json.loads((tmp_path / "state" / "daemon.json").read_text())
    assert data["members"] == {"alive": ["web1", "web9"], "left": ["web2"]}
    assert data["skipped"] == {"web9": "address outside allowed_networks"}
    assert data["unhealthy"] == ["web1"] and data["last_outcome"] == "updated" and data["reloads"] == 1
    assert data["pushes"] == 1
    assert data["health"]["web1"]["since"] == now
    assert data["pid"] == os.getpid() and len(data["points"]) == 1 and data["applies"] == [[now, "reload"]]
    assert (tmp_path / "lbsync.prom").read_text().startswith("# HELP lbsync_build_info")
    assert not list(tmp_path.glob("**/.*tmp"))


def test_the_view_notes_health_flips_and_serf_outages_as_events():
    view = View()
    view.set_connected(True, 10.0)
    view.set_health({"web1": {"healthy": True, "oks": 2, "fails": 0, "error": ""}}, 11.0)
    view.set_health({"web1": {"healthy": False, "oks": 0, "fails": 2, "error": "HTTP 500"}}, 12.0)
    view.set_connected(False, 13.0, "serf agent at 127.0.0.1:7373: connection refused")
    assert [e[1:3] for e in view.events] == [["serf", ""], ["health", "web1"], ["serf", ""]]
    assert view.events[1][3] == "down: HTTP 500" and view.health_since["web1"] == 12.0
    assert view.events[2][3].startswith("lost: serf agent")


def test_leaving_then_left_is_one_leave_event():
    steps = [{"web1": {"state": "serving"}}, {"web1": {"state": "leaving"}}, {"web1": {"state": "left"}}]
    events = [e for a, b in zip(steps, steps[1:]) for e in record.membership_events(a, b, {}, 1.0)]
    assert [(e[1], e[2]) for e in events] == [("leave", "web1")]


def test_the_first_member_after_an_empty_pool_is_a_join(tmp_path):
    settings = settings_in(tmp_path)
    state.record_sync(settings, result(action=RELOADED))  # the first run: nobody yet
    state.record_sync(settings, result(member("web1", 1), action=PUSHED))
    events = state.read(settings.state_dir, state.LAST_SYNC)["events"]
    assert [(e[1], e[2]) for e in events] == [("reload", ""), ("join", "web1"), ("push", "")]
