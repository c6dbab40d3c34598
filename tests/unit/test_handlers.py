"""handlers/ and `lbsync install`, without processes: the shipped files say what the design needs,
and installing them is idempotent, reports what it changed, and refuses unsafe input.

Serf accepting the drop-ins, nginx -t and systemd-analyze run in tests/integration/test_provision.py.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lbsync import hostfiles, install, keys
from lbsync.cli import MEMBER_EVENTS
from lbsync.config import AgentSettings
from lbsync.errors import ConfigError
from lbsync.layers import load

ROOT = Path(__file__).resolve().parents[2]
HANDLERS = ROOT / "handlers"
SERF_FILES = sorted((HANDLERS / "serf").glob("*.json"))

# Every key Serf 0.8.2's agent config accepts (cmd/serf/command/agent/config.go, mapstructure
# tags; it decodes with ErrorUnused, so anything else stops the agent).
SERF_082_KEYS = {
    "node_name", "role", "disable_coordinates", "tags", "tags_file", "bind", "advertise",
    "encrypt_key", "keyring_file", "log_level", "rpc_addr", "rpc_auth", "protocol",
    "replay_on_join", "query_response_size_limit", "query_size_limit", "start_join",
    "event_handlers", "profile", "snapshot_path", "leave_on_terminate", "skip_leave_on_interrupt",
    "discover", "interface", "reconnect_interval", "reconnect_timeout", "tombstone_timeout",
    "disable_name_resolution", "enable_syslog", "syslog_facility", "retry_join",
    "retry_max_attempts", "retry_interval", "rejoin_after_leave", "enable_compression",
    "statsite_addr", "statsd_addr", "broadcast_timeout",
}
SERF_EVENTS = {"member-join", "member-leave", "member-failed", "member-update", "member-reap",
               "user", "query"}


def serf_json(name: str) -> dict:
    return json.loads((HANDLERS / "serf" / name).read_text())


def unit(path: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((HANDLERS / "systemd" / path).read_text())
    return parser


# --- the shipped files -------------------------------------------------------------------------

@pytest.mark.parametrize("path", SERF_FILES, ids=lambda p: p.name)
def test_serf_drop_ins_use_only_keys_serf_0_8_2_knows(path):
    assert set(json.loads(path.read_text())) <= SERF_082_KEYS


@pytest.mark.parametrize("path", SERF_FILES, ids=lambda p: p.name)
def test_shipped_drop_ins_hold_no_host_or_secret_values(path):
    """Addresses, names and keys are generated per host by `lbsync install`, never shipped."""
    keys = set(json.loads(path.read_text()))
    assert not keys & {"bind", "advertise", "node_name", "encrypt_key", "rpc_auth", "interface"}


def test_lb_hook_runs_lbsync_handle_for_exactly_the_member_events():
    (entry,) = serf_json("lbsync-hook.json")["event_handlers"]
    events, command = entry.split("=", 1)
    assert set(events.split(",")) == set(MEMBER_EVENTS) <= SERF_EVENTS
    assert command == "/usr/local/bin/lbsync handle"  # serf's PATH is not a login shell's


@pytest.mark.parametrize("name, role", [("lbsync-lb.json", "lb"), ("lbsync-web.json", "web")])
def test_each_role_leaves_gracefully_and_remembers_the_cluster(name, role):
    config = serf_json(name)
    assert config["tags"] == {"role": role}
    assert config["rpc_addr"] == "127.0.0.1:7373"  # RPC never listens on the network
    assert config["leave_on_terminate"] is True  # SIGTERM -> *left*, not *failed*
    assert config["rejoin_after_leave"] is True and config["snapshot_path"].startswith("/var/lib/serf/")
    assert config["enable_syslog"] is False  # under systemd serf's stdout is the journal: once per line


def test_serf_unit_drop_in_leaves_on_stop_and_does_not_undo_a_leave():
    service = unit("serf.service.d/lbsync.conf")["Service"]
    assert service["KillSignal"] == "SIGINT" and service["Restart"] == "on-failure"
    snapshot_dirs = {os.path.dirname(serf_json(name)["snapshot_path"])
                     for name in ("lbsync-lb.json", "lbsync-web.json")}
    state_dirs = {"/var/lib/" + name for name in service["StateDirectory"].split()}
    assert snapshot_dirs <= state_dirs and "/var/lib/lbsync" in state_dirs  # the hook's state too


def test_lbsync_run_unit_follows_serf_and_nginx():
    parsed = unit("lbsync-run.service")
    for key in ("After", "Wants"):
        assert {"serf.service", "nginx.service"} <= set(parsed["Unit"][key].split())
    assert parsed["Service"]["ExecStart"] == "/usr/local/bin/lbsync run"
    assert parsed["Service"]["Restart"] == "on-failure"
    assert parsed["Install"]["WantedBy"] == "multi-user.target"


def test_agent_unit_lets_the_drain_finish():
    parsed = unit("lbsync-agent.service")
    service = parsed["Service"]
    assert service["ExecStart"] == "/usr/local/bin/lbsync agent"
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    assert float(service["TimeoutStopSec"]) >= AgentSettings().drain_timeout + 15
    assert "serf.service" in parsed["Unit"]["Requires"].split()
    assert "127.0.0.1/7373" in service["ExecStartPre"]  # attach to serf.service, never start a second serf


# Directives the units may use (the static stand-in for `systemd-analyze verify`).
SYSTEMD_KEYS = {
    "Unit": {"Description", "Wants", "After", "Requires"},
    "Service": {"Type", "ExecStartPre", "ExecStart", "ExecReload", "Restart", "RestartSec",
                "KillSignal", "KillMode", "TimeoutStopSec", "StateDirectory", "StateDirectoryMode",
                "SyslogIdentifier", "EnvironmentFile",
                "RuntimeDirectory", "RuntimeDirectoryMode", "RuntimeDirectoryPreserve",
                "ReadWritePaths", "SupplementaryGroups", "CapabilityBoundingSet", "AmbientCapabilities",
                "NoNewPrivileges", "PrivateTmp", "ProtectHome", "ProtectSystem", "PrivateDevices",
                "PrivateMounts", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                "ProtectControlGroups", "ProtectClock", "ProtectHostname", "ProtectProc", "ProcSubset",
                "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "RestrictAddressFamilies",
                "LockPersonality", "MemoryDenyWriteExecute", "SystemCallArchitectures", "SystemCallFilter",
                "SystemCallErrorNumber", "DevicePolicy", "KeyringMode", "UMask", "RemoveIPC"},
    "Install": {"WantedBy"},
}


@pytest.mark.parametrize("name", ["lbsync-run.service", "lbsync-agent.service", "lbsync-autoscale.service"])
def test_units_are_sandboxed(name):
    """systemd's own rating of the shipped units: at most 3.5 ("OK"); 9.0 was "UNSAFE"."""
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(HANDLERS / "systemd" / name)],
                          capture_output=True, text=True, timeout=60)
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert level, done.stdout + done.stderr
    assert float(level.group(1)) <= 3.5, done.stdout
    assert unit(name)["Service"]["Type"] == "notify"


@pytest.mark.parametrize("path", ["lbsync-run.service", "lbsync-agent.service", "lbsync-autoscale.service",
                                  "serf.service.d/lbsync.conf"])
def test_units_use_known_sections_and_directives(path):
    parsed = unit(path)
    for section in parsed.sections():
        assert set(parsed[section]) <= SYSTEMD_KEYS[section], (path, section)


# --- lbsync install ----------------------------------------------------------------------------

def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    install.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def secrets(tmp_path):
    """A secrets directory made the LB's way (real `serf keygen`)."""
    directory = tmp_path / "secrets"
    keys.secrets_for(directory, create=True)
    return directory


def lb_args(root, secrets, *extra):
    return args("--role", "lb", "--node-name", "lb", "--ip", "192.168.56.10", "--network",
                "192.168.56.0/24", "--secrets", str(secrets), "--root", str(root), *extra)


def web_args(root, secrets, *extra):
    return args("--role", "web", "--node-name", "web1", "--ip", "192.168.56.11", "--join",
                "192.168.56.10", "--secrets", str(secrets), "--root", str(root), *extra)


def run(namespace) -> list[tuple[str, str]]:
    return hostfiles.apply(install.plan(namespace), Path(namespace.root), namespace.dry_run)


def debian_nginx(root: Path) -> None:
    (root / "etc/nginx/sites-available").mkdir(parents=True)
    (root / "etc/nginx/sites-enabled").mkdir()
    (root / "etc/nginx/sites-available/default").write_text("server { listen 80 default_server; }\n")
    (root / "etc/nginx/sites-enabled/default").symlink_to("/etc/nginx/sites-available/default")


def test_lb_install_creates_then_changes_nothing(tmp_path, secrets):
    root = tmp_path / "root"
    debian_nginx(root)
    first = run(lb_args(root, secrets))
    assert ("removed", "/etc/nginx/sites-enabled/default") in first
    assert {path for action, path in first if action == "created"} >= {
        "/etc/serf/lbsync-lb.json", "/etc/serf/lbsync-hook.json", "/etc/serf/lbsync-node.json",
        "/etc/serf/lbsync-secrets.json", "/etc/lbsync/lbsync.toml", "/etc/nginx/conf.d/lbs_site.conf",
        "/etc/nginx/conf.d/lbs_upstream.conf", "/etc/systemd/system/serf.service.d/lbsync.conf"}
    assert (root / "etc/nginx/sites-available/default").exists()  # disabled, not deleted
    assert run(lb_args(root, secrets)) == []


def test_an_lb_is_safe_out_of_the_box(tmp_path, secrets):
    """Health checks on, a bounded read timeout, and the control socket's directory made at boot."""
    root = tmp_path / "root"
    run(lb_args(root, secrets))
    settings = load(root / "etc/lbsync/lbsync.toml", env={})
    assert settings.daemon.health_path == "/" and settings.daemon.health_interval * settings.daemon.health_fall <= 1.5
    assert "proxy_read_timeout 10s;" in (root / "etc/nginx/conf.d/lbs_site.conf").read_text()
    assert "d /run/lbsync 0700 root root -" in (root / "etc/tmpfiles.d/lbsync.conf").read_text()
    assert settings.control_socket.startswith("/run/lbsync/") and settings.lock_file.startswith("/run/lbsync/")


def test_install_repairs_edits_but_never_touches_the_live_upstream(tmp_path, secrets):
    root = tmp_path / "root"
    run(lb_args(root, secrets))
    (root / "etc/serf/lbsync-lb.json").write_text("{}")
    os.chmod(root / "etc/lbsync/lbsync.toml", 0o644)
    upstream = root / "etc/nginx/conf.d/lbs_upstream.conf"
    upstream.write_text("# what lbsync sync rendered\n")
    assert sorted(run(lb_args(root, secrets))) == [
        ("updated", "/etc/lbsync/lbsync.toml"), ("updated", "/etc/serf/lbsync-lb.json")]
    assert upstream.read_text() == "# what lbsync sync rendered\n"


def test_daemon_mode_removes_the_hook(tmp_path, secrets):
    root = tmp_path / "root"
    run(lb_args(root, secrets))
    assert run(lb_args(root, secrets, "--mode", "run")) == [("removed", "/etc/serf/lbsync-hook.json")]


def test_generated_files_bind_the_private_ip_and_keep_secrets_private(tmp_path, secrets):
    root = tmp_path / "root"
    run(lb_args(root, secrets))
    node = json.loads((root / "etc/serf/lbsync-node.json").read_text())
    assert node == {"node_name": "lb", "bind": "192.168.56.10:7946", "advertise": "192.168.56.10:7946"}
    keys = json.loads((root / "etc/serf/lbsync-secrets.json").read_text())
    assert keys == {"encrypt_key": (secrets / "serf.key").read_text().strip(),
                    "rpc_auth": (secrets / "rpc.token").read_text().strip()}
    for private in ("etc/serf/lbsync-secrets.json", "etc/lbsync/lbsync.toml"):
        assert stat.S_IMODE((root / private).stat().st_mode) == 0o600
    settings = load(root / "etc/lbsync/lbsync.toml", env={})
    assert settings.allowed_networks == ("192.168.56.0/24",)
    assert settings.rpc_auth == keys["rpc_auth"] and settings.lb_listen == ("192.168.56.10:80",)
    assert "listen 80;" in (root / "etc/nginx/conf.d/lbs_site.conf").read_text()


def test_web_install_joins_the_lb_with_the_lb_secrets(tmp_path, secrets):
    root = tmp_path / "web"
    changes = run(web_args(root, secrets, "--port", "8080", "--weight", "3"))
    assert ("created", "/etc/systemd/system/lbsync-agent.service") in changes
    node = json.loads((root / "etc/serf/lbsync-node.json").read_text())
    assert node["retry_join"] == ["192.168.56.10:7946"] and node["bind"] == "192.168.56.11:7946"
    assert node["tags"] == {"port": "8080", "weight": "3"}
    agent = load(root / "etc/lbsync/lbsync.toml", env={}).agent
    assert (agent.port, agent.weight, agent.join) == (8080, 3, ("192.168.56.10:7946",))
    assert agent.encrypt_key == (secrets / "serf.key").read_text().strip()
    assert run(web_args(root, secrets, "--port", "8080", "--weight", "3")) == []


def test_web_node_never_makes_its_own_secrets(tmp_path):
    with pytest.raises(ConfigError, match="copy the secrets directory from the LB"):
        install.plan(web_args(tmp_path / "web", tmp_path / "empty"))
    assert not (tmp_path / "empty").exists()


def test_lb_makes_secrets_once(tmp_path):
    first = keys.secrets_for(tmp_path / "s", create=True)  # `serf keygen` gives a new key each call
    assert keys.secrets_for(tmp_path / "s", create=True) == first
    assert stat.S_IMODE((tmp_path / "s" / "serf.key").stat().st_mode) == 0o600


@pytest.mark.parametrize("extra, message", [
    (("--ip", "eth1"), "not a name"),
    (("--ip", "0.0.0.0"), "never the wildcard"),
    (("--listen", "80 default_server"), "--listen"),
    (("--node-name", "lb;x"), "--node-name"),
])
def test_unsafe_lb_input_is_refused(tmp_path, secrets, extra, message):
    with pytest.raises(ConfigError, match=message):
        install.plan(lb_args(tmp_path, secrets, *extra))


def test_lb_needs_its_allowed_network(tmp_path, secrets):
    namespace = lb_args(tmp_path, secrets)
    namespace.network = []
    with pytest.raises(ConfigError, match="--network is required"):
        install.plan(namespace)


def test_drain_timeout_must_fit_the_unit_stop_timeout(tmp_path, secrets):
    with pytest.raises(ConfigError, match="TimeoutStopSec"):
        install.plan(web_args(tmp_path, secrets, "--drain-timeout", "120"))


def test_dry_run_writes_nothing(tmp_path, secrets):
    root = tmp_path / "root"
    assert len(run(lb_args(root, secrets, "--dry-run"))) > 5
    assert not root.exists()


def test_a_dry_run_under_a_root_makes_no_secrets_anywhere(tmp_path):
    """The default secrets directory is the root's, and a dry run creates it nowhere."""
    root = tmp_path / "root"
    argv = ("--role", "lb", "--node-name", "lb", "--ip", "192.168.56.10", "--network", "192.168.56.0/24",
            "--root", str(root))
    before = os.path.exists("/etc/lbsync/secrets")
    assert ("created", "/etc/serf/lbsync-secrets.json") in run(args(*argv, "--dry-run"))
    assert not root.exists() and os.path.exists("/etc/lbsync/secrets") == before
    run(args(*argv))
    assert (root / "etc/lbsync/secrets/rpc.token").exists()  # the real run makes them under the root


def test_standalone_entry_reports_one_line_and_a_sysexits_code(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lbsync.install", "--role", "web", "--ip", "192.168.56.11",
         "--join", "192.168.56.10", "--secrets", str(tmp_path / "none"), "--root", str(tmp_path)],
        check=False, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == os.EX_CONFIG
    assert done.stderr.count("\n") == 1 and "copy the secrets directory" in done.stderr
