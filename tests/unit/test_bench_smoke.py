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
    "scenario_rows_compare_modes_and_mark_never",
    "importtime_parser_reads_self_times",
    "fake_members_are_distinct_loopback_web_nodes_as_serf_sends_them",
    "upstream_server_lines_parsed_without_down_ones",
    "multiweb_accepts_only_loopback",
    "handle_rows_put_the_hook_cost_under_handle_and_idle_cost_under_run",
    "scale_rows_one_column_per_mode",
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
