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

import json
import math
import sys
import traceback
from contextlib import contextmanager

import bench_handle
import common
import multiweb
import run
from benchlab import servers_in
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
        "naive": {"join_leave": {"join_ms": {"p50": 1200.0}}, "empty_pool": {"page_503_ms": None},
                  "mass_leave": {"stale": ["127.0.4.9:80"]}},
    }
    rows = {row[0]: row[1:] for row in run.scenario_rows(modes)}
    assert rows["join -> routable p50 (ms)"] == [1000.0, None, 1200.0, 1.2, None]
    assert rows["empty pool -> 503 page (ms)"][2] == "never"
    assert rows["mass leave to 3: stale servers"][2] == 1
    assert "naive/handle" in run.render_table(None, modes)


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


def check_handle_rows_put_the_hook_cost_under_handle_and_idle_cost_under_run():
    paths = {"unchanged_ms": {"p50": 40.0}, "changed_ms": {"p50": 90.0}}
    cost = {"real_agents": {"100": paths, "start": {"handle_non_member_event_ms": {"p50": 30.0},
                                                    "python_bare_ms": {"p50": 20.0}},
                            "jinja": {"jinja2_on_unchanged_path": False},
                            "idle_daemon": {"members": 100, "lbsync_run": {"cpu_pct_of_one_core": 1.5,
                                                                            "rss_mb": 30.0}}},
            "in_memory": {"10000": {**paths, "in_process_unchanged_ms": {"p50": 9.0},
                                    "in_process_changed_ms": {"p50": 19.0}}}}
    rows = {row[0]: row[1:] for row in run.handle_rows(cost)}
    assert rows["handle, 100 members (real agent): unchanged p50 (ms)"][0] == 40.0
    assert rows["reconcile() in process, 10000: unchanged/changed p50 (ms)"][0] == "9.0/19.0"
    assert rows["jinja2 imported on unchanged path"][0] is False
    assert rows["idle with 100 members: CPU % of one core"][:2] == [None, 1.5]
    assert all(len(row) == 5 for row in rows.values())


def check_scale_rows_one_column_per_mode():
    scale = {"handle-100": {"all_routable_ms": 2000.0, "reloads": 1, "upstream_exact": True,
                            "lb_cpu_seconds": {"serf": 1.0, "nginx": 0.5}},
             "naive-100": {"all_routable_ms": 1000.0, "reloads": 2, "upstream_exact": True,
                           "lb_cpu_seconds": {"serf": 0.2}}}
    rows = {row[0]: row[1:] for row in run.scale_rows(scale)}
    assert rows["100 agents join at once: all routable (ms)"] == [2000.0, None, 1000.0, 0.5, None]
    assert rows["100 agents join at once: LB CPU (s)"][:3] == [1.5, None, 0.2]


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
