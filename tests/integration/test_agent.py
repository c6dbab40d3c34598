"""`lbsync agent` with a real Serf cluster (no nginx): tags, load queries, drain and leave, attach.

The LB side here is a bare `serf agent`; what the agent publishes is read back from it, as the LB
would read it.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest
from kit.net import free_port, wait_until
from kit.paths import ROOT
from kit.procs import Processes
from kit.serfnode import SerfNode, start_serf

pytestmark = pytest.mark.integration

ENV = {"PYTHONPATH": str(ROOT), "LBSYNC_SYSLOG": "false", "LBSYNC_CONFIG": os.devnull}


def member(lb: SerfNode, name: str) -> dict | None:
    from lbsync.serf import SerfClient

    with SerfClient(lb.rpc_addr) as client:
        return next((m for m in client.members() if m["Name"] == name), None)


def query_load(lb: SerfNode) -> dict[str, bytes]:
    from lbsync.serf import SerfClient

    with SerfClient(lb.rpc_addr) as client:
        return client.query("load", timeout=1.0)


def start_agent(procs: Processes, lb: SerfNode, ip: str, name: str, *sets: str):
    """`lbsync agent` as a process; `sets` are KEY=VALUE settings (--set goes before the command)."""
    options = [arg for item in sets for arg in ("--set", item)]
    argv = [sys.executable, "-m", "lbsync", *options, "agent", "--join", lb.bind_addr, "--node-name", name,
            "--bind", f"{ip}:{free_port(ip)}", "--agent-rpc-addr", f"{ip}:{free_port(ip)}",
            "--port", "8001", "--weight", "3"]
    return procs.start(f"agent-{name}", argv, ENV)


def running(proc) -> bool:
    """True while `proc` runs; an early exit fails the test with its log instead of a timeout."""
    assert proc.alive(), f"{proc.name} exited {proc.popen.returncode}:\n{proc.output()[-2000:]}"
    return True


def test_agent_tags_load_drain_and_graceful_leave(procs, tmp_path):
    lb = start_serf(procs, "lb", "127.0.0.1", {"role": "lb"}, extra=[])
    load_file = tmp_path / "load"
    agent = start_agent(procs, lb, "127.0.0.31", "agent-web1", f"agent.load_file={load_file}",
                        "agent.drain_quiet=0.5")
    seen = wait_until(lambda: running(agent) and (m := member(lb, "agent-web1")) and m["Status"] == "alive" and m,
                      20, "the agent's node to join the LB")
    assert seen["Tags"] == {"role": "web", "port": "8001", "weight": "3"}
    assert str(seen["Addr"]) == "127.0.0.31"

    # the node can be alive a moment before the agent subscribes to queries: poll for the first answer
    answers = wait_until(lambda: query_load(lb), 20, "a first answer to the load query")
    assert set(answers) == {"agent-web1"} and float(answers["agent-web1"]) >= 0  # the real load per CPU
    load_file.write_text("0.87\n")
    wait_until(lambda: query_load(lb) == {"agent-web1": b"0.87"}, 20, "the load file's figure in the answer")

    agent.send(signal.SIGTERM)
    wait_until(lambda: (member(lb, "agent-web1") or {}).get("Tags", {}).get("drain") == "1"
               or (member(lb, "agent-web1") or {}).get("Status") == "left", 15, "drain=1 to be seen")
    assert agent.popen.wait(30) == 0, agent.output()
    wait_until(lambda: member(lb, "agent-web1")["Status"] == "left", 15, "a graceful leave (left)")
    assert "drained: no new request" in agent.output()


def test_agent_attaches_to_a_running_serf(procs, tmp_path):
    lb = start_serf(procs, "lb", "127.0.0.1", {"role": "lb"})
    node = start_serf(procs, "attached-web", "127.0.0.32", {"drain": "1"})  # a stale drain tag
    agent = procs.start("agent", [sys.executable, "-m", "lbsync", "--set", "agent.drain_quiet=0", "agent",
                                  "--join", lb.bind_addr, "--agent-rpc-addr", node.rpc_addr,
                                  "--port", "8002"], ENV)
    wait_until(lambda: running(agent) and (m := member(lb, "attached-web")) and m["Tags"].get("port") == "8002",
               20, "the attached agent's tags at the LB")
    assert member(lb, "attached-web")["Tags"] == {"role": "web", "port": "8002", "weight": "1"}
    agent.send(signal.SIGINT)
    assert agent.popen.wait(30) == 0, agent.output()
    assert node.proc.popen.wait(20) is not None  # leave shuts the attached agent down
    wait_until(lambda: member(lb, "attached-web")["Status"] == "left", 15, "left, not failed")
