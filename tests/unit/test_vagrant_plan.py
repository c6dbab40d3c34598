"""The Vagrant lab's plan and Vagrantfile, without VMs.

The plan (names, addresses, provisioner arguments) lives in provision/plan.rb, which the
Vagrantfile loads; these tests print it with Ruby for N = 1, 2, 5 and check it, then run
`vagrant validate --ignore-provider` on a copy of the Vagrantfile. Vagrant (and with it Ruby)
comes from Debian's `vagrant` package: a missing one fails, like a missing serf or nginx.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from lbsync import keys

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "provision" / "plan.rb"
LAB_NETWORK = ipaddress.ip_network("192.168.56.0/24")
VIRTUALBOX_HOST_ONLY = ipaddress.ip_network("192.168.56.0/21")  # allowed without vbox config


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: tools/system-deps.sh installs Debian's vagrant")
    return path


def plan(web_nodes: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WEB_NODES", "LB_MODE")}
    if web_nodes is not None:
        env["WEB_NODES"] = web_nodes
    return subprocess.run([tool("ruby"), str(PLAN)], check=False, capture_output=True, text=True,
                          env=env, timeout=60)


def nodes(web_nodes: str | None) -> list[dict]:
    done = plan(web_nodes)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["nodes"]


def arg(node: dict, flag: str) -> str:
    return node["args"][node["args"].index(flag) + 1]


@pytest.mark.parametrize("count", [1, 2, 5])
def test_plan_is_one_lb_and_n_web_nodes_with_distinct_addresses_in_range(count):
    lab = nodes(str(count))
    assert [n["name"] for n in lab] == ["lb"] + [f"web{i}" for i in range(1, count + 1)]
    ips = [ipaddress.ip_address(n["ip"]) for n in lab]
    assert len(set(ips)) == len(ips)
    assert str(ips[0]) == "192.168.56.10"
    assert [str(ip) for ip in ips[1:]] == [f"192.168.56.{10 + i}" for i in range(1, count + 1)]
    for ip in ips:
        assert ip in LAB_NETWORK and ip in VIRTUALBOX_HOST_ONLY
        assert ip not in (LAB_NETWORK.network_address, LAB_NETWORK.broadcast_address)
        assert ip != LAB_NETWORK.network_address + 1  # VirtualBox's host-side adapter


@pytest.mark.parametrize("count", [1, 2, 5])
def test_provisioners_get_their_own_ip_and_the_lab_wiring(count):
    lab = nodes(str(count))
    lb, webs = lab[0], lab[1:]
    for node in lab:
        assert arg(node, "--ip") == node["ip"] and arg(node, "--name") == node["name"]
        assert arg(node, "--secrets") == "/vagrant/provision/.secrets"
        script = ROOT / node["script"]
        assert script.is_file() and script.stat().st_mode & stat.S_IXUSR
    assert [n["role"] for n in lab] == ["lb"] + ["web"] * count
    assert arg(lb, "--network") == str(LAB_NETWORK) and arg(lb, "--mode") == "hook"
    assert {arg(web, "--join") for web in webs} == {lb["ip"]}


def test_default_is_two_web_nodes():
    assert [n["name"] for n in nodes(None)] == ["lb", "web1", "web2"]


@pytest.mark.parametrize("bad", ["0", "51", "abc", "2.5", "-1", ""])
def test_a_bad_web_count_is_refused_with_its_reason(bad):
    done = plan(bad)
    assert done.returncode != 0 and "WEB_NODES" in done.stderr


@pytest.mark.parametrize("count", [1, 2, 5])
def test_vagrant_validate_accepts_the_vagrantfile(tmp_path, count):
    """On a copy, so neither .vagrant/ nor ~/.vagrant.d is written in the repo or the home."""
    shutil.copy(ROOT / "Vagrantfile", tmp_path)
    shutil.copytree(ROOT / "provision", tmp_path / "provision", ignore=shutil.ignore_patterns(".secrets"))
    env = {**os.environ, "WEB_NODES": str(count), "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
           "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_CWD": str(tmp_path)}
    done = subprocess.run([tool("vagrant"), "validate", "--ignore-provider"], cwd=tmp_path, env=env,
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validated successfully" in done.stdout
    assert done.stdout.count("Ignoring provider config") == count + 1  # lb + N web machines


def test_host_side_secrets_are_made_once_and_fit_serf_and_lbsync(tmp_path):
    """The Vagrant trigger's secrets: a serf key (base64 of 32 bytes), private, never remade."""
    secrets = tmp_path / "s"

    def ensure_secrets() -> dict[str, str]:
        done = subprocess.run([tool("ruby"), "-e", f'require "{PLAN}"; LbsyncLab.ensure_secrets(ARGV[0])',
                               str(secrets)], check=False, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return {path.name: path.read_text() for path in secrets.iterdir()}

    first = ensure_secrets()
    assert ensure_secrets() == first
    assert len(base64.b64decode(first["serf.key"].strip(), validate=True)) == 32
    for name in ("serf.key", "rpc.token"):
        assert stat.S_IMODE((secrets / name).stat().st_mode) == 0o600
    # What a provisioner reads from /vagrant: lbsync install takes it as it is.
    assert keys.secrets_for(secrets, create=False)["serf.key"] == first["serf.key"].strip()
