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
    ("rol = 'web'\n", r"rol \(from config file .*\): unknown key; did you mean 'role'\?"),
    ("[agent]\nprot = 1\n", r"agent.prot \(from config file .*\): unknown key; did you mean 'port'\?"),
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


def test_env_lists_are_comma_separated(tmp_path):
    settings = load(write(tmp_path, ""), env={"LBSYNC_ALLOWED_NETWORKS": "10.0.0.0/8, 192.168.56.0/24"})
    assert settings.allowed_networks == ("10.0.0.0/8", "192.168.56.0/24")
