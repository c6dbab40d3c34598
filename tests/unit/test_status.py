"""`lbsync status`: the model (the --json schema), its text, and what it says in the situations an
operator meets: a backend Serf gave up on that nginx still serves, drift, drain, a failed run, a
stopped daemon, an autoscaler's decision, hostile names."""

from __future__ import annotations

import ipaddress
import json
import os
import time

from kit.records import decoded, record

from lbsync import state, status
from lbsync.config import DaemonSettings, Settings
from lbsync.members import Member, Selection
from lbsync.plan import PUSHED, Outcome, Served, SyncResult


def settings_in(tmp_path) -> Settings:
    return Settings(state_dir=str(tmp_path / "state"), data_plane="live", daemon=DaemonSettings())


def records(*specs) -> list[dict]:
    return [decoded(record(name, ip, status_, **{"port": "8080", **tags})) for name, ip, status_, tags in specs]


def applied(settings: Settings, *names: str, when: float | None = None) -> None:
    """A successful run that put `names` (127.0.0.1N:8080) in the pool."""
    members = tuple(Member(n, ipaddress.ip_address(f"127.0.0.1{n[-1]}"), "alive", "web", 8080) for n in names)
    state.record_sync(settings, SyncResult(Outcome.UPDATED, members, (), action=PUSHED,
                                           selection=Selection(members, (), {"alive": tuple(names)})))
    if when is not None:  # age the record
        data = state.read(settings.state_dir, state.LAST_SYNC)
        data["time"] = when
        data["members"] = {n: {**e, "since": when} for n, e in data["members"].items()}
        state.write(settings.state_dir, state.LAST_SYNC, data)


def served(*names: str, source: str = "live pool v3") -> Served:
    return Served(source, tuple((n, f"127.0.0.1{n[-1]}:8080", False) for n in names))


def test_a_failed_node_nginx_still_serves_is_plain_to_see(tmp_path):
    settings = settings_in(tmp_path)
    now = time.time()
    applied(settings, "web1", "web2", when=now - 30)
    members = records(("web1", "127.0.0.11", "alive", {}), ("web2", "127.0.0.12", "failed", {}))
    data = status.model(settings, members, served("web1", "web2"), now=now)
    pool = data["pools"][0]
    rows = {b["name"]: b for b in pool["backends"]}
    assert rows["web1"]["state"] == "serving" and rows["web1"]["since"] == now - 30
    assert rows["web2"]["serf"] == "failed" and rows["web2"]["in_nginx"] and rows["web2"]["state"] == "failed"
    assert pool["drift"] == {"extra": ["web2"], "missing": []}
    report = status.text(data)
    assert "drift: nginx serves web2 beyond the membership; `lbsync sync` repairs it" in report
    assert "nginx serves live pool v3 (2 backends); the membership renders 1, 1 serving" in report
    web1 = next(line for line in report.splitlines() if line.strip().startswith("web1"))
    assert "127.0.0.11:8080" in web1 and "serving" in web1 and "30 s ago" in web1
    assert "last run: updated (pushed) 30 s ago, 2 backends" in report


def test_drain_skip_and_a_missing_backend(tmp_path):
    settings = settings_in(tmp_path)
    applied(settings, "web1")
    members = records(("web1", "127.0.0.11", "alive", {"drain": "1"}), ("web2", "127.0.0.12", "alive", {}),
                      ("web9", "127.0.0.19", "alive", {"weight": "999"}))
    data = status.model(settings, members, served("web1"))
    rows = {b["name"]: b for b in data["pools"][0]["backends"]}
    assert (rows["web1"]["state"], rows["web1"]["drain"]) == ("draining", True)
    assert rows["web2"]["state"] == "missing" and not rows["web2"]["in_nginx"]
    assert rows["web9"]["state"] == "skipped" and "weight" in rows["web9"]["reason"]
    report = status.text(data)
    assert "skipped  web9: tag weight='999' is not an integer in 1..256" in report
    assert "drift: nginx lacks web2; `lbsync sync` repairs it" in report


def test_nginx_unreadable_is_said_and_no_drift_is_guessed(tmp_path):
    settings = settings_in(tmp_path)
    data = status.model(settings, records(("web1", "127.0.0.11", "alive", {})),
                        Served("live pool", error="nginx control socket /run/x.sock: No such file"))
    assert data["pools"][0]["drift"] is None
    assert "nginx serves: unknown (nginx control socket /run/x.sock: No such file)" in status.text(data)


def test_a_failed_run_is_the_last_run_until_one_succeeds(tmp_path):
    settings = settings_in(tmp_path)
    applied(settings, "web1")
    state.record_failure(settings, RuntimeError("nginx refused the pool push (HTTP 400): bad"))
    data = status.model(settings, [], served("web1"))
    assert data["last_run"]["outcome"] == "error" and "HTTP 400" in data["last_run"]["error"]
    assert "last run: FAILED 0 s ago: nginx refused the pool push (HTTP 400): bad" in status.text(data)
    applied(settings, "web1")
    data = status.model(settings, [], served("web1"))
    assert data["last_run"]["outcome"] == "updated" and data["last_failure"]["error"].startswith("nginx refused")
    assert "last failure: 0 s ago: nginx refused" in status.text(data)


def test_daemon_running_stopped_or_absent(tmp_path):
    settings = settings_in(tmp_path)
    assert "daemon: not running" in status.text(status.model(settings, [], served()))
    now = time.time()
    daemon = {"pid": os.getpid(), "started": now - 7300, "serf_connected": True, "last_reconcile": now - 3,
              "last_outcome": "unchanged", "reconciles": {"unchanged": 40, "updated": 2}, "reloads": 1, "pushes": 4,
              "unhealthy": ["web2"], "status_url": "http://127.0.0.1:9180/", "stopped": None}
    state.write(settings.state_dir, state.DAEMON, daemon)
    line = next(x for x in status.text(status.model(settings, [], served(), now=now)).splitlines()
                if x.startswith("daemon:"))
    assert line.startswith(f"daemon: running, pid {os.getpid()}, started 2 h ago; serf connected")
    assert "42 reconciles (0 failed), 1 reloads, 4 pushes" in line and "down by health checks: web2" in line
    assert "status page http://127.0.0.1:9180/" in line
    state.write(settings.state_dir, state.DAEMON, {**daemon, "pid": 2**22 + 1})  # no such process
    assert status.model(settings, [], served())["daemon"]["state"] == "stopped"


def test_health_verdicts_show_only_while_the_daemon_runs(tmp_path):
    settings = settings_in(tmp_path)
    applied(settings, "web1")
    health = {"web1": {"healthy": False, "oks": 0, "fails": 3, "error": "HTTP 500", "since": time.time() - 5}}
    state.write(settings.state_dir, state.DAEMON, {"pid": os.getpid(), "health": health})
    members = records(("web1", "127.0.0.11", "alive", {}))
    row = status.model(settings, members, served("web1"))["pools"][0]["backends"][0]
    assert (row["health"], row["health_error"], row["state"]) == ("down", "HTTP 500", "down")
    assert "down (HTTP 500)" in status.text(status.model(settings, members, served("web1")))
    state.write(settings.state_dir, state.DAEMON, {"pid": os.getpid(), "health": health, "stopped": 1.0})
    assert status.model(settings, members, served("web1"))["pools"][0]["backends"][0]["health"] == "unchecked"


def test_the_autoscaler_in_words(tmp_path):
    settings = settings_in(tmp_path)
    now = time.time()
    state.write(settings.state_dir, state.AUTOSCALE, {
        "updated": now - 4, "state": {"last_out": now - 300, "last_in": None, "warming": [
            {"name": "web3", "index": 3, "since": now - 20}], "removing": []},
        "decision": {"action": "scale-out", "reason": "fleet load 0.91 > 0.80 for 3 samples", "size": 3,
                     "fleet_load": 0.912345}})
    data = status.model(settings, [], served(), now=now)
    line = next(x for x in status.text(data).splitlines() if x.startswith("autoscale:"))
    assert line.startswith("autoscale: active, updated 4 s ago; last decision scale-out 4 s ago: fleet load 0.91")
    assert "fleet load 0.91;" in line and "warming web3; removing none" in line
    assert "last scale-out 5 min ago, last scale-in -" in line
    assert any(e["kind"] == "autoscale" for e in data["events"])
    assert status.model(settings, [], served(), now=now + 3600)["autoscale"]["state"] == "idle"
    data = state.read(settings.state_dir, state.AUTOSCALE)
    state.write(settings.state_dir, state.AUTOSCALE, {**data, "pid": os.getpid()})
    assert status.model(settings, [], served(), now=now + 3600)["autoscale"]["state"] == "active"
    state.write(settings.state_dir, state.AUTOSCALE, {**data, "pid": os.getpid(), "stopped": now})
    assert status.model(settings, [], served(), now=now)["autoscale"]["state"] == "idle"  # a clean stop


def test_hostile_names_are_escaped_in_text_and_plain_json(tmp_path):
    settings = settings_in(tmp_path)
    evil = Served("live pool v1", (("evil\x1b[2J", "127.0.0.99:80", False),))
    data = status.model(settings, [], evil)
    report = status.text(data)
    assert "\x1b" not in report and "evil\\x1b[2J" in report
    row = json.loads(json.dumps(data))["pools"][0]["backends"][0]
    assert (row["name"], row["state"], row["source"]) == ("evil\x1b[2J", "stray", "nginx")


def test_the_json_schema_has_what_the_docstring_promises(tmp_path):
    settings = settings_in(tmp_path)
    applied(settings, "web1")
    data = status.model(settings, records(("web1", "127.0.0.11", "alive", {})), served("web1"))
    assert data["schema"] == 1 and set(data) == {"schema", "time", "host", "serf", "pools", "skipped", "last_run",
                                                 "last_failure", "daemon", "autoscale", "events"}
    backend = data["pools"][0]["backends"][0]
    assert set(backend) == {"name", "address", "source", "serf", "drain", "health", "health_error", "in_nginx",
                            "state", "reason", "since"}
    assert backend["state"] in status.STATES
    for key in backend:
        assert f"{key}" in status.__doc__, key


def test_human_times():
    assert [status.ago(t, 100000.0) for t in (99988, 99900, 100000 - 3 * 3600, 100000 - 5 * 86400, None)] == [
        "12 s ago", "2 min ago", "3 h ago", "5 d ago", "-"]
