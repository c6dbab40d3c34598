"""Prometheus metrics from what lbsync records, exposed with prometheus_client.

One collector builds every family from plain data: the run record (`last_sync.json`, whose
counters every hook run, manual sync and daemon reconcile add to; see `record`) and, in the
daemon, its own view (Serf connection, health). So the hook's textfile, the daemon's textfile and
the daemon's `/metrics` say the same thing, and the hook can count without importing
prometheus_client: only writing the exposition does (~70 ms; never on the hook's unchanged path).

Families (all prefixed `lbsync_`; series with a zero value are kept, so a rate() has a start):
  build_info{version,python,data_plane}                  1
  reconciles_total{outcome="unchanged|updated|error"}    counter
  reloads_total, pushes_total                            counter: nginx reloads / live pool pushes
  skips_total{reason}                                    counter: members newly refused, by kind
  skipped_members{reason}                                gauge: members refused now, by kind
  reconcile_duration_seconds, apply_duration_seconds     histograms (apply: the driver's part)
  members{status="alive|leaving|left|failed|none"}       gauge: Serf members of our role
  backends{pool}                                         gauge: backends in the plan
  backend_up{pool,backend}                               gauge: 1 while it takes new requests
                                                         (in the pool, not draining, not down)
  last_reconcile_timestamp_seconds, last_failure_timestamp_seconds, last_run_ok
daemon only:
  serf_connected, serf_reconnects_total, throttled_total, backends_unhealthy,
  daemon_start_time_seconds
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, record
from .files import write_atomic

if TYPE_CHECKING:
    from .config import Settings

SKIP_KINDS = sorted({kind for _, kind in record.SKIP_KINDS} | {"other"})
OUTCOMES = ("unchanged", "updated", "error")
ALIVE = ("serving", "draining", "held", "skipped")


class Collector:
    """A prometheus_client collector over the record (and the daemon's view, when given)."""

    def __init__(self, settings: Settings, last_sync: dict, daemon: dict | None = None):
        self.settings, self.data, self.daemon = settings, last_sync or {}, daemon

    def describe(self) -> list:
        return []  # families depend on the data: tell the registry not to ask collect() early

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        from .drivers.base import data_plane

        s, data = self.settings, self.data
        counters = record.count(data.get("counters"), "unchanged")  # normalised; then undo the +1
        counters["reconciles"]["unchanged"] -= 1
        pool = s.upstream_name
        yield InfoMetricFamily("lbsync_build", "lbsync's version, Python and data plane.",
                               value={"version": __version__, "python": platform.python_version(),
                                      "data_plane": data_plane(s)})
        family = CounterMetricFamily("lbsync_reconciles", "Reconciles by outcome.", labels=["outcome"])
        for outcome in sorted(set(OUTCOMES) | set(counters["reconciles"])):
            family.add_metric([outcome], counters["reconciles"].get(outcome, 0))
        yield family
        yield CounterMetricFamily("lbsync_reloads", "nginx reloads lbsync asked for.", value=counters["reloads"])
        yield CounterMetricFamily("lbsync_pushes", "Pool pushes to nginx's live balancer.", value=counters["pushes"])
        family = CounterMetricFamily("lbsync_skips", "Members newly refused, by reason.", labels=["reason"])
        for kind in sorted(set(SKIP_KINDS) | set(counters["skips"])):
            family.add_metric([kind], counters["skips"].get(kind, 0))
        yield family
        skipped_now = [record.skip_kind(str(r)) for r in record.mapping(data, "skipped").values()]
        gauge = GaugeMetricFamily("lbsync_skipped_members", "Members refused now, by reason.", labels=["reason"])
        for kind in SKIP_KINDS:
            gauge.add_metric([kind], skipped_now.count(kind))
        yield gauge
        for name, key, what in (("reconcile", "reconcile_seconds", "Whole reconciles"),
                                ("apply", "apply_seconds", "The data-plane driver's part of a reconcile")):
            yield _histogram(HistogramMetricFamily, f"lbsync_{name}_duration_seconds", f"{what}, in seconds.",
                             counters[key])
        yield from self._membership(GaugeMetricFamily, pool)
        yield from self._times(GaugeMetricFamily)
        if self.daemon is not None:
            yield from self._daemon(GaugeMetricFamily, CounterMetricFamily)

    def _membership(self, Gauge, pool: str) -> Iterator[Any]:
        members = record.mapping(self.data, "members")
        states = {name: str(record.mapping(members, name).get("state")) for name in members}
        by_status = record.mapping(self.daemon or {}, "members")
        counts = ({status: len(names) for status, names in by_status.items()} if by_status else
                  _status_counts(states.values()))
        family = Gauge("lbsync_members", "Serf members of our role by status.", labels=["status"])
        for status in sorted(set(record.SERF_STATUSES) | set(counts)):
            family.add_metric([status], counts.get(status, 0))
        yield family
        pools = record.mapping(self.data, "pools") or {pool: self.data.get("backends") or []}  # [[pool]]s or one
        backends = {name: [b for b in names if isinstance(b, str)] for name, names in pools.items()
                    if isinstance(names, list)}
        sizes = Gauge("lbsync_backends", "Backends in the pool lbsync applied.", labels=["pool"])
        for name, names in sorted(backends.items()):
            sizes.add_metric([name], len(names))
        yield sizes
        family = Gauge("lbsync_backend_up", "1 while a backend takes new requests (in the pool, not "
                                            "draining, not down by health checks).", labels=["pool", "backend"])
        unhealthy = set((self.daemon or {}).get("unhealthy") or [])  # the daemon's, per node name
        for name, names in sorted(backends.items()):
            down = record.pool_down(self.data, name)  # with [[pool]]s: this pool's own verdicts
            down = unhealthy if down is None else down
            for backend in sorted(names):
                up = states.get(backend) in ("serving", "held") and backend not in down
                family.add_metric([name, backend], int(up))
        yield family

    def _times(self, Gauge) -> Iterator[Any]:
        data = self.data
        failure = record.mapping(data, "failure")
        if isinstance(data.get("time"), (int, float)):
            yield _one(Gauge("lbsync_last_reconcile_timestamp_seconds", "When the last successful reconcile "
                             "ended (Unix time)."), [], data["time"])
        if isinstance(failure.get("time"), (int, float)):
            yield _one(Gauge("lbsync_last_failure_timestamp_seconds", "When the last failed reconcile ended."),
                       [], failure["time"])
        if data:
            yield _one(Gauge("lbsync_last_run_ok", "1 when the newest reconcile succeeded."), [],
                       int(not record.last_failed(data)))

    def _daemon(self, Gauge, Counter) -> Iterator[Any]:
        d = self.daemon or {}
        yield _one(Gauge("lbsync_serf_connected", "1 while the RPC connection to Serf is up."), [],
                   int(bool(d.get("serf_connected"))))
        yield Counter("lbsync_serf_reconnects", "Reconnects to the Serf agent.", value=d.get("reconnects", 0))
        yield Counter("lbsync_throttled", "Reconciles delayed by min_reload_interval.", value=d.get("throttled", 0))
        yield _one(Gauge("lbsync_backends_unhealthy", "Backends marked down by health checks."), [],
                   len(d.get("unhealthy") or []))
        if isinstance(d.get("started"), (int, float)):
            yield _one(Gauge("lbsync_daemon_start_time_seconds", "When `lbsync run` started."), [], d["started"])


def _one(family, labels: list[str], value: float):
    family.add_metric(labels, value)
    return family


def _status_counts(states) -> dict[str, int]:
    out: dict[str, int] = {}
    for state in states:
        status = "alive" if state in ALIVE else state
        out[status] = out.get(status, 0) + 1
    return out


def _histogram(Family, name: str, help_text: str, histogram: dict):
    buckets, total = [], 0
    for bound, n in zip([*record.BUCKETS, float("inf")], histogram["counts"]):
        total += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return Family(name, help_text, buckets=buckets, sum_value=histogram["sum"])


def registry(settings: Settings, last_sync: dict, daemon: dict | None = None):
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(Collector(settings, last_sync, daemon))
    return reg


def text(settings: Settings, last_sync: dict, daemon: dict | None = None, openmetrics: bool = False) -> bytes:
    """The exposition: Prometheus text format 0.0.4, or OpenMetrics 1.0 when asked."""
    if openmetrics:
        from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

        return generate_openmetrics(registry(settings, last_sync, daemon))
    from prometheus_client import generate_latest

    return generate_latest(registry(settings, last_sync, daemon))


def write_textfile(path: Path, settings: Settings, last_sync: dict, daemon: dict | None) -> None:
    """node_exporter's textfile collector reads Prometheus text format; replaced atomically."""
    write_atomic(path, text(settings, last_sync, daemon), durable=False)
