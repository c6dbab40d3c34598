"""The side-by-side scenarios (issue 7), run once per mode against a fresh BenchLab.

Shared waits and checks are in probes.py; the scenarios with files of their own (agent, faults,
churn) build on probes and benchlab only, so nothing imports back into this module.

Each scenario is bounded by deadlines, measures from the moment the harness acts (a `join` RPC
on the new node, SIGINT to a leaving node's agent) to what a client sees through nginx, and
returns plain data. The lab's processes are all stopped by PID in `run_mode`'s finally.
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchlab import BenchLab, WebNode, make_lab, nodes_for, now
from common import SCENARIOS, emit, summary
from kit.net import http_get, wait_until
from kit.paths import TEMPLATES
from kit.procs import Processes
from probes import (
    CONVERGE_DEADLINE,
    EMPTY_DEADLINE,
    ROUTE_DEADLINE,
    THINK,
    KnowWatcher,
    Sweeper,
    exactness,
    failed,
    served_exactly,
    settle,
    wait_answer,
)
from scenario_agent import agent_trials
from scenario_churn import churn
from scenario_faults import fault_trials

PAGE_503 = (TEMPLATES / "lbs_503.html").read_text().strip()  # what the kit's site answers with no backend

PROFILES = {  # churn: seconds (0: not run); agents, trials: how many
    "smoke": {"trials": 2, "burst": 5, "keep": 3, "agents": 1, "faults": False, "churn": 4.0},  # harness check
    "quick": {"trials": 10, "burst": 50, "keep": 3, "agents": 0, "faults": True, "churn": 20.0},
    "full": {"trials": 30, "burst": 50, "keep": 3, "agents": 5, "faults": True, "churn": 60.0},
}


def join_leave(lab: BenchLab, nodes: list[WebNode]) -> dict:
    """Per trial: a fresh agent joins (timed to its first routed request), then leaves gracefully."""
    joins, leaves, errors, timeouts = [], [], 0, 0
    before = Counter(lab.failures)
    for node in nodes:
        lab.start_agent(node)
        time.sleep(THINK)  # workload spacing (see THINK), not a wait for correctness
        start = now()
        lab.join(node)
        took, errs = wait_answer(lab, start, lambda answer: answer == node.name, ROUTE_DEADLINE)
        joins += [took] if took is not None else []
        errors, timeouts = errors + errs, timeouts + (took is None)
        time.sleep(THINK)  # workload spacing, not a wait for correctness
        start = now()
        lab.leave(node)
        # with two backends in round robin, 4 answers in a row from the other mean it is gone
        took, errs = wait_answer(lab, start, lambda a: a != node.name and not failed(a), ROUTE_DEADLINE, 4)
        leaves += [took] if took is not None else []
        errors, timeouts = errors + errs, timeouts + (took is None)
    return {"trials": len(nodes), "join_ms": summary(joins), "leave_ms": summary(leaves),
            "client_errors": errors, "error_kinds": lab.failures_since(before), "timeouts": timeouts}


def burst(lab: BenchLab, nodes: list[WebNode], present: list[WebNode]) -> dict:
    """`nodes` join at once; time until every one has answered through nginx, measured from the
    join RPCs and from the moment the LB's Serf agent knew all of them; reloads meanwhile."""
    for node in nodes:
        lab.start_agent(node)
    reloads = lab.reloads()
    names = {n.name for n in nodes}
    watcher = KnowWatcher(lab, names, {n.endpoint for n in nodes})
    sweeper = Sweeper(lab.nginx.port, go=watcher.knew_event).start()  # sweeps once the LB knew all
    start = now()
    watcher.start()
    with ThreadPoolExecutor(len(nodes)) as pool:  # all at once, as when a fleet boots together
        retries = sum(pool.map(lab.join, nodes))
    joined = now() - start
    routable = sweeper.wait_for(names, start + CONVERGE_DEADLINE)
    sweeper.stop()
    watcher.join(2.0 if routable else 0.1)  # the live pool's read-back, when it lags the answers
    watcher.stop()
    settle(lab)
    expected = sorted(n.endpoint for n in nodes + present)
    knew = watcher.knew
    return {"nodes": len(nodes), "joins_sent_ms": round(joined * 1000, 1), "join_retries": retries,
            "lb_knew_all_ms": _ms(knew, start), "all_routable_ms": _ms(routable, start),
            "knew_to_routable_ms": _ms(routable, knew), "knew_to_pool_ms": _ms(watcher.pooled, knew),
            "never_routed": sorted(names - set(sweeper.first)), "reloads": lab.reloads() - reloads,
            "client_errors": sum(sweeper.errors.values()), "error_kinds": dict(sweeper.errors),
            **exactness(lab, expected),
            "served_exact": served_exactly(lab, nodes + present)}


def _ms(end: float | None, start: float | None) -> float | None:
    return round((end - start) * 1000, 1) if end is not None and start is not None else None


def mass_leave(lab: BenchLab, leaving: list[WebNode], keeping: list[WebNode]) -> dict:
    """All but `keeping` leave at once; time until the file and the answers are exactly `keeping`."""
    expected = sorted(n.endpoint for n in keeping)
    reloads = lab.reloads()
    start = now()
    for node in leaving:
        lab.leave(node)
    took = None
    while now() - start < CONVERGE_DEADLINE:
        if lab.config_servers() == expected and served_exactly(lab, keeping):
            took = now() - start
            break
        time.sleep(0.05)
    settle(lab)
    _wait_exited(leaving)
    serf_settled = _wait_serf_done_with(lab, {n.name for n in leaving})
    return {"left": len(leaving), "kept": len(keeping),
            "converged_ms": round(took * 1000, 1) if took is not None else None,
            "reloads": lab.reloads() - reloads, "serf_settled_s": serf_settled, **exactness(lab, expected)}


def _wait_serf_done_with(lab: BenchLab, names: set[str], deadline: float = 30.0) -> float | None:
    """Seconds until the LB's Serf has settled the leavers (None: not within `deadline`).

    A leave is gossip over UDP: after 48 leave at once, some reach the LB only as an intent
    ("leaving", which lbsync already drops) and memberlist still probes them for seconds. The
    survivors then gossip their own later leaves to dead peers, and the next scenario (the last
    nodes leave) would time Serf's failure detection instead of lbsync. Measured, not assumed."""
    start = now()
    while now() - start < deadline:
        if lab.serf_done_with(names):
            return round(now() - start, 1)
        time.sleep(0.2)
    return None


def empty_pool(lab: BenchLab, last: list[WebNode]) -> dict:
    """The last nodes leave: nginx must stay valid and answer with the 503 page."""
    reloads = lab.reloads()
    start = now()
    for node in last:
        lab.leave(node)
    took, _ = wait_answer(lab, start, lambda answer: answer == "HTTP 503", EMPTY_DEADLINE)
    settle(lab)
    status, body = http_get("127.0.0.1", lab.nginx.port)
    answers = Counter(lab.served() for _ in range(6))
    return {"page_503_ms": round(took * 1000, 1) if took is not None else None,
            "page_is_lbsyncs_503": status == 503 and body.strip() == PAGE_503,
            "answers_after": dict(answers), "config_valid": lab.config_valid(),
            "routed_to_departed": sum(n for answer, n in answers.items() if not failed(answer)),
            "config_servers": lab.config_servers(), "reloads": lab.reloads() - reloads}


def _wait_exited(nodes: list[WebNode], timeout: float = 15.0) -> None:
    wait_until(lambda: not any(n.serf.proc.alive() for n in nodes), timeout, "leaving agents to exit",
               interval=0.1)


def run_mode(mode: str, profile: str, workdir: Path, only: tuple[str, ...] = SCENARIOS) -> dict:
    """Every scenario (or those in `only`) against one fresh lab in `mode`; a failing scenario is
    recorded, not fatal."""
    shape = PROFILES[profile]
    base = nodes_for("web", "127.0.2", 1)
    trials = nodes_for("t", "127.0.5", shape["trials"])
    bursting = nodes_for("b", "127.0.4", shape["burst"])
    agents = nodes_for("a", "127.0.6", shape["agents"])  # served by their own lab/webserver.py
    faulty = nodes_for("f", "127.0.7", 2)  # likewise
    churning = nodes_for("c", "127.0.3", 4)
    procs = Processes(workdir)
    out: dict = {"mode": mode}
    started = now()
    try:
        lab = make_lab(mode, procs, workdir, base + trials + bursting + churning)
        lab.start_agent(base[0], join=True)
        wait_until(lambda: lab.served() == base[0].name, 30, "the first web node routed")
        keep = bursting[:shape["keep"]]
        steps = (("join_leave", lambda: join_leave(lab, trials)),
                 ("agent", lambda: agent_trials(lab, agents)),
                 ("faults", lambda: fault_trials(lab, faulty)),
                 ("churn", lambda: churn(lab, churning, shape["churn"])),
                 ("burst", lambda: burst(lab, bursting, base)),
                 ("mass_leave", lambda: mass_leave(lab, base + bursting[len(keep):], keep)),
                 ("empty_pool", lambda: empty_pool(lab, keep)))
        for name, step in steps:
            if not wanted(name, shape, only):
                continue
            out[name] = _guarded(step)
            print(f"   {mode} {name}: {brief(name, out[name])}", flush=True)
    except Exception as exc:  # the lab itself did not come up: say so in the results
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        procs.stop_all()
    out["seconds"] = round(now() - started, 1)
    return emit(f"scenarios[{mode}]", out, "; ".join(f"{k}: {brief(k, v)}" for k, v in out.items()
                                                     if isinstance(v, dict)))


def wanted(name: str, shape: dict, only: tuple[str, ...]) -> bool:
    """Whether `run_mode` runs scenario `name`: asked for, in the profile (agent, faults, churn may
    be left out), and its nodes there (mass leave and empty pool leave the burst's nodes)."""
    in_profile = {"agent": bool(shape["agents"]), "faults": shape["faults"], "churn": bool(shape["churn"])}
    needs_burst = name in ("mass_leave", "empty_pool")
    return name in only and in_profile.get(name, True) and (not needs_burst or "burst" in only)


def _guarded(step) -> dict:
    try:
        return step()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=3)}


def brief(name: str, result: dict) -> str:
    """One short phrase per scenario for the console."""
    if "error" in result:
        return f"FAILED ({result['error']})"
    if name == "join_leave":
        return (f"join p50 {result['join_ms']['p50']} ms, leave p50 {result['leave_ms']['p50']} ms, "
                f"{result['client_errors']} errors, {result['timeouts']} timeouts")
    if name == "burst":
        return (f"all routable {result['all_routable_ms']} ms, {result['knew_to_routable_ms']} ms after the LB "
                f"knew all, {result['reloads']} reloads, exact {result['upstream_exact']}")
    if name == "mass_leave":
        return (f"converged {result['converged_ms']} ms, exact {result['upstream_exact']}, "
                f"stale {len(result['stale'])}")
    if name == "agent":
        return (f"boot median {result['boot_ms_median']} ms, last request to a stopping node after "
                f"{result['out_of_rotation_ms_max']} ms, {result['failed_during_stop']} failed")
    if name == "faults" and "closing" in result:
        return "; ".join(f"{k}: out after {v['removed_ms']} ms, {v['failed']}/{v['requests']} failed"
                         for k, v in result.items())
    if name == "churn":
        return (f"{result['duration_s']:g} s, {result['membership_events']} events, {result['reloads']} reloads, "
                f"failed "
                f"{result['fresh']['failed']}/{result['fresh']['requests']} fresh, "
                f"{result['keepalive']['failed']}/{result['keepalive']['requests']} keep-alive")
    if name == "empty_pool":
        return f"503 page {result['page_503_ms']} ms, config valid {result['config_valid']}"
    return ""
