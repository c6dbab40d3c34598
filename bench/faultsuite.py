"""The fault suite (issue 12): does lbsync hold under crashes, agent restarts and hostile peers?

One lab per column (lbsync run and the hook, each with the live driver, plus the crash case with
the reload driver), two web nodes `web1`, `web2` served by bench/multiweb.py, and these cases in
this order (each leaves the lab as it found it, but the last):
  crash      SIGKILL at the crash point between install and apply, during a `drain=1` change on
             web2: with the reload driver while nginx tests the live config (`nginx_bin` is
             bench/inject/nginx_kill_parent.sh), with the live driver as the pool is about to be
             pushed (the CLI is bench/inject/crash_at_push.py). Then the next run (`lbsync run`
             started again; in hook mode the next member event, a node of another role joining,
             which changes no pool) must repair: web2 gets no new request. Figures: requests web2
             got while lbsync was dead, time from the next run to the repair, requests after it.
  shadow     `aaa-shadow` joins on web1's IP:port with drain=1 (its name sorts first): web1 must
             keep its endpoint and its share of the traffic.
  squatter   `nobody` tries to take the lock file (flock on a read-only open; the lock's directory
             is made traversable for the case, so the file's own mode is what is tested) while a
             node joins: the join must be routed as usual.
  restart    the LB's Serf agent is SIGKILLed and started again under a request loop (fresh
             connections, 50 req/s), with its `-snapshot` (it rejoins whom it knew) and without
             one (it knows only itself until the web nodes' agents reconnect, up to Serf's 30 s
             reconnect interval): failed requests, seconds nginx routed to nobody (sampled every
             0.1 s), time until the agent knew the web nodes again. lbsync holds a pool that
             vanished without leave/fail evidence for `collapse_grace` (120 s by default).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from benchlab import BenchLab, WebNode, make_lab, nodes_for, now
from common import BENCH, emit, format_table
from kit.net import wait_until
from kit.procs import Processes, require
from kit.serfnode import start_serf
from scenario_faults import Load

INJECT = BENCH / "inject"
NGINX_WRAPPER = INJECT / "nginx_kill_parent.sh"
CRASH_CLI = INJECT / "crash_at_push.py"
SQUATTER = """
import fcntl, os, sys, time
try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError as exc:
    print("refused:", type(exc).__name__, exc.strerror, flush=True)
    sys.exit(0)
print("holding", flush=True)
time.sleep(60)
"""
REJOIN_DEADLINE = {"snapshot": 15.0, "no snapshot": 45.0}
AFTER_REJOIN = 2.0  # seconds of requests after the agent knew the web nodes again
# the cases each column runs, per profile; the reload columns only crash (the driver's own case)
CASES = {
    "smoke": {"run-live": ("crash", "shadow", "squatter", "restart-snapshot"), "run": ("crash",)},
    "quick": {"run-live": ("crash", "shadow", "squatter", "restart-snapshot", "restart-no-snapshot"),
              "handle-live": ("crash", "shadow", "squatter", "restart-snapshot"), "run": ("crash",),
              "handle": ("crash",)},
    "full": {"run-live": ("crash", "shadow", "squatter", "restart-snapshot", "restart-no-snapshot"),
             "handle-live": ("crash", "shadow", "squatter", "restart-snapshot", "restart-no-snapshot"),
             "run": ("crash",), "handle": ("crash",)},
}


# -- the lab -------------------------------------------------------------------------------------

def fault_lab(column: str, procs: Processes, workdir: Path, nodes: list[WebNode]) -> BenchLab:
    """A lab whose lbsync runs with both injectors armed by one trigger file (absent: inert), and
    whose LB agent keeps a snapshot from before the web nodes joined."""
    env = {"LBSYNC_NGINX_BIN": str(NGINX_WRAPPER), "BENCH_REAL_NGINX": require("nginx"),
           "BENCH_CRASH_TRIGGER": str(workdir / "crash.trigger"),
           "BENCH_CRASH_CONF": str(workdir / "nginx" / "nginx.conf")}
    handler = f"{sys.executable} {CRASH_CLI} handle" if column.startswith("handle") else None
    lab = make_lab(column, procs, workdir, nodes, env=env, handler=handler, daemon=False)
    lab.restart_lb_agent_as(snapshot=snapshot_path(lab))  # start_lb's agent has no snapshot
    if column.startswith("run"):
        start_daemon(lab)
    return lab


def snapshot_path(lab: BenchLab) -> Path:
    return lab.workdir / "lb.snapshot"


def trigger(lab: BenchLab) -> Path:
    return Path(lab.env["BENCH_CRASH_TRIGGER"])


def start_daemon(lab: BenchLab) -> None:
    """`lbsync run` through the crash injector (inert without its trigger file)."""
    lab.runs += 1
    lab.daemon = lab.procs.start(f"lbsync-run-{lab.runs}", [sys.executable, str(CRASH_CLI), "run"], lab.env)


def set_tag(node: WebNode, **tags: str) -> None:
    from lbsync.serf import SerfClient

    with SerfClient(node.serf.rpc_addr) as client:
        client.tags(set=tags)


def shares(lab: BenchLab, count: int) -> Counter:
    return Counter(lab.served() for _ in range(count))


def wait_streak(lab: BenchLab, done, deadline: float, streak: int = 10) -> float | None:
    """Seconds until `done(answer)` held for `streak` fresh requests in a row (None: deadline)."""
    start, run = now(), 0
    while now() - start < deadline:
        run = run + 1 if done(lab.served()) else 0
        if run >= streak:
            return now() - start
        time.sleep(0.005)
    return None


def lbsync_log(lab: BenchLab) -> str:
    """What lbsync logged: the daemon's log, or the hook's output in the LB agent's log."""
    return "".join(p.output() for p in lab.procs.started
                   if p.name.startswith("lbsync-run") or p.name.startswith("serf-lb-"))


def _said_about(lab: BenchLab, name: str) -> list[str]:
    """lbsync's own log lines that name `name` (the hook's appear in its Serf agent's log)."""
    lines = (ln.strip() for ln in lbsync_log(lab).splitlines())
    return [ln[ln.index("lbsync: "):] for ln in lines if "lbsync: " in ln and name in ln]


# -- the cases -----------------------------------------------------------------------------------

def crash(lab: BenchLab, web: list[WebNode], other: WebNode) -> dict:
    """SIGKILL between install and apply during a drain of web2; the next run must repair."""
    web1, web2 = web
    trigger(lab).write_text("")
    set_tag(web2, drain="1")
    hook = lab.column.startswith("handle")
    fired = wait_until(lambda: not trigger(lab).exists(), 15, "the crash injector to fire", interval=0.01)
    if not hook:
        wait_until(lambda: not lab.daemon.alive(), 10, "lbsync run to die", interval=0.01)
    time.sleep(0.3 if hook else 0.0)  # the hook's Serf agent notes the kill (workload shape)
    before = shares(lab, 20)[web2.name]
    reloads = lab.reloads()
    if hook:  # the next member event, one that changes no pool: a node of another role joins
        start_serf(lab.procs, other.name, other.ip, {"role": "db"}, join=lab.lb.bind_addr)
    else:
        start_daemon(lab)
    repaired = wait_streak(lab, lambda answer: answer == web1.name, 20)
    after = shares(lab, 20)[web2.name]
    out = {"fired": bool(fired), "to_drained_while_dead_of_20": before,
           "repair_ms": round(repaired * 1000, 1) if repaired is not None else None,
           "to_drained_after_repair_of_20": after, "reloads_in_repair": lab.reloads() - reloads}
    set_tag(web2, drain="0")  # back to two routed nodes for the next case
    wait_until(lambda: web2.name in shares(lab, 6), 20, "web2 routed again")
    out["held"] = repaired is not None and after == 0
    how = "next run" if not hook else "next member event"
    out["figure"] = (f"web2 (drain=1) got {before}/20 requests while lbsync was dead; {how} repaired it in "
                     f"{out['repair_ms']} ms; then {after}/20")
    return out


def shadow(lab: BenchLab, web: list[WebNode], other: WebNode) -> dict:
    """`aaa-shadow` on web1's endpoint with drain=1: web1 keeps its endpoint and its traffic."""
    web1 = web[0]
    before = shares(lab, 40)[web1.name]
    node = start_serf(lab.procs, "aaa-shadow", web1.ip, {"role": "web", "port": str(web1.port), "drain": "1"},
                      join=lab.lb.bind_addr)
    wait_until(lambda: "aaa-shadow" in lab.alive_web(), 10, "the shadow to be known")
    verdict = wait_until(lambda: _said_about(lab, "aaa-shadow"), 15, "lbsync's verdict on the shadow")
    time.sleep(0.5)  # a second reconcile, if any, lands (workload shape)
    after = shares(lab, 40)[web1.name]
    routed = web1.endpoint in lab.config_servers()
    line = next((ln for ln in _said_about(lab, "aaa-shadow") if "skip" in ln), "")
    node.proc.send(signal.SIGINT)
    wait_until(lambda: not node.proc.alive(), 15, "the shadow to leave")
    held = routed and after >= 10
    return {"held": held, "lbsync_said": verdict[:3], "web1_of_40_before": before,
            "web1_of_40_after": after, "web1_endpoint_routed": routed,
            "skip_line": line[:200],
            "figure": f"web1 got {before}/40 before, {after}/40 with the shadow; endpoint routed: {routed}; "
                      f"{'skipped: ' + line[line.find('aaa-shadow'):][:90] if line else 'no skip logged'}"}


def squatter(lab: BenchLab, web: list[WebNode], other: WebNode) -> dict:
    """`nobody` tries to hold the lock while a node joins (`sq4`): the join is routed as usual."""
    node = lab.nodes["sq4"]
    lock = Path(lab.env["LBSYNC_LOCK_FILE"])
    mode = oct(lock.stat().st_mode & 0o777) if lock.exists() else None
    opened = _traversable(lock.parent)
    proc = lab.procs.start("squatter", ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                        "/usr/bin/python3", "-c", SQUATTER, str(lock)])
    try:
        said = wait_until(lambda: proc.output().strip() or None, 10, "the squatter to try")
        lab.start_agent(node)
        lab.join(node)
        took = wait_streak(lab, lambda answer: answer == node.name, 15, streak=1)
        lab.leave(node)
        wait_until(lambda: node.endpoint not in lab.config_servers(), 20, "sq4 to leave")
    finally:
        proc.stop(signal.SIGKILL)
        for path, old in opened:
            path.chmod(old)
    held = took is not None and took < 5 and not said.startswith("holding")
    return {"held": held, "lock_mode": mode, "squatter": said,
            "join_routed_ms": round(took * 1000, 1) if took else None,
            "figure": f"lock file {mode}; nobody: {said}; a join during the squat routed in "
                      f"{round(took * 1000) if took else 'never'} ms"}


def _traversable(directory: Path) -> list[tuple[Path, int]]:
    """Let other users reach `directory` (o+x on it and its parents up to /tmp); the old modes."""
    changed = []
    for path in [directory, *directory.parents]:
        if str(path) in ("/", "/tmp"):
            break
        old = path.stat().st_mode & 0o7777
        if not old & 0o001:
            path.chmod(old | 0o001)
            changed.append((path, old))
    return changed


def restart(lab: BenchLab, web: list[WebNode], other: WebNode, snapshot: bool) -> dict:
    """The LB's Serf agent restarted under a request loop, with or without its snapshot."""
    kind = "snapshot" if snapshot else "no snapshot"
    names = {n.name for n in web}
    load, empty, sampling = Load(lab.nginx.port).start(), [0.0], threading.Event()
    sampler = threading.Thread(target=_sample_empty, args=(lab, empty, sampling), daemon=True)
    time.sleep(1.0)  # traffic before the fault (workload shape)
    sampler.start()
    start = now()
    lab.restart_lb_agent_as(snapshot_path(lab) if snapshot else None)
    rejoined = None
    while now() - start < REJOIN_DEADLINE[kind]:
        try:
            if names <= lab.alive_web():
                rejoined = now() - start
                break
        except Exception:  # the agent is starting
            pass
        time.sleep(0.05)
    time.sleep(AFTER_REJOIN)  # requests after the rejoin: the hold must end cleanly (workload shape)
    sampling.set()
    sampler.join(5)
    result = load.stop()
    routed = set(lab.config_servers()) >= {n.endpoint for n in web}
    held = result["failed"] == 0 and empty[0] == 0 and routed
    return {"held": held, "snapshot": snapshot, "rejoined_s": round(rejoined, 2) if rejoined is not None else None,
            "empty_pool_s": round(empty[0], 1), "pool_complete_after": routed, **result,
            "figure": f"{result['failed']}/{result['requests']} requests failed, {empty[0]:.1f} s of empty pool; "
                      f"the agent knew the web nodes again after "
                      f"{f'{rejoined:.1f} s' if rejoined is not None else f'> {REJOIN_DEADLINE[kind]:.0f} s'}"}


def _sample_empty(lab: BenchLab, empty: list[float], stopping: threading.Event, period: float = 0.1) -> None:
    while not stopping.wait(period):
        try:
            if not lab.config_servers():
                empty[0] += period
        except OSError:
            pass


RUNNERS = {
    "crash": crash, "shadow": shadow, "squatter": squatter,
    "restart-snapshot": lambda lab, web, other: restart(lab, web, other, True),
    "restart-no-snapshot": lambda lab, web, other: restart(lab, web, other, False),
}
TITLES = {
    "crash": "SIGKILL between install and {apply}, next run repairs",
    "shadow": "shadow member aaa-shadow (drain=1) on web1's IP:port",
    "squatter": "lock squatter (nobody holds the lock file)",
    "restart-snapshot": "LB Serf agent restarted with its snapshot",
    "restart-no-snapshot": "LB Serf agent restarted without a snapshot",
}


def run_column(column: str, cases: tuple[str, ...], workdir: Path) -> dict:
    procs = Processes(workdir)
    web = nodes_for("web", "127.0.12", 2)
    other = nodes_for("db", "127.0.12", 1, first=3)[0]  # a member of another role
    joiner = nodes_for("sq", "127.0.12", 1, first=4)  # joins during the squat
    out: dict = {}
    try:
        lab = fault_lab(column, procs, workdir, web + [other] + joiner)
        for node in web:
            lab.start_agent(node, join=True)
        wait_until(lambda: shares(lab, 8).keys() == {n.name for n in web}, 30, "web1 and web2 routed")
        for case in cases:
            try:
                out[case] = RUNNERS[case](lab, web, other)
            except Exception as exc:  # one case failing must not hide the others
                out[case] = {"held": False, "error": f"{type(exc).__name__}: {exc}",
                             "figure": f"harness error: {type(exc).__name__}: {str(exc)[:80]}"}
            print(f"   {column} {case}: {'held' if out[case]['held'] else 'FAILED'}: {out[case]['figure']}",
                  flush=True)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        procs.stop_all()
    return out


def main(profile: str, modes: list[str], workdir: Path) -> dict:
    """Every column's cases (those of `modes` that the profile has cases for)."""
    if os.geteuid() != 0:
        return emit("faultsuite", {"error": "needs root (the squatter runs as nobody)"}, "skipped")
    out = {column: run_column(column, cases, workdir / column)
           for column, cases in CASES[profile].items() if column in modes}
    held = sum(1 for cases in out.values() for c in cases.values() if isinstance(c, dict) and c.get("held"))
    total = sum(1 for cases in out.values() for c in cases.values() if isinstance(c, dict))
    return emit("faultsuite", out, f"{held}/{total} held")


def render(result: dict | None) -> str:
    """case | column | held/failed | figure."""
    if not result:
        return ""
    if "error" in result:
        return f"fault suite: {result['error']}"
    rows = []
    for column, cases in result.items():
        if "error" in cases:
            rows.append(["(lab)", column, "failed", cases["error"][:100]])
        for case, value in cases.items():
            if not isinstance(value, dict):
                continue
            apply = "push" if column.endswith("-live") else "reload"
            rows.append([TITLES[case].format(apply=apply), column, "held" if value["held"] else "FAILED",
                         value["figure"]])
    return format_table(("fault suite (issue 12)", "column", "held/failed", "figure"), rows, left=4)


if __name__ == "__main__":  # one column's cases by hand: faultsuite.py COLUMN [CASE ...]
    import tempfile

    chosen = sys.argv[1] if len(sys.argv) > 1 else "run-live"
    picked = tuple(sys.argv[2:]) or CASES["quick"][chosen]
    print(render({chosen: run_column(chosen, picked, Path(tempfile.mkdtemp(prefix="lbsync-faults-")))}))
