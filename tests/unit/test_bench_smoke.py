"""The benchmark harness's smoke checks (bench/checks.py), run the way `make bench` runs bench
code: a fresh interpreter with bench/ as the script's directory and the kit on PYTHONPATH.

Why a subprocess: tests import no bench module (bench is not on the tests' import path, and an
in-process import would need sys.path edits); running the checks as bench runs also proves that
bench's own imports still resolve. One run for all checks, one test per check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from kit.paths import ROOT

CHECKS = [
    "percentile_interpolates_and_handles_edges",
    "summary_scales_seconds_to_milliseconds",
    "ratio_refuses_missing_or_zero",
    "table_aligns_columns_and_shows_missing_values",
    "table_left_aligns_text_columns_on_request",
    "scenario_rows_compare_modes_and_mark_never",
    "ratios_against_naive_and_between_drivers",
    "profiles_pick_their_scenarios",
    "importtime_parser_reads_self_times",
    "fake_members_are_distinct_loopback_web_nodes_as_serf_sends_them",
    "upstream_server_lines_parsed_without_down_ones",
    "live_pool_read_back_leaves_out_drained_and_down",
    "pipelined_responses_parsed_one_by_one",
    "multiweb_accepts_only_loopback",
    "multiweb_config_answers_each_name_on_its_address",
    "handle_rows_put_each_driver_under_its_column",
    "scale_rows_one_column_per_mode",
    "wrk_report_parsed_and_runs_interleaved",
    "static_site_is_the_shipped_site_on_a_static_upstream",
    "fault_suite_table_says_held_or_failed_per_case_and_column",
]


@pytest.fixture(scope="module")
def report() -> dict[str, str]:
    """{check: "ok" or its traceback} from one `python bench/checks.py --json`."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "checks.py"), "--json"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    assert done.returncode in (0, 1) and done.stdout, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", CHECKS)
def test_bench_check(report, name):
    assert report[name] == "ok", report[name]


def test_every_bench_check_runs_here(report):
    assert sorted(report) == sorted(CHECKS)
