"""`lbsync handle` run exactly as Serf runs it: /bin/sh -c, SERF_* env, tab-separated stdin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from kit.fake_nginx import fake_nginx
from kit.records import record

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def world(tmp_path, fake_serf):
    serf = fake_serf([record("web1", "10.0.0.1", port="8080"),
                      record("web2", "10.0.0.2", port="8080; } server { listen 9999"),
                      record("web3", "10.0.0.3", status="failed")])
    nginx = fake_nginx(tmp_path)
    env = {
        "PYTHONPATH": str(ROOT), "LBSYNC_RPC_ADDR": serf.addr, "LBSYNC_NGINX_BIN": str(nginx),
        "LBSYNC_RELOAD_COMMAND": f"{nginx} -s reload", "LBSYNC_OUTPUT": str(tmp_path / "up.conf"),
        "LBSYNC_LOCK_FILE": str(tmp_path / "lock"), "LBSYNC_STATE_DIR": str(tmp_path / "state"),
        "LBSYNC_SYSLOG": "0", "LBSYNC_CONFIG": str(tmp_path / "none.toml"), "LBSYNC_DATA_PLANE": "reload",
        "SERF_SELF_NAME": "lb", "SERF_SELF_ROLE": "lb", "SERF_TAG_ROLE": "lb",
    }
    (tmp_path / "none.toml").write_text("")
    return tmp_path, serf, env


def handle(env: dict, event: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", "-c", f"{sys.executable} -m lbsync handle"], input=stdin,
                          env={**os.environ, **env, "SERF_EVENT": event}, capture_output=True,
                          text=True, timeout=30)


def test_member_event_reconciles_from_full_membership(world):
    tmp, serf, env = world
    # The event names only web9, which the agent does not list: state comes from the snapshot.
    done = handle(env, "member-join", "web9\t10.0.0.9\tweb\trole=web,port=80\n")
    assert done.returncode == 0, done.stderr
    text = (tmp / "up.conf").read_text()
    assert "server 10.0.0.1:8080;  # web1" in text
    assert "web9" not in text and "9999" not in text and "web3" not in text
    assert "event member-join: web9 10.0.0.9 (web role=web,port=80)" in done.stderr
    assert "skipping member web2: tag port=" in done.stderr
    assert "-s reload" in (tmp / "nginx-calls").read_text()


def test_repeated_event_is_a_no_op(world):
    tmp, serf, env = world
    handle(env, "member-update")
    calls = (tmp / "nginx-calls").read_text()
    again = handle(env, "member-reap")
    assert "unchanged (1 backends); not reloading" in again.stderr
    assert (tmp / "nginx-calls").read_text() == calls


@pytest.mark.parametrize("event", ["user", "query", "", "member-bogus"])
def test_other_events_exit_at_once_without_rpc(world, event):
    tmp, serf, env = world
    done = handle(env, event, "payload\n")
    assert done.returncode == 0 and not (tmp / "up.conf").exists()
    assert serf.commands == []


def test_unreachable_agent_is_one_line_and_exit_69(world):
    tmp, serf, env = world
    serf.close()
    done = handle(env, "member-join")
    assert done.returncode == os.EX_UNAVAILABLE
    assert done.stderr.strip().count("\n") == 0 and "is `serf agent` running?" in done.stderr


def test_hostile_stdin_is_logged_printable(world):
    tmp, serf, env = world
    done = handle(env, "member-leave", "evil\x1b[2J\t10.0.0.5\tweb\trole=web\n")
    assert "\x1b" not in done.stderr and "evil\\x1b[2J" in done.stderr


def test_the_unchanged_hook_imports_only_what_it_needs(world):
    """Serf runs handlers one after another: every import on this path delays the next event."""
    tmp, serf, env = world
    handle(env, "member-join")
    done = subprocess.run(["/bin/sh", "-c", f"{sys.executable} -X importtime -m lbsync handle"],
                          env={**os.environ, **env, "SERF_EVENT": "member-update"}, capture_output=True,
                          text=True, timeout=30)
    assert "unchanged" in done.stderr, done.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    heavy = {"argparse", "jinja2", "subprocess", "tempfile", "difflib", "http.client", "email",
             "prometheus_client", "watchdog", "psutil", "lbsync.nginx", "lbsync.install"}
    assert not heavy & imported, heavy & imported
