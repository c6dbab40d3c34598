"""What every scenario measures with: client-visible answers, bounded waits, upstream exactness.

Kept apart from scenarios.py so the scenario modules (agent, faults, churn, scale) and the
orchestrator import these without importing each other (no cycles).
"""

from __future__ import annotations

import time

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
