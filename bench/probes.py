"""What every scenario measures with: client-visible answers, bounded waits, upstream exactness.

Kept apart from scenarios.py so the scenario modules (agent, faults, churn, scale) and the
orchestrator import these without importing each other (no cycles).
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter

from benchlab import BenchLab, WebNode, now

ROUTE_DEADLINE = 15.0  # Serf's hook path alone coalesces for 1-3 s
CONVERGE_DEADLINE = 20.0
EMPTY_DEADLINE = 10.0
THINK = 1.1  # quiet time before each timed change: longer than the daemon's 1 s reload budget


def failed(answer: str) -> bool:
    """A client-visible failure: no 200 (a 503 while some node is in the pool counts too)."""
    return answer.startswith(("HTTP", "error"))


def wait_answer(lab: BenchLab, start: float, done, deadline: float,
                streak: int = 1) -> tuple[float | None, int]:
    """Poll fresh requests until `done(answer)` holds `streak` times in a row.

    Returns (seconds from `start` to the first answer of that streak, or None at the deadline;
    failed requests seen meanwhile).
    """
    errors, run, first = 0, 0, 0.0
    while now() - start < deadline:
        answer = lab.served()
        errors += failed(answer)
        if done(answer):
            first = first if run else now()
            run += 1
            if run >= streak:
                return first - start, errors
        else:
            run = 0
        time.sleep(0.002)
    return None, errors


def exactness(lab: BenchLab, expected: list[str]) -> dict:
    """How the upstream file differs from `expected`: stale, missing, duplicated servers."""
    servers = lab.config_servers()
    return {"upstream_exact": servers == expected, "stale": sorted(set(servers) - set(expected)),
            "missing": sorted(set(expected) - set(servers)), "duplicates": len(servers) - len(set(servers))}


def served_exactly(lab: BenchLab, nodes: list[WebNode]) -> bool:
    """Every node answers, and nothing else does, over three rounds of round robin."""
    answers = {lab.served() for _ in range(3 * len(nodes))}
    return answers == {n.name for n in nodes}


def settle(lab: BenchLab, quiet: float = 2.5, deadline: float = 15.0) -> None:
    """Wait (bounded) until nginx has not been reloaded for `quiet` s: late handler runs count."""
    count, since, start = lab.reloads(), now(), now()
    while now() - since < quiet and now() - start < deadline:
        time.sleep(0.1)
        if lab.reloads() != count:
            count, since = lab.reloads(), now()


class Sweeper:
    """Who is routable now, fast: threads that each send batches of pipelined GETs on one
    keep-alive connection to nginx and note when each node first answered.

    A pool of N backends in rotation needs about N requests per worker before every one has
    answered; one fresh request at a time would add tens of ms to a 50-node figure, a pipelined
    batch of BATCH requests costs nginx one read and the client one parse pass."""

    BATCH = 64

    def __init__(self, port: int, threads: int = 1, gap: float = 0.002, go: threading.Event | None = None):
        self.port, self.gap = port, gap
        self.first: dict[str, float] = {}
        self.errors: Counter = Counter()  # failed answers by kind ("HTTP 503", an exception's name)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.go = go or threading.Event()  # sweeping starts when it is set (at once by default)
        if go is None:
            self.go.set()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> Sweeper:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(10)

    def wait_for(self, names: set[str], deadline: float) -> float | None:
        """The monotonic time by which every one of `names` had answered, or None at `deadline`."""
        while now() < deadline:
            with self.lock:
                seen = [self.first[n] for n in names if n in self.first]
            if len(seen) == len(names):
                return max(seen, default=now())
            time.sleep(0.005)
        return None

    def _run(self) -> None:
        request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n" * self.BATCH
        while not self.go.wait(0.05):
            if self.stopping.is_set():
                return
        while not self.stopping.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    reader = sock.makefile("rb")
                    while not self.stopping.is_set() and self._batch(sock, reader, request):
                        time.sleep(self.gap)
            except (OSError, ValueError) as exc:
                with self.lock:
                    self.errors[type(exc).__name__] += 1
                time.sleep(0.01)

    def _batch(self, sock: socket.socket, reader, request: bytes) -> bool:
        """One pipelined batch; False when nginx closes the connection (keepalive_requests)."""
        sock.sendall(request)
        answers = []
        for _ in range(self.BATCH):
            answers.append((*read_response(reader), now()))  # answers arrive in order: time each
            if answers[-1][2]:  # the rest of the batch is never answered on this connection
                break
        self._note(answers)
        return not answers[-1][2]

    def _note(self, answers: list[tuple[int, str, bool, float]]) -> None:
        with self.lock:
            for status, body, _, at in answers:
                if status != 200:
                    self.errors[f"HTTP {status}"] += 1
                elif body not in self.first:
                    self.first[body] = at


def read_response(reader) -> tuple[int, str, bool]:
    """(status, body stripped, connection closing) of one HTTP/1.1 response from a buffered reader."""
    status_line = reader.readline()
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {status_line[:60]!r}")
    length, closing = 0, False
    while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            closing = True
    body = reader.read(length) if length else b""
    return int(parts[1]), body.decode(errors="replace").strip(), closing


class KnowWatcher(threading.Thread):
    """When the LB's Serf agent first knew every one of `names` alive, and, with the live driver,
    when nginx's pool first held all of `endpoints` (read back from its control socket).

    Polled every few ms on its own RPC connection, cheaply: Serf's `stats` member count first (as
    `lbsync run` does), the member list only once that count says all may be there, so the watch
    takes little CPU from what it watches. `names` must be new to the agent (a burst of joins)."""

    def __init__(self, lab: BenchLab, names: set[str], endpoints: set[str], interval: float = 0.004):
        super().__init__(daemon=True)
        self.lab, self.names, self.endpoints, self.interval = lab, names, endpoints, interval
        self.knew: float | None = None
        self.pooled: float | None = None
        self.knew_event = threading.Event()  # e.g. a Sweeper's `go`
        self.stopping = threading.Event()
        self.baseline: int | None = None
        self.version: int | None = None  # the live pool's version last read in full

    def start(self) -> None:
        from lbsync.serf import SerfClient

        with SerfClient(self.lab.lb.rpc_addr) as client:
            self.baseline = member_count(client)
        super().start()

    def run(self) -> None:
        from lbsync.errors import SourceError
        from lbsync.serf import SerfClient

        assert self.baseline is not None
        target = self.baseline + len(self.names)
        with SerfClient(self.lab.lb.rpc_addr) as client:
            while not self.stopping.is_set() and (self.knew is None or (self.lab.live and self.pooled is None)):
                try:
                    if (self.knew is None and member_count(client) >= target
                            and self.names <= self.lab.alive_web(client)):
                        self.knew = now()
                        self.knew_event.set()
                except SourceError:
                    return
                if self.lab.live and self.knew is not None and self.pooled is None and self._pool_has_all():
                    self.pooled = now()
                time.sleep(self.interval)

    def _pool_has_all(self) -> bool:
        """nginx's pool holds every endpoint; the whole pool is read only when its version moved."""
        version = self.lab.pool_version()
        if version is None or version == self.version:
            return False
        self.version = version
        return self.endpoints <= set(self.lab.config_servers())

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


def member_count(client) -> int:
    """Members the agent knows in any state (Serf's `stats`; the values are strings)."""
    try:
        return int(client.stats()["serf"]["members"])
    except (KeyError, TypeError, ValueError):
        return 0
