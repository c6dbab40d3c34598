"""Secure defaults, against real serf agents on loopback addresses: the gossip key keeps strangers
out of the cluster, the RPC token keeps local clients out of the agent, and allowed_networks keeps
a stray `role=web` member out of nginx.

The keyed LB runs the configuration `lbsync install` writes for an LB (addresses rewritten to
127.0.0.x and free high ports); the intruders are plain `serf agent` command lines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from kit.net import wait_until
from kit.procs import Processes
from kit.serfnode import SerfNode, start_serf, start_serf_from
from kit.serfnode import serf as serf_cli

from lbsync import hostfiles, install
from lbsync.drivers.reload import render_upstream
from lbsync.errors import SourceError
from lbsync.layers import load
from lbsync.members import select
from lbsync.plan import Plan

pytestmark = pytest.mark.integration

LB_IP, NETWORK = "127.0.0.1", "127.0.0.0/28"  # the "lab network" here: 127.0.0.1-14


def start_agent(procs: Processes, name: str, ip: str, config: dict | None = None) -> SerfNode:
    """`serf agent` tagged role=web on ip with free ports; `config` (keys, token) goes in a -config-file."""
    extra = []
    if config:
        path = procs.workdir / f"{name}.json"
        path.write_text(json.dumps(config))
        extra = ["-config-file", str(path)]
    return start_serf(procs, name, ip, {"role": "web", "port": "80"}, extra=extra)


@dataclass
class KeyedLB:
    node: SerfNode
    key: str
    token: str
    root: Path


@pytest.fixture
def lb(procs, tmp_path) -> KeyedLB:
    """An LB configured by `lbsync install`: its secrets, its drop-ins, its lbsync.toml.

    Daemon mode, so there is no hook file: this agent must not run an lbsync found on PATH.
    """
    parser = argparse.ArgumentParser()
    install.add_arguments(parser)
    root = tmp_path / "root"
    args = parser.parse_args(["--role", "lb", "--node-name", "lb", "--ip", LB_IP, "--network", NETWORK,
                              "--mode", "run", "--secrets", str(tmp_path / "secrets"), "--root", str(root)])
    hostfiles.apply(install.plan(args), root)
    node = start_serf_from(procs, root, "lb", LB_IP, tmp_path, extra=["-profile", "local"])
    secrets = json.loads((root / "etc/serf/lbsync-secrets.json").read_text())
    return KeyedLB(node, secrets["encrypt_key"], secrets["rpc_auth"], root)


def serf(*args: str) -> subprocess.CompletedProcess:
    return serf_cli(*args, check=False)


def names(lb: KeyedLB) -> set[str]:
    done = serf("members", "-rpc-addr", lb.node.rpc_addr, "-rpc-auth", lb.token, "-format", "json")
    assert done.returncode == 0, done.stderr
    return {m["name"] for m in json.loads(done.stdout)["members"] if m["status"] == "alive"}


# --- gossip encryption ---------------------------------------------------------------------------

def test_a_node_without_the_key_cannot_join(procs, lb):
    intruder = start_agent(procs, "intruder", "127.0.0.5")
    done = serf("join", "-rpc-addr", intruder.rpc_addr, lb.node.bind_addr)
    assert done.returncode != 0 and "encrypt" in (done.stdout + done.stderr)
    assert names(lb) == {"lb"}


def test_a_node_with_another_key_cannot_join(procs, lb):
    other = serf("keygen").stdout.strip()
    intruder = start_agent(procs, "intruder", "127.0.0.6", {"encrypt_key": other})
    done = serf("join", "-rpc-addr", intruder.rpc_addr, lb.node.bind_addr)
    assert done.returncode != 0
    assert names(lb) == {"lb"}


def test_a_node_with_the_shared_key_joins(procs, lb):
    """The control: the same join with the cluster's key succeeds, so the refusals above are real."""
    web = start_agent(procs, "web1", "127.0.0.7", {"encrypt_key": lb.key})
    done = serf("join", "-rpc-addr", web.rpc_addr, lb.node.bind_addr)
    assert done.returncode == 0, done.stderr
    wait_until(lambda: names(lb) == {"lb", "web1"}, 10, "web1 in the LB's view")


# --- RPC authentication --------------------------------------------------------------------------

@pytest.mark.parametrize("auth", [[], ["-rpc-auth", "not-the-token"]], ids=["no token", "wrong token"])
def test_rpc_without_the_token_is_refused(lb, auth):
    done = serf("members", "-rpc-addr", lb.node.rpc_addr, *auth)
    assert done.returncode != 0
    assert "authentication" in (done.stderr + done.stdout).lower()
    assert "lb" not in done.stdout


def test_rpc_with_the_token_answers(lb):
    assert names(lb) == {"lb"}


def test_lbsync_client_needs_the_token(lb):
    """lbsync's own RPC client, as `lbsync handle` and `lbsync run` use it."""
    from lbsync.serf import SerfClient

    with pytest.raises(SourceError, match="token"), SerfClient(lb.node.rpc_addr, "", timeout=5) as client:
        client.members()
    settings = load(lb.root / "etc/lbsync/lbsync.toml", env={})
    with SerfClient(lb.node.rpc_addr, settings.rpc_auth, timeout=5) as client:
        assert [m["Name"] for m in client.members()] == ["lb"]


# --- allowed_networks ----------------------------------------------------------------------------

def test_a_member_outside_the_allowed_network_is_never_rendered(procs, lb):
    """A node that has the key (say, a stolen one) but joins from outside the network: in Serf,
    not in nginx. The LB's own config file decides, read by lbsync's own loader."""
    inside = start_agent(procs, "web1", "127.0.0.7", {"encrypt_key": lb.key})
    outside = start_agent(procs, "stray", "127.0.0.99", {"encrypt_key": lb.key})
    for node in (inside, outside):
        assert serf("join", "-rpc-addr", node.rpc_addr, lb.node.bind_addr).returncode == 0
    wait_until(lambda: names(lb) == {"lb", "web1", "stray"}, 10, "both in Serf's view")
    from lbsync.serf import SerfClient

    settings = load(lb.root / "etc/lbsync/lbsync.toml", env={})
    with SerfClient(lb.node.rpc_addr, settings.rpc_auth, timeout=5) as client:
        selection = select(client.members(), settings)
    assert [m.name for m in selection.backends] == ["web1"]
    assert [s.name for s in selection.skipped] == ["stray"]
    rendered = render_upstream(Plan.of(settings, selection))
    assert "127.0.0.7:80" in rendered and "127.0.0.99" not in rendered and "stray" not in rendered
