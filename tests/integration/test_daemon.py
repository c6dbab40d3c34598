"""`lbsync run` against a real Serf agent and a real nginx.

Convergence waits are generous deadlines, not speed claims: how fast `run` converges is measured
in bench/, and the figures are in the closing note of issue 4.
"""

from __future__ import annotations

import signal
import time

import pytest
from kit.lb import start_lb, start_web
from kit.net import HungServer, wait_until
from kit.paths import ROOT
from kit.serfnode import serf, serf_members

pytestmark = pytest.mark.integration

CONVERGE = 15  # generous: the machine is shared; the daemon itself needs tens of ms
LOGGED = 10  # a change the agent's log brings in: well inside the 30 s polls of that test


def make_daemon_lab(procs, workdir, config: str = ""):
    """An LB in run mode (kit.lb: fast [daemon] defaults unless `config` has its own table)."""
    return start_lb(procs, workdir, config, mode="run")


@pytest.fixture
def lab(procs, tmp_path):
    lab = make_daemon_lab(procs, tmp_path / "lb")
    lab.start_daemon()
    wait_until(lab.settled, CONVERGE, "the daemon's first reconcile")
    return lab


def test_join_routes_leave_unroutes_and_sigterm_exits_cleanly(lab):
    assert lab.served_by(2) == {"HTTP 503"}
    lab.web(1)
    wait_until(lambda: lab.served_by() == {"serf-web1"}, CONVERGE, "web1 routed")
    web2 = lab.web(2)
    wait_until(lambda: lab.served_by() == {"serf-web1", "serf-web2"}, CONVERGE, "web2 routed")
    serf("leave", "-rpc-addr", web2.rpc_addr)
    wait_until(lambda: lab.served_by() == {"serf-web1"}, CONVERGE, "web2 out of rotation")
    # daemon.json is written after the reload nginx already serves, and a run can see web2 "leaving"
    # before Serf says "left": wait for the record rather than read it once
    state = wait_until(lambda: (s := lab.state())["backends"] == ["web1"] and s["members"].get("left") == ["web2"]
                       and s, CONVERGE, "daemon.json to record web2 left")
    assert state["serf_connected"] and state["reloads"] >= 3
    assert lab.stop_daemon() == 0
    assert "Traceback" not in lab.log()


def test_serf_s_log_wakes_the_daemon_on_a_join_a_tag_update_and_a_leave(procs, tmp_path):
    """Every poll and safety net 30 s away: only the agent's log (RPC monitor) can bring these
    changes in within seconds (Serf's own event stream would deliver them a second late).
    LOGGED leaves room for a loaded machine (two nginx -t and a reload per change) and is still a
    third of the 30 s after which a poll would have found the change."""
    config = ("[daemon]\nfollow_log = true\nidle_interval = 30\npoll_interval = 30\nmembers_interval = 30\n"
              "debounce_min = 0.02\nmin_reload_interval = 0.2\n")
    lab = make_daemon_lab(procs, tmp_path / "lb", config)
    lab.start_daemon()
    wait_until(lab.settled, CONVERGE, "the daemon's first reconcile")
    web1 = lab.web(1)
    wait_until(lambda: lab.served_by() == {"serf-web1"}, LOGGED, "web1 routed on a logged join")
    lab.web(2)
    wait_until(lambda: lab.served_by() == {"serf-web1", "serf-web2"}, LOGGED, "web2 routed on a logged join")
    serf("tags", "-rpc-addr", web1.rpc_addr, "-set", "drain=1")
    wait_until(lambda: lab.served_by() == {"serf-web2"}, LOGGED, "web1 drained on a logged tag update")
    serf("leave", "-rpc-addr", web1.rpc_addr)
    wait_until(lambda: lab.state()["members"].get("left") == ["web1"], LOGGED, "web1 left on a logged leave")
    assert "following serf at" in lab.log() and "serf's log for member events" in lab.log()
    assert "not following serf's log" not in lab.log()


def test_burst_of_30_joins_reloads_once(procs, tmp_path):
    # a split burst would show as a second reload, min_reload_interval later
    config = ("[daemon]\npoll_interval = 0.02\ndebounce_min = 0.5\ndebounce_max = 5\n"
              "min_reload_interval = 2\n")
    lab = make_daemon_lab(procs, tmp_path / "lb", config)
    nodes = [lab.web(n, serve=False, join=False) for n in range(1, 31)]
    lab.start_daemon()
    wait_until(lab.settled, CONVERGE, "the daemon's first reconcile")
    wait_until(lambda: time.time() - lab.state()["last_reload"] > 2.2, CONVERGE, "the reload budget")
    before = lab.reloads()
    serf("join", "-rpc-addr", lab.lb.rpc_addr, *(node.bind_addr for node in nodes))
    # daemon.json is written after the reconcile, so after its reload
    wait_until(lambda: len(lab.state()["backends"]) == 30, CONVERGE, "all 30 rendered and reloaded")
    assert lab.reloads() - before == 1
    assert lab.state()["reconciles"].get("updated") == 2  # the start, then the burst
    assert "throttled" not in lab.log()


def test_agent_restart_reconnects_and_resyncs(procs, tmp_path):
    lab = make_daemon_lab(procs, tmp_path / "lb", "collapse_grace = 1.0\n")
    lab.start_daemon()
    web1 = lab.web(1)
    web2 = lab.web(2)
    wait_until(lambda: lab.served_by() == {"serf-web1", "serf-web2"}, CONVERGE, "both routed")
    lab.lb.proc.stop(signal.SIGKILL)
    serf("leave", "-rpc-addr", web2.rpc_addr)  # a change the daemon cannot see while the agent is down
    # until web1 has processed that leave, it would hand web2 to the new agent as alive (Serf's
    # join sync): then web2 is routed until its leave reaches the new agent, and nothing is held
    wait_until(lambda: {m["name"]: m["status"] for m in serf_members(web1)}.get("web2") == "left",
               CONVERGE, "web1 saw web2 leave")
    lab.restart_lb_agent(join=web1)
    # the new agent never heard of web2: held for collapse_grace, then dropped without a new event
    wait_until(lambda: lab.served_by() == {"serf-web1"}, CONVERGE, "resync after reconnect")
    wait_until(lambda: "reconnected to serf agent" in lab.log(), CONVERGE, "the reconnect logged")
    log = lab.log()
    assert log.count("nginx keeps its current backends") == 1  # once per outage, not per attempt
    assert "membership collapse held" in log
    assert lab.daemon.alive() and lab.state()["reconnects"] >= 1


def test_an_agent_restarted_without_its_snapshot_does_not_empty_the_pool(lab):
    """Serf forgets every member; lbsync keeps the last pool for collapse_grace (120 s)."""
    lab.web(1)
    lab.web(2)
    wait_until(lambda: lab.served_by() == {"serf-web1", "serf-web2"}, CONVERGE, "both routed")
    lab.restart_lb_agent()  # no snapshot, no join: the new agent knows only itself
    wait_until(lambda: "reconnected to serf agent" in lab.log(), CONVERGE, "the reconnect")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # without the guard: 503 from the first resync on
        assert lab.served_by(2) <= {"serf-web1", "serf-web2"}
    assert "membership collapsed" in lab.log() and lab.state()["backends"] == ["web1", "web2"]


def test_change_missed_while_stopped_is_repaired_at_start(lab):
    web1 = lab.web(1)
    wait_until(lambda: lab.served_by() == {"serf-web1"}, CONVERGE, "web1 routed")
    assert lab.stop_daemon() == 0
    lab.web(2)
    serf("leave", "-rpc-addr", web1.rpc_addr)
    wanted = {("web1", "left"), ("web2", "alive")}
    wait_until(lambda: {(m["name"], m["status"]) for m in serf_members(lab.lb)} >= wanted,
               CONVERGE, "the LB agent to see both changes")
    lab.start_daemon()
    wait_until(lambda: lab.served_by() == {"serf-web2"}, CONVERGE, "repaired at start")
    assert "web1" not in lab.upstream().replace("# Managed", "")


def test_hung_backend_marked_down_then_back_after_rise(procs, tmp_path):
    config = ("[daemon]\npoll_interval = 0.02\ndebounce_min = 0.05\nmin_reload_interval = 0.2\n"
              'health_path = "/"\n')
    lab = make_daemon_lab(procs, tmp_path / "lb", config)
    hung = HungServer("127.0.0.12")
    try:
        lab.start_daemon()
        lab.web(1)
        lab.web(2, port=hung.port, serve=False)
        wait_until(lambda: lab.state().get("unhealthy") == ["web2"], CONVERGE, "the hung backend marked down")
        assert "down;  # web2 (failing health checks)" in lab.upstream()
        # nginx applies a reload asynchronously: until then a request may still reach web2
        wait_until(lambda: lab.served_by(timeout=1) == {"serf-web1"}, CONVERGE, "web1 alone served")
    finally:
        hung.close()
    start_web(procs, "serf-web2", "127.0.0.12", hung.port)  # it answers again
    # an old nginx worker generation may still route to web2 for a moment: wait for the verdict first
    wait_until(lambda: "passed 2 health checks: back in rotation" in lab.log(), CONVERGE, "web2 healthy")
    wait_until(lambda: lab.served_by(8) == {"serf-web1", "serf-web2"}, CONVERGE, "web2 back after rise")
    assert "down;" not in lab.upstream()


def test_template_edit_goes_live_and_broken_template_keeps_last_good(procs, tmp_path):
    template = tmp_path / "upstream.j2"
    template.write_text((ROOT / "lbsync" / "templates" / "lbs_upstream.conf.j2").read_text())
    lab = make_daemon_lab(procs, tmp_path / "lb", f'template = "{template}"\n')
    lab.start_daemon()
    lab.web(1)
    wait_until(lambda: lab.served_by() == {"serf-web1"}, CONVERGE, "web1 routed")
    template.write_text(template.read_text() + "\n# edited by the test\n")
    wait_until(lambda: "# edited by the test" in lab.upstream(), CONVERGE, "the edited template live")
    live = lab.upstream()
    template.write_text("{% if backends %}\nupstream broken {\n")
    wait_until(lambda: "template" in lab.log() and "ERROR" in lab.log(), CONVERGE, "the template error")
    assert lab.upstream() == live and lab.served_by() == {"serf-web1"}
    assert lab.daemon.alive() and "Traceback" not in lab.log()


def test_config_edit_and_sighup_reload_settings_or_keep_the_old(lab):
    lab.web(1)
    wait_until(lambda: lab.served_by() == {"serf-web1"}, CONVERGE, "web1 routed")
    config = lab.workdir / "lbsync.toml"
    daemon_table = config.read_text()
    config.write_text('algorithm = "least_conn"\n' + daemon_table)
    wait_until(lambda: "least_conn;" in lab.upstream(), CONVERGE, "the edited config applied")
    config.write_text('algorithm = "fastest"\n' + daemon_table)
    wait_until(lambda: "keeping the previous settings" in lab.log(), CONVERGE, "the bad config refused")
    lab.daemon.send(signal.SIGHUP)
    wait_until(lambda: lab.log().count("keeping the previous settings") >= 2, CONVERGE, "SIGHUP re-read")
    assert "algorithm (from " + str(config) + ":1)" in lab.log() and "'fastest' is not one of round_robin" in lab.log()
    assert lab.daemon.alive() and "least_conn;" in lab.upstream()
    assert lab.served_by() == {"serf-web1"}
