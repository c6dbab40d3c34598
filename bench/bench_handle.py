"""Issue 2's benchmark: what one `lbsync handle` run costs, unchanged vs changed, by pool size,
with each data-plane driver; and what `lbsync run` costs when nothing happens.

Serf runs event handlers serially inside its event loop, so every millisecond a hook spends
delays the next membership event. Measured here, for the reload and the live driver alike:
  * `python -m lbsync handle` wall time at 1, 10 and 100 members read from a real Serf agent
    (100 real `serf agent` processes on 127.0.3.x; about 45 % of one core and 1.5 GB together);
  * the same hook at 1,000 and 10,000 members from a file (bench/fake_handle.py), plus the
    in-process `reconcile()` with an in-memory source (what `lbsync run` pays per reconcile);
  * the unchanged path (snapshot, select, then: reload driver, the fingerprint (no Jinja2, no
    write, no reload); live driver, also a read-back of the pool's digest from nginx) against the
    changed path (reload driver: render, nginx -t on the candidate, install, nginx -t, reload of
    a real nginx; live driver: pool file, push, read-back, no reload). The changed path is forced
    by a placeholder upstream file (reload) or by pushing an empty pool to nginx first (live);
  * whether Jinja2 is imported on the unchanged path (`python -X importtime`), and the
    interpreter's start cost for a non-member event, which every hook run pays before anything;
  * `lbsync run`'s CPU and RSS over an idle window at 100 members, with each driver (shipped
    defaults: Serf's `stats` every 20 ms, the member list when it moves or every 250 ms).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, emit, summary, timed
from kit.net import wait_until
from kit.nginx import Nginx, start_nginx
from kit.procs import Processes
from kit.records import web_records
from kit.serfnode import start_serf
from kit.source import ListSource

PROFILES = {  # repeats of (unchanged, changed) runs per size and driver
    "smoke": {"unchanged": 3, "changed": 2, "start": 3, "agents": (1, 3), "memory": (100,), "idle": 1.0},
    "quick": {"unchanged": 7, "changed": 5, "start": 9, "agents": (1, 100), "memory": (10000,), "idle": 10.0},
    "full": {"unchanged": 40, "changed": 15, "start": 40, "agents": (1, 10, 100), "memory": (1000, 10000),
             "idle": 30.0},
}
DRIVERS = ("reload", "live")
CHANGED = {"reload": "nginx reloaded", "live": "no reload"}  # what the changed path logs
HANDLE = [sys.executable, "-m", "lbsync", "handle"]
FAKE_HANDLE = [sys.executable, str(Path(__file__).resolve().parent / "fake_handle.py")]
EVENT_LINE = "web1\t127.0.3.1\tweb\trole=web,port=8080\n"
PLACEHOLDER = "upstream lbs_backend { server 127.0.0.1:1 down; }  # forces the changed path\n"


def run_hook(argv: list[str], env: dict, expect: str, output: bool = False):
    """Wall time of one hook run (or, with `output`, what it logged); fails loudly when it did
    not take the expected path."""
    seconds, done = timed(subprocess.run, argv, input=EVENT_LINE, env=env, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    if done.returncode != 0 or expect not in done.stderr:
        raise RuntimeError(f"{' '.join(argv[-2:])} exited {done.returncode} without {expect!r}: "
                           f"{done.stderr.strip()[-500:]}")
    return done.stderr if output else seconds


def measure_paths(argv: list[str], env: dict, nginx: Nginx, repeats: dict, driver: str) -> dict:
    """Unchanged and changed wall times of the hook with `driver`, after one run that converges
    nginx to it (switching drivers changes the structure: one reload, not timed)."""
    env = {**env, "LBSYNC_DATA_PLANE": driver}
    converge(argv, env)
    unchanged = [run_hook(argv, env, "unchanged") for _ in range(repeats["unchanged"])]
    changed = []
    for _ in range(repeats["changed"]):
        force_change(nginx, driver)
        changed.append(run_hook(argv, env, CHANGED[driver]))
    return {"unchanged_ms": summary(unchanged), "changed_ms": summary(changed)}


def converge(argv: list[str], env: dict, runs: int = 3) -> None:
    """Run the hook until it finds nothing to change (a driver switch takes one run; a pool that
    vanished at once is held by the collapse guard, which can take two)."""
    for _ in range(runs):
        if "unchanged" in run_hook(argv, env, "", output=True):
            return
    raise RuntimeError(f"{' '.join(argv[-2:])} did not converge in {runs} runs")


def force_change(nginx: Nginx, driver: str) -> None:
    """Make the next run take the changed path: a placeholder upstream file (reload driver), or
    an empty pool pushed to nginx so that its digest differs from the plan's (live driver)."""
    if driver == "reload":
        nginx.upstream.write_text(PLACEHOLDER)
        return
    from lbsync import control

    document = json.dumps({"version": 1, "digest": "0" * 32, "upstream": "lbs_backend", "backends": []})
    status, reply = control.call(str(nginx.control_socket), "PUT", "/pools/lbs_backend", document.encode())
    if status != 200:
        raise RuntimeError(f"could not push the placeholder pool: HTTP {status} {reply}")


def jinja_imported(argv: list[str], env: dict, nginx: Nginx, driver: str) -> dict:
    """Which path imports Jinja2, read from the interpreter's own import log."""
    env = {**env, "LBSYNC_DATA_PLANE": driver}

    def imports(expect: str) -> bool:
        done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], input=EVENT_LINE, env=env,
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        if expect not in done.stderr:
            raise RuntimeError(f"importtime run did not take the {expect!r} path: {done.stderr[-300:]}")
        return "jinja2" in parse_importtime(done.stderr)

    converge(argv, env)
    unchanged = imports("unchanged")
    force_change(nginx, driver)
    return {"jinja2_on_unchanged_path": unchanged, "jinja2_on_changed_path": imports(CHANGED[driver])}


def start_cost(env: dict, repeats: int) -> dict:
    """The fixed price of a hook: a bare interpreter, and `lbsync handle` for a non-member event."""
    bare = [timed(subprocess.run, [sys.executable, "-c", "pass"], check=True)[0] for _ in range(repeats)]
    user_env = {**env, "SERF_EVENT": "user"}
    hook = [timed(subprocess.run, HANDLE, env=user_env, check=True, cwd=ROOT,
                  stdin=subprocess.DEVNULL, capture_output=True)[0] for _ in range(repeats)]
    return {"python_bare_ms": summary(bare), "handle_non_member_event_ms": summary(hook),
            "slowest_imports_ms": slowest_imports(user_env)}


def slowest_imports(env: dict, top: int = 8) -> dict[str, float]:
    """Modules with the largest self import time on the hook's start path, from -X importtime."""
    done = subprocess.run([sys.executable, "-X", "importtime", *HANDLE[1:]], env=env, cwd=ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    return dict(sorted(parse_importtime(done.stderr).items(), key=lambda kv: -kv[1])[:top])


def parse_importtime(text: str) -> dict[str, float]:
    """`-X importtime` stderr -> {module: self milliseconds}."""
    out = {}
    for line in text.splitlines():
        head, _, name = line.rpartition("|")
        fields = head.replace("import time:", "").split("|")
        if line.startswith("import time:") and fields[0].strip().isdigit():
            out[name.strip()] = round(int(fields[0]) / 1000, 2)
    return out


def lb_env(nginx: Nginx, workdir: Path, rpc_addr: str) -> dict:
    """The hook's environment. Bytecode is cached (under workdir, not in the repository), as on
    an installed host: without it every run would recompile lbsync's sources."""
    (workdir / "lbsync.toml").write_text("")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SERF_EVENT": "member-join",
           "PYTHONPYCACHEPREFIX": str(workdir / "pycache"), **nginx.settings_env(workdir, rpc_addr)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def real_agents(procs: Processes, workdir: Path, nginx: Nginx, repeats: dict) -> dict:
    """Grow a real cluster to each size and time the hook against the LB agent at each step."""
    lb = start_serf(procs, "lb", "127.0.0.1", {"role": "lb"}, extra=["-log-level", "warn"])
    env = lb_env(nginx, workdir, lb.rpc_addr)
    out, started = {}, 0
    for size in repeats["agents"]:
        for i in range(started, size):
            start_serf(procs, f"web{i + 1}", f"127.0.3.{i + 1}", {"role": "web", "port": "8080"},
                       join=lb.bind_addr, extra=["-log-level", "warn"])
        started = size
        wait_until(lambda: _alive_web(lb.rpc_addr) >= size, 60, f"{size} web members at the LB agent")
        out[str(size)] = {driver: measure_paths(HANDLE, env, nginx, repeats, driver) for driver in DRIVERS}
        print(f"   handle, {size} real members: {_brief(out[str(size)])}", flush=True)
    out["jinja"] = {driver: jinja_imported(HANDLE, env, nginx, driver) for driver in DRIVERS}
    out["start"] = start_cost(env, repeats["start"])
    out["idle_daemon"] = {"window_s": repeats["idle"], "members": _alive_web(lb.rpc_addr)}
    for driver in DRIVERS:
        out["idle_daemon"][driver] = idle_daemon(procs, {**env, "LBSYNC_DATA_PLANE": driver}, lb, repeats["idle"])
    return out


def idle_daemon(procs: Processes, env: dict, lb, window: float) -> dict:
    """CPU and RSS of `lbsync run` (shipped defaults) following the settled cluster, and of the
    LB's Serf agent over the same window: what the daemon costs when nothing happens."""
    import psutil

    daemon = procs.start(f"lbsync-run-idle-{env['LBSYNC_DATA_PLANE']}", [sys.executable, "-m", "lbsync", "run"], env)
    wait_until(lambda: "unchanged" in daemon.output() or "updated" in daemon.output() or not daemon.alive(),
               30, "lbsync run to reconcile once")
    time.sleep(1.0)  # past start-up: imports, the first reconcile and its writes (workload shape)
    watched = {"lbsync_run": psutil.Process(daemon.pid), "lb_serf_agent": psutil.Process(lb.proc.pid)}
    before = {name: sum(p.cpu_times()[:2]) for name, p in watched.items()}
    time.sleep(window)  # the measurement window itself
    out = {name: {"cpu_pct_of_one_core": round(100 * (sum(p.cpu_times()[:2]) - before[name]) / window, 2),
                  "rss_mb": round(p.memory_info().rss / 2**20, 1)} for name, p in watched.items()}
    daemon.stop()
    return out


def in_memory(workdir: Path, nginx: Nginx, repeats: dict) -> dict:
    """The hook (fresh interpreter, members from a file) and in-process reconcile() at big sizes."""
    import msgpack

    from lbsync.layers import load
    from lbsync.sync import reconcile

    cluster = workdir / "from-file"  # a state of its own: no memory of the real agents' pool
    cluster.mkdir(parents=True, exist_ok=True)
    env = lb_env(nginx, cluster, "127.0.0.1:1")
    out: dict = {}
    for size in repeats["memory"]:
        records = web_records(size)
        members_file = workdir / f"members-{size}.msgpack"
        members_file.write_bytes(msgpack.packb({"Members": records}))
        fake_env = {**env, "BENCH_FAKE_MEMBERS": str(members_file), "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
        out[str(size)] = {}
        for driver in DRIVERS:
            hook = measure_paths(FAKE_HANDLE, fake_env, nginx, repeats, driver)
            settings, source = load(env={**env, "LBSYNC_DATA_PLANE": driver}), ListSource(records)
            unchanged = [timed(reconcile, settings, source)[0] for _ in range(repeats["unchanged"])]
            changed = []
            for _ in range(repeats["changed"]):
                force_change(nginx, driver)
                changed.append(timed(reconcile, settings, source)[0])
            out[str(size)][driver] = {**hook, "in_process_unchanged_ms": summary(unchanged),
                                      "in_process_changed_ms": summary(changed)}
        print(f"   handle, {size} members from a file: {_brief(out[str(size)])}", flush=True)
    return out


def _alive_web(rpc_addr: str) -> int:
    from lbsync.serf import SerfClient

    with SerfClient(rpc_addr) as client:
        return len(client.members_filtered(tags={"role": "web"}, status="alive"))


def _brief(by_driver: dict) -> str:
    return "; ".join(f"{driver}: unchanged p50 {paths['unchanged_ms']['p50']} ms, changed p50 "
                     f"{paths['changed_ms']['p50']} ms" for driver, paths in by_driver.items())


def main(profile: str, workdir: Path) -> dict:
    """Run the whole benchmark; every process is stopped by PID whatever happens."""
    repeats = PROFILES[profile]
    procs = Processes(workdir)
    try:
        nginx = start_nginx(procs, workdir / "nginx")
        started = time.monotonic()
        result = {"profile": profile, "real_agents": real_agents(procs, workdir, nginx, repeats),
                  "in_memory": in_memory(workdir, nginx, repeats)}
        result["seconds"] = round(time.monotonic() - started, 1)
    finally:
        procs.stop_all()
    agents, memory = result["real_agents"], result["in_memory"]
    real, big = str(repeats["agents"][-1]), str(repeats["memory"][-1])
    idle = agents["idle_daemon"]
    line = (f"handle p50 ms unchanged/changed, reload | live: {real} real members "
            + " | ".join(f"{agents[real][d]['unchanged_ms']['p50']}/{agents[real][d]['changed_ms']['p50']}"
                         for d in DRIVERS)
            + f"; {big} from a file "
            + " | ".join(f"{memory[big][d]['unchanged_ms']['p50']}/{memory[big][d]['changed_ms']['p50']}"
                         for d in DRIVERS)
            + f"; interpreter+CLI start {agents['start']['handle_non_member_event_ms']['p50']}; idle lbsync run "
            + " | ".join(f"{idle[d]['lbsync_run']['cpu_pct_of_one_core']} %" for d in DRIVERS))
    return emit("handle_cost", result, line)


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    main("full" if args.full else "quick", Path(tempfile.mkdtemp(prefix="lbsync-bench-")))
