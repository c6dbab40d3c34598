"""Hard kill under a steady request load (issue 4): a backend that closes vs one that hangs.

A node `fN` runs its own lab/webserver.py and Serf agent. A paced client sends fresh requests
(50 per second, 5 s client timeout) through nginx for 12 s while, 2 s in, the node fails:
  closing  web server and Serf agent are SIGKILLed: connections are refused, nginx retries the
           request on the next server (`proxy_next_upstream error`), Serf declares it failed;
  hanging  web server is SIGSTOPped (the kernel still accepts connections, nobody answers) and
           the Serf agent SIGKILLed: a request sent there waits until the client gives up.
Measured: time until the node is out of what nginx routes to (the upstream file, or rendered
`down`; with the live driver the pool read back from nginx, `down` by health checks), and failed
requests out of all sent. Both `lbsync run` columns have active health checks on
(benchlab.RUN_TOML); the hook columns and the naive peer have none (nginx OSS has no active
checks). A request sent to the hanging backend waits for the kit's `proxy_read_timeout` of 2 s
(kit.nginx.READ_TIMEOUT; installed hosts default to 10 s) and is then retried on another peer.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from benchlab import BenchLab, WebNode, now
from kit.lb import start_web
from kit.net import http_get, wait_until
from kit.serfnode import start_serf
from probes import ROUTE_DEADLINE

RATE = 50.0  # requests per second
CLIENT_TIMEOUT = 5.0
BEFORE = 2.0  # seconds of traffic before the fault
WINDOW = 10.0  # seconds of traffic from the fault on (longer only if removal takes longer),
               # so failure percentages of different modes share one denominator
REMOVAL_DEADLINE = 30.0


class Load:
    """A paced client: one fresh request every 1/rate s, each in its own worker, outcomes kept."""

    def __init__(self, port: int, rate: float = RATE):
        self.port, self.rate, self.outcomes = port, rate, Counter()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(int(rate * CLIENT_TIMEOUT * 1.5))
        self.thread = threading.Thread(target=self._pace, daemon=True)

    def start(self) -> Load:
        self.thread.start()
        return self

    def _pace(self) -> None:
        tick = now()
        while not self.stopping.is_set():
            self.pool.submit(self._one)
            tick += 1 / self.rate
            time.sleep(max(0.0, tick - now()))

    def _one(self) -> None:
        status, body = http_get("127.0.0.1", self.port, "/", CLIENT_TIMEOUT)
        with self.lock:
            self.outcomes["ok" if status == 200 else (f"HTTP {status}" if status else body.split(":")[0])] += 1

    def stop(self) -> dict:
        self.stopping.set()
        self.thread.join()
        self.pool.shutdown(wait=True)  # every request has its 5 s client timeout
        total = sum(self.outcomes.values())
        failed = total - self.outcomes["ok"]
        return {"requests": total, "failed": failed, "failed_pct": round(100 * failed / max(total, 1), 2),
                "outcomes": dict(self.outcomes)}


def fault_trial(lab: BenchLab, node: WebNode, hang: bool) -> dict:
    """One node fails under load; time until nginx's upstream no longer routes to it."""
    web = start_web(lab.procs, node.name, node.ip, node.port)
    serf = start_serf(lab.procs, node.name, node.ip, {"role": "web", "port": str(node.port)},
                      join=lab.lb.bind_addr, extra=["-log-level", "info"])
    wait_until(lambda: node.endpoint in lab.config_servers() and lab.served() == node.name, ROUTE_DEADLINE,
               f"{node.name} routed", interval=0.01)
    load = Load(lab.nginx.port).start()
    time.sleep(BEFORE)  # normal traffic before the fault (workload shape)
    start = now()
    web.send(signal.SIGSTOP if hang else signal.SIGKILL)
    serf.proc.send(signal.SIGKILL)
    removed = None
    while now() - start < REMOVAL_DEADLINE:
        if node.endpoint not in lab.config_servers():
            removed = now() - start
            break
        time.sleep(0.05)
    time.sleep(max(1.0, WINDOW - (now() - start)))  # the rest of the window (workload shape)
    result = load.stop()
    web.send(signal.SIGCONT)
    web.stop(signal.SIGKILL)
    return {"fault": "hanging" if hang else "closing",
            "removed_ms": round(removed * 1000, 1) if removed is not None else None, **result}


def fault_trials(lab: BenchLab, nodes: list[WebNode]) -> dict:
    """A closing and a hanging failure, one node each."""
    closing, hanging = nodes[:2]
    return {"closing": fault_trial(lab, closing, hang=False), "hanging": fault_trial(lab, hanging, hang=True)}
