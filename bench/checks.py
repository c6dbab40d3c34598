#!/usr/bin/env python3
"""The benchmark harness's smoke checks: its statistics, table, parsers. No timing here.

`make bench` runs for minutes against real processes; these checks make sure a refactor does not
break its arithmetic or its report before anyone finds out at the end of a long run. They live
with the benchmarks (tests import no bench module) and run as bench code runs: a fresh
interpreter with bench/ as the script's directory and the test kit on PYTHONPATH. The unit suite
runs them that way (tests/unit/test_bench_smoke.py).
Usage: PYTHONPATH=.:tests python bench/checks.py [--json] [NAME ...]
"""

from __future__ import annotations

import io
import json
import math
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

import bench_handle
import common
import faultsuite
import multiweb
import probes
import run
import scenario_throughput
import scenarios
from benchlab import pool_endpoints, servers_in
from kit.records import decoded, web_records


@contextmanager
def raises(kind: type[BaseException]):
    try:
        yield
    except kind:
        return
    raise AssertionError(f"{kind.__name__} not raised")


def check_percentile_interpolates_and_handles_edges():
    assert common.percentile([3, 1, 2], 50) == 2
    assert math.isclose(common.percentile([0, 10], 90), 9.0)
    assert common.percentile([5], 90) == 5
    assert math.isnan(common.percentile([], 50))


def check_summary_scales_seconds_to_milliseconds():
    stats = common.summary([0.010, 0.020, 0.030, 0.040])
    assert stats == {"n": 4, "p50": 25.0, "p90": 37.0, "max": 40.0, "min": 10.0, "mean": 25.0}
    assert common.summary([])["p50"] is None


def check_ratio_refuses_missing_or_zero():
    assert common.ratio(300, 100) == 3.0
    assert common.ratio(None, 1) is None and common.ratio(1, 0) is None


def check_table_aligns_columns_and_shows_missing_values():
    table = common.format_table(("what", "a", "b"), [["x", 1.234, None], ["longer", True, 1500.0]])
    lines = table.splitlines()
    assert lines[0].split() == ["what", "a", "b"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["x", "1.23", "-"] and lines[3].split() == ["longer", "yes", "1500"]
    assert len({len(line) for line in lines[:2]}) == 1


def check_scenario_rows_compare_modes_and_mark_never():
    modes = {
        "handle": {"join_leave": {"join_ms": {"p50": 1000.0}}, "empty_pool": {"page_503_ms": 1500.0}},
        "handle-live": {"join_leave": {"join_ms": {"p50": 400.0}}, "burst": {"knew_to_pool_ms": None}},
        "run": {"burst": {"knew_to_pool_ms": None}},
        "naive": {"join_leave": {"join_ms": {"p50": 1200.0}}, "empty_pool": {"page_503_ms": None},
                  "mass_leave": {"stale": ["127.0.4.9:80"]}, "churn": {"duration_s": 20.0, "reloads": 9}},
    }
    rows = {row[0]: row[1:] for row in run.scenario_rows(modes)}
    # handle, run, handle-live, run-live, naive | n/handle, n/run, n/h-live, n/r-live, handle/h-live, run/r-live
    assert rows["join -> routable p50 (ms)"] == [1000.0, None, 400.0, None, 1200.0, 1.2, None, 3.0, None, 2.5, None]
    assert rows["empty pool -> 503 page (ms)"][4] == "never"
    assert rows["mass leave to 3: stale servers"][4] == 1
    assert rows["churn 20 s: nginx reloads"][4] == 9  # the churn's length comes from the results
    assert run.with_ratios("z", {"handle": 1.0, "naive": 2.0}, ratios=False)[6:] == [None] * 6
    pool = rows["burst: LB knew all -> in nginx's pool (ms)"]
    assert pool[1] is None and pool[2] == "never"  # no pool read-back for the reload driver
    table = run.render_table(None, modes)
    assert "n/h-live" in table and "run/r-live" in table


def check_ratios_against_naive_and_between_drivers():
    row = run.with_ratios("x", {"handle": 2.0, "run": 4.0, "handle-live": 1.0, "run-live": 0, "naive": 8.0})
    assert row == ["x", 2.0, 4.0, 1.0, 0, 8.0, 4.0, 2.0, 8.0, None, 2.0, None]
    assert run.with_ratios("y", {"handle": True, "naive": True})[6:] == [None] * 6


def check_profiles_pick_their_scenarios():
    quick, full = scenarios.PROFILES["quick"], scenarios.PROFILES["full"]
    assert scenarios.wanted("churn", quick, common.SCENARIOS) and scenarios.wanted("faults", quick, common.SCENARIOS)
    assert not scenarios.wanted("agent", quick, common.SCENARIOS) and scenarios.wanted("agent", full, common.SCENARIOS)
    assert not scenarios.wanted("empty_pool", full, ("empty_pool",))  # its nodes come from the burst
    assert not scenarios.wanted("burst", full, ("churn",))
    assert quick["churn"] < full["churn"] == 60.0


def check_importtime_parser_reads_self_times():
    text = ("import time: self [us] | cumulative | imported package\n"
            "import time:      1201 |       7224 |     contextlib\n"
            "import time:     21647 |      52380 |   jinja2\n")
    assert bench_handle.parse_importtime(text) == {"contextlib": 1.2, "jinja2": 21.65}


def check_fake_members_are_distinct_loopback_web_nodes_as_serf_sends_them():
    members = [decoded(r) for r in web_records(600)]  # what bench_handle feeds the hook
    assert len({m["Addr"] for m in members}) == 600
    assert all(m["Addr"].is_loopback and m["Tags"]["role"] == "web" for m in members)


def check_upstream_server_lines_parsed_without_down_ones():
    text = ("upstream lbs_backend {\n    server 127.0.0.1:1 down;  # placeholder\n"
            "    server 127.0.2.1:8080 weight=3;  # web1\n    server 127.0.4.2:80; # b2\n}\n")
    assert servers_in(text) == ["127.0.2.1:8080", "127.0.4.2:80"]


def check_multiweb_accepts_only_loopback():
    assert multiweb.parse_spec("web1=127.0.2.1:8080") == ("web1", "127.0.2.1", 8080)
    with raises(SystemExit):
        multiweb.parse_spec("web1=10.0.0.1:80")


def check_handle_rows_put_each_driver_under_its_column():
    def paths(unchanged: float, changed: float) -> dict:
        return {"unchanged_ms": {"p50": unchanged}, "changed_ms": {"p50": changed}}

    in_process = {"in_process_unchanged_ms": {"p50": 9.0}, "in_process_changed_ms": {"p50": 19.0}}
    cost = {"real_agents": {"100": {"reload": paths(40.0, 90.0), "live": paths(45.0, 60.0)},
                            "start": {"handle_non_member_event_ms": {"p50": 30.0}, "python_bare_ms": {"p50": 20.0}},
                            "jinja": {"reload": {"jinja2_on_unchanged_path": False},
                                      "live": {"jinja2_on_unchanged_path": False}},
                            "idle_daemon": {"members": 100, "reload": {"lbsync_run": {"cpu_pct_of_one_core": 1.5,
                                                                                      "rss_mb": 30.0}},
                                            "live": {"lbsync_run": {"cpu_pct_of_one_core": 0.5, "rss_mb": 31.0}}}},
            "in_memory": {"10000": {"reload": {**paths(300.0, 900.0), **in_process},
                                    "live": {**paths(350.0, 500.0), **in_process}}}}
    rows = {row[0]: row[1:] for row in run.handle_rows(cost)}
    changed = rows["handle, 100 members (real agent): changed p50 (ms)"]
    assert changed[:5] == [90.0, None, 60.0, None, None] and changed[9] == 1.5  # handle/h-live
    assert rows["reconcile() in process, 10000 members: changed p50 (ms)"][:3] == [19.0, None, 19.0]
    assert rows["jinja2 imported on unchanged path"][:3] == [False, None, False]
    idle = rows["lbsync run idle, 100 members: CPU % of one core"]
    assert idle[:4] == [None, 1.5, None, 0.5] and idle[10] == 3.0  # run/r-live
    assert all(len(row) == len(run.HEADERS) - 1 for row in rows.values())


def check_scale_rows_one_column_per_mode():
    scale = {"handle-100": {"all_routable_ms": 2000.0, "reloads": 1, "upstream_exact": True,
                            "lb_cpu_seconds": {"serf": 1.0, "nginx": 0.5}},
             "naive-100": {"all_routable_ms": 1000.0, "reloads": 2, "upstream_exact": True,
                           "lb_cpu_seconds": {"serf": 0.2}}}
    rows = {row[0]: row[1:] for row in run.scale_rows(scale)}
    assert rows["100 agents join at once: all routable (ms)"][:6] == [2000.0, None, None, None, 1000.0, 0.5]
    assert rows["100 agents join at once: LB CPU (s)"][:5] == [1.5, None, None, None, 0.2]


def check_pipelined_responses_parsed_one_by_one():
    stream = io.BytesIO(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Node: b1\r\n\r\nb1\n"
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nConnection: close\r\n\r\n")
    assert probes.read_response(stream) == (200, "b1", False)
    assert probes.read_response(stream) == (503, "", True)
    with raises(ValueError):
        probes.read_response(stream)  # the connection ended: not a response


def check_live_pool_read_back_leaves_out_drained_and_down():
    reply = {"version": 3, "backends": [
        {"name": "a", "address": "127.0.2.1", "port": 80, "drain": False, "down": False},
        {"name": "b", "address": "127.0.2.2", "port": 81, "drain": True, "down": False},
        {"name": "c", "address": "127.0.2.3", "port": 82, "drain": False, "down": True}]}
    assert pool_endpoints(reply) == {"127.0.2.1:80": True, "127.0.2.2:81": False, "127.0.2.3:82": False}
    assert pool_endpoints(None) == {} and pool_endpoints({"error": "x"}) == {}


def check_wrk_report_parsed_and_runs_interleaved():
    text = ("Running 3s test @ http://127.0.0.1:8080/\n  1 threads and 16 connections\n"
            "  60123 requests in 3.00s, 9.1MB read\n  Non-2xx or 3xx responses: 2\n"
            "Requests/sec:  20041.02\nTransfer/sec:      3.04MB\n")
    assert scenario_throughput.parse_wrk(text) == {"requests": 60123, "rps": 20041.02,
                                                   "errors": {"Non-2xx or 3xx responses": "2"}}
    with raises(ValueError):
        scenario_throughput.parse_wrk("wrk: connection refused")
    assert scenario_throughput.abba(2) == ["static", "live", "live", "static"]
    assert scenario_throughput.abba(5).count("live") == 5
    # pairs run back to back: a drift between pairs does not move their ratio
    assert scenario_throughput.paired_ratio([100, 50, 100], [95, 48, 110]) == 0.96
    assert scenario_throughput.paired_ratio([0], [10]) is None


def check_static_site_is_the_shipped_site_on_a_static_upstream():
    text = scenario_throughput.static_site(9000, ["127.0.9.1:80", "127.0.9.2:81"], 16, "/srv/html")
    assert "upstream bench_static {\n    server 127.0.9.1:80;\n    server 127.0.9.2:81;\n    keepalive 16;\n}" in text
    assert "listen 127.0.0.1:9000;" in text and "proxy_pass http://bench_static;" in text
    assert "keepalive" not in scenario_throughput.static_site(9000, ["127.0.9.1:80"], 0, "/srv/html")


def check_multiweb_config_answers_each_name_on_its_address():
    text = multiweb.config(Path("/tmp/mw"), [("b1", "127.0.4.1", 8001), ("b2", "127.0.4.2", 8002)])
    assert 'listen 127.0.4.1:8001; location / { add_header X-Node b1; return 200 "b1\\n"; }' in text
    assert "worker_processes 1;" in text and "pid /tmp/mw/nginx.pid;" in text
    with raises(SystemExit):
        multiweb.parse_spec('b1";evil=127.0.0.1:80')


def check_fault_suite_table_says_held_or_failed_per_case_and_column():
    result = {"run-live": {"crash": {"held": True, "figure": "0/20 after"},
                           "squatter": {"held": False, "figure": "routed never"}},
              "run": {"crash": {"held": True, "figure": "repaired"}}}
    lines = faultsuite.render(result).splitlines()
    assert lines[0].split()[:3] == ["fault", "suite", "(issue"]
    assert lines[2].startswith("SIGKILL between install and push") and " held " in lines[2]
    assert "FAILED" in lines[3] and lines[4].startswith("SIGKILL between install and reload")
    assert faultsuite.render({"error": "needs root"}) == "fault suite: needs root"


def check_table_left_aligns_text_columns_on_request():
    lines = common.format_table(("a", "b"), [["x", "yy"], ["xx", "y"]], left=2).splitlines()
    assert lines[2] == "x   yy" and lines[3] == "xx  y"


def main(argv: list[str]) -> int:
    """Run the named checks (all by default); print one line each, or JSON {name: "ok" | trace}."""
    checks = {name[len("check_"):]: func for name, func in globals().items() if name.startswith("check_")}
    as_json = "--json" in argv
    names = [a for a in argv if a != "--json"] or list(checks)
    results = {}
    for name in names:
        try:
            checks[name]()
            results[name] = "ok"
        except Exception:  # every check runs; each failure is reported with its trace
            results[name] = traceback.format_exc()
    if as_json:
        print(json.dumps(results))
    else:
        for name, result in results.items():
            print(f"ok      {name}" if result == "ok" else f"FAILED  {name}\n{result}")
    return 0 if all(r == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
