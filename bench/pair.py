"""LB pair failover (issue 16): how long the VIP takes to move and how many requests fail.

Two LBs (`lb`: hook mode, `lb2`: the daemon) share 10.77.0.100 through keepalived (VRRP v3,
unicast, 0.1 s adverts, nopreempt), with two web hosts and a client, all real Debian hosts on one
bridge (kit.hosts, provisioned by provision/*.sh like the Vagrant pair). Under ~100 req/s at the
VIP (fresh connections, 3 s timeout) the client sees the steps of kit.lbpair.prove: nginx on the
VIP holder killed, nginx back (failback: the VIP must stay), a planned move (keepalived restarted
on the holder), the holder dying as a machine (link down, SIGKILL of its PID 1), and it booting
again (failback). Per step: seconds from the action to the VIP on the other LB (from `ip monitor`
in the LBs' network namespaces), failed requests of those started from 1 s before the action
until 4 s after the VIP settled, the slowest request (a SYN lost to a dead LB costs 1 s), and
whether the LBs whose nginx serves hold the same pool (digest read back from nginx).

Goals (issue 16): the VIP moves <= 1 s after an LB dies, <= 1 % of requests fail during a
failover, none during a failback, both pools identical outside a change. --rounds N repeats the
proof on the same hosts (full: 3), moving the VIP back to lb first (not counted).

Needs root and what kit.hosts needs (systemd-nspawn, debootstrap; the first run builds the Debian
image, about a minute). `PYTHONPATH=.:tests bench/pair.py` prints the table and writes
bench/results/<time>-<profile>-pair.json; `make bench` runs `main()` and `render()`. lab/pair.sh
runs it with --keep for a look around afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from common import emit, format_table, write_results
from kit.hosts import HostError, Hosts, check_host
from kit.lbhosts import Lab
from kit.lbpair import LBS, VIP, PacedLoad, Step, VipWatch, prove, vrrp_state
from kit.net import wait_until

ROUNDS = {"quick": 1, "full": 3}
RATE = 100.0
ADVERT_INT = 0.1  # what `lbsync install --vip` ships (VRRP v3)
MAX_FAILOVER_S, MAX_FAILED_PCT = 1.0, 1.0


def main(profile: str = "quick", rounds: int | None = None, keep: bool = False) -> dict:
    """The proof, `rounds` times on one set of hosts; the result as JSON-ready data."""
    try:
        check_host()
    except HostError as exc:
        return emit("lb_pair", {"error": str(exc)}, "skipped")
    rounds = rounds or ROUNDS[profile]
    began = time.monotonic()
    result: dict = {"profile": profile, "vip": VIP, "advert_int_s": ADVERT_INT, "rate": RATE, "rounds": []}
    with Hosts() as hosts:
        lab = Lab(hosts, webs=2, lbs=dict(LBS), vip=VIP).up()
        lab.converge(timeout=60)
        result["setup_s"] = round(time.monotonic() - began, 1)
        with VipWatch(lab) as watch:
            for number in range(1, rounds + 1):
                _home(lab, watch)
                with PacedLoad(lab.client, rate=RATE) as load:
                    steps = prove(lab, watch, load, report=lambda step, n=number: _say(step, n, rounds))
                result["rounds"].append([step.as_dict() for step in steps])
        if keep:
            _keep(hosts)
    result["goals"] = goals(result["rounds"])
    result["seconds"] = round(time.monotonic() - began, 1)
    return emit("lb_pair", result, summary(result))


def _home(lab: Lab, watch: VipWatch) -> None:
    """Before a round: the VIP on lb and lb2 a healthy BACKUP (a planned move when needed)."""
    lb, lb2 = lab.hosts["lb"], lab.hosts["lb2"]
    wait_until(lambda: vrrp_state(lb) in ("MASTER", "BACKUP") and vrrp_state(lb2) in ("MASTER", "BACKUP"), 60,
               "both LBs healthy")
    if watch.holder() != "lb":
        lab.hosts[watch.holder() or "lb2"].run(["systemctl", "restart", "keepalived"])
        wait_until(lambda: watch.holder() == "lb", 10, "the VIP back on lb")
    wait_until(lambda: vrrp_state(lb2) == "BACKUP", 30, "lb2 BACKUP")
    lab.converge(timeout=60)


def _say(step: Step, number: int, rounds: int) -> None:
    moved = f"moved in {step.moved_s:.2f} s" if step.moved_s is not None else "stayed"
    where = f"round {number}/{rounds}: " if rounds > 1 else ""
    print(f"   {where}{step.name}: VIP {step.before} -> {step.after} ({moved}), {step.failed}/{step.total} requests "
          f"failed, slowest {step.slowest_s:.2f} s", flush=True)


def _keep(hosts: Hosts) -> None:
    print("\nThe hosts keep running until Enter (or Ctrl-C). In a host:  nsenter -t PID -a  (PID below), e.g.\n"
          "   nsenter -t PID -a lbsync status ; nsenter -t PID -a journalctl -u keepalived")
    for host in hosts.hosts.values():
        print(f"   {host.name:<7} {host.ip:<11} pid {host.pid1 if host.alive else '(down)'}")
    try:
        input()
    except (EOFError, KeyboardInterrupt):
        pass


def goals(rounds: list[list[dict]]) -> dict:
    """The issue's goals, judged over every round: failovers are the steps where the VIP had to
    move because an LB (or its nginx) died; failbacks those where it had to stay."""
    steps = [step for round_ in rounds for step in round_]
    died = [s for s in steps if s["before"] != s["expect"] and "planned" not in s["name"]]
    back = [s for s in steps if s["before"] == s["expect"]]
    moved = [s["moved_s"] for s in died if s["moved_s"] is not None]
    return {
        "failover_max_s": max(moved, default=None),
        "failover_ok": len(moved) == len(died) and all(m <= MAX_FAILOVER_S for m in moved),
        "failover_failed_pct_max": max((s["failed_pct"] for s in died), default=None),
        "failover_failed_ok": all(s["failed_pct"] <= MAX_FAILED_PCT for s in died),
        "failback_failed": sum(s["failed"] for s in back),
        "failback_ok": all(s["failed"] == 0 and s["moves"] == 0 for s in back),
        "pools_agree": all(s["pools_agree"] for s in steps),
    }


def summary(result: dict) -> str:
    g = result["goals"]
    return (f"failover max {g['failover_max_s']} s (goal <= {MAX_FAILOVER_S:g}), failed max "
            f"{g['failover_failed_pct_max']} % (goal <= {MAX_FAILED_PCT:g}), failback failed {g['failback_failed']} "
            f"(goal 0), pools agree {'yes' if g['pools_agree'] else 'NO'}")


def render(result: dict | None) -> str:
    """step | VIP | moved (s) | failed/total | failed % | slowest (s) | pools agree; then the goals."""
    if not result:
        return ""
    if "error" in result:
        return f"LB pair: {result['error']}"
    rows = []
    for number, round_ in enumerate(result["rounds"], 1):
        for s in round_:
            name = f"{number}. {s['name']}" if len(result["rounds"]) > 1 else s["name"]
            rows.append([name, f"{s['before']} -> {s['after']}", s["moved_s"], f"{s['failed']}/{s['total']}",
                         s["failed_pct"], s["slowest_s"], s["pools_agree"]])
    table = format_table(("LB pair step", "VIP", "moved s", "failed/total", "failed %", "slowest s", "pools agree"),
                         rows, left=2)
    g = result["goals"]
    verdict = lambda ok: "met" if ok else "MISSED"
    title = (f"LB pair failover (issue 16): {result['rate']:g} req/s at the VIP on fresh connections, VRRP v3 "
             f"adverts every {result['advert_int_s']:g} s")
    return (f"{title}\n{table}\ngoals: VIP moves <= {MAX_FAILOVER_S:g} s after an LB dies: {verdict(g['failover_ok'])} "
            f"(max {g['failover_max_s']} s); <= {MAX_FAILED_PCT:g} % failed during a failover: "
            f"{verdict(g['failover_failed_ok'])} (max {g['failover_failed_pct_max']} %); 0 failed during a failback: "
            f"{verdict(g['failback_ok'])}; pools identical: {verdict(g['pools_agree'])}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="3 rounds (quick: 1)")
    parser.add_argument("--rounds", type=int, help="rounds of the proof on the same hosts")
    parser.add_argument("--keep", action="store_true", help="keep the hosts running afterwards until Enter")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/pair.py needs root (containers, network namespaces, cgroups)")
    profile = "full" if args.full else "quick"
    data = main(profile, args.rounds, args.keep)
    print(render(data))
    print(f"results: {write_results(f'{profile}-pair', {'lb_pair': data})}")
