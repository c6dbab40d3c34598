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
    assert done.stderr.count("\n") == 1 and "algoritm (from config file" in done.stderr
    assert "unknown key; did you mean 'algorithm'?" in done.stderr


def test_bad_set_flag(tmp_path):
    (tmp_path / "empty.toml").write_text("")
    done = lbsync("--set", "keepalive", "sync", env={"LBSYNC_CONFIG": str(tmp_path / "empty.toml")})
    assert done.returncode == os.EX_CONFIG and "expected KEY=VALUE" in done.stderr


def test_unreachable_agent_for_sync(tmp_path):
    (tmp_path / "c.toml").write_text('rpc_addr = "127.0.0.1:1"\nsyslog = false\n')
    done = lbsync("--config", str(tmp_path / "c.toml"), "sync")
    assert done.returncode == os.EX_UNAVAILABLE and "Traceback" not in done.stderr
