"""The pipeline with an in-memory source and a fake nginx: install, restore, retry, lock."""

from __future__ import annotations

import dataclasses
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import fake_nginx

from lbsync.config import Settings
from lbsync.errors import LockError, NginxError, ReloadError
from lbsync.sync import Outcome, locked, reconcile


class ListSource:
    def __init__(self, *names: str):
        self.records = [{"Name": n, "Addr": ipaddress.ip_address(f"10.0.0.{i + 1}"), "Status": "alive",
                         "Tags": {"role": "web"}} for i, n in enumerate(names)]

    def members(self):
        return self.records


def settings_for(tmp_path, nginx=None, **changes) -> Settings:
    nginx = nginx or fake_nginx(tmp_path)
    return dataclasses.replace(Settings(), output=str(tmp_path / "up.conf"), nginx_bin=str(nginx),
                               reload_command=f"{nginx} -s reload", lock_file=str(tmp_path / "lock"),
                               state_dir=str(tmp_path / "state"), **changes)


def calls(tmp_path) -> list[str]:
    path = tmp_path / "nginx-calls"
    return path.read_text().splitlines() if path.exists() else []


def test_update_then_unchanged(tmp_path):
    settings = settings_for(tmp_path)
    assert reconcile(settings, ListSource("web1")).outcome is Outcome.UPDATED
    assert sum("-s reload" in c for c in calls(tmp_path)) == 1
    assert reconcile(settings, ListSource("web1")).outcome is Outcome.UNCHANGED
    assert sum("-s reload" in c for c in calls(tmp_path)) == 1
    assert (tmp_path / "state" / "last_sync.json").exists()


def test_hand_edited_file_is_repaired(tmp_path):
    settings = settings_for(tmp_path)
    reconcile(settings, ListSource("web1"))
    output = tmp_path / "up.conf"
    output.write_text(output.read_text().replace("10.0.0.1", "10.6.6.6"))
    assert reconcile(settings, ListSource("web1")).outcome is Outcome.UPDATED
    assert "10.0.0.1" in output.read_text()


def test_dry_run_writes_nothing(tmp_path):
    result = reconcile(settings_for(tmp_path), ListSource("web1"), dry_run=True)
    assert result.outcome is Outcome.DRY_RUN and "+    server 10.0.0.1:80;" in result.diff
    assert not (tmp_path / "up.conf").exists() and calls(tmp_path) == []


def test_rejected_by_live_test_restores_previous(tmp_path):
    settings = settings_for(tmp_path)
    reconcile(settings, ListSource("web1"))
    before = (tmp_path / "up.conf").read_bytes()
    # A candidate that passes the wrapper check but fails the whole-config test.
    script = tmp_path / "picky-nginx"
    script.write_text('#!/bin/sh\ncase "$*" in *wrapper*) exit 0;; *-s*) exit 0;; esac\n'
                      'echo "nginx: [emerg] duplicate upstream" >&2; exit 1\n')
    script.chmod(0o755)
    with pytest.raises(NginxError, match="duplicate upstream"):
        reconcile(dataclasses.replace(settings, nginx_bin=str(script)), ListSource("web1", "web2"))
    assert (tmp_path / "up.conf").read_bytes() == before


def test_failed_reload_is_retried_next_run(tmp_path):
    failing = tmp_path / "fail"
    failing.write_text("#!/bin/sh\nexit 1\n")
    failing.chmod(0o755)
    settings = settings_for(tmp_path)
    with pytest.raises(ReloadError):
        reconcile(dataclasses.replace(settings, reload_command=str(failing)), ListSource("web1"))
    reconcile(settings, ListSource("web1"))
    assert sum("-s reload" in c for c in calls(tmp_path)) == 1  # the retry, though nothing changed
    reconcile(settings, ListSource("web1"))
    assert sum("-s reload" in c for c in calls(tmp_path)) == 1


def test_lock_times_out_with_clear_error(tmp_path):
    settings = settings_for(tmp_path, lock_timeout=0.05)
    with locked(settings.lock_file, 1):
        with pytest.raises(LockError, match="another lbsync run holds"):
            reconcile(settings, ListSource("web1"))


def test_unchanged_path_does_not_import_jinja2(tmp_path):
    settings = settings_for(tmp_path)
    reconcile(settings, ListSource("web1"))
    here = str(Path(__file__).parent)
    code = (
        f"import sys; sys.path.insert(0, {here!r})\n"
        "from pathlib import Path\n"
        "from test_sync import ListSource, settings_for\n"
        "from lbsync.sync import reconcile\n"
        f"r = reconcile(settings_for(Path({str(tmp_path)!r})), ListSource('web1'))\n"
        "print(r.outcome.value, 'jinja2' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["unchanged", "False"], out.stderr
