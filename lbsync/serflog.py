"""Serf's own log as a change signal: a member event the moment the agent learns of it.

Serf coalesces member events for about a second before any handler or RPC event stream hears of
them, yet logs each one as it happens ("serf: EventMemberJoin: web1 10.0.0.11", also Leave,
Failed, Update for a tag change, Reap). So `lbsync run` subscribes to the agent's log (RPC
`monitor`) on a connection of its own, read by this thread, and wakes its loop on such a line;
the loop then reads the member list as it always does. A line is only a trigger: nothing in it
(names come from the network) is parsed or kept. While the log is not followed (an agent that
refuses `monitor`, a lost connection) the daemon polls Serf every `poll_interval` instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import LbsyncError

if TYPE_CHECKING:
    from .serf import SerfClient

log = logging.getLogger("lbsync")

MEMBER_EVENT = "serf: EventMember"  # the agent's log lines for join, leave, failed, update, reap
STOP_CHECK = 0.5  # s: how often the reader looks at its stop flag while the log is quiet


class LogWatch:
    """Follows the agent's log in a thread; `take()` says whether a member event was logged."""

    def __init__(self, connect: Callable[[], SerfClient], wake: Callable[[], None]):
        self._connect, self._wake = connect, wake
        self._stop = threading.Event()
        self._seen = threading.Event()
        self._thread: threading.Thread | None = None
        self.up = False  # following the log now

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow, name="lbsync-serf-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_CHECK + 1)
        self._thread, self.up = None, False

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def take(self) -> bool:
        """True when a member event was logged since the last call."""
        seen = self._seen.is_set()
        self._seen.clear()
        return seen

    def _follow(self) -> None:
        client = None
        try:
            client = self._connect()
            lines = client.monitor("INFO")
            self.up = True
            self._seen.set()  # the replayed lines may hold events from before: look once
            self._wake()
            while not self._stop.is_set():
                record = lines.next(timeout=STOP_CHECK)
                if record is not None and MEMBER_EVENT in str(record.get("Log", "")):
                    self._seen.set()
                    self._wake()
        except LbsyncError as exc:
            log.info("not following serf's log (%s); polling every poll_interval", exc)
        except Exception as exc:  # noqa: BLE001 -- a client without `monitor`: the loop polls instead
            log.info("not following serf's log (%s: %s); polling every poll_interval", type(exc).__name__, exc)
        finally:
            self.up = False
            if client is not None:
                client.close()
            self._wake()  # the loop notices and polls at the fast pace again
