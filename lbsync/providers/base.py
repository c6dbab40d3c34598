"""The provider interface, its error, retries with backoff, and the dry-run guard.

A provider does three things: launch one node, list the instances that are ours (by tag), and
destroy one instance. Everything else (when, how many, which, drain before destroy, reconciling
with Serf, the state file) is the scaler's, the same for every provider. `instances()` returns
None when a provider cannot list (operator commands without a list_command).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ..autoscale import Node
from ..errors import LbsyncError
from ..rules import printable

log = logging.getLogger("lbsync")

T = TypeVar("T")

# Tags (EC2 tags, CloudStack resource tags, OpenStack server metadata) that mark our instances.
CLUSTER_TAG, POOL_TAG, NODE_TAG = "lbsync-cluster", "lbsync-pool", "lbsync-node"
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0  # seconds; doubled per failed try, with jitter


@dataclass(frozen=True)
class Instance:
    """One instance of ours: the Serf node name it joins as (its lbsync-node tag), the provider's
    id ("" when the provider cannot tell), its state in the provider's words, when it was made."""

    name: str
    id: str = ""
    state: str = ""
    created: float | None = None


class ProviderError(LbsyncError):
    """An API call or operator command failed; the message is the provider's own (secrets never
    in it). `retry`: whether trying again may help (throttling, timeouts, 5xx) or not (bad
    credentials, an unknown image)."""

    exit_code = 69  # EX_UNAVAILABLE

    def __init__(self, message: str, retry: bool = True, wait: float | None = None):
        super().__init__(printable(message, 600))
        self.retry, self.wait = retry, wait


class Provider(Protocol):
    kind: str
    drains_by_query: bool  # True: drain through the Serf query `drain_query` (cloud user data installs it)

    def launch(self, node: Node) -> Instance: ...

    def instances(self) -> list[Instance] | None: ...

    def destroy(self, instance: Instance) -> None: ...


class DryRun:
    """Reads through; refuses every mutating call. The scaler never makes one in a dry run: this
    makes sure of it at the one place every call passes."""

    def __init__(self, inner: Provider):
        self.inner = inner
        self.kind, self.drains_by_query = inner.kind, inner.drains_by_query

    def instances(self) -> list[Instance] | None:
        return self.inner.instances()

    def launch(self, node: Node) -> Instance:
        raise ProviderError(f"dry run: not launching {node.name}", retry=False)

    def destroy(self, instance: Instance) -> None:
        raise ProviderError(f"dry run: not destroying {instance.name}", retry=False)


def with_retries(what: str, call: Callable[[], T], retries: int, sleep: Callable[[float], None] = time.sleep) -> T:
    """`call()`, tried again up to `retries` times on a retryable ProviderError, waiting 1, 2, 4 ...
    s (at most 30, with jitter, or what a rate limit asked for); each failure is logged with the
    provider's message. The last error is raised."""
    for attempt in range(retries + 1):
        try:
            return call()
        except ProviderError as exc:
            if not exc.retry or attempt == retries:
                raise
            wait = exc.wait if exc.wait is not None else min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** attempt)
            wait *= random.uniform(1.0, 1.25)
            log.warning("autoscale: %s failed (try %d of %d): %s; again in %.1f s",
                        what, attempt + 1, retries + 1, exc, wait)
            sleep(wait)
    raise AssertionError("unreachable")
