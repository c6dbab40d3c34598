"""Faults and hostile input that once left nginx wrong: each test reproduces one case of the
reliability issue against the pipeline (fake nginx, in-memory members) and shows it now holds."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from kit.fake_nginx import fake_nginx, nginx_calls, pipeline_settings
from kit.records import record
from kit.source import ListSource

from lbsync import state
from lbsync.errors import ConfigError, InstallError, LockError, NginxError, ReloadError
from lbsync.files import locked
from lbsync.layers import load
from lbsync.members import select
from lbsync.plan import Outcome
from lbsync.sync import reconcile

ROOT = Path(__file__).resolve().parents[2]


def reloads(tmp_path: Path) -> int:
    return sum("-s reload" in call for call in nginx_calls(tmp_path))


# -- crash points ---------------------------------------------------------------------------------

def test_a_crash_between_install_and_reload_forces_a_reload_next_run(tmp_path):
    """SIGKILL while nginx checks the installed file: the file is current, nginx is not."""
    calls = tmp_path / "nginx-calls"
    killer = tmp_path / "killing-nginx"
    killer.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n'
                      'case "$*" in *wrapper*|*-s*) exit 0;; esac\n'
                      'kill -9 $PPID; sleep 5\n')  # the live-config test: lbsync dies here
    killer.chmod(0o755)
    code = ("import sys; from pathlib import Path\n"
            "from kit.fake_nginx import pipeline_settings\nfrom kit.source import ListSource\n"
            "from lbsync.sync import reconcile\n"
            f"reconcile(pipeline_settings(Path({str(tmp_path)!r}), Path({str(killer)!r})), "
            "ListSource.of('web1'))\n")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT}/tests"},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == -9, done.stderr
    assert "10.0.0.1" in (tmp_path / "up.conf").read_text() and reloads(tmp_path) == 0
    settings = pipeline_settings(tmp_path, fake_nginx(tmp_path))
    reconcile(settings, ListSource.of("web1"))
    assert reloads(tmp_path) == 1  # nginx now serves what the file says
    reconcile(settings, ListSource.of("web1"))
    assert reloads(tmp_path) == 1  # and only once


def test_a_refused_install_leaves_no_reload_pending(tmp_path):
    settings = pipeline_settings(tmp_path)
    reconcile(settings, ListSource.of("web1"))
    picky = tmp_path / "picky-nginx"
    picky.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/nginx-calls"\n'
                     'case "$*" in *wrapper*|*-s*) exit 0;; esac\necho "nginx: [emerg] no" >&2; exit 1\n')
    picky.chmod(0o755)
    with pytest.raises(NginxError, match=r"previous up.conf restored"):
        reconcile(dataclasses.replace(settings, nginx_bin=str(picky)), ListSource.of("web1", "web2"))
    reconcile(settings, ListSource.of("web1"))
    assert reloads(tmp_path) == 1  # nothing new went live, so nothing to retry


def test_a_read_only_file_system_is_one_clear_error_not_a_traceback(tmp_path):
    """A reload is pending and the output's file system went read-only: say so, exit 73."""
    ro = tmp_path / "ro"
    ro.mkdir()
    settings = dataclasses.replace(pipeline_settings(tmp_path), output=str(ro / "up.conf"))
    failing = tmp_path / "fail"
    failing.write_text("#!/bin/sh\nexit 1\n")
    failing.chmod(0o755)
    with pytest.raises(ReloadError):
        reconcile(dataclasses.replace(settings, reload_command=str(failing)), ListSource.of("web1"))
    subprocess.run(["mount", "--bind", str(ro), str(ro)], check=True)  # root in CI, as everywhere here
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
        with pytest.raises(InstallError, match="Read-only file system"):
            reconcile(settings, ListSource.of("web1", "web2"))
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_a_non_utf8_output_file_is_replaced_not_a_permanent_failure(tmp_path):
    settings = pipeline_settings(tmp_path)
    (tmp_path / "up.conf").write_bytes(b"\xff\xfe garbage from elsewhere\n")
    assert reconcile(settings, ListSource.of("web1")).outcome is Outcome.UPDATED
    assert "10.0.0.1" in (tmp_path / "up.conf").read_text()


def test_a_missing_nginx_binary_is_a_config_error_and_no_rejected_file(tmp_path):
    settings = pipeline_settings(tmp_path, tmp_path / "no-such-nginx")
    with pytest.raises(ConfigError, match="no-such-nginx"):
        reconcile(settings, ListSource.of("web1"))
    assert not list(tmp_path.glob("*.rejected*"))


def test_rejected_files_are_cleaned_once_a_candidate_goes_live(tmp_path):
    settings = pipeline_settings(tmp_path)
    (tmp_path / "bad").mkdir()
    with pytest.raises(NginxError):
        reconcile(dataclasses.replace(settings, nginx_bin=str(fake_nginx(tmp_path / "bad", 1))),
                  ListSource.of("web1"))
    assert (tmp_path / "up.conf.rejected").exists()
    reconcile(settings, ListSource.of("web1"))
    assert not list(tmp_path.glob("up.conf.rejected*"))


def test_the_candidate_check_leaves_nothing_in_tmp_after_a_kill(tmp_path):
    """The check's scratch directory lives under state_dir and is reused, never piled up in /tmp."""
    settings = pipeline_settings(tmp_path)
    reconcile(settings, ListSource.of("web1"))
    reconcile(settings, ListSource.of("web1", "web2"))
    scratch = [p for p in (tmp_path / "state").iterdir() if p.is_dir()]
    assert len(scratch) <= 1


def test_a_pool_of_only_backups_renders_a_config_nginx_accepts(tmp_path):
    settings = pipeline_settings(tmp_path)
    backups = ListSource([record("web1", "10.0.0.1", backup="1"), record("web2", "10.0.0.2", backup="1")])
    reconcile(settings, backups)
    text = (tmp_path / "up.conf").read_text()
    assert "server 10.0.0.1:80 backup;" in text
    servers = [line.split("#")[0].strip() for line in text.splitlines() if line.strip().startswith("server")]
    primaries = [line for line in servers if not line.endswith("backup;")]
    assert primaries, "nginx refuses an upstream whose every server is a backup"


# -- locks ----------------------------------------------------------------------------------------

def test_the_lock_is_private_and_refuses_a_symlink(tmp_path):
    lock = tmp_path / "run" / "lbsync.lock"
    with locked(str(lock), 1):
        pass
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    assert stat.S_IMODE(lock.parent.stat().st_mode) == 0o700
    lock.unlink()
    lock.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LockError, match="symlink|refus"):
        with locked(str(lock), 1):
            pass


def test_another_user_cannot_freeze_updates_by_holding_the_lock():
    """As `nobody`, open the lock to flock it: only the file's own mode can stop that."""
    shared = Path(tempfile.mkdtemp(prefix="lbsync-lock-"))
    try:
        shared.chmod(0o755)  # a directory anyone may enter, like /run
        lock = shared / "lbsync.lock"
        lock.write_text("")
        lock.chmod(0o644)  # as an older lbsync left it
        with locked(str(lock), 1):
            pass
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600  # tightened on use
        grab = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "sh", "-c", 'exec 3<"$0"', str(lock)], capture_output=True, text=True, timeout=10)
        assert grab.returncode != 0 and "Permission denied" in grab.stderr
    finally:
        shutil.rmtree(shared)


def test_a_dry_run_takes_no_lock(tmp_path):
    settings = pipeline_settings(tmp_path, lock_timeout=0.05)
    with locked(settings.lock_file, 1):
        result = reconcile(settings, ListSource.of("web1"), dry_run=True)
    assert result.outcome is Outcome.DRY_RUN


# -- hostile names and duplicate endpoints --------------------------------------------------------

def test_a_newline_in_a_member_name_cannot_forge_a_log_line(tmp_path, caplog):
    settings = pipeline_settings(tmp_path)
    evil = record("web1", "10.0.0.1") | {"Name": "x\nlbsync: INFO: updated everything"}
    with caplog.at_level(logging.WARNING, logger="lbsync"):
        reconcile(settings, ListSource([evil, record("web2", "10.0.0.2")]))
    lines = [r.getMessage() for r in caplog.records]
    assert any("skipping member x\\nlbsync: INFO" in line for line in lines)
    assert not any("\n" in line for line in lines)


def test_a_shadow_member_never_takes_over_an_endpoint_already_served(tmp_path):
    settings = pipeline_settings(tmp_path)
    reconcile(settings, ListSource([record("web1", "10.0.0.1")]))
    shadow = record("aaa-shadow", "10.0.0.1", drain="1")
    result = reconcile(settings, ListSource([record("web1", "10.0.0.1"), shadow]))
    assert [m.name for m in result.backends] == ["web1"]
    assert [s.name for s in result.skipped] == ["aaa-shadow"]
    assert "already served by web1" in result.skipped[0].reason
    assert "down" not in (tmp_path / "up.conf").read_text()


def test_two_newcomers_on_one_endpoint_are_a_conflict_not_a_name_contest(tmp_path):
    settings = pipeline_settings(tmp_path)
    result = reconcile(settings, ListSource([record("aaa", "10.0.0.1"), record("zzz", "10.0.0.1")]))
    assert result.backends == () and sorted(s.name for s in result.skipped) == ["aaa", "zzz"]
    assert all("both claim 10.0.0.1:80" in s.reason for s in result.skipped)


# -- membership collapse --------------------------------------------------------------------------

def test_an_agent_that_forgot_the_cluster_does_not_empty_the_pool(tmp_path, caplog):
    settings = pipeline_settings(tmp_path, collapse_grace=60.0)
    full = [record(f"web{n}", f"10.0.0.{n}") for n in (1, 2, 3)]
    reconcile(settings, ListSource(full))
    with caplog.at_level(logging.WARNING, logger="lbsync"):
        result = reconcile(settings, ListSource([record("lb", "10.0.0.9", role="lb")]))
    assert [m.name for m in result.backends] == ["web1", "web2", "web3"]
    assert "vanished" in caplog.text and "keeping" in caplog.text
    assert state.read(settings.state_dir, state.LAST_SYNC)["held"] == ["web1", "web2", "web3"]


def test_the_collapse_grace_ends_and_genuine_departures_apply_at_once(tmp_path):
    settings = pipeline_settings(tmp_path, collapse_grace=0.0)
    reconcile(settings, ListSource([record(f"web{n}", f"10.0.0.{n}") for n in (1, 2, 3)]))
    assert reconcile(settings, ListSource([])).backends == ()  # no grace: the collapse applies
    grace = pipeline_settings(tmp_path, collapse_grace=60.0)
    reconcile(grace, ListSource([record(f"web{n}", f"10.0.0.{n}") for n in (1, 2, 3)]))
    departed = [record("web1", "10.0.0.1"), record("web2", "10.0.0.2", status="left"),
                record("web3", "10.0.0.3", status="failed")]
    assert [m.name for m in reconcile(grace, ListSource(departed)).backends] == ["web1"]


# -- settings that once passed validation and crashed later ---------------------------------------

@pytest.mark.parametrize("text, key", [
    ("rpc_timeout = nan\n", "rpc_timeout"), ("rpc_timeout = inf\n", "rpc_timeout"),
    ("rpc_timeout = -1\n", "rpc_timeout"), ("lock_timeout = nan\n", "lock_timeout"),
    ("keepalive = 1.9\n", "keepalive"), ('log_level = "nonsense"\n', "log_level"),
    ("[autoscale]\nquery_timeout = nan\n", "autoscale.query_timeout"),
    ("[autoscale]\ninterval = inf\n", "autoscale.interval"),
])
def test_every_number_is_finite_in_range_and_of_its_type(tmp_path, text, key):
    path = tmp_path / "lbsync.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{key} \(from {path}:[12]\): "):
        load(path, env={})


def test_select_is_given_the_held_endpoints(tmp_path):
    """The rule in select() itself: the holder named in `held` keeps its endpoint."""
    settings = pipeline_settings(tmp_path)
    shadow, web1 = record("aaa", "10.0.0.1"), record("web1", "10.0.0.1")
    picked = select(ListSource([shadow, web1]).members(), settings, held={"10.0.0.1:80": "web1"})
    assert [m.name for m in picked.backends] == ["web1"]
