"""The systemd unit that ships for `lbsync autoscale`: Type=notify (READY=1 after the first decision,
STOPPING=1 on the way out), restarted after a crash, sandboxed like the other lbsync units."""

from __future__ import annotations

import configparser
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

from kit.fake_serf import FakeSerf
from kit.records import record

from lbsync.autoscale import Sample
from lbsync.config import AutoscaleSettings, Settings
from lbsync.scaler import Scaler

SYSTEMD = Path(__file__).resolve().parents[2] / "lbsync" / "handlers" / "systemd"
UNIT = SYSTEMD / "lbsync-autoscale.service"


def parsed(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read_string(path.read_text())
    return parser


def test_unit_runs_the_autoscaler_as_a_notify_service_restarted_after_a_crash():
    service = parsed(UNIT)["Service"]
    assert service["Type"] == "notify" and service["ExecStart"] == "/usr/local/bin/lbsync autoscale"
    assert service["Restart"] == "on-failure" and service["StateDirectory"] == "lbsync"
    assert service["EnvironmentFile"].startswith("-/etc/lbsync/")  # secrets: never argv, never lbsync.toml


def test_unit_is_sandboxed_like_the_other_lbsync_units():
    ours = parsed(UNIT)["Service"]
    sandbox = {key for key in parsed(SYSTEMD / "lbsync-agent.service")["Service"] if key.startswith(
        ("Protect", "Private", "Restrict", "NoNew", "Capability", "SystemCall", "Lock", "Memory", "Keyring"))}
    assert sandbox <= set(ours), sandbox - set(ours)
    assert ours["CapabilityBoundingSet"] == "" and "ReadWritePaths" not in ours


def test_systemd_rates_the_unit_ok():  # `make test` installs systemd-analyze (tools/system-deps.sh)
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)],
                          capture_output=True, text=True, timeout=60)
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert level and float(level.group(1)) <= 3.5, done.stdout + done.stderr


def test_the_autoscaler_says_ready_after_its_first_decision_and_stopping_at_the_end(tmp_path, monkeypatch):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    serf = FakeSerf([record("web1", "10.0.0.1")])

    class Fixed(Scaler):
        def sample(self):
            return Sample(time.time(), {"web1": 0.5})

    class NoList:
        kind, drains_by_query = "command", False

        def instances(self):
            return None

    settings = Settings(rpc_addr=serf.addr, state_dir=str(tmp_path / "state"),
                        autoscale=AutoscaleSettings(interval=0.05, scale_out_command="true", scale_in_command="true"))
    stop = threading.Event()
    runner = threading.Thread(target=Fixed(settings, NoList()).run, args=(stop,), daemon=True)  # type: ignore[arg-type]
    runner.start()
    try:
        messages = [sock.recv(4096).decode() for _ in range(3)]
        assert any(m == "READY=1" for m in messages), messages
        assert any(m.startswith("STATUS=hold: ") for m in messages), messages
    finally:
        stop.set()
        runner.join(10)
        serf.close()
    rest = []
    sock.settimeout(0.5)
    try:
        while True:
            rest.append(sock.recv(4096).decode())
    except TimeoutError:
        pass
    assert "STOPPING=1" in rest
