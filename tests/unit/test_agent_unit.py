"""The web-node agent's pure parts: config checks, serf's command line, load answers, quiet wait."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lbsync import rules
from lbsync.agent import announce, load_value, validate
from lbsync.cli import _overrides, build_parser
from lbsync.config import AgentSettings, SettingError
from lbsync.drain import wait_quiet
from lbsync.errors import ConfigError
from lbsync.serfagent import describe, serf_argv, tags, write_secrets

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


@pytest.mark.parametrize("services, message", [
    (("web",), "agent.services: 'web' is not ROLE:PORT or ROLE:PORT:WEIGHT"),
    (("web:80:1:2",), "agent.services: 'web:80:1:2' is not ROLE:PORT or ROLE:PORT:WEIGHT"),
    (("web:0",), "agent.services: 'web:0': port '0' is not an integer in 1..65535"),
    (("web:http",), "agent.services: 'web:http': port 'http' is not an integer in 1..65535"),
    (("web:80:0",), "agent.services: 'web:80:0': weight '0' is not an integer in 1..256"),
    (("web:80:",), "agent.services: 'web:80:': weight '' is not an integer in 1..256"),
    (("we b:80",), "agent.services: 'we b:80': role 'we b' is not 1-64 letters"),
    (("web:8000", "api:9000", "web:8001"), "agent.services: role 'web' is given twice"),
    (tuple(f"s{n}:{8000 + n}" for n in range(17)), "agent.services: 17 services; at most 16 fit"),
])
def test_bad_services_are_refused_naming_agent_services(services, message):
    with pytest.raises(SettingError, match=re.escape(message)) as info:
        AgentSettings(join=("127.0.0.1",), services=services)
    assert info.value.key == "agent.services"


@pytest.mark.parametrize("changes, key", [
    ({"port": 8080}, "agent.port"),
    ({"role": "api"}, "agent.role"),
    ({"weight": 3}, "agent.weight"),  # the first service gives no weight: it is 1
])
def test_role_port_weight_beside_services_must_agree_with_the_first(changes, key):
    with pytest.raises(SettingError, match=f"^{re.escape(key)}: .* disagrees with the first service; "
                                           "use --service only") as info:
        AgentSettings(services=("web:8000", "api:9000:2"), **changes)
    assert info.value.key == key and "agent.services (('web:8000', 'api:9000:2'))" in str(info.value)
    AgentSettings(services=("app:8000:3", "api:9000"), role="app", port=8000, weight=3)  # agreeing is fine
    AgentSettings(services=("app:8000", "api:9000"))  # defaults left alone


def test_tags_follow_the_contract():
    assert tags(GOOD) == {"role": "web", "port": "8000", "weight": "2"}  # no services: as ever
    assert tags(AgentSettings(services=("web:8000", "api:9000:2"))) == {
        "role": "web", "port": "8000", "weight": "1",
        "port_web": "8000", "port_api": "9000", "weight_api": "2"}
    assert tags(AgentSettings(services=("api:9000:3", "web:8000", "admin:8443:1"))) == {
        "role": "api", "port": "9000", "weight": "3",
        "port_api": "9000", "weight_api": "3", "port_web": "8000", "port_admin": "8443", "weight_admin": "1"}
    argv = serf_argv(agent(port=80, weight=1, services=("web:8000", "api:9000:2")))
    assert [value for flag, value in itertools.pairwise(argv) if flag == "-tag"] == [
        "role=web", "port=8000", "weight=1", "port_web=8000", "port_api=9000", "weight_api=2"]
    assert describe(GOOD) == "web on port 8000"
    assert describe(AgentSettings(services=("web:8000", "api:9000:2"))) == "web on port 8000, api on port 9000"


def test_tags_size_is_serfs_encoding_and_too_many_bytes_are_refused():
    import msgpack

    for sample in ({}, {"role": "web"}, {f"k{n}": "v" * n for n in range(40)}, {"x" * 300: "y" * 70000}):
        assert rules.tags_size(sample) == 1 + len(msgpack.packb(sample, use_bin_type=False))  # magic byte
    many = agent(port=80, weight=1, services=tuple(f"service-number-{n:02}:{9000 + n}:1" for n in range(12)))
    with pytest.raises(ConfigError, match=r"agent\.services: the node's tags take \d+ bytes .*Serf's limit is 512"):
        validate(many)
    validate(agent(port=80, weight=1, services=tuple(f"s{n}:{9000 + n}:1" for n in range(16))))


def test_announce_to_an_attached_agent_replaces_service_tags_of_an_earlier_run():
    class Client:
        def __init__(self):
            self.calls = []

        def stats(self):
            return {"tags": {"role": "web", "port": "80", "port_old": "7000", "weight_old": "2",
                             "port_api": "9001", "drain": "1", "dc": "east"}}

        def tags(self, set, delete):
            self.calls.append((set, sorted(delete)))

        def join(self, addrs):
            return len(addrs)

    client = Client()
    settings = agent(port=80, weight=1, services=("web:8000", "api:9000"))
    announce(client, settings, attached=True)
    assert client.calls == [(tags(settings), ["drain", "port_old", "weight_old"])]


def test_service_flag_is_repeatable_and_maps_to_agent_services(capsys):
    argv = ["agent", "--service", "web:8000", "--join", "10.0.0.1", "--service", "api:9000:2"]
    values, flags = _overrides(build_parser(argv).parse_args(argv))
    assert values["agent.services"] == ["web:8000", "api:9000:2"]
    assert flags["agent.services"] == "flag --service"
    with pytest.raises(SystemExit):
        build_parser(["agent"]).parse_args(["agent", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--service ROLE:PORT[:WEIGHT]" in help_text and "port_ROLE" in help_text


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
    (["--join", "127.0.0.1:7946", "--service", "web:8000", "--service", "api:0"],
     "agent.services (from flag --service): 'api:0': port '0' is not an integer in 1..65535"),
    (["--join", "127.0.0.1:7946", "--port", "81", "--service", "web:8000"],
     "agent.port (from flag --port): 81 disagrees with the first service; use --service only"),
])
def test_cli_refuses_bad_config_with_one_line_and_ex_config(args, message):
    env = {**os.environ, "PYTHONPATH": ROOT, "LBSYNC_CONFIG": os.devnull, "LBSYNC_SYSLOG": "false"}
    result = subprocess.run([sys.executable, "-m", "lbsync", "agent", *args], capture_output=True,
                            text=True, env=env, timeout=30, check=False)
    assert result.returncode == os.EX_CONFIG == 78
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_drain_watches_every_service_port():
    from lbsync.config import AgentSettings
    from lbsync.drain import served_ports

    assert served_ports(AgentSettings(port=8080)) == [8080]
    assert served_ports(AgentSettings(services=("web:8000", "api:9000:2"))) == [8000, 9000]
