"""What every benchmark shares: statistics, the results table, JSON output, where things are.

The statistics and formatting here are pure (checked by bench/checks.py); the real processes
come from the test kit (tests/kit, on PYTHONPATH: `make bench` sets it), so the benchmarks start
serf, nginx and web servers exactly the way the integration tests do.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
# what scenarios.run_mode runs against each column, in this order (run.py --only picks some)
SCENARIOS = ("join_leave", "agent", "faults", "churn", "burst", "mass_leave", "empty_pool")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Iterable[float], scale: float = 1000.0) -> dict[str, Any]:
    """n, p50, p90, max, min, mean of `values` (seconds), scaled (default to milliseconds)."""
    data = [v * scale for v in values]
    if not data:
        return {"n": 0, "p50": None, "p90": None, "max": None, "min": None, "mean": None}
    return {"n": len(data), "p50": round(percentile(data, 50), 2), "p90": round(percentile(data, 90), 2),
            "max": round(max(data), 2), "min": round(min(data), 2),
            "mean": round(sum(data) / len(data), 2)}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is zero."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, 2)


def cell(value: Any) -> str:
    """One table cell: None as '-', floats with at most two decimals, the rest as text."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1) -> str:
    """A plain-text table with aligned columns: the first `left` left-aligned (text), the others
    right-aligned (figures)."""
    text_rows = [[cell(value) for value in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in text_rows]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i < left else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in text_rows])


def emit(name: str, result: dict[str, Any], line: str) -> dict[str, Any]:
    """Print a scenario's JSON and its one-line summary; return the result for the run table."""
    print(json.dumps({"scenario": name, **result}, default=str), flush=True)
    print(f"== {name}: {line}", flush=True)
    return result


def write_results(profile: str, data: dict[str, Any]) -> Path:
    """Write the whole run as JSON under bench/results/ (git ignores it); return the path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{time.strftime('%Y%m%dT%H%M%S')}-{profile}.json"
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path


def timed(func, *args, **kwargs) -> tuple[float, Any]:
    """(seconds, result) of one call, on the monotonic clock."""
    start = time.perf_counter()
    value = func(*args, **kwargs)
    return time.perf_counter() - start, value
