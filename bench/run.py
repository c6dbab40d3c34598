#!/usr/bin/env python3
"""`make bench` / `make bench-full`: lbsync (`handle`, `run`) side by side with a demo-style peer.

Runs the hook cost benchmark (bench_handle.py) and then the same scenarios (scenarios.py) against
three load balancers built alike: lbsync's Serf hook, lbsync's daemon, and the naive handler in
bench/peers/. Prints each scenario's JSON and a one-line summary as it goes, then one table;
the whole run is written as JSON under bench/results/ (git ignores it). Absolute figures on a
shared machine are noisy; the ratios, measured in the same run, are what to compare.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, format_table, ratio, write_results

COLUMNS = ("handle", "run", "naive")
# (label, scenario, path into its result); a list length is shown for list values
SCENARIO_ROWS = (
    ("join -> routable p50 (ms)", "join_leave", ("join_ms", "p50")),
    ("join -> routable p90 (ms)", "join_leave", ("join_ms", "p90")),
    ("join -> routable max (ms)", "join_leave", ("join_ms", "max")),
    ("graceful leave -> unrouted p50 (ms)", "join_leave", ("leave_ms", "p50")),
    ("graceful leave -> unrouted p90 (ms)", "join_leave", ("leave_ms", "p90")),
    ("join/leave trials: failed requests", "join_leave", ("client_errors",)),
    ("agent boot -> first request, median (ms)", "agent", ("boot_ms_median",)),
    ("agent SIGTERM -> last request to it, max (ms)", "agent", ("out_of_rotation_ms_max",)),
    ("agent SIGTERM: failed requests", "agent", ("failed_during_stop",)),
    ("hard kill, backend closing -> out (ms)", "faults", ("closing", "removed_ms")),
    ("hard kill, backend closing: failed req (% of 12 s)", "faults", ("closing", "failed_pct")),
    ("hard kill, backend hanging -> out (ms)", "faults", ("hanging", "removed_ms")),
    ("hard kill, backend hanging: failed req (% of 12 s)", "faults", ("hanging", "failed_pct")),
    ("churn 60 s: nginx reloads", "churn", ("reloads",)),
    ("churn 60 s: failed fresh-connection req", "churn", ("fresh", "failed")),
    ("churn 60 s: failed keep-alive req", "churn", ("keepalive", "failed")),
    ("burst of 50 joins -> all routable (ms)", "burst", ("all_routable_ms",)),
    ("burst of 50 joins: nginx reloads", "burst", ("reloads",)),
    ("burst of 50 joins: upstream exact", "burst", ("upstream_exact",)),
    ("mass leave to 3 -> converged (ms)", "mass_leave", ("converged_ms",)),
    ("mass leave to 3: stale servers", "mass_leave", ("stale",)),
    ("mass leave to 3: upstream exact", "mass_leave", ("upstream_exact",)),
    ("empty pool -> 503 page (ms)", "empty_pool", ("page_503_ms",)),
    ("empty pool: nginx config valid", "empty_pool", ("config_valid",)),
    ("empty pool: requests to departed nodes (of 6)", "empty_pool", ("routed_to_departed",)),
)


def dig(data: dict | None, path: tuple[str, ...]):
    """data[p0][p1]...; None when any step is missing; a list becomes its length."""
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return len(data) if isinstance(data, list) else data


def scenario_rows(modes: dict[str, dict]) -> list[list]:
    """One row per scenario figure: handle, run, naive, naive/handle, naive/run.

    A timed figure that a mode never reached within its deadline shows as 'never'.
    """
    rows = []
    for label, scenario, path in SCENARIO_ROWS:
        values = []
        for column in COLUMNS:
            result = (modes.get(column) or {}).get(scenario)
            value = dig(result, path)
            if value is None and result is not None and "error" not in result and label.endswith("(ms)"):
                value = "never"
            values.append(value)
        if all(v is None for v in values):
            continue  # a scenario this profile does not run
        numbers = [v if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in values]
        rows.append([label, *values, ratio(numbers[2], numbers[0]), ratio(numbers[2], numbers[1])])
    return rows


def handle_rows(cost: dict | None) -> list[list]:
    """The hook's own cost (issue 2): only the handle column applies."""
    if not cost or "real_agents" not in cost:
        return []
    agents, memory = cost["real_agents"], cost["in_memory"]
    rows = []
    for size, paths in [(k, v) for k, v in agents.items() if k.isdigit()] + list(memory.items()):
        where = "real agent" if size in agents else "from a file"
        rows.append([f"handle, {size} members ({where}): unchanged p50 (ms)", paths["unchanged_ms"]["p50"]])
        rows.append([f"handle, {size} members ({where}): changed p50 (ms)", paths["changed_ms"]["p50"]])
        if "in_process_unchanged_ms" in paths:
            both = (paths["in_process_unchanged_ms"]["p50"], paths["in_process_changed_ms"]["p50"])
            rows.append([f"reconcile() in process, {size}: unchanged/changed p50 (ms)", f"{both[0]}/{both[1]}"])
    start = agents["start"]
    rows.append(["handle start, non-member event p50 (ms)", start["handle_non_member_event_ms"]["p50"]])
    rows.append(["bare python start p50 (ms)", start["python_bare_ms"]["p50"]])
    rows.append(["jinja2 imported on unchanged path", agents["jinja"]["jinja2_on_unchanged_path"]])
    idle = agents.get("idle_daemon") or {}
    if "lbsync_run" in idle:
        members = idle["members"]
        rows.append([f"idle with {members} members: CPU % of one core", None,
                     idle["lbsync_run"]["cpu_pct_of_one_core"]])
        rows.append([f"idle with {members} members: RSS (MB)", None, idle["lbsync_run"]["rss_mb"]])
    return [row + [None] * (6 - len(row)) for row in rows]


def scale_rows(scale: dict | None) -> list[list]:
    """`--full`'s 100/200-agent bursts: one row per figure and size, a column per mode."""
    rows = []
    sizes = sorted({int(key.rpartition("-")[2]) for key in scale or {}})
    for size in sizes:
        for label, path in (("all routable (ms)", ("all_routable_ms",)), ("nginx reloads", ("reloads",)),
                            ("upstream exact", ("upstream_exact",))):
            values = [dig((scale or {}).get(f"{mode}-{size}"), path) for mode in COLUMNS]
            numbers = [v if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in values]
            rows.append([f"{size} agents join at once: {label}", *values,
                         ratio(numbers[2], numbers[0]), ratio(numbers[2], numbers[1])])
        cpu = [sum(((scale or {}).get(f"{mode}-{size}") or {}).get("lb_cpu_seconds", {}).values()) or None
               for mode in COLUMNS]
        rows.append([f"{size} agents join at once: LB CPU (s)", *cpu,
                     ratio(cpu[2], cpu[0]), ratio(cpu[2], cpu[1])])
    return rows


def render_table(cost: dict | None, modes: dict[str, dict], scale: dict | None = None) -> str:
    headers = ("scenario", "lbsync handle", "lbsync run", "naive peer", "naive/handle", "naive/run")
    return format_table(headers, scenario_rows(modes) + scale_rows(scale) + handle_rows(cost))


def daemon_available() -> str | None:
    """None when `lbsync run` exists and starts its help; else why it is left out."""
    done = subprocess.run([sys.executable, "-m", "lbsync", "run", "--help"], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    return None if done.returncode == 0 else f"`lbsync run --help` exited {done.returncode}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="the quick profile (default; <= 10 min)")
    group.add_argument("--full", action="store_true", help="more trials and repeats")
    group.add_argument("--smoke", action="store_true", help="a few trials of each: checks the harness, "
                       "not lbsync (about a minute a mode)")
    parser.add_argument("--modes", default=",".join(COLUMNS), help="comma-separated: handle,run,naive")
    parser.add_argument("--skip-cost", action="store_true", help="skip the hook cost benchmark")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    profile = "full" if args.full else "smoke" if args.smoke else "quick"
    try:  # the benchmarks build their LBs with the test kit
        import bench_handle
        import scenarios
        from kit.procs import require
    except ModuleNotFoundError as exc:
        print(f"bench: {exc}: run `make bench`, or put the checkout and tests/ on PYTHONPATH "
              "(PYTHONPATH=.:tests)", file=sys.stderr)
        return os.EX_UNAVAILABLE

    try:
        for binary in ("serf", "nginx"):
            require(binary)  # a missing binary is a failure, never a silent skip
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return os.EX_UNAVAILABLE
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(COLUMNS)
    if unknown:
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    missing_daemon = daemon_available() if "run" in modes else None
    if missing_daemon:
        print(f"lbsync run left out: {missing_daemon}", flush=True)
        modes.remove("run")
    workdir = Path(tempfile.mkdtemp(prefix="lbsync-bench-"))
    started = time.monotonic()
    data: dict = {"profile": profile, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "host": {"cpus": os.cpu_count(), "load": os.getloadavg()}, "modes": {}}
    if missing_daemon:
        data["run_left_out"] = missing_daemon
    if not args.skip_cost:
        print("-- hook cost (issue 2)", flush=True)
        data["handle_cost"] = _guarded(lambda: bench_handle.main(profile, workdir / "cost"))
    for mode in modes:
        print(f"-- scenarios against {mode}", flush=True)
        data["modes"][mode] = scenarios.run_mode(mode, profile, workdir / mode)
    if profile == "full":
        import scenario_scale

        print(f"-- {', '.join(map(str, scenario_scale.SIZES))} agents at once", flush=True)
        data["scale"] = scenario_scale.run_scale(modes, scenario_scale.SIZES, workdir / "scale")
    data["seconds"] = round(time.monotonic() - started, 1)
    data["host"]["load_after"] = os.getloadavg()
    table = render_table(data.get("handle_cost"), data["modes"], data.get("scale"))
    load = ", ".join(f"{x:.1f}" for x in data["host"]["load"])
    print(f"\nlbsync bench ({profile}, {data['seconds']} s on {os.cpu_count()} CPUs, load average at start "
          f"{load}; ratios > 1: the naive peer took longer, reloaded more or failed more)\n{table}")
    path = write_results(profile, {**data, "table": table.splitlines()})
    print(f"\nresults: {path}")
    if args.keep:
        print(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _guarded(step) -> dict:
    try:
        return step()
    except Exception as exc:  # one failed benchmark must not hide the others
        print(f"   FAILED: {type(exc).__name__}: {exc}", flush=True)
        return {"error": f"{type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    sys.exit(main())
