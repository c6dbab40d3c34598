"""Churn under a steady request load (issue 7, `--full` only): what reloads cost clients.

For `duration` seconds a node joins or leaves every `period` seconds (their web servers keep
answering, so a failed request is the LB's doing, not a dead backend's) while two clients run:
fresh connections at 50 req/s (scenario_faults.Load) and one keep-alive connection at about
25 req/s, which is where reloads hurt (old workers close idle keep-alive connections).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter

from benchlab import BenchLab, WebNode, now
from kit.net import wait_until
from probes import settle
from scenario_faults import Load

KEEPALIVE_GAP = 0.04


class KeepAliveClient(threading.Thread):
    """One persistent HTTP/1.1 connection to nginx, reopened after any failure (counted)."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.outcomes, self.stopping = port, Counter(), threading.Event()

    def run(self) -> None:
        conn = None
        while not self.stopping.is_set():
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                self.outcomes["ok" if response.status == 200 else f"HTTP {response.status}"] += 1
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                self.outcomes[type(exc).__name__] += 1
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(KEEPALIVE_GAP)
        if conn is not None:
            conn.close()

    def stop(self) -> dict:
        self.stopping.set()
        self.join(10)
        total = sum(self.outcomes.values())
        return {"requests": total, "failed": total - self.outcomes["ok"], "outcomes": dict(self.outcomes)}


def churn(lab: BenchLab, nodes: list[WebNode], duration: float, period: float = 1.5) -> dict:
    """Toggle `nodes` in and out one at a time under both clients; failures per reload."""
    joined: set[str] = set()
    reloads = lab.reloads()
    fresh, keepalive = Load(lab.nginx.port).start(), KeepAliveClient(lab.nginx.port)
    keepalive.start()
    start, events, turn = now(), 0, 0
    while now() - start < duration:
        node = nodes[turn % len(nodes)]
        turn += 1
        if node.name in joined:
            lab.leave(node)
            joined.discard(node.name)
        else:
            lab.start_agent(node)
            lab.join(node)
            joined.add(node.name)
        events += 1
        time.sleep(max(0.0, start + turn * period - now()))  # the churn's pace (workload shape)
    fresh_result, keepalive_result = fresh.stop(), keepalive.stop()
    count = lab.reloads() - reloads
    _leave_all(lab, [n for n in nodes if n.name in joined])
    failed = fresh_result["failed"] + keepalive_result["failed"]
    return {"duration_s": duration, "membership_events": events, "reloads": count,
            "fresh": fresh_result, "keepalive": keepalive_result,
            "failed_per_reload": round(failed / count, 3) if count else None}


def _leave_all(lab: BenchLab, nodes: list[WebNode]) -> None:
    """Leave the churn nodes still in, so the next scenario starts from a known pool."""
    for node in nodes:
        lab.leave(node)
    gone = {n.endpoint for n in nodes}
    wait_until(lambda: not gone & set(lab.config_servers()), 30, "churn nodes to leave", interval=0.1)
    settle(lab)
