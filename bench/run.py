#!/usr/bin/env python3
"""`make bench` / `make bench-full`: lbsync side by side with a demo-style peer, in one run.

Runs the hook cost benchmark (bench_handle.py), then the same scenarios (scenarios.py) against
five load balancers built alike: lbsync's Serf hook and lbsync's daemon, each with the reload
driver and with the live driver, and the naive handler in bench/peers/; then the throughput of
the live data plane against a static upstream (scenario_throughput.py) and the fault suite
(faultsuite.py). Prints each part's JSON and a one-line summary as it goes, then the tables; the
whole run is written as JSON under bench/results/ (git ignores it). Absolute figures on a shared
machine are noisy; the ratios, measured in the same run, are what to compare.
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

from common import ROOT, SCENARIOS, format_table, ratio, write_results

COLUMNS = ("handle", "run", "handle-live", "run-live", "naive")
LBSYNC = COLUMNS[:4]
HEADERS = ("scenario", *COLUMNS, "n/handle", "n/run", "n/h-live", "n/r-live", "handle/h-live", "run/r-live")
LEGEND = ("n/X: the naive peer's figure over column X's; handle/h-live, run/r-live: the reload driver's "
          "over the live driver's (> 1: the denominator took less time, reloaded less or failed less). "
          "Read timeout: the kit's proxy_read_timeout (installed hosts: 10 s).")
# (label, scenario, path into its result); a list length is shown for list values. Rows in
# NO_RATIOS describe the workload or Serf, not what follows it: their ratios would mislead.
SCENARIO_ROWS = (
    ("join -> routable p50 (ms)", "join_leave", ("join_ms", "p50")),
    ("join -> routable p90 (ms)", "join_leave", ("join_ms", "p90")),
    ("join -> routable max (ms)", "join_leave", ("join_ms", "max")),
    ("graceful leave -> unrouted p50 (ms)", "join_leave", ("leave_ms", "p50")),
    ("graceful leave -> unrouted p90 (ms)", "join_leave", ("leave_ms", "p90")),
    ("join/leave trials: failed requests", "join_leave", ("client_errors",)),
    ("burst of 50 joins -> all routable (ms)", "burst", ("all_routable_ms",)),
    ("burst: LB agent knew all 50 after (ms)", "burst", ("lb_knew_all_ms",)),
    ("burst: LB knew all -> all routable (ms)", "burst", ("knew_to_routable_ms",)),
    ("burst: LB knew all -> in nginx's pool (ms)", "burst", ("knew_to_pool_ms",)),
    ("burst: nginx reloads", "burst", ("reloads",)),
    ("burst: failed requests", "burst", ("client_errors",)),
    ("burst: upstream exact", "burst", ("upstream_exact",)),
    ("churn {s} s: membership events", "churn", ("membership_events",)),
    ("churn {s} s: nginx reloads", "churn", ("reloads",)),
    ("churn {s} s: failed keep-alive req (8 conns)", "churn", ("keepalive", "failed")),
    ("churn {s} s: keep-alive requests sent", "churn", ("keepalive", "requests")),
    ("churn {s} s: failed fresh-connection req", "churn", ("fresh", "failed")),
    ("churn {s} s: fresh-connection requests sent", "churn", ("fresh", "requests")),
    ("hard kill, backend closing -> out (ms)", "faults", ("closing", "removed_ms")),
    ("hard kill, backend closing: failed req", "faults", ("closing", "failed")),
    ("hard kill, backend hanging -> out (ms)", "faults", ("hanging", "removed_ms")),
    ("hard kill, backend hanging: failed req (read timeout 2 s)", "faults", ("hanging", "failed")),
    ("hard kill, backend hanging: failed (% of 12 s at 50/s)", "faults", ("hanging", "failed_pct")),
    ("agent boot -> first request, median (ms)", "agent", ("boot_ms_median",)),
    ("agent SIGTERM -> last request to it, max (ms)", "agent", ("out_of_rotation_ms_max",)),
    ("agent SIGTERM: failed requests", "agent", ("failed_during_stop",)),
    ("mass leave to 3 -> converged (ms)", "mass_leave", ("converged_ms",)),
    ("mass leave to 3: stale servers", "mass_leave", ("stale",)),
    ("mass leave to 3: upstream exact", "mass_leave", ("upstream_exact",)),
    ("mass leave to 3: LB's Serf settled the leavers (s)", "mass_leave", ("serf_settled_s",)),
    ("empty pool -> 503 page (ms)", "empty_pool", ("page_503_ms",)),
    ("empty pool: nginx config valid", "empty_pool", ("config_valid",)),
    ("empty pool: requests to departed nodes (of 6)", "empty_pool", ("routed_to_departed",)),
)


NO_RATIOS = {"burst: LB agent knew all 50 after (ms)", "churn {s} s: membership events",
             "churn {s} s: keep-alive requests sent", "churn {s} s: fresh-connection requests sent"}


def dig(data: dict | None, path: tuple[str, ...]):
    """data[p0][p1]...; None when any step is missing; a list becomes its length."""
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return len(data) if isinstance(data, list) else data


def _number(value) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def with_ratios(label: str, values: dict[str, object], ratios: bool = True) -> list:
    """One table row: the label, a value per column (missing: None), then the ratios (or none)."""
    cells = [values.get(column) for column in COLUMNS]
    n = {column: _number(values.get(column)) if ratios else None for column in COLUMNS}
    ratios = [ratio(n["naive"], n[column]) for column in LBSYNC]
    ratios += [ratio(n["handle"], n["handle-live"]), ratio(n["run"], n["run-live"])]
    return [label, *cells, *ratios]


def scenario_rows(modes: dict[str, dict]) -> list[list]:
    """One row per scenario figure, a column per mode, then the ratios.

    A timed figure that a mode never reached within its deadline shows as 'never'.
    """
    seconds = next((dig(m.get("churn"), ("duration_s",)) for m in modes.values()
                    if dig(m.get("churn"), ("duration_s",))), None)
    rows = []
    for label, scenario, path in SCENARIO_ROWS:
        values = {}
        for column in COLUMNS:
            result = (modes.get(column) or {}).get(scenario)
            value = dig(result, path)
            if value is None and result is not None and "error" not in result and label.endswith("(ms)") \
                    and not (path[0] == "knew_to_pool_ms" and not column.endswith("-live")):
                value = "never"
            values[column] = value
        if all(v is None for v in values.values()):
            continue  # a scenario this profile does not run
        rows.append(with_ratios(label.format(s=f"{seconds:g}" if seconds else "?"), values, label not in NO_RATIOS))
    return rows


def handle_rows(cost: dict | None) -> list[list]:
    """The hook's own cost (issue 2) under the hook columns, one value per driver (reload under
    `handle`, live under `handle-live`); the idle daemon under `run` and `run-live`."""
    if not cost or "real_agents" not in cost:
        return []
    agents, memory = cost["real_agents"], cost["in_memory"]
    rows = []
    sizes = [(k, v, "real agent") for k, v in agents.items() if k.isdigit()]
    sizes += [(k, v, "from a file") for k, v in memory.items()]
    for size, by_driver, where in sizes:
        for path, what in (("unchanged_ms", "unchanged"), ("changed_ms", "changed")):
            values = {column: dig(by_driver.get(driver), (path, "p50"))
                      for column, driver in (("handle", "reload"), ("handle-live", "live"))}
            rows.append(with_ratios(f"handle, {size} members ({where}): {what} p50 (ms)", values))
        for path, what in (("in_process_unchanged_ms", "unchanged"), ("in_process_changed_ms", "changed")):
            values = {column: dig(by_driver.get(driver), (path, "p50"))
                      for column, driver in (("handle", "reload"), ("handle-live", "live"))}
            if any(v is not None for v in values.values()):
                rows.append(with_ratios(f"reconcile() in process, {size} members: {what} p50 (ms)", values))
    start = agents["start"]
    rows.append(with_ratios("handle start, non-member event p50 (ms)",
                            {"handle": start["handle_non_member_event_ms"]["p50"]}))
    rows.append(with_ratios("bare python start p50 (ms)", {"handle": start["python_bare_ms"]["p50"]}))
    jinja = agents["jinja"]
    rows.append(with_ratios("jinja2 imported on unchanged path", {
        "handle": dig(jinja, ("reload", "jinja2_on_unchanged_path")),
        "handle-live": dig(jinja, ("live", "jinja2_on_unchanged_path"))}))
    idle = agents.get("idle_daemon") or {}
    members = idle.get("members")
    for label, key in (("CPU % of one core", "cpu_pct_of_one_core"), ("RSS (MB)", "rss_mb")):
        values = {column: dig(idle.get(driver), ("lbsync_run", key))
                  for column, driver in (("run", "reload"), ("run-live", "live"))}
        if any(v is not None for v in values.values()):
            rows.append(with_ratios(f"lbsync run idle, {members} members: {label}", values))
    return rows


def scale_rows(scale: dict | None) -> list[list]:
    """`--full`'s 100-agent bursts: one row per figure and size, a column per mode."""
    rows = []
    sizes = sorted({int(key.rpartition("-")[2]) for key in scale or {}})
    for size in sizes:
        for label, path in (("all routable (ms)", ("all_routable_ms",)),
                            ("LB knew all -> all routable (ms)", ("knew_to_routable_ms",)),
                            ("nginx reloads", ("reloads",)), ("upstream exact", ("upstream_exact",))):
            values = {mode: dig((scale or {}).get(f"{mode}-{size}"), path) for mode in COLUMNS}
            rows.append(with_ratios(f"{size} agents join at once: {label}", values))
        cpu = {mode: sum(((scale or {}).get(f"{mode}-{size}") or {}).get("lb_cpu_seconds", {}).values()) or None
               for mode in COLUMNS}
        rows.append(with_ratios(f"{size} agents join at once: LB CPU (s)", cpu))
    return rows


def render_table(cost: dict | None, modes: dict[str, dict], scale: dict | None = None) -> str:
    return format_table(HEADERS, scenario_rows(modes) + scale_rows(scale) + handle_rows(cost))


def daemon_available() -> str | None:
    """None when `lbsync run` exists and starts its help; else why it is left out."""
    done = subprocess.run([sys.executable, "-m", "lbsync", "run", "--help"], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    return None if done.returncode == 0 else f"`lbsync run --help` exited {done.returncode}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="the quick profile (default; about 12 min)")
    group.add_argument("--full", action="store_true", help="more trials and repeats, 60 s churn, 100 agents")
    group.add_argument("--smoke", action="store_true", help="a few trials of each: checks the harness, "
                       "not lbsync")
    parser.add_argument("--modes", default=",".join(COLUMNS), help=f"comma-separated: {','.join(COLUMNS)}")
    parser.add_argument("--only", default="", help="comma-separated scenarios to run against each mode "
                        "(default all): " + ",".join(SCENARIOS))
    parser.add_argument("--skip-cost", action="store_true", help="skip the hook cost benchmark")
    parser.add_argument("--skip-scenarios", action="store_true", help="skip the side-by-side scenarios")
    parser.add_argument("--skip-throughput", action="store_true", help="skip the wrk throughput runs")
    parser.add_argument("--skip-faultsuite", action="store_true", help="skip the fault suite (issue 12)")
    parser.add_argument("--skip-pair", action="store_true", help="skip the LB pair failover (issue 16; "
                        "boots Debian hosts in containers)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    profile = "full" if args.full else "smoke" if args.smoke else "quick"
    try:  # the benchmarks build their LBs with the test kit
        import bench_handle
        import faultsuite
        import pair
        import scenario_throughput
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
    only = tuple(s for s in args.only.split(",") if s) or SCENARIOS
    if set(only) - set(SCENARIOS):
        parser.error(f"unknown scenario(s): {', '.join(sorted(set(only) - set(SCENARIOS)))}")
    missing_daemon = daemon_available() if any(m.startswith("run") for m in modes) else None
    if missing_daemon:
        print(f"lbsync run left out: {missing_daemon}", flush=True)
        modes = [m for m in modes if not m.startswith("run")]
    workdir = Path(tempfile.mkdtemp(prefix="lbsync-bench-"))
    started = time.monotonic()
    data: dict = {"profile": profile, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "host": {"cpus": os.cpu_count(), "load": os.getloadavg()}, "modes": {}, "seconds_by_part": {}}
    if missing_daemon:
        data["run_left_out"] = missing_daemon

    def part(name: str, step) -> dict:
        began = time.monotonic()
        result = _guarded(step)
        data["seconds_by_part"][name] = round(time.monotonic() - began, 1)
        return result

    if not args.skip_cost:
        print("-- hook cost (issue 2) and idle daemon, reload and live drivers", flush=True)
        data["handle_cost"] = part("handle_cost", lambda: bench_handle.main(profile, workdir / "cost"))
    for mode in [] if args.skip_scenarios else modes:
        print(f"-- scenarios against {mode}", flush=True)
        data["modes"][mode] = part(mode, lambda: scenarios.run_mode(mode, profile, workdir / mode, only))
    if not args.skip_throughput:
        print("-- throughput through the LB (wrk): live pool vs static upstream", flush=True)
        data["throughput"] = part("throughput", lambda: scenario_throughput.main(profile, workdir / "wrk"))
    if not args.skip_faultsuite:
        print("-- fault suite (issue 12)", flush=True)
        data["faultsuite"] = part("faultsuite", lambda: faultsuite.main(profile, modes, workdir / "faults"))
    if not args.skip_pair and profile != "smoke":
        print("-- LB pair: failover of the VIP between two LBs (issue 16)", flush=True)
        data["lb_pair"] = part("lb_pair", lambda: pair.main(profile))
    if profile == "full":
        import scenario_scale

        print(f"-- {', '.join(map(str, scenario_scale.SIZES))} agents at once", flush=True)
        data["scale"] = part("scale", lambda: scenario_scale.run_scale(modes, scenario_scale.SIZES,
                                                                      workdir / "scale"))
    data["seconds"] = round(time.monotonic() - started, 1)
    data["host"]["load_after"] = os.getloadavg()
    table = render_table(data.get("handle_cost"), data["modes"], data.get("scale"))
    extra = [scenario_throughput.render(data.get("throughput")), faultsuite.render(data.get("faultsuite")),
             pair.render(data.get("lb_pair"))]
    load = ", ".join(f"{x:.1f}" for x in data["host"]["load"])
    after = ", ".join(f"{x:.1f}" for x in data["host"]["load_after"])
    report = (f"\nlbsync bench ({profile}, {data['seconds']} s on {os.cpu_count()} CPUs, load average at start "
              f"{load}, at the end {after})\n{LEGEND}\n{table}\n" + "".join(f"\n{t}\n" for t in extra if t))
    print(report)
    path = write_results(profile, {**data, "table": report.splitlines()})
    print(f"results: {path}")
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
