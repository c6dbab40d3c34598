"""An LB pair's shared word on the pool: its digest, published as the Serf tag `pool` (issue 16).

Two LBs behind one floating address (keepalived, `pairfiles`) follow the same membership and must
serve the same pool. Each says which pool it applied by setting a tag on its own Serf agent, so
either LB (and `lbsync status` there) sees both digests with one `members-filtered` call, and
`lbsync check` (`paircheck`) can tell whether the peer serves what the membership says.

The digest is the live driver's pool digest of the plan with health checks left out: each LB
checks backends on its own, so a backend one LB finds down is its local observation (status shows
it), not a disagreement about the pool. With no backend down it is the digest nginx holds.

This runs after every reconcile that applied (hook, daemon, manual sync), so it must stay cheap:
nothing at all without `vip`; the hook learns its agent's tags from Serf's SERF_TAG_* variables,
other callers from the digest they published last (`state_dir/pair-published`); an RPC only when
the digest changed. A tag lost with a restarted agent is put back by `lbsync check` (keepalived
runs it every few seconds).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Settings
    from .plan import Plan

log = logging.getLogger("lbsync")

TAG = "pool"  # the Serf tag an LB publishes its pool digest in
ENV_TAG = "SERF_TAG_POOL"  # how Serf hands that tag of its own agent to an event handler
LB_ROLE = "lb"  # the role tag `lbsync install --role lb` gives an LB's agent
PUBLISHED = "pair-published"  # in state_dir: the digest this host last set as its tag
NGINX_DOWN = "/run/lbsync/nginx-down"  # nginx.service's pair drop-in writes 1 here when nginx stops


def pool_digest(plan: Plan) -> str:
    """The digest of the pool `plan` makes, health checks left out (see the module docstring)."""
    from .drivers.live import Pool

    return Pool.of(dataclasses.replace(plan, unhealthy=frozenset())).digest


def publish(settings: Settings, plan: Plan) -> None:
    """Set this LB's `pool` tag to the plan's digest when it changed; never raises (the data plane
    is already right; a tag that could not be set is retried by `lbsync check`)."""
    if not settings.vip:
        return
    digest = pool_digest(plan)
    if "SERF_EVENT" in os.environ:  # Serf's hook: the agent's own tags are in the environment
        if os.environ.get(ENV_TAG) == digest:
            return
    elif published(settings) == digest:
        return
    set_tag(settings, digest)


def set_tag(settings: Settings, digest: str) -> bool:
    """One RPC: the tag on the local agent, then remember it. False (logged) when it failed."""
    from .errors import LbsyncError
    from .serf import connect

    try:
        with connect(settings) as client:
            client.tags(set={TAG: digest})
    except LbsyncError as exc:
        log.warning("cannot publish pool digest %s as Serf tag %s: %s", digest[:8], TAG, exc)
        return False
    log.info("published pool digest %s as Serf tag %s", digest[:8], TAG)
    try:
        Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
        Path(settings.state_dir, PUBLISHED).write_text(digest + "\n")
    except OSError as exc:
        log.warning("cannot remember the published digest in %s: %s", settings.state_dir, exc.strerror or exc)
    return True


def published(settings: Settings) -> str:
    """The digest this host last published ("" when none or unreadable)."""
    try:
        return Path(settings.state_dir, PUBLISHED).read_text().strip()
    except OSError:
        return ""
