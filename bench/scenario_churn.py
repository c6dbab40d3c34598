"""Churn under a steady request load (issue 11): what membership changes cost clients.

For `duration` seconds one node changes every `period` seconds, in turn: it joins, later it
restarts (its agent leaves gracefully and a new one joins under the same name at once), later it
leaves (its web server keeps answering throughout, so a failed request is the LB's doing, not a
dead backend's). Meanwhile two clients run side by side, each at RATE requests per second:
  keepalive  KEEPALIVE_CONNECTIONS persistent HTTP/1.1 connections, where reloads hurt (an old
             worker closes an idle keep-alive connection as the client reuses it);
  fresh      a new connection per request (scenario_faults.Load).
Quick runs a shorter churn than full (bench/scenarios.py PROFILES); the rate and shape are the same.
"""

from __future__ import annotations

import http.client
import signal
import threading
import time
from collections import Counter

from benchlab import BenchLab, WebNode, now
from kit.net import wait_until
from probes import settle
from scenario_faults import Load

RATE = 100.0  # requests per second, for each of the two clients
KEEPALIVE_CONNECTIONS = 8


class KeepAliveClients:
    """`connections` persistent HTTP/1.1 connections to nginx, paced to `rate` requests per
    second together; a connection is reopened after any failure (counted)."""

    def __init__(self, port: int, connections: int = KEEPALIVE_CONNECTIONS, rate: float = RATE):
        self.port, self.gap = port, connections / rate
        self.outcomes: Counter = Counter()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(connections)]

    def start(self) -> KeepAliveClients:
        for thread in self.threads:
            thread.start()
        return self

    def _run(self, index: int) -> None:
        conn = None
        tick = now() + index * self.gap / len(self.threads)  # spread the connections' requests
        while not self.stopping.is_set():
            time.sleep(max(0.0, tick - now()))
            tick += self.gap
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                outcome = "ok" if response.status == 200 else f"HTTP {response.status}"
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
                if conn is not None:
                    conn.close()
                conn = None
            with self.lock:
                self.outcomes[outcome] += 1
        if conn is not None:
            conn.close()

    def stop(self) -> dict:
        self.stopping.set()
        for thread in self.threads:
            thread.join(10)
        total = sum(self.outcomes.values())
        return {"connections": len(self.threads), "requests": total, "failed": total - self.outcomes["ok"],
                "outcomes": dict(self.outcomes)}


def churn(lab: BenchLab, nodes: list[WebNode], duration: float, period: float = 1.5) -> dict:
    """Join, restart and leave `nodes` in turn under both clients; failed requests and reloads."""
    state = {n.name: "out" for n in nodes}
    restarts: list[threading.Thread] = []
    reloads = lab.reloads()
    fresh, keepalive = Load(lab.nginx.port, RATE).start(), KeepAliveClients(lab.nginx.port).start()
    start, kinds, turn = now(), Counter(), 0
    while now() - start < duration:
        node = nodes[turn % len(nodes)]
        turn += 1
        if state[node.name] == "out":
            lab.start_agent(node)
            lab.join(node)
            state[node.name], kind = "in", "join"
        elif state[node.name] == "in":  # restart in the background: a graceful leave takes ~1 s
            restarts.append(threading.Thread(target=_restart, args=(lab, node), daemon=True))
            restarts[-1].start()
            state[node.name], kind = "restarted", "restart"
        else:
            lab.leave(node)
            state[node.name], kind = "out", "leave"
        kinds[kind] += 1
        time.sleep(max(0.0, start + turn * period - now()))  # the churn's pace (workload shape)
    for thread in restarts:
        thread.join(30)
    fresh_result, keepalive_result = fresh.stop(), keepalive.stop()
    count = lab.reloads() - reloads
    _leave_all(lab, [n for n in nodes if state[n.name] != "out"])
    failed = fresh_result["failed"] + keepalive_result["failed"]
    return {"duration_s": duration, "rate_per_client": RATE, "membership_events": sum(kinds.values()),
            "events": dict(kinds), "reloads": count, "fresh": fresh_result, "keepalive": keepalive_result,
            "failed_per_reload": round(failed / count, 3) if count else None}


def _restart(lab: BenchLab, node: WebNode) -> None:
    """The node's agent leaves (SIGINT), and a new one under the same name joins as soon as it exited."""
    old = node.serf
    old.proc.send(signal.SIGINT)
    wait_until(lambda: not old.proc.alive(), 15, f"{node.name}'s agent to leave", interval=0.02)
    lab.start_agent(node)
    lab.join(node)


def _leave_all(lab: BenchLab, nodes: list[WebNode]) -> None:
    """Leave the churn nodes still in, so the next scenario starts from a known pool."""
    for node in nodes:
        lab.leave(node)
    gone = {n.endpoint for n in nodes}
    wait_until(lambda: not gone & set(lab.config_servers()), 30, "churn nodes to leave", interval=0.1)
    settle(lab)
