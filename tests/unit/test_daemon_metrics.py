"""What the daemon publishes: daemon.json for `lbsync status` and Prometheus text."""

from __future__ import annotations

import ipaddress
import json
import re

from lbsync.config import DaemonSettings, Settings
from lbsync.members import Member, Selection, Skip
from lbsync.metrics import View, publish, to_prometheus
from lbsync.plan import RELOADED, Outcome, SyncResult

SAMPLE = re.compile(r'^lbsync_[a-z_]+(\{[a-z]+="[a-z]+"\})? -?[0-9.e+]+$')


def view_after_one_update() -> View:
    member = Member("web1", ipaddress.ip_address("127.0.0.11"), "alive", "web", 8080)
    selection = Selection((member,), (Skip("web9", "address outside allowed_networks"),),
                          {"alive": ("web1", "web9"), "left": ("web2",)})
    view = View(connected=True)
    view.record(SyncResult(Outcome.UPDATED, (member,), selection.skipped, selection=selection,
                           action=RELOADED), 1000.0)
    view.health = {"web1": {"healthy": False, "oks": 0, "fails": 2, "error": "timeout"}}
    return view


def test_prometheus_text_is_well_formed():
    text = to_prometheus(view_after_one_update(), 1010.0)
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or SAMPLE.match(line), line
    assert "lbsync_backends 1\n" in text and "lbsync_backends_unhealthy 1\n" in text
    assert 'lbsync_members{status="left"} 1\n' in text
    assert 'lbsync_reconciles_total{outcome="updated"} 1\n' in text
    assert "lbsync_last_reload_timestamp_seconds 1000.0\n" in text
    assert "lbsync_reloads_last_minute 1\n" in text


def test_reloads_last_minute_forgets_old_reloads():
    view = view_after_one_update()
    assert view.reloads_last_minute(1059.0) == 1
    assert view.reloads_last_minute(1061.0) == 0


def test_publish_writes_status_and_metrics(tmp_path):
    settings = Settings(state_dir=str(tmp_path / "state"),
                        daemon=DaemonSettings(metrics_file=str(tmp_path / "lbsync.prom")))
    publish(settings, view_after_one_update())
    state = json.loads((tmp_path / "state" / "daemon.json").read_text())
    assert state["members"] == {"alive": ["web1", "web9"], "left": ["web2"]}
    assert state["skipped"] == {"web9": "address outside allowed_networks"}
    assert state["unhealthy"] == ["web1"] and state["last_outcome"] == "updated"
    assert (tmp_path / "lbsync.prom").read_text().startswith("# HELP lbsync_backends ")
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob("state/.*tmp"))
