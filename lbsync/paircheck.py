"""`lbsync check`, keepalived's track script on an LB pair, and the pair's view for `lbsync status`.

The check fails (exit 1, keepalived then gives the VIP to the peer) when lbsync's data plane on
this LB is stale: nginx holds another pool than the one the local Serf agent's membership makes
(the dry run `lbsync sync --check` does, with nginx's own health verdicts), or Serf cannot be
asked, for longer than `pair_grace` seconds. A change in flight is not stale: the hook or the
daemon applies it within about a second. Two guards keep a check from making things worse:
- staleness fails the check only while a peer publishes the digest of the pool the membership
  makes (it serves the right pool): if both LBs are behind, both keep serving and the VIP stays
  where it is, instead of both stepping down and nobody holding it;
- a Serf agent that cannot be asked fails it after the grace (a single failure is far likelier
  than both LBs losing their agents at once).
That nginx serves at all is checked by keepalived itself (`pairfiles`: a file nginx.service
writes when nginx stops or dies, and a curl to a location nginx answers on its own).

The check also puts this LB's `pool` tag back when the agent lost it (restarted, SIGHUP re-reads
the config's tags), and records its verdict in `state_dir/pair-check.json` for `status`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import state
from .errors import LbsyncError
from .pair import LB_ROLE, NGINX_DOWN, TAG, pool_digest, set_tag
from .rules import split_hostport

if TYPE_CHECKING:
    from .config import Settings
    from .health import Target
    from .plan import Served

log = logging.getLogger("lbsync")

CHECK_STATE = "pair-check.json"


@dataclass
class Look:
    """What one check saw: `pending` (nginx does not hold the membership's pool), why, and peers."""

    name: str = ""
    own_tag: str | None = None
    expected: str | None = None
    pending: bool = False
    error: str = ""  # Serf or the dry run failed: the data plane cannot be judged current
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {status, digest}

    @property
    def fresh_peers(self) -> list[str]:
        """Alive peers whose published digest is the pool the membership makes."""
        return sorted(name for name, p in self.peers.items()
                      if p["status"] == "alive" and self.expected and p["digest"] == self.expected)


def run_check(settings: Settings, args: argparse.Namespace) -> int:
    """CLI entry (`lbsync check`): one line on stdout; exit 0 (serve the VIP) or 1 (give it away)."""
    verdict = check(settings, quiet=not getattr(args, "verbose", False))
    print(("ok: " if verdict["ok"] else "failing: ") + verdict["reason"])
    return 0 if verdict["ok"] else 1


def check(settings: Settings, now: float | None = None, quiet: bool = True) -> dict[str, Any]:
    """Judge this LB, record the verdict, log only when it flips; returns the record."""
    now = time.time() if now is None else now
    before = state.read(settings.state_dir, CHECK_STATE) or {}
    look = observe(settings, quiet)
    stale = look.pending or bool(look.error)
    since = (before.get("stale_since") or now) if stale else None
    ok, reason = judge(look, since, now, settings.pair_grace)
    record = {"time": now, "ok": ok, "reason": reason, "stale_since": since, "expected": look.expected,
              "own": look.own_tag, "peers": look.peers}
    try:
        state.write(settings.state_dir, CHECK_STATE, record)
    except (OSError, LbsyncError) as exc:
        log.warning("cannot save %s in %s: %s", CHECK_STATE, settings.state_dir, exc)
    if before.get("ok", True) != ok:
        (log.warning if not ok else log.info)("LB pair check %s: %s", "failing" if not ok else "passing", reason)
    return record


def judge(look: Look, since: float | None, now: float, grace: float) -> tuple[bool, str]:
    """(ok, reason) from what was seen; `since`: when the data plane was first seen stale."""
    if since is None:
        return True, f"nginx holds the membership's pool {(look.expected or '')[:8]}"
    why = look.error or f"nginx does not hold the membership's pool {(look.expected or '')[:8]}"
    late = now - since
    if late < grace:
        return True, f"{why} ({late:.0f} s; a change may be in flight, grace {grace:g} s)"
    if look.error:
        return False, f"{why} for {late:.0f} s"
    if look.fresh_peers:
        return False, f"{why} for {late:.0f} s; {', '.join(look.fresh_peers)} serves it: giving the VIP away"
    return True, f"{why} for {late:.0f} s, but no peer serves it either: keeping the VIP"


def observe(settings: Settings, quiet: bool = True) -> Look:
    """Ask Serf (own name and tags, the LBs, the members) and dry-run the pipeline against nginx."""
    from .members import select
    from .pacing import Snapshot
    from .plan import Outcome, Plan
    from .serf import connect, lb_members
    from .sync import reconcile

    look = Look()
    logger, level = logging.getLogger("lbsync"), logging.getLogger("lbsync").level
    try:
        with connect(settings) as client:
            stats = client.stats()
            lbs = client.members_filtered(tags={"role": LB_ROLE})
            records = lb_members(client, settings)
        look.name, tags = str(stats.get("agent", {}).get("name", "")), stats.get("tags") or {}
        look.own_tag = tags.get(TAG)
        look.peers = {str(m.get("Name")): {"status": m.get("Status"), "digest": (m.get("Tags") or {}).get(TAG)}
                      for m in lbs if m.get("Name") != look.name}
        if quiet:  # every 3 s from keepalived: the dry run's lines (skips, "would push") are noise
            logger.setLevel(logging.ERROR)
        result = reconcile(settings, Snapshot(records), dry_run=True, unhealthy=down_in_nginx(settings))
        look.expected = pool_digest(Plan.of(settings, result.selection or select([], settings)))
        look.pending = result.outcome is Outcome.DRY_RUN
    except LbsyncError as exc:
        look.error = str(exc)
    finally:
        logger.setLevel(level)
    if look.expected and not look.pending and look.own_tag != look.expected and set_tag(settings, look.expected):
        look.own_tag = look.expected
    return look


def down_in_nginx(settings: Settings) -> frozenset[Target]:
    """Backends nginx holds down by health checks (lbsync run's verdicts), as the failing probes
    that put them there, each with its pool's check: the dry run plans them down too, so a health
    verdict is not mistaken for a stale pool. A drained backend reads as down too, but is never
    probed, so no plan takes it for a verdict."""
    from .health import Target

    down = set()
    for served, check in _served_with_checks(settings):
        for name, endpoint, is_down in served.backends:
            if is_down:
                with contextlib.suppress(ValueError):  # not host:port: no probe can have matched it
                    down.add(Target(name, *split_hostport(endpoint), check))
    return frozenset(down)


def _served_with_checks(settings: Settings) -> list[tuple[Served, str]]:
    """What nginx serves for each pool (read back from its control socket or installed files),
    with the check its backends are probed with."""
    if not settings.pools:
        from .drivers.base import choose

        return [(choose(settings).served(), "")]
    from .drivers.pools import PoolsDriver
    from .pools import pool_check

    served = PoolsDriver(settings).served_pools()
    return [(served[pool.name], pool_check(settings, pool)) for pool in settings.pools]


# -- the view for `lbsync status` ----------------------------------------------------------------

def view(settings: Settings) -> dict[str, Any]:
    """The LB pair as `lbsync status` shows it; never raises. Schema:
      vip: "ADDR/PREFIX" | null (not in a pair: nothing else is set)
      holds_vip: bool | null (null: could not tell)     name: this LB's Serf name | null
      digest: the pool digest this LB publishes (Serf tag `pool`) | null
      peers: [{name, status: Serf's, digest | null}]
      agree: bool | null (null: no alive peer, or a digest missing)
      nginx_down: bool (nginx.service said it stopped: keepalived gave the VIP away)
      check: pair-check.json (time, ok, reason, stale_since, expected, own, peers) | null
      error: null | why the Serf agent could not be asked
    """
    if not settings.vip:
        return {"vip": None}
    out: dict[str, Any] = {"vip": settings.vip, "holds_vip": holds(settings.vip), "name": None, "digest": None,
                           "peers": [], "agree": None, "nginx_down": _nginx_down(),
                           "check": state.read(settings.state_dir, CHECK_STATE), "error": None}
    from .serf import connect

    try:
        with connect(settings) as client:
            stats = client.stats()
            lbs = client.members_filtered(tags={"role": LB_ROLE})
    except LbsyncError as exc:
        out["error"] = str(exc)
        return out
    out["name"] = str(stats.get("agent", {}).get("name", "")) or None
    out["digest"] = (stats.get("tags") or {}).get(TAG)
    out["peers"] = sorted(({"name": str(m.get("Name")), "status": m.get("Status"),
                            "digest": (m.get("Tags") or {}).get(TAG)} for m in lbs if m.get("Name") != out["name"]),
                          key=lambda p: p["name"])
    alive = [p["digest"] for p in out["peers"] if p["status"] == "alive"]
    if alive:
        digests = [out["digest"], *alive]
        out["agree"] = None if None in digests else len(set(digests)) == 1
    return out


def view_lines(data: dict[str, Any], now: float | None = None) -> list[str]:
    """`view()` as text lines for `lbsync status` (names from the network are escaped)."""
    from .rules import printable

    if not data.get("vip"):
        return []
    now = time.time() if now is None else now
    held = {True: "held here", False: "not held here", None: "held here: unknown"}[data.get("holds_vip")]
    lines = [f"LB pair: VIP {data['vip']} {held}" + (" (nginx stopped: given away)" if data.get("nginx_down") else "")]
    if data.get("error"):
        lines.append(f"  pool digests: unknown ({printable(data['error'])})")
    else:
        names = [(data.get("name") or "this LB", data.get("digest"), "alive")] + \
            [(p["name"], p["digest"], p["status"]) for p in data.get("peers", [])]
        shown = ", ".join(f"{printable(n)} {(d or 'none')[:8]}" + ("" if s == "alive" else f" ({printable(s)})")
                          for n, d, s in names)
        verdict = {True: "agree", False: "DISAGREE", None: "cannot compare"}[data.get("agree")]
        lines.append(f"  pool digests: {shown}: {verdict}")
    check = data.get("check")
    if isinstance(check, dict) and isinstance(check.get("time"), (int, float)):
        word = "passing" if check.get("ok") else "FAILING"
        lines.append(f"  check ({now - check['time']:.0f} s ago): {word}: {printable(check.get('reason', ''))}")
    return lines


def holds(vip: str) -> bool | None:
    """Whether an interface of this host has the VIP's address (`ip -o addr`); None if unknown."""
    address = vip.split("/")[0]
    try:
        out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return any(len(f) > 3 and f[2] in ("inet", "inet6") and f[3].split("/")[0] == address
               for f in (line.split() for line in out.splitlines()))


def _nginx_down() -> bool:
    try:
        return Path(NGINX_DOWN).read_text().strip() not in ("", "0")
    except OSError:
        return False
