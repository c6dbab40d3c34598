"""The CLI's promises: --help explains, errors are one line with a sysexits code."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def lbsync(*args, env=None):
    return subprocess.run([sys.executable, "-m", "lbsync", *args], capture_output=True, text=True,
                          timeout=30, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_help_lists_every_command():
    out = lbsync("--help").stdout
    for command in ("handle", "sync", "render", "status", "run", "agent", "autoscale"):
        assert command in out


def test_usage_error_is_ex_usage():
    assert lbsync("frobnicate").returncode == os.EX_USAGE


def test_bad_config_is_one_line_ex_config(tmp_path):
    (tmp_path / "bad.toml").write_text("algoritm = 'least_conn'\n")
    done = lbsync("--config", str(tmp_path / "bad.toml"), "sync")
    assert done.returncode == os.EX_CONFIG
    assert done.stderr.count("\n") == 1 and f"algoritm (from {tmp_path / 'bad.toml'}:1)" in done.stderr
    assert "unknown key; did you mean 'algorithm'?" in done.stderr


def test_bad_set_flag(tmp_path):
    (tmp_path / "empty.toml").write_text("")
    done = lbsync("--set", "keepalive", "sync", env={"LBSYNC_CONFIG": str(tmp_path / "empty.toml")})
    assert done.returncode == os.EX_CONFIG and "expected KEY=VALUE" in done.stderr


def test_unreachable_agent_for_sync(tmp_path):
    (tmp_path / "c.toml").write_text(f'rpc_addr = "127.0.0.1:1"\nsyslog = false\nstate_dir = "{tmp_path}"\n'
                                     f'lock_file = "{tmp_path}/lbsync.lock"\n')  # not the host's
    done = lbsync("--config", str(tmp_path / "c.toml"), "sync")
    assert done.returncode == os.EX_UNAVAILABLE and "Traceback" not in done.stderr


def test_not_allowed_is_exit_77_with_one_line_not_a_traceback(tmp_path):
    """An immutable directory refuses even root (EPERM), as /run refuses a non-root user."""
    locked_out = tmp_path / "immutable"
    locked_out.mkdir()
    subprocess.run(["chattr", "+i", str(locked_out)], check=True)
    try:
        install = lbsync("install", "--role", "lb", "--ip", "10.0.0.1", "--network", "10.0.0.0/24",
                         "--root", str(locked_out))
        sync = lbsync("--set", f"lock_file={locked_out}/run/lbsync.lock", "--set", f"state_dir={tmp_path}",
                      "--set", "rpc_addr=127.0.0.1:1", "--set", "syslog=false", "sync",
                      env={"LBSYNC_CONFIG": os.devnull})
    finally:
        subprocess.run(["chattr", "-i", str(locked_out)], check=True)
    for done in (install, sync):
        assert done.returncode == os.EX_NOPERM == 77, done.stderr
        assert "permission denied" in done.stderr and "Traceback" not in done.stderr
        assert done.stderr.count("\n") == 1


def test_syslog_is_skipped_only_when_stderr_really_is_the_journal(tmp_path):
    """A hook inherits serf.service's JOURNAL_STREAM but writes to serf's pipe: it must keep syslog."""
    from lbsync.sdnotify import stderr_is_journal

    info = os.fstat(2)
    os.environ["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
    try:
        assert stderr_is_journal()
        os.environ["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino + 1}"
        assert not stderr_is_journal()
    finally:
        del os.environ["JOURNAL_STREAM"]
    assert not stderr_is_journal()
