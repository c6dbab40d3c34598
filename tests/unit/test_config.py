"""Settings layers and their errors: defaults <- file <- LBSYNC_* <- flags; unknown keys refused."""

import pytest

from lbsync.errors import ConfigError
from lbsync.layers import load


def write(tmp_path, text):
    path = tmp_path / "lbsync.toml"
    path.write_text(text)
    return path


def test_layers_in_order(tmp_path):
    path = write(tmp_path, 'role = "app"\nkeepalive = 8\n[agent]\nport = 8080\n')
    settings = load(path, env={"LBSYNC_KEEPALIVE": "16", "LBSYNC_AGENT_WEIGHT": "3"},
                    overrides={"agent.port": "9090"})
    assert (settings.role, settings.keepalive) == ("app", 16)
    assert (settings.agent.port, settings.agent.weight) == (9090, 3)


def test_missing_default_file_is_fine_but_explicit_one_is_not(tmp_path):
    assert load(env={"LBSYNC_CONFIG": ""}).role == "web"
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml", env={})


@pytest.mark.parametrize("text, message", [
    ("rol = 'web'\n", r"rol \(from .*lbsync.toml:1\): unknown key; did you mean 'role'\?"),
    ("[agent]\nprot = 1\n", r"agent.prot \(from .*lbsync.toml:2\): unknown key; did you mean 'port'\?"),
    ("keepalive = 'lots'\n", "keepalive .*: 'lots' is not an integer"),
    ("algorithm = 'random'\n", "algorithm .*: 'random' is not one of round_robin"),
    ("allowed_networks = ['10.0.0.0/33']\n", "not a network"),
    ("upstream_name = 'a b'\n", "upstream_name"),
    ("hash_key = '$x; }'\n", "hash_key"),
    ("syslog = 'maybe'\n", "true or false"),
    ("role = [\n", "config file"),
])
def test_bad_values_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as info:
        load(write(tmp_path, text), env={})
    assert "\n" not in str(info.value)


def test_a_file_that_is_not_utf8_is_a_config_error_naming_it(tmp_path):
    """It was a traceback: tomllib raises UnicodeDecodeError, not TOMLDecodeError, for such bytes."""
    path = tmp_path / "lbsync.toml"
    path.write_bytes(b'role = "w\xffb"\n')
    with pytest.raises(ConfigError, match=r"config file .*lbsync.toml: 'utf-8' codec can't decode"):
        load(path, env={})


def test_env_lists_are_comma_separated(tmp_path):
    settings = load(write(tmp_path, ""), env={"LBSYNC_ALLOWED_NETWORKS": "10.0.0.0/8, 192.168.56.0/24"})
    assert settings.allowed_networks == ("10.0.0.0/8", "192.168.56.0/24")


def test_drop_ins_override_the_installed_file_in_name_order(tmp_path):
    main = write(tmp_path, 'algorithm = "hash"\nkeepalive = 2\n')
    (tmp_path / "lbsync.d").mkdir()
    (tmp_path / "lbsync.d" / "20-late.toml").write_text('algorithm = "ip_hash"\n')
    (tmp_path / "lbsync.d" / "10-early.toml").write_text('algorithm = "least_conn"\nkeepalive = "x"\n')
    with pytest.raises(ConfigError, match=r"keepalive \(from .*10-early.toml:2\)"):
        load(main, env={})
    (tmp_path / "lbsync.d" / "10-early.toml").write_text('algorithm = "least_conn"\n')
    settings = load(main, env={})
    assert (settings.algorithm, settings.keepalive) == ("ip_hash", 2)


def test_config_command_shows_values_sources_and_hides_secrets(tmp_path):
    import subprocess
    import sys

    path = write(tmp_path, 'rpc_auth = "s3cret"\n[daemon]\nhealth_path = "/"\n')
    done = subprocess.run([sys.executable, "-m", "lbsync", "-c", str(path), "config", "--set", "keepalive=8"],
                          capture_output=True, text=True, timeout=30, env={"LBSYNC_ROLE": "api", "PATH": "/usr/bin"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f'daemon.health_path = "/"  # {path}:3' in lines
    assert "keepalive = 8  # flag --set keepalive" in lines
    assert 'role = "api"  # environment variable LBSYNC_ROLE' in lines
    assert "rpc_auth = (set, hidden)  # " + f"{path}:1" in lines and "s3cret" not in done.stdout
    assert 'upstream_name = "lbs_backend"  # default' in lines


def test_agent_services_from_file_environment_and_flags(tmp_path):
    path = write(tmp_path, '[agent]\nservices = ["web:8000", "api:9000:2"]\n')
    assert load(path, env={}).agent.services == ("web:8000", "api:9000:2")
    settings = load(path, env={"LBSYNC_AGENT_SERVICES": "web:8000, api:9000"})
    assert settings.agent.services == ("web:8000", "api:9000")
    settings = load(path, env={}, overrides={"agent.services": ["admin:8443"]})
    assert settings.agent.services == ("admin:8443",)


@pytest.mark.parametrize("text, env, overrides, message", [
    ('[agent]\nservices = ["web:8000", "api:99999"]\n', {}, {},
     r"agent.services \(from .*lbsync.toml:2\): 'api:99999': port '99999' is not an integer in 1..65535"),
    ("", {"LBSYNC_AGENT_SERVICES": "web:8000,web:8001"}, {},
     r"agent.services \(from environment variable LBSYNC_AGENT_SERVICES\): role 'web' is given twice"),
    ('[agent]\nservices = ["web:8000"]\n', {}, {"agent.port": "9090"},
     r"agent.port \(from flag --set agent.port\): 9090 disagrees with the first service; use --service only"),
    ('[agent]\nrole = "app"\n', {}, {"agent.services": ["web:8000"]},
     r"agent.role \(from .*lbsync.toml:2\): 'app' disagrees with the first service; use --service only"),
], ids=["file", "environment", "port-beside-services", "role-beside-services"])
def test_bad_agent_services_name_the_setting_and_its_source(tmp_path, text, env, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, text), env=env, overrides=overrides)
