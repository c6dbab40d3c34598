"""Throughput through the LB (issue 11): the live data plane against a static nginx upstream.

One nginx LB (the kit's layout, Lua module loaded) serves two sites that differ only in their
upstream: the shipped site on its port proxies to lbsync's live upstream (`balancer_by_lua`, the
pool pushed by `lbsync handle`), and a copy of the same site on a second port proxies to a static
`upstream` block listing the same 4 backends. Both keep idle upstream connections (`keepalive`,
as lbsync's `keepalive` setting renders it), so the per-request cost of the balancer is not
hidden behind a TCP handshake per request. The backends are one nginx with a single worker
(bench/multiweb.py) answering at once.

`wrk` drives one site at a time over keep-alive connections; runs alternate ABBA (static, live,
live, static, ...) so a drift in the machine's load hits both alike; the figure is the median of
each side's runs. Besides requests per second, the LB's nginx workers' CPU time per request
(user+system from /proc, over each run) says what the balancer costs when the client, backends
and LB do not share the CPU the same way from run to run.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import multiweb
from common import emit, format_table, ratio
from kit.lb import start_lb
from kit.net import free_port, wait_until
from kit.nginx import READ_TIMEOUT
from kit.paths import TEMPLATES
from kit.procs import Processes, require
from kit.serfnode import start_serf

PROFILES = {  # runs a side (interleaved ABBA), seconds per wrk run, connections, upstream keepalives
    "smoke": {"runs": 2, "seconds": 1, "connections": 16, "keepalive": (16,)},
    "quick": {"runs": 20, "seconds": 1, "connections": 16, "keepalive": (16,)},
    "full": {"runs": 30, "seconds": 2, "connections": 16, "keepalive": (16, 0)},
}
BACKENDS = 4
REQUESTS_RE = re.compile(r"^\s*(\d+) requests in ", re.M)
RATE_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
ERRORS_RE = re.compile(r"^\s*(Non-2xx or 3xx responses|Socket errors):\s*(.+)$", re.M)


def parse_wrk(text: str) -> dict:
    """Requests, requests/s and error lines from wrk's report (pure: the checks read it)."""
    requests, rate = REQUESTS_RE.search(text), RATE_RE.search(text)
    if not requests or not rate:
        raise ValueError(f"not a wrk report: {text[-300:]!r}")
    return {"requests": int(requests.group(1)), "rps": float(rate.group(1)),
            "errors": {m.group(1): m.group(2).strip() for m in ERRORS_RE.finditer(text)}}


def abba(runs: int) -> list[str]:
    """static, live, live, static, ...: `runs` runs a side (pure)."""
    return [side for i in range(runs) for side in (("static", "live") if i % 2 == 0 else ("live", "static"))]


def paired_ratio(static: list[float], live: list[float]) -> float | None:
    """The median of live/static over the pairs run back to back (pure).

    This machine's speed drifts by more than the balancer costs (single runs of one side spread
    by a fifth), over seconds; a pair shares the machine's state, so its ratio does not drift."""
    ratios = [b / a for a, b in zip(static, live) if a > 0]
    return round(statistics.median(ratios), 3) if ratios else None


def static_site(port: int, backends: list[str], keepalive: int, error_root: str) -> str:
    """The shipped site on `port`, proxying to a static upstream of `backends` (same directives)."""
    from lbsync.render import render

    upstream = "upstream bench_static {\n" + "".join(f"    server {b};\n" for b in backends)
    upstream += (f"    keepalive {keepalive};\n" if keepalive else "") + "}\n"
    site = render(TEMPLATES / "lbs_site.conf.j2", {"listen": [f"127.0.0.1:{port}"], "upstream_name": "bench_static",
                                                   "read_timeout": READ_TIMEOUT, "error_root": error_root})
    return upstream + site


def worker_cpu(master_pid: int) -> float:
    """CPU seconds (user+system) of the nginx master's current worker processes."""
    import psutil

    total = 0.0
    for child in psutil.Process(master_pid).children():
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def one_run(wrk: str, port: int, seconds: int, connections: int, master_pid: int) -> dict:
    before = worker_cpu(master_pid)
    done = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
                          capture_output=True, text=True, timeout=seconds + 30)
    spent = worker_cpu(master_pid) - before
    result = parse_wrk(done.stdout)
    result["lb_cpu_us_per_request"] = round(1e6 * spent / max(result["requests"], 1), 2)
    return result


def measure(keepalive: int, shape: dict, workdir: Path, wrk: str) -> dict:
    """One LB, both sites, `keepalive` idle upstream connections per worker; ABBA runs."""
    procs = Processes(workdir)
    try:
        specs = [(f"w{i}", f"127.0.9.{i}", free_port(f"127.0.9.{i}")) for i in range(1, BACKENDS + 1)]
        procs.start("multiweb", multiweb.argv(require("nginx"), workdir / "multiweb", specs))
        lab = start_lb(procs, workdir / "lb", f"keepalive = {keepalive}\n", mode="hook", data_plane="live")
        for name, ip, port in specs:
            start_serf(procs, name, ip, {"role": "web", "port": str(port)}, join=lab.lb.bind_addr,
                       extra=["-log-level", "warn"])
        wait_until(lambda: {lab.nginx.get()[1].strip() for _ in range(8)} == {n for n, _, _ in specs}, 30,
                   "the live pool to serve all 4 backends")
        static_port = free_port()
        (lab.nginx.prefix / "conf.d" / "bench_static.conf").write_text(
            static_site(static_port, [f"{ip}:{port}" for _, ip, port in specs], keepalive,
                        str(lab.nginx.prefix / "html")))
        subprocess.run(lab.nginx.reload_command.split(), check=True, capture_output=True, timeout=30)
        wait_until(lambda: lab.nginx.get()[0] == 200 and _get(static_port)[0] == 200, 10, "the static site")
        time.sleep(0.5)  # old workers finish (workload shape)
        reloads, ports = lab.reloads(), {"live": lab.nginx.port, "static": static_port}
        master = lab.nginx.proc.pid
        for side in ("static", "live"):  # warm-up: connections, Lua code and JIT, caches
            one_run(wrk, ports[side], 2, shape["connections"], master)
        runs: dict[str, list[dict]] = {"static": [], "live": []}
        for side in abba(shape["runs"]):
            runs[side].append(one_run(wrk, ports[side], shape["seconds"], shape["connections"], master))
        out = {"keepalive": keepalive, "backends": BACKENDS, "connections": shape["connections"],
               "seconds_per_run": shape["seconds"], "reloads_during": lab.reloads() - reloads}
        for side, results in runs.items():
            out[side] = {"rps_median": round(statistics.median(r["rps"] for r in results)),
                         "cpu_us_median": round(statistics.median(r["lb_cpu_us_per_request"] for r in results), 2),
                         "rps": [round(r["rps"]) for r in results],
                         "cpu_us": [r["lb_cpu_us_per_request"] for r in results],
                         "errors": [r["errors"] for r in results if r["errors"]]}
        out["live_over_static"] = ratio(out["live"]["rps_median"], out["static"]["rps_median"])
        out["cpu_live_over_static"] = ratio(out["live"]["cpu_us_median"], out["static"]["cpu_us_median"])
        out["live_over_static_paired"] = paired_ratio(out["static"]["rps"], out["live"]["rps"])
        out["cpu_live_over_static_paired"] = paired_ratio(out["static"]["cpu_us"], out["live"]["cpu_us"])
        return out
    finally:
        procs.stop_all()


def _get(port: int) -> tuple[int, str]:
    from kit.net import http_get

    return http_get("127.0.0.1", port)


def main(profile: str, workdir: Path) -> dict:
    wrk = shutil.which("wrk")
    if wrk is None:
        return emit("throughput", {"error": "wrk is not installed (Debian: apt-get install wrk)"}, "wrk missing")
    shape = PROFILES[profile]
    out = {"profile": profile}
    for keepalive in shape["keepalive"]:
        out[f"keepalive_{keepalive}"] = measure(keepalive, shape, workdir / f"keepalive-{keepalive}", wrk)
    line = "; ".join(f"upstream keepalive {v['keepalive']}: live {v['live']['rps_median']} vs static "
                     f"{v['static']['rps_median']} req/s ({v['live_over_static']}; "
                     f"pairs {v['live_over_static_paired']})"
                     for v in out.values() if isinstance(v, dict))
    return emit("throughput", out, line)


def _spread(values: list[int]) -> str:
    return f"{min(values)}-{max(values)}" if values else "-"


def render(result: dict | None) -> str:
    """The throughput table: static and live side by side, per upstream keepalive setting."""
    if not result:
        return ""
    if "error" in result:
        return f"throughput (wrk): {result['error']}"
    rows = []
    for value in result.values():
        if not isinstance(value, dict):
            continue
        if "error" in value:
            rows.append([f"keepalive {value.get('keepalive', '?')}: {value['error']}", None, None, None])
            continue
        what = (f"wrk, {value['connections']} keep-alive conns, {value['backends']} backends, upstream keepalive "
                f"{value['keepalive']}")
        rows.append([f"{what}: req/s (median of {len(value['live']['rps'])})", value["static"]["rps_median"],
                     value["live"]["rps_median"], value["live_over_static"]])
        rows.append([f"{what}: req/s, median of the back-to-back pairs' ratios", None, None,
                     value.get("live_over_static_paired")])
        rows.append([f"{what}: LB worker CPU us/request (median)", value["static"]["cpu_us_median"],
                     value["live"]["cpu_us_median"], value["cpu_live_over_static"]])
        rows.append([f"{what}: LB CPU us/request, median of the pairs' ratios", None, None,
                     value.get("cpu_live_over_static_paired")])
        rows.append([f"{what}: runs' req/s, lowest-highest (each run is in the JSON)",
                     _spread(value["static"]["rps"]), _spread(value["live"]["rps"]), None])
    return format_table(("throughput through the LB", "static upstream", "live pool", "live/static"), rows)
