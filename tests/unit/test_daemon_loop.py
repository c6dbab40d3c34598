"""The daemon's loop driven tick by tick against the kit's fake Serf agent (through lbsync's own
RPC client) and a recording reconcile(): debounce, reload budget, reconnect with backoff and one
log line per outage, config reload."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from kit.fake_serf import FakeSerf
from kit.records import record as kit_record

from lbsync.config import DaemonSettings, Settings
from lbsync.daemon import Daemon
from lbsync.errors import ConfigError, TemplateError
from lbsync.pacing import Backoff, Debounce, member_key, throttle_left
from lbsync.plan import RELOADED, Outcome, SyncResult
from lbsync.serf import SerfClient, connect


def record(name: str, status: str = "alive", **tags) -> dict:
    """A web member on 127.0.0.10, as the agent serves it."""
    return kit_record(name, "127.0.0.10", status, **tags)


class Cluster:
    """The kit's fake Serf agent (its members, its outages) and a recording reconcile()."""

    def __init__(self, serf: FakeSerf):
        self.serf = serf
        self.serf.members = [record("web1")]
        self.connects = 0
        self.reconciles: list[tuple[list[str], frozenset]] = []
        self.outcome = Outcome.UPDATED
        self.error: Exception | None = None

    @property
    def records(self) -> list[dict]:
        return self.serf.members

    @records.setter
    def records(self, records: list[dict]) -> None:
        self.serf.members = records

    @property
    def down(self) -> bool:
        return self.serf.is_down

    @down.setter
    def down(self, down: bool) -> None:
        self.serf.down() if down else self.serf.up()

    def connect(self, settings) -> SerfClient:
        self.connects += 1
        return connect(settings)

    def reconcile(self, settings, source, dry_run=False, unhealthy=frozenset()):
        self.reconciles.append(([r["Name"] for r in source.members()], unhealthy))
        if self.error:
            raise self.error
        action = RELOADED if self.outcome is Outcome.UPDATED else ""
        return SyncResult(self.outcome, (), (), action=action)


@pytest.fixture
def cluster(fake_serf):
    return Cluster(fake_serf())


def make(tmp_path, cluster, load=None, data_plane="reload", **daemon) -> Daemon:
    """A daemon on the fake agent; it polls (follow_log off) unless a test follows the log."""
    pacing = {"debounce_min": 0.05, "debounce_max": 0.5, "min_reload_interval": 1.0, "follow_log": False,
              **daemon}
    settings = Settings(state_dir=str(tmp_path), rpc_addr=cluster.serf.addr, data_plane=data_plane,
                        daemon=DaemonSettings(**pacing))
    return Daemon(settings, load or (lambda: settings), str(tmp_path / "lbsync.toml"),
                  client_factory=cluster.connect, reconcile=cluster.reconcile)


def test_debounce_waits_for_quiet_but_not_past_the_cap():
    d = Debounce()
    assert not d.due(0.0, 0.1, 1.0)
    d.note(0.0)
    d.note(0.08)
    assert not d.due(0.15, 0.1, 1.0) and d.due(0.19, 0.1, 1.0)
    for t in range(1, 20):  # a change every 50 ms never goes quiet; the cap still fires
        d.note(t * 0.05)
    assert d.due(1.0, 0.1, 1.0)
    d.clear()
    d.force()
    assert d.due(0.0, 0.1, 1.0)


def test_backoff_doubles_up_to_the_cap_and_resets():
    b = Backoff(cap=1.0)
    assert [b.next() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next() == 0.1


def test_throttle_left():
    assert throttle_left(5.0, None, 1.0) == 0
    assert throttle_left(5.0, 4.5, 1.0) == pytest.approx(0.5)
    assert throttle_left(5.0, 3.0, 1.0) == 0


def test_member_key_sees_tags_and_status_but_not_order():
    a, b = record("web1"), record("web2", weight="2")
    assert member_key([a, b]) == member_key([b, a])
    assert member_key([a]) != member_key([record("web1", weight="3")])
    assert member_key([a]) != member_key([record("web1", status="left")])


def test_start_reconciles_at_once_then_a_burst_becomes_one_reconcile(tmp_path, cluster):
    d = make(tmp_path, cluster)
    d.tick(100.0)
    assert cluster.reconciles == [(["web1"], frozenset())]  # connect forces a full resync
    for i, t in enumerate((102.0, 102.02, 102.04, 102.06)):
        cluster.records = cluster.records + [record(f"web{i + 2}")]
        d.tick(t)
    assert len(cluster.reconciles) == 1  # still inside the quiet window
    d.tick(102.12)
    assert cluster.reconciles[-1][0] == ["web1", "web2", "web3", "web4", "web5"]
    assert len(cluster.reconciles) == 2
    d.tick(102.5)
    assert len(cluster.reconciles) == 2  # no change, nothing to do


def test_reload_budget_delays_and_logs_once(tmp_path, cluster, caplog):
    d = make(tmp_path, cluster, min_reload_interval=1.0)
    d.tick(100.0)
    cluster.records = [record("web1"), record("web2")]
    with caplog.at_level(logging.INFO, logger="lbsync"):
        for t in (100.1, 100.2, 100.3, 100.5, 100.9):
            d.tick(t)
    assert len(cluster.reconciles) == 1
    assert sum("throttled" in r.message for r in caplog.records) == 1
    d.tick(101.0)
    assert len(cluster.reconciles) == 2 and d.view.throttled == 1


def test_unchanged_outcome_does_not_spend_the_reload_budget(tmp_path, cluster):
    cluster.outcome = Outcome.UNCHANGED
    d = make(tmp_path, cluster)
    d.tick(100.0)
    cluster.records = [record("web1", weight="5")]  # a tag update moves no Serf counter: seen by
    d.tick(100.3)  # the full poll every members_interval (0.25 s)
    d.tick(100.4)
    assert len(cluster.reconciles) == 2


def test_agent_outage_logged_once_retried_with_backoff_then_resynced(tmp_path, cluster, caplog):
    d = make(tmp_path, cluster, reconnect_max=0.4)
    d.tick(100.0)
    cluster.down = True
    with caplog.at_level(logging.INFO, logger="lbsync"):
        t = 101.0
        while t < 105.0:
            d.tick(t)
            t += 0.05
        attempts = d.next_connect
        cluster.down = False
        cluster.records = [record("web2")]
        for _ in range(10):
            d.tick(t)
            t += 0.05
    assert attempts <= 105.0 + 0.4  # capped backoff
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "connection closed" in warnings[0].message
    assert any("reconnected to serf agent" in r.message for r in caplog.records)
    assert cluster.reconciles[-1][0] == ["web2"] and d.view.reconnects == 1


def test_failed_reconcile_keeps_running_and_is_not_retried_in_a_loop(tmp_path, cluster, caplog):
    d = make(tmp_path, cluster)
    cluster.error = TemplateError("template t.j2:1: unexpected end of template")
    with caplog.at_level(logging.ERROR, logger="lbsync"):
        for i in range(20):
            d.tick(100.0 + i * 0.05)
    assert len(cluster.reconciles) == 1 and d.view.last_outcome == "error"
    message = caplog.records[0].message  # what it will do; never a claim about nginx it cannot know
    assert "unexpected end of template" in message and "retrying at the next change" in message
    assert "stays as it was" not in message


def test_periodic_resync(tmp_path, cluster):
    d = make(tmp_path, cluster, resync_interval=10.0)
    d.tick(100.0)
    d.tick(109.0)
    d.tick(110.5)
    assert len(cluster.reconciles) == 2


def test_invalid_config_reload_keeps_the_old_settings(tmp_path, cluster, caplog):
    def broken():
        raise ConfigError("lbsync.toml: algorithm must be one of round_robin, ...")

    d = make(tmp_path, cluster, load=broken)
    old = d.settings
    d.config_changed.set()
    with caplog.at_level(logging.ERROR, logger="lbsync"):
        d.tick(100.0)
    assert d.settings is old and "keeping the previous settings" in caplog.text


def test_config_reload_applies_and_forces_a_reconcile(tmp_path, cluster):
    d = make(tmp_path, cluster)
    d.tick(100.0)
    new = dataclasses.replace(d.settings, algorithm="least_conn")
    d.load_settings = lambda: new
    d.config_changed.set()
    d.tick(101.5)
    assert d.settings is new and len(cluster.reconciles) == 2


def test_health_verdicts_feed_reconcile(tmp_path, cluster):
    d = make(tmp_path, cluster)

    class Health:
        bad = frozenset()

        def unhealthy(self):
            return self.bad

        def set_targets(self, targets):
            pass

        def snapshot(self):
            return {}

    d.health = Health()
    d.tick(100.0)
    d.health.bad = frozenset({"web1"})
    d.tick(101.5)
    d.tick(101.6)
    assert cluster.reconciles[-1] == (["web1"], frozenset({"web1"}))


def test_daemon_settings_are_validated():
    with pytest.raises(ConfigError, match="poll_interval"):
        DaemonSettings(poll_interval=0)
    with pytest.raises(ConfigError, match="debounce_min"):
        DaemonSettings(debounce_min=2, debounce_max=1)
    with pytest.raises(ConfigError, match="health_path"):
        DaemonSettings(health_path="healthz")


def test_polls_at_the_quiet_window_pace_only_while_a_change_settles(tmp_path, cluster):
    d = make(tmp_path, cluster, poll_interval=0.05, debounce_min=0.02)
    d.tick(100.0)
    assert d._sleep_time() == 0.05
    cluster.records = [record("web1"), record("web2")]
    d.tick(101.0)
    assert d._sleep_time() == 0.02
    d.tick(101.03)
    assert d._sleep_time() == 0.05 and cluster.reconciles[-1][0] == ["web1", "web2"]


def test_live_data_plane_pushes_each_change_at_once_without_a_budget(tmp_path, cluster):
    d = make(tmp_path, cluster, data_plane="live", min_reload_interval=1.0)
    d.tick(100.0)
    cluster.outcome = Outcome.UPDATED
    for i, t in enumerate((100.1, 100.12, 100.14)):
        cluster.records = cluster.records + [record(f"web{i + 2}")]
        d.tick(t)  # a push per change: no quiet window, no reload budget
    assert [len(names) for names, _ in cluster.reconciles] == [1, 2, 3, 4]
    assert d.view.throttled == 0


def test_a_quiet_cluster_costs_one_stats_call_per_poll(tmp_path, cluster):
    d = make(tmp_path, cluster)
    d.tick(100.0)
    before = len(cluster.serf.commands)
    for i in range(1, 11):
        d.tick(100.0 + i * 0.02)  # inside members_interval (0.25 s): counters only
    polled = cluster.serf.commands[before:]
    assert polled == ["stats"] * 10
    d.tick(100.3)
    assert cluster.serf.commands[-2:] == ["stats", "members-filtered"]


# -- following serf's log ------------------------------------------------------------------------

def following(tmp_path, cluster) -> Daemon:
    d = make(tmp_path, cluster, follow_log=True, idle_interval=1.0)
    d.tick(100.0)  # connects, starts the log reader, reads the list once
    wait_for(lambda: d.serf_log is not None and d.serf_log.up, "the log followed")
    d.tick(100.01)  # the reader's first look (the agent replays its recent lines)
    d.wakeup.clear()
    return d


def wait_for(predicate, what: str, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_following_the_log_an_idle_loop_asks_serf_nothing_and_sleeps_long(tmp_path, cluster):
    d = following(tmp_path, cluster)
    before = len(cluster.serf.commands)
    for i in range(1, 40):
        d.tick(100.01 + i * 0.02)  # inside idle_interval: no stats, no list
    assert cluster.serf.commands[before:] == []
    assert d._sleep_time() == 1.0
    d.tick(101.1)  # the safety net: the list once per idle_interval
    assert cluster.serf.commands[before:] == ["members-filtered"]


def test_a_logged_member_event_wakes_the_loop_and_is_read_at_once(tmp_path, cluster):
    d = following(tmp_path, cluster)
    reconciles = len(cluster.reconciles)
    cluster.records = [record("web1"), record("web2")]
    cluster.serf.log("2026/12/01 10:00:00 [INFO] agent.ipc: Accepted client: 127.0.0.1:4242")
    cluster.serf.log("2026/12/01 10:00:00 [INFO] serf: EventMemberJoin: web2 127.0.0.10")
    wait_for(d.wakeup.is_set, "the loop woken")
    d.tick(100.05)
    assert cluster.serf.commands[-1] == "members-filtered"
    d.tick(101.5)  # past the quiet window and the reload budget (min_reload_interval 1 s)
    assert cluster.reconciles[reconciles:] and cluster.reconciles[-1][0] == ["web1", "web2"]


def test_an_agent_without_monitor_is_polled_every_poll_interval(tmp_path, fake_serf):
    cluster = Cluster(fake_serf(monitor=False))
    d = make(tmp_path, cluster, follow_log=True, poll_interval=0.03)
    d.tick(100.0)
    wait_for(lambda: d.serf_log is not None and not d.serf_log.alive, "the reader to give up")
    assert d._sleep_time() == 0.03
    before = len(cluster.serf.commands)
    d.tick(100.05)
    assert cluster.serf.commands[before:] == ["stats"]


def test_a_lost_connection_stops_following_and_a_reconnect_follows_again(tmp_path, cluster):
    d = following(tmp_path, cluster)
    cluster.down = True
    d.tick(101.5)  # the list's request gets its connection closed: the agent is gone
    assert d.client is None and d.serf_log is None
    cluster.down = False
    d.tick(110.0)
    wait_for(lambda: d.serf_log is not None and d.serf_log.up, "the log followed again")
