"""The pipeline with an in-memory source and a fake nginx: install, restore, retry, lock."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kit.fake_nginx import nginx_calls, pipeline_settings
from kit.source import ListSource

from lbsync.errors import LockError, NginxError, ReloadError
from lbsync.sync import Outcome, locked, reconcile


def test_update_then_unchanged(tmp_path):
    settings = pipeline_settings(tmp_path)
    assert reconcile(settings, ListSource.of("web1")).outcome is Outcome.UPDATED
    assert sum("-s reload" in c for c in nginx_calls(tmp_path)) == 1
    assert reconcile(settings, ListSource.of("web1")).outcome is Outcome.UNCHANGED
    assert sum("-s reload" in c for c in nginx_calls(tmp_path)) == 1
    assert (tmp_path / "state" / "last_sync.json").exists()


def test_hand_edited_file_is_repaired(tmp_path):
    settings = pipeline_settings(tmp_path)
    reconcile(settings, ListSource.of("web1"))
    output = tmp_path / "up.conf"
    output.write_text(output.read_text().replace("10.0.0.1", "10.6.6.6"))
    assert reconcile(settings, ListSource.of("web1")).outcome is Outcome.UPDATED
    assert "10.0.0.1" in output.read_text()


def test_dry_run_writes_nothing(tmp_path):
    result = reconcile(pipeline_settings(tmp_path), ListSource.of("web1"), dry_run=True)
    assert result.outcome is Outcome.DRY_RUN and "+    server 10.0.0.1:80;" in result.diff
    assert not (tmp_path / "up.conf").exists() and nginx_calls(tmp_path) == []


def test_rejected_by_live_test_restores_previous(tmp_path):
    settings = pipeline_settings(tmp_path)
    reconcile(settings, ListSource.of("web1"))
    before = (tmp_path / "up.conf").read_bytes()
    # A candidate that passes the wrapper check but fails the whole-config test.
    script = tmp_path / "picky-nginx"
    script.write_text('#!/bin/sh\ncase "$*" in *wrapper*) exit 0;; *-s*) exit 0;; esac\n'
                      'echo "nginx: [emerg] duplicate upstream" >&2; exit 1\n')
    script.chmod(0o755)
    with pytest.raises(NginxError, match="duplicate upstream"):
        reconcile(dataclasses.replace(settings, nginx_bin=str(script)), ListSource.of("web1", "web2"))
    assert (tmp_path / "up.conf").read_bytes() == before


def test_failed_reload_is_retried_next_run(tmp_path):
    failing = tmp_path / "fail"
    failing.write_text("#!/bin/sh\nexit 1\n")
    failing.chmod(0o755)
    settings = pipeline_settings(tmp_path)
    with pytest.raises(ReloadError):
        reconcile(dataclasses.replace(settings, reload_command=str(failing)), ListSource.of("web1"))
    reconcile(settings, ListSource.of("web1"))
    assert sum("-s reload" in c for c in nginx_calls(tmp_path)) == 1  # the retry, though nothing changed
    reconcile(settings, ListSource.of("web1"))
    assert sum("-s reload" in c for c in nginx_calls(tmp_path)) == 1


def test_lock_times_out_with_clear_error(tmp_path):
    settings = pipeline_settings(tmp_path, lock_timeout=0.05)
    with locked(settings.lock_file, 1):
        with pytest.raises(LockError, match="another lbsync run holds"):
            reconcile(settings, ListSource.of("web1"))


def test_unchanged_path_does_not_import_jinja2(tmp_path):
    settings = pipeline_settings(tmp_path)
    reconcile(settings, ListSource.of("web1"))
    tests = str(Path(__file__).resolve().parents[1])  # the kit, as pytest's pythonpath has it
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from kit.fake_nginx import pipeline_settings\n"
        "from kit.source import ListSource\n"
        "from lbsync.sync import reconcile\n"
        f"r = reconcile(pipeline_settings(Path({str(tmp_path)!r})), ListSource.of('web1'))\n"
        "print(r.outcome.value, 'jinja2' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYTHONPATH": tests})
    assert out.stdout.split() == ["unchanged", "False"], out.stderr
