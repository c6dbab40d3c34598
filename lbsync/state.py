"""Every state file lbsync keeps in `state_dir`, read and written in one place.

`last_sync.json` (the last reconcile, from the hook, a manual sync or the daemon, and the last
failed run; see `record`), `daemon.json` (the daemon's view) and `autoscale.json` (the
autoscaler's state, which must survive restarts) are advisory for people except the last and
the pool in `last_sync.json`, which the collapse guard reads. They are written atomically; a
reader that finds a file missing or unreadable gets None, never an exception.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import LbsyncError
from .files import write_atomic

if TYPE_CHECKING:
    from .config import Settings
    from .plan import SyncResult

log = logging.getLogger("lbsync")

LAST_SYNC = "last_sync.json"
DAEMON = "daemon.json"
AUTOSCALE = "autoscale.json"


def path(state_dir: str, name: str) -> Path:
    return Path(state_dir) / name


def read(state_dir: str, name: str) -> dict | None:
    """A state file's content, or None when it is missing or not ours."""
    try:
        data = json.loads(path(state_dir, name).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write(state_dir: str, name: str, data: dict, durable: bool = False) -> None:
    """Atomically; raises OSError for the caller to report in its own words."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    write_atomic(path(state_dir, name), json.dumps(data, separators=(",", ":")), durable=durable)


def record_sync(settings: Settings, result: SyncResult, seconds: tuple[float, float | None] | None = None,
                before: dict | None = None) -> None:
    """The last reconcile's result, for `lbsync status` and for the next run's guard (the pool as
    records, who held each endpoint, a collapse being held), plus each member's state and since
    when, recent events and the host's counters (`record`); a failure here never fails the sync.

    `seconds`: how long the reconcile and its apply step took (for the duration histograms);
    `before`: last_sync.json as the run already read it (read here when None)."""
    from . import record
    from .members import to_record

    now = time.time()
    if before is None:
        before = read(settings.state_dir, LAST_SYNC) or {}
    previous = record.mapping(before, "members")
    members = record.since(previous, record.labels(result), now)
    skipped = {s.name: s.reason for s in result.skipped}
    old_skips = record.mapping(before, "skipped")
    first = "members" not in before  # the first record: every member would look new
    events = ([] if first else record.membership_events(previous, members, skipped, now)) + \
        record.apply_event(result, now)
    data = {
        **{k: before[k] for k in ("failure",) if k in before},
        "time": now,
        "outcome": result.outcome.value,
        "action": result.action,
        "backends": [m.name for m in result.backends],
        **({"pools": {pool: list(names) for pool, names in result.pools},
            "pools_down": {pool: list(names) for pool, names in result.pools_down}} if result.pools else {}),
        "skipped": skipped,
        "pool": {m.name: to_record(m) for m in result.backends if m.source == "serf"},  # the guard's memory
        "endpoints": {m.endpoint: m.name for m in result.backends},
        "collapse_since": result.hold.since,
        "held": list(result.hold.names),
        "members": members,
        "events": record.append_events(before.get("events", []), events),
        "counters": record.count(before.get("counters"), result.outcome.value, result.action, seconds,
                                 [r for n, r in skipped.items() if old_skips.get(n) != r]),
    }
    _save(settings, data, changed=bool(events) or members != previous or record.last_failed(before))


def record_failure(settings: Settings, error: Exception, seconds: float | None = None) -> None:
    """A run that failed: its error and when, beside the last good result (which the guard still
    needs), an event, and the counters; never raises."""
    from . import record

    now = time.time()
    data = read(settings.state_dir, LAST_SYNC) or {}
    text = str(error) or type(error).__name__
    data["failure"] = {"time": now, "error": text, "pid": os.getpid()}
    data["events"] = record.append_events(data.get("events", []), [[now, "error", "", text]])
    data["counters"] = record.count(data.get("counters"), "error", "", None if seconds is None else (seconds, None))
    _save(settings, data, changed=True)


def _save(settings: Settings, data: dict, changed: bool) -> None:
    try:
        write(settings.state_dir, LAST_SYNC, data)
    except (OSError, LbsyncError) as exc:
        log.warning("cannot save state in %s: %s", settings.state_dir, getattr(exc, "strerror", None) or exc)
        return
    if settings.daemon.metrics_file and not daemon_running(settings.state_dir):
        _textfile(settings, data, changed)


def _textfile(settings: Settings, data: dict, changed: bool) -> None:
    """Hook and manual runs keep node_exporter's textfile current when no daemon owns it. When
    nothing it shows but the count of unchanged runs moved, it is only touched (its mtime is
    node_exporter's `node_textfile_mtime_seconds`): prometheus_client costs the hook ~70 ms of
    imports, so the count catches up at the next run that changes something."""
    path = Path(settings.daemon.metrics_file)
    if not changed and path.exists():
        try:
            os.utime(path)
            return
        except OSError:
            pass
    from .exposition import write_textfile

    try:
        write_textfile(path, settings, data, None)
    except (OSError, LbsyncError) as exc:
        log.warning("cannot write %s: %s", path, getattr(exc, "strerror", None) or exc)


def daemon_running(state_dir: str) -> bool:
    """Whether an `lbsync run` that published daemon.json is alive (this process counts)."""
    data = read(state_dir, DAEMON) or {}
    return pid_alive(data.get("pid")) and not data.get("stopped")


def pid_alive(pid) -> bool:
    """Whether `pid` is a live lbsync process (a recycled pid running something else is not)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's
    try:
        return b"lbsync" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc to ask: trust the signal
