"""What each run adds to `last_sync.json` beside the pool: per-member state and since when, recent
events, and cumulative counters. Pure functions on plain data (JSON in, JSON out), no imports
beyond the standard library's cheapest: the hook runs them on every event.

Hook runs, manual syncs and the daemon all write the same record under the run lock, so its
counters are the host's, whoever reconciled, and survive restarts (Prometheus copes with counters
that start over, but need not here). `lbsync status`, the status page and the metrics all read it.

Member states (`label`): `serving`, `draining`, `held` (kept by the collapse guard), `skipped`
(alive but refused), or Serf's own status when not alive (`failed`, `left`, `leaving`, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plan import SyncResult

MAX_EVENTS = 100
# seconds; a hook run is ~0.1 s, a reload driver run with two `nginx -t` ~0.1-1 s
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
IN_POOL = ("serving", "draining", "held")
SERF_STATUSES = ("alive", "leaving", "left", "failed", "none")  # Serf's member statuses, always exported

# skip reason -> kind: the reasons carry names and addresses, far too many label values for a metric
SKIP_KINDS = (("is not an ip address", "bad_address"), ("cannot receive traffic", "bad_address"),
              ("outside allowed_networks", "not_allowed"), ("own listen address", "own_listen"),
              ("already served by", "endpoint_conflict"), ("both claim", "endpoint_conflict"),
              ("backup is not supported", "backup_unsupported"), ("name ", "bad_name"),
              ("tag ", "bad_tag"), ("tags ", "bad_tag"))


def mapping(data: dict, key: str) -> dict:
    """data[key] when it is a dict, else {}: state files are read, not trusted."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def pool_down(last_sync: dict, pool: str) -> set[str] | None:
    """The backends of `pool` its last reconcile rendered down by health checks; None when the
    record has no per-pool verdicts (a single pool, or a record written before they existed)."""
    by_pool = mapping(last_sync, "pools_down")
    if not by_pool:
        return None
    names = by_pool.get(pool)
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()


def skip_kind(reason: str) -> str:
    low = reason.lower()
    return next((kind for needle, kind in SKIP_KINDS if needle in low), "other")


def labels(result: SyncResult) -> dict[str, dict]:
    """Each member of our role -> {"state": label, "address": host:port or Serf's address}."""
    out: dict[str, dict] = {}
    if result.selection is not None:
        for status, names in result.selection.by_status.items():
            for name in names:
                out[name] = {"state": status if status != "alive" else "skipped", "address": ""}
    skipped = {skip.name for skip in result.skipped}
    for name in skipped:
        out.setdefault(name, {"state": "skipped", "address": ""})
    held = set(result.hold.names)
    for m in result.backends:
        state = "held" if m.name in held else "draining" if m.draining else "serving"
        out[m.name] = {"state": state, "address": m.endpoint}
    return out


def since(previous: dict, current: dict[str, dict], now: float) -> dict[str, dict]:
    """`current` with each member's `since`: kept from `previous` while its state is the same."""
    out = {}
    for name, entry in current.items():
        before = mapping(previous, name)
        same = bool(before) and before.get("state") == entry["state"]
        out[name] = {**entry, "since": before.get("since", now) if same else now}
    return out


def membership_events(previous: dict, current: dict, skipped: dict[str, str], now: float) -> list[list]:
    """[time, kind, name, detail] for each member whose state changed since the last run."""
    events = []
    for name in sorted(set(previous) | set(current)):
        old = (previous.get(name) or {}).get("state")
        new = (current.get(name) or {}).get("state")
        if old == new:
            continue
        address = (current.get(name) or {}).get("address", "")
        if new in ("serving", "held") and old in (None, "failed", "left", "leaving", "none", "skipped"):
            events.append([now, "join" if new == "serving" else "held", name, address])
        elif new == "draining":
            events.append([now, "drain", name, address])
        elif new == "serving" and old in ("draining", "held"):
            events.append([now, "undrain" if old == "draining" else "back", name, address])
        elif new == "skipped":
            events.append([now, "skip", name, skipped.get(name, "")])
        elif new == "failed":
            events.append([now, "failed", name, ""])
        elif new in ("left", "leaving") and old not in ("left", "leaving"):
            events.append([now, "leave", name, ""])
        elif new is None and old in IN_POOL:
            events.append([now, "gone", name, "vanished from Serf's member list"])
    return events


def apply_event(result: SyncResult, now: float) -> list[list]:
    if not result.action:
        return []
    kind = "push" if result.action == "pushed" else "reload"
    return [[now, kind, "", f"{len(result.backends)} backends"]]


def append_events(events: list, new: list) -> list:
    kept = [e for e in events if isinstance(e, list) and len(e) == 4] if isinstance(events, list) else []
    return (kept + new)[-MAX_EVENTS:]


def last_failed(data: dict) -> bool:
    """Whether the newest run in a last_sync record is a failure."""
    failure = data.get("failure")
    return isinstance(failure, dict) and failure.get("time", 0) >= data.get("time", 0)


def count(counters: dict | None, outcome: str, action: str = "",
          seconds: tuple[float, float | None] | None = None, new_skips: Sequence[str] = ()) -> dict:
    """The cumulative counters after one more run (a new dict; malformed old values start over)."""
    c = counters if isinstance(counters, dict) else {}
    reconciles = _counts(c.get("reconciles"))
    reconciles[outcome] = reconciles.get(outcome, 0) + 1
    skips = _counts(c.get("skips"))
    for reason in new_skips:
        kind = skip_kind(reason)
        skips[kind] = skips.get(kind, 0) + 1
    whole, applying = _histogram(c.get("reconcile_seconds")), _histogram(c.get("apply_seconds"))
    if seconds is not None:
        _observe(whole, seconds[0])
        if seconds[1] is not None:
            _observe(applying, seconds[1])
    return {"reconciles": reconciles, "skips": skips,
            "reloads": _int(c.get("reloads")) + (action == "nginx reloaded"),
            "pushes": _int(c.get("pushes")) + (action == "pushed"),
            "reconcile_seconds": whole, "apply_seconds": applying}


def _observe(histogram: dict, value: float) -> None:
    index = next((i for i, bound in enumerate(BUCKETS) if value <= bound), len(BUCKETS))
    histogram["counts"][index] += 1
    histogram["sum"] += value


def _histogram(value) -> dict:
    """{"counts": per bucket (the last is +Inf), not cumulative; "sum": seconds}."""
    if (isinstance(value, dict) and isinstance(value.get("counts"), list)
            and len(value["counts"]) == len(BUCKETS) + 1 and isinstance(value.get("sum"), (int, float))):
        return {"counts": [_int(n) for n in value["counts"]], "sum": float(value["sum"])}
    return {"counts": [0] * (len(BUCKETS) + 1), "sum": 0.0}


def _counts(value) -> dict[str, int]:
    return {str(k): _int(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _int(value) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
