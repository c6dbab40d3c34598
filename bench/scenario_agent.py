"""Issue 3's figures: `lbsync agent` boot -> first request served, and its drain on SIGTERM.

A web node here is what `lab/boot_web.sh N` starts: lab/webserver.py with an access log and
`python -m lbsync agent`, which spawns the node's own `serf agent` (`local` profile) and joins
the LB. Boot is timed from starting the agent to the first request nginx routes to the node.
Stop is timed from SIGTERM under a steady request loop: how long the node kept receiving
requests (drain -> `down` -> leave), how many requests failed, and when the agent exited.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections import Counter

from benchlab import BenchLab, WebNode, now
from kit.lb import start_web
from kit.net import free_port
from kit.paths import ROOT
from probes import ROUTE_DEADLINE, THINK, failed, wait_answer

DRAIN_TIMEOUT = 8.0  # the agent's bounded wait; a peer that ignores `drain` costs all of it
REQUEST_GAP = 0.01  # the steady client: one fresh request about every 10 ms


def agent_config(lab: BenchLab, node: WebNode, access_log: str) -> str:
    """The node's lbsync.toml, as lab/labtool.py writes it for `boot_web.sh` (no secrets here)."""
    serf_json = lab.workdir / "serf-local.json"
    serf_json.write_text(json.dumps({"profile": "local"}))
    path = lab.workdir / f"agent-{node.name}.toml"
    agent = {"node_name": node.name, "join": [lab.lb.bind_addr], "bind": f"{node.ip}:{free_port(node.ip)}",
             "rpc_addr": f"{node.ip}:{free_port(node.ip)}", "port": node.port,
             "serf_config": str(serf_json), "log_file": access_log, "drain_timeout": DRAIN_TIMEOUT}
    lines = ["syslog = false", "[agent]"] + [f"{key} = {json.dumps(value)}" for key, value in agent.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def boot_and_stop(lab: BenchLab, node: WebNode) -> dict:
    """One trial: boot the node, see it routed, SIGTERM it under load, see it gone."""
    access_log = str(lab.workdir / f"access-{node.name}.log")
    web = start_web(lab.procs, node.name, node.ip, node.port, "--access-log", access_log)
    config = agent_config(lab, node, access_log)
    time.sleep(THINK)  # workload spacing, not a wait for correctness
    start = now()
    agent = lab.procs.start(f"agent-{node.name}", [sys.executable, "-m", "lbsync", "-c", config, "agent"],
                            {"PYTHONPATH": str(ROOT)})
    boot, boot_errors = wait_answer(lab, start, lambda answer: answer == node.name, ROUTE_DEADLINE)
    time.sleep(THINK)
    start = now()
    agent.send(signal.SIGTERM)
    answers, last_hit, exited = Counter(), None, None
    while now() - start < DRAIN_TIMEOUT + ROUTE_DEADLINE:
        answer = lab.served()
        answers["failed" if failed(answer) else "ok"] += 1
        if answer == node.name:
            last_hit = now() - start
        if exited is None and not agent.alive():
            exited = now() - start
        if exited is not None and now() - start > exited + 1.0:  # a second of requests after it left
            break
        time.sleep(REQUEST_GAP)
    web.stop()
    return {"boot_ms": _ms(boot), "boot_failed_requests": boot_errors,
            "last_request_to_node_ms": _ms(last_hit) if last_hit is not None else 0.0,
            "agent_exit_ms": _ms(exited), "agent_exit_code": agent.popen.poll(),
            "requests_during_stop": answers["ok"] + answers["failed"],
            "failed_during_stop": answers["failed"]}


def agent_trials(lab: BenchLab, nodes: list[WebNode]) -> dict:
    """Issue 3's boot and graceful-stop figures over `nodes` (one trial each)."""
    trials = [boot_and_stop(lab, node) for node in nodes]

    def column(key: str) -> list:
        return [t[key] for t in trials]

    boots = [b for b in column("boot_ms") if b is not None]
    return {"trials": trials, "boot_ms_max": max(boots) if boots else None,
            "boot_ms_median": sorted(boots)[len(boots) // 2] if boots else None,
            "out_of_rotation_ms_max": max(column("last_request_to_node_ms")),
            "failed_during_stop": sum(column("failed_during_stop")),
            "requests_during_stop": sum(column("requests_during_stop")),
            "agent_exit_ms_max": max((e for e in column("agent_exit_ms") if e is not None), default=None)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
