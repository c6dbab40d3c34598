"""Every state file lbsync keeps in `state_dir`, read and written in one place.

`last_sync.json` (the last reconcile, from the hook or the daemon), `daemon.json` (the daemon's
view) and `autoscale.json` (the autoscaler's state, which must survive restarts) are advisory
for people except the last. They are written atomically; a reader that finds a file missing or
unreadable gets None, never an exception.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .files import write_atomic

if TYPE_CHECKING:
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


def record_sync(state_dir: str, result: SyncResult) -> None:
    """The last reconcile's result, for `lbsync status` and for the next run's guard (the pool as
    records, who held each endpoint, a collapse being held); a failure here never fails the sync."""
    from .members import to_record

    data = {
        "time": time.time(),
        "outcome": result.outcome.value,
        "backends": [m.name for m in result.backends],
        "skipped": {s.name: s.reason for s in result.skipped},
        "pool": {m.name: to_record(m) for m in result.backends},
        "endpoints": {m.endpoint: m.name for m in result.backends},
        "collapse_since": result.hold.since,
        "held": list(result.hold.names),
    }
    try:
        write(state_dir, LAST_SYNC, data)
    except OSError as exc:
        log.warning("cannot save state in %s: %s", state_dir, exc.strerror or exc)
