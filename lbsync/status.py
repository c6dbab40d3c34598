"""`lbsync status`: what Serf reports, what that renders to, what nginx actually serves, and why.

One model (a plain dict, the `--json` schema below), rendered three ways: text for a terminal
(`lbsync status`), JSON (`lbsync status --json`) and the daemon's HTML status page
(`statuspage`). Inputs: the Serf agent's members of our role (every status), nginx's pool read
back through the data-plane driver, and the state files the runs, the daemon and the autoscaler
leave in `state_dir`. Names and reasons come from the network: the text is escaped with
`printable`, the page by Jinja2's autoescape, and JSON escapes control characters itself.

`--json` schema (version 1; times are Unix seconds, null when unknown; ages are not included,
subtract from `time`):
  schema: 1, time: now, host: this host's name
  serf: {addr, role, error: null | why the agent could not be asked,
         members: {status: count}}                  # Serf's statuses of members with our role
  pools: [{name, data_plane: "live"|"reload",
           served: {source: "live pool v7" | "file ..." , error: null | why nginx was not read},
           rendered: int, serving: int,              # what the membership renders; taking requests
           drift: null | {extra: [names nginx serves beyond the membership], missing: [names it lacks]},
           backends: [{name, address: "host:port" | "", source: "serf"|"held"|"nginx",
                       serf: "alive"|"failed"|"left"|"leaving"|"none"|null,
                       drain: bool, health: "healthy"|"down"|"unchecked"|null, health_error: str,
                       in_nginx: bool, state: one of STATES, reason: str (skipped: why),
                       since: when it entered `state` (null: not recorded yet)}]}]
  skipped: [{name, reason}]
  last_run: null | {time, outcome: "unchanged"|"updated"|"error", action: "pushed"|"nginx reloaded"|"",
                    backends: int, error: str}
  last_failure: null | {time, error}
  daemon: {state: "running"|"stopped"|"absent", pid, started, stopped, serf_connected, last_reconcile,
           last_outcome, last_error, reconciles: {outcome: n}, reloads, pushes, reconnects, unhealthy: [],
           status_url}
  autoscale: {state: "active"|"idle"|"absent", updated, decided: when `action` was decided, action, reason,
              size, fleet_load,
              warming: [names], removing: [names], last_out, last_in}
  events: [{time, kind, name, detail}]                # newest last; see `record` and `metrics`
  pair: only with `vip` set (an LB pair): {vip, holds_vip, name, digest, peers: [{name, status, digest}],
        agree, nginx_down, check, error}                # see paircheck.view
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any

from . import record, state
from .config import Settings
from .drivers.base import choose, data_plane
from .errors import SourceError
from .guard import Memory
from .members import Selection, select, serves
from .plan import Served
from .pools import roles
from .rules import printable

# a backend's headline state, as a person reads it
# (failed/left/leaving/skipped with in_nginx true: nginx still serves it, and the drift line says so)
STATES = ("serving", "draining", "down", "held", "missing", "stray", "skipped", "failed", "left",
          "leaving", "none", "pending")
TEXT_EVENTS = 8


def show_status(settings: Settings, args: argparse.Namespace) -> int:
    """Print the report; 69 (EX_UNAVAILABLE) when the Serf agent could not be asked."""
    records, error = [], ""
    try:
        records = args.source_factory(settings).members()
    except SourceError as exc:
        error = str(exc)
    data = model(settings, records, serf_error=error)
    if settings.vip:  # an LB pair: asked here, not in model(): an RPC and `ip` per call
        from .paircheck import view

        data["pair"] = view(settings)
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(data, indent=1, sort_keys=True) + "\n")
    else:
        print(text(data))
    return 69 if error else 0


# -- the model -----------------------------------------------------------------------------------

def model(settings: Settings, records: list[dict], served: Served | None = None, now: float | None = None,
          serf_error: str = "", daemon: dict | None = None) -> dict:
    """Everything `status` shows, as plain data. `daemon` is daemon.json's content (the daemon
    passes what it just published); read from state_dir when None."""
    now = time.time() if now is None else now
    last = state.read(settings.state_dir, state.LAST_SYNC) or {}
    daemon = daemon if daemon is not None else state.read(settings.state_dir, state.DAEMON)
    daemon_view = _daemon(daemon)
    health = (daemon or {}).get("health", {}) if daemon_view["state"] == "running" else {}
    if settings.pools:
        selection, pools = _pools(settings, records, last, health)
    else:
        selection = select(records, settings, Memory.recall(settings.state_dir).endpoints)
        served = served if served is not None else choose(settings).served()
        pools = [_pool(settings, records, selection, served, last, health)]
    events = [{"time": e[0], "kind": e[1], "name": e[2], "detail": e[3]}
              for e in list(last.get("events") or []) + list((daemon or {}).get("events") or [])
              if isinstance(e, list) and len(e) == 4]
    auto = _autoscale(settings, state.read(settings.state_dir, state.AUTOSCALE), now)
    if auto.get("decided") and auto.get("action") not in (None, "hold"):
        events.append({"time": auto["decided"], "kind": "autoscale", "name": "",
                       "detail": f"{auto['action']}: {auto.get('reason', '')}"})
    return {
        "schema": 1, "time": now, "host": socket.gethostname(),
        "serf": {"addr": settings.rpc_addr, "role": ", ".join(roles(settings)), "error": serf_error or None,
                 "members": _serf_counts(settings, records, selection)},
        "pools": pools,
        "skipped": [{"name": s.name, "reason": s.reason} for s in selection.skipped],
        "last_run": _last_run(last),
        "last_failure": _failure(last),
        "daemon": daemon_view,
        "autoscale": auto,
        "events": sorted(events, key=lambda e: e["time"])[-record.MAX_EVENTS:],
    }


def _pools(settings: Settings, records: list[dict], last: dict, health: dict) -> tuple[Selection, list[dict]]:
    """With [[pool]] tables: every pool's table, from the same selection a reconcile makes."""
    from .drivers.pools import PoolsDriver
    from .pools import merged, plan_pools

    plans = plan_pools(settings, records, Memory.of(last).endpoints, frozenset())
    driver = PoolsDriver(settings)
    served = driver.served_pools()
    pools = []
    for p in plans:
        down = record.pool_down(last, p.pool.name)
        seen = health if down is None else _seen_by(health, down)
        table = _pool(p.single, records, p.plan.selection, served[p.pool.name], last, seen)
        pools.append({**table, "name": p.pool.name, "protocol": p.pool.protocol, "listen": list(p.pool.listen),
                      "data_plane": "live" if p.pool.name in driver.channels else "reload"})
    return merged(plans), pools


def _seen_by(health: dict, down: set[str]) -> dict:
    """The daemon's verdicts (per node name: down if any of its checks fails) as one pool saw
    them in the last reconcile (`down`): a node down in another pool only is healthy here."""
    seen = {}
    for name, verdict in health.items():
        elsewhere = isinstance(verdict, dict) and not verdict.get("healthy") and name not in down
        seen[name] = {**verdict, "healthy": True, "error": ""} if elsewhere else verdict
    return seen


def _serf_counts(settings: Settings, records: list[dict], selection: Selection) -> dict[str, int]:
    """Serf members of the roles followed, by status (static members are not Serf's)."""
    if not settings.pools:
        return {status: len(names) for status, names in sorted(selection.by_status.items())}
    followed = roles(settings)
    statuses = [str(r.get("Status")) for r in records if any(serves(r.get("Tags"), role) for role in followed)]
    return {status: statuses.count(status) for status in sorted(set(statuses))}


def _pool(settings: Settings, records: list[dict], selection: Selection, served: Served, last: dict,
          health: dict) -> dict:
    """One pool's backend table: every member of our role, and whatever else nginx serves."""
    recorded = record.mapping(last, "members")
    held = set(last.get("held") or []) if last.get("collapse_since") is not None else set()
    rendered = {m.name: m for m in selection.backends}
    in_nginx = {name: (endpoint, down) for name, endpoint, down in served.backends}
    statuses = {str(r.get("Name")): str(r.get("Status")) for r in records if serves(r.get("Tags"), settings.role)}
    reasons = {s.name: s.reason for s in selection.skipped}
    rows = []
    for name in sorted(set(statuses) | set(rendered) | set(in_nginx)):
        member = rendered.get(name)
        verdict = health.get(name) if member is not None and not member.draining else None
        row: dict[str, Any] = {"name": name, "serf": statuses.get(name),
               "address": member.endpoint if member else in_nginx.get(name, ("", False))[0] or _address(records, name),
               "source": "static" if member is not None and member.source == "static" else "serf" if name in statuses
               else "held" if name in held else "nginx",
               "drain": bool(member and member.draining),
               "health": None if member is None else "unchecked" if verdict is None else
               "healthy" if verdict.get("healthy") else "down",
               "health_error": (verdict or {}).get("error", "") if verdict and not verdict.get("healthy") else "",
               "in_nginx": name in in_nginx and not served.error, "reason": reasons.get(name, "")}
        row["state"] = _state(row, member is not None, name in held, bool(served.error))
        entry = record.mapping(recorded, name)
        since = entry.get("since") if _same(entry.get("state"), row["state"]) else None
        if row["health"] == "down" and verdict and verdict.get("since"):
            since = verdict["since"]
        row["since"] = since
        rows.append(row)
    return {
        "name": settings.upstream_name, "data_plane": data_plane(settings),
        "served": {"source": served.source, "error": served.error or None},
        "rendered": len(rendered), "serving": sum(r["state"] == "serving" for r in rows),
        "drift": _drift(rendered, in_nginx, held, served), "backends": rows,
    }


def _state(row: dict, rendered: bool, held: bool, unknown: bool) -> str:
    if rendered:
        if not row["in_nginx"] and not unknown:
            return "missing"
        return "draining" if row["drain"] else "down" if row["health"] == "down" else "serving"
    if row["in_nginx"] and (held or row["serf"] is None):
        return "held" if held else "stray"  # stray: nginx serves a name Serf does not know
    if row["serf"] == "alive":
        return "skipped" if row["reason"] else "pending"
    return row["serf"] or "none"


def _same(recorded: str | None, shown: str) -> bool:
    """Whether the recorded state is the one shown (health and drift are not recorded per run)."""
    return recorded == shown or (recorded == "serving" and shown in ("down", "missing"))


def _drift(rendered: dict, in_nginx: dict, held: set, served: Served) -> dict | None:
    if served.error:
        return None
    want = {(name, m.endpoint) for name, m in rendered.items()}
    have = {(name, endpoint) for name, (endpoint, _) in in_nginx.items() if name not in held}
    if want == have:
        return None
    return {"extra": sorted(n for n, _ in have - want), "missing": sorted(n for n, _ in want - have)}


def _address(records: list[dict], name: str) -> str:
    """A member that is not rendered: the address Serf reports, for the operator to recognise."""
    from .members import _address as parse_address

    for r in records:
        if str(r.get("Name")) == name:
            try:
                return str(parse_address(r.get("Addr")))
            except ValueError:
                return ""
    return ""


def _last_run(last: dict) -> dict | None:
    if not last:
        return None
    if record.last_failed(last):
        return {"time": last["failure"].get("time"), "outcome": "error", "action": "",
                "backends": len(last.get("backends") or []), "error": str(last["failure"].get("error", ""))}
    return {"time": last.get("time"), "outcome": last.get("outcome"), "action": last.get("action", ""),
            "backends": len(last.get("backends") or []), "error": ""}


def _failure(last: dict) -> dict | None:
    failure = record.mapping(last, "failure")
    return {"time": failure.get("time"), "error": str(failure.get("error", ""))} if failure else None


def _daemon(data: dict | None) -> dict:
    if not data:
        return {"state": "absent"}
    running = state.pid_alive(data.get("pid")) and not data.get("stopped")
    keys = ("pid", "started", "stopped", "serf_connected", "last_reconcile", "last_outcome", "last_error",
            "reconciles", "reloads", "pushes", "reconnects", "unhealthy", "status_url")
    return {"state": "running" if running else "stopped", **{k: data.get(k) for k in keys}}


def _autoscale(settings: Settings, data: dict | None, now: float) -> dict:
    """The autoscaler's last word. It writes its state every `interval`: older than three
    intervals (at least a minute) means it is not running, or not acting (dry runs write none).
    When the file names a `pid`, that process being alive (and not `stopped`) decides instead."""
    if not data:
        return {"state": "absent"}
    scale, decision = record.mapping(data, "state"), record.mapping(data, "decision")
    updated = data.get("updated") if isinstance(data.get("updated"), (int, float)) else None
    fresh = updated is not None and now - updated <= max(3 * settings.autoscale.interval, 60.0)
    if isinstance(data.get("pid"), int):  # a scaler that names its pid is asked directly
        fresh = state.pid_alive(data["pid"]) and not data.get("stopped")
    decided = decision.get("time") if isinstance(decision.get("time"), (int, float)) else updated
    names = lambda key: [str(n.get("name")) for n in scale.get(key) or [] if isinstance(n, dict)]
    return {"state": "active" if fresh else "idle", "updated": updated, "decided": decided,
            "action": decision.get("action"), "reason": decision.get("reason", ""),
            "size": decision.get("size"), "fleet_load": decision.get("fleet_load"),
            "warming": names("warming"), "removing": names("removing"),
            "last_out": scale.get("last_out"), "last_in": scale.get("last_in")}


# -- text ----------------------------------------------------------------------------------------

def ago(then: float | None, now: float) -> str:
    """'12 s ago', '3 min ago', '2 h ago', '4 d ago'; '-' when unknown."""
    if not isinstance(then, (int, float)):
        return "-"
    seconds = max(0.0, now - then)
    if seconds < 100:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} d ago"


def text(data: dict) -> str:
    now, lines = data["time"], []
    for pool in data["pools"]:
        lines += _pool_text(pool, now)
    for skip in data["skipped"]:
        lines.append(f"skipped  {printable(skip['name'])}: {printable(skip['reason'])}")
    serf = data["serf"]
    members = ", ".join(f"{n} {printable(s)}" for s, n in serf["members"].items()) or "no member has this role"
    lines.append(f"serf agent {serf['addr']}, {'roles' if ',' in serf['role'] else 'role'} {serf['role']!r}: "
                 + (f"unreachable ({printable(serf['error'])})" if serf["error"] else members))
    lines.append(_run_text(data["last_run"], now))
    failure = data["last_failure"]
    if failure and data["last_run"] and data["last_run"]["outcome"] != "error":
        lines.append(f"last failure: {ago(failure['time'], now)}: {printable(failure['error'])}")
    lines.append(_daemon_text(data["daemon"], now))
    lines.append(_autoscale_text(data["autoscale"], now))
    if data.get("pair"):
        from .paircheck import view_lines

        lines += view_lines(data["pair"], now)
    events = data["events"][-TEXT_EVENTS:]
    if events:
        lines.append("recent events:")
        lines += [f"  {ago(e['time'], now):>11}  {e['kind']:<9} {printable(e['name'])}"
                  f"{'  ' if e['name'] else ''}{printable(e['detail'], 160)}".rstrip() for e in events]
    return "\n".join(lines)


def _pool_text(pool: dict, now: float) -> list[str]:
    served = pool["served"]
    nginx = (f"nginx serves: unknown ({printable(served['error'])})" if served["error"] else
             f"nginx serves {served['source']} ({sum(b['in_nginx'] for b in pool['backends'])} backends)")
    listener = f"{pool['protocol'].upper()} on {', '.join(pool['listen'])}, " if pool.get("listen") else ""
    lines = [f"pool {pool['name']} ({listener}{pool['data_plane']} data plane): {nginx}; the membership "
             f"renders {pool['rendered']}, {pool['serving']} serving"]
    header = ("BACKEND", "ADDRESS", "SOURCE", "SERF", "DRAIN", "HEALTH", "IN NGINX", "STATE", "SINCE")
    rows = [header] + [(printable(b["name"], 64), printable(b["address"], 64) or "-", b["source"], b["serf"] or "-",
                        "yes" if b["drain"] else "no" if b["health"] else "-",
                        (b["health"] or "-") + (f" ({printable(b['health_error'], 60)})" if b["health_error"] else ""),
                        "yes" if b["in_nginx"] else "no", b["state"], ago(b["since"], now))
                       for b in pool["backends"]]
    if len(rows) == 1:
        lines.append("  (no backend: nginx closes its connections)" if pool.get("protocol") == "tcp" else
                     "  (no backend: nginx answers 503)")
    else:
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    drift = pool["drift"]
    if drift:
        lines.append(f"drift: {drift_text(drift)}; `lbsync sync` repairs it")
    return lines


def drift_text(drift: dict) -> str:
    """'nginx serves X beyond the membership and lacks Y' (either half alone when the other is empty)."""
    extra = ", ".join(printable(n) for n in drift["extra"])
    missing = ", ".join(printable(n) for n in drift["missing"])
    if extra and missing:
        return f"nginx serves {extra} beyond the membership and lacks {missing}"
    return f"nginx serves {extra} beyond the membership" if extra else f"nginx lacks {missing}"


def _run_text(run: dict | None, now: float) -> str:
    if run is None:
        return "last run: none recorded"
    if run["outcome"] == "error":
        return f"last run: FAILED {ago(run['time'], now)}: {printable(run['error'])}"
    action = f" ({run['action']})" if run["action"] else ""
    return f"last run: {run['outcome']}{action} {ago(run['time'], now)}, {run['backends']} backends"


def _daemon_text(d: dict, now: float) -> str:
    if d["state"] == "absent":
        return "daemon: not running (hook mode, or `lbsync run` never ran here)"
    if d["state"] == "stopped":
        return f"daemon: stopped {ago(d.get('stopped') or d.get('last_reconcile'), now)} (pid {d.get('pid')})"
    reconciles = d.get("reconciles") or {}
    serf = "serf connected" if d.get("serf_connected") else "serf NOT connected"
    unhealthy = d.get("unhealthy") or []
    parts = [f"running, pid {d.get('pid')}, started {ago(d.get('started'), now)}", serf,
             f"last reconcile {d.get('last_outcome') or '-'} {ago(d.get('last_reconcile'), now)}",
             f"{sum(reconciles.values())} reconciles ({reconciles.get('error', 0)} failed), "
             f"{d.get('reloads', 0)} reloads, {d.get('pushes', 0)} pushes",
             f"down by health checks: {', '.join(printable(n) for n in unhealthy)}" if unhealthy else "",
             f"status page {d['status_url']}" if d.get("status_url") else ""]
    return "daemon: " + "; ".join(p for p in parts if p)


def _autoscale_text(a: dict, now: float) -> str:
    if a["state"] == "absent":
        return "autoscale: not running (no state in state_dir)"
    load = "none" if a.get("fleet_load") is None else f"{a['fleet_load']:.2f}"
    names = lambda key: ", ".join(printable(n) for n in a[key]) or "none"
    state_word = "active" if a["state"] == "active" else "idle (no word for a while: stopped?)"
    return (f"autoscale: {state_word}, updated {ago(a.get('updated'), now)}; last decision {a.get('action')} "
            f"{ago(a.get('decided'), now)}: "
            f"{printable(a.get('reason') or '')}; size {a.get('size')}, fleet load {load}; "
            f"warming {names('warming')}; removing {names('removing')}; "
            f"last scale-out {ago(a.get('last_out'), now)}, last scale-in {ago(a.get('last_in'), now)}")
