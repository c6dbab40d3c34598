"""`lbsync agent --service`: a node with several services publishes them all, read back from a
real Serf agent's RPC as the LB's selector reads them (the tag contract in lbsync/serfagent.py)."""

from __future__ import annotations

import os
import signal
import sys

import pytest
from kit.net import free_port, wait_until
from kit.paths import ROOT
from kit.procs import Processes
from kit.serfnode import start_serf

from lbsync.errors import SourceError

pytestmark = pytest.mark.integration

ENV = {"PYTHONPATH": str(ROOT), "LBSYNC_SYSLOG": "false", "LBSYNC_CONFIG": os.devnull}


def member(rpc_addr: str, name: str) -> dict | None:
    """`name`'s record as the Serf agent at `rpc_addr` reports it (RPC `members`)."""
    from lbsync.serf import SerfClient

    with SerfClient(rpc_addr) as client:
        return next((m for m in client.members() if m["Name"] == name), None)


def test_agent_publishes_every_service_as_tags(procs: Processes):
    lb = start_serf(procs, "lb", "127.0.0.1", {"role": "lb"})
    ip = "127.0.0.33"
    rpc_addr = f"{ip}:{free_port(ip)}"
    agent = procs.start("agent-multi", [
        sys.executable, "-m", "lbsync", "--set", "agent.drain_quiet=0", "agent", "--join", lb.bind_addr,
        "--node-name", "multi-web", "--bind", f"{ip}:{free_port(ip)}", "--agent-rpc-addr", rpc_addr,
        "--service", "web:8000", "--service", "api:9000:2"], ENV)

    def seen() -> dict | None:
        assert agent.alive(), f"agent exited {agent.popen.returncode}:\n{agent.output()[-2000:]}"
        try:
            return member(rpc_addr, "multi-web")
        except SourceError:  # the child serf's RPC is not up yet
            return None

    record = wait_until(seen, 20, "the agent's own serf to answer with its member")
    assert record["Tags"] == {"role": "web", "port": "8000", "weight": "1",
                              "port_web": "8000", "port_api": "9000", "weight_api": "2"}
    at_lb = wait_until(lambda: member(lb.rpc_addr, "multi-web"), 20, "the LB to see the node")
    assert at_lb["Tags"] == record["Tags"]
    agent.send(signal.SIGTERM)
    assert agent.popen.wait(30) == 0, agent.output()
