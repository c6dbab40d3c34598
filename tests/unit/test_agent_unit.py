"""The web-node agent's pure parts: config checks, serf's command line, load answers, quiet wait."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbsync.agent import load_value, validate
from lbsync.config import AgentSettings
from lbsync.drain import wait_quiet
from lbsync.errors import ConfigError
from lbsync.serfagent import serf_argv, write_secrets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOOD = AgentSettings(join=("127.0.0.1:7946",), node_name="web1", bind="127.0.1.1:7946",
                     rpc_addr="127.0.1.1:7373", port=8000, weight=2)


def agent(**changes) -> AgentSettings:
    return dataclasses.replace(GOOD, **changes)


@pytest.mark.parametrize("changes, message", [
    ({"join": ()}, "agent.join is empty"),
    ({"join": ("127.0.0.1:99999",)}, "agent.join: '127.0.0.1:99999'"),
    ({"port": 0}, "agent.port: 0 is not an integer in 1..65535"),
    ({"port": 70000}, "agent.port: 70000 is not an integer in 1..65535"),
    ({"weight": 0}, "agent.weight: 0 is not an integer in 1..256"),
    ({"weight": 1000}, "agent.weight: 1000 is not an integer in 1..256"),
    ({"node_name": "web 1;"}, "agent.node_name"),
    ({"bind": "127.0.1.1"}, "agent.bind"),
    ({"rpc_addr": "nowhere"}, "agent.rpc_addr"),
    ({"drain_quiet": 5.0, "drain_timeout": 1.0}, "agent.drain_quiet"),
    ({"encrypt_key": "not-base64!"}, "agent.encrypt_key"),
    ({"serf_config": "/nonexistent/serf.json"}, "agent.serf_config"),
])
def test_bad_config_is_refused_with_the_setting_named(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate(agent(**changes))


def test_good_config_passes_bare_join_host_included():
    validate(GOOD)
    validate(agent(join=("10.0.0.5", "[::1]:7946"), encrypt_key="cg8StVXbQJ0gPvMd9o7yrg=="))


def test_serf_command_line_carries_tags_joins_and_config_but_no_secret(tmp_path):
    key = "cg8StVXbQJ0gPvMd9o7yrg=="
    settings = agent(join=("127.0.0.1:7946", "127.0.0.2:7946"), encrypt_key=key, rpc_auth="t",
                     serf_config="/etc/serf/extra.json")
    secrets = write_secrets(settings, str(tmp_path))
    argv = serf_argv(settings, secrets)
    assert argv[:3] == ["serf", "agent", "-node"] and argv[3] == "web1"
    pairs = list(itertools.pairwise(argv))
    for pair in [("-bind", "127.0.1.1:7946"), ("-rpc-addr", "127.0.1.1:7373"), ("-tag", "role=web"),
                 ("-tag", "port=8000"), ("-tag", "weight=2"), ("-retry-join", "127.0.0.1:7946"),
                 ("-retry-join", "127.0.0.2:7946"), ("-config-file", "/etc/serf/extra.json"),
                 ("-config-file", secrets)]:
        assert pair in pairs
    assert key not in argv and "t" not in argv
    assert json.loads(Path(secrets).read_text()) == {"encrypt_key": key, "rpc_auth": "t"}
    assert Path(secrets).stat().st_mode & 0o077 == 0
    assert write_secrets(GOOD, str(tmp_path)) == "" and "-advertise" not in serf_argv(GOOD)


def test_load_answer_is_a_decimal_and_the_load_file_wins(tmp_path):
    assert float(load_value(GOOD)) >= 0
    load = tmp_path / "load"
    assert float(load_value(agent(load_file=str(load)))) >= 0  # set but absent: the real load
    load.write_text("1.25\n")
    assert load_value(agent(load_file=str(load))) == "1.25"
    load.write_text("lots")
    with pytest.raises(ValueError, match="not a decimal"):
        load_value(agent(load_file=str(load)))


def test_wait_quiet_restarts_the_window_on_activity_and_honours_abort():
    ticks = iter([1, 2, 3])  # three new requests, then nothing

    def probe():
        return next(ticks, "idle")
    assert wait_quiet(probe, quiet=0.05, timeout=5, pause=lambda s: None, abort=lambda: False)
    assert not wait_quiet(lambda: object(), quiet=0.05, timeout=0.1, pause=lambda s: None,
                          abort=lambda: False)  # a new request every poll: the bound wins
    assert not wait_quiet(lambda: 1, quiet=10, timeout=20, pause=lambda s: None, abort=lambda: True)


@pytest.mark.parametrize("args, message", [
    ([], "agent.join is empty"),
    (["--join", "127.0.0.1:7946", "--port", "0"],
     "agent.port (from flag --port): '0' is not an integer in 1..65535"),
    (["--join", "127.0.0.1:7946", "--weight", "heavy"],
     "agent.weight (from flag --weight): 'heavy' is not an integer"),
])
def test_cli_refuses_bad_config_with_one_line_and_ex_config(args, message):
    env = {**os.environ, "PYTHONPATH": ROOT, "LBSYNC_CONFIG": os.devnull, "LBSYNC_SYSLOG": "false"}
    result = subprocess.run([sys.executable, "-m", "lbsync", "agent", *args], capture_output=True,
                            text=True, env=env, timeout=30, check=False)
    assert result.returncode == os.EX_CONFIG == 78
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
