"""Many web agents at once (issues 7 and 11, `--full` only): 100 nodes join together (see SIZES).

For each size, a fresh lab in each mode; all agents join in parallel; measured: time until every
node has answered through nginx (a pipelined sweep, as for the burst), from the joins and from
the moment the LB's own agent knew all of them, nginx reloads, whether the upstream is exact,
and what the LB side spent meanwhile: CPU seconds of the LB's Serf agent including its handler children (the
hook), of `lbsync run` (the daemon) and of nginx's master with its finished children, plus RSS.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchlab import BenchLab, make_lab, nodes_for, now
from common import emit
from kit.procs import Processes
from probes import KnowWatcher, Sweeper, exactness, settle

DEADLINE = 60.0
SEEDS = 20
# 200 agents could not be joined reliably on the 2-core machine this was written on: push-pulls
# kept failing with i/o timeouts (1 s TCP timeout in the `local` profile), seeds or not
SIZES = (100,)


def _third_octet(size: int) -> list[str]:
    return [f"127.0.{8 + i}" for i in range((size + 249) // 250)]


def lb_cpu(lab: BenchLab) -> dict[str, float]:
    """CPU seconds so far of the LB side's long-lived processes, children that exited included."""
    import psutil

    procs = {"serf_agent_and_handlers": lab.lb.proc.pid, "nginx_master_and_reloads": lab.nginx.proc.pid}
    if lab.daemon is not None:
        procs["lbsync_run"] = lab.daemon.pid
    out = {}
    for name, pid in procs.items():
        times = psutil.Process(pid).cpu_times()
        out[name] = times.user + times.system + times.children_user + times.children_system
    return out


def lb_rss(lab: BenchLab) -> dict[str, float]:
    import psutil

    pids = {"serf_agent": lab.lb.proc.pid, **({"lbsync_run": lab.daemon.pid} if lab.daemon else {})}
    return {name: round(psutil.Process(pid).memory_info().rss / 2**20, 1) for name, pid in pids.items()}


def join_fleet(lab: BenchLab, nodes: list) -> int:
    """The first SEEDS nodes join the LB, the rest join one of those, as a fleet whose retry_join
    lists several members would: hundreds of push-pulls against the LB alone time out (1 s TCP
    timeout in the `local` profile) on this 2-core machine. Returns the join retries."""
    seeds, rest = nodes[:SEEDS], nodes[SEEDS:]
    with ThreadPoolExecutor(8) as pool:
        retries = sum(pool.map(lab.join, seeds))
        retries += sum(pool.map(lambda pair: lab.join(pair[1], via=seeds[pair[0] % SEEDS].serf.bind_addr),
                                enumerate(rest)))
    return retries


def scale_once(mode: str, size: int, workdir: Path) -> dict:
    """`size` agents join a fresh lab in `mode` at once; time, reloads, exactness, LB cost."""
    nodes = [n for i, prefix in enumerate(_third_octet(size))
             for n in nodes_for(f"s{i}x", prefix, min(250, size - 250 * i))]
    procs = Processes(workdir)
    try:
        lab = make_lab(mode, procs, workdir, nodes)
        for node in nodes:
            lab.start_agent(node)
        reloads, cpu = lab.reloads(), lb_cpu(lab)
        names = {n.name for n in nodes}
        watcher = KnowWatcher(lab, names, {n.endpoint for n in nodes})
        sweeper = Sweeper(lab.nginx.port, go=watcher.knew_event).start()  # sweeps once the LB knew all
        start = now()
        watcher.start()
        retries = join_fleet(lab, nodes)
        routable = sweeper.wait_for(names, start + DEADLINE)
        sweeper.stop()
        watcher.join(2.0 if routable else 0.1)
        watcher.stop()
        settle(lab)
        spent = {k: round(v - cpu[k], 2) for k, v in lb_cpu(lab).items()}
        knew = watcher.knew
        return {"mode": mode, "nodes": size, "all_routable_ms": _ms(routable, start),
                "lb_knew_all_ms": _ms(knew, start), "knew_to_routable_ms": _ms(routable, knew),
                "knew_to_pool_ms": _ms(watcher.pooled, knew), "never_routed": len(names - set(sweeper.first)),
                "reloads": lab.reloads() - reloads,
                "join_retries": retries,
                **exactness(lab, sorted(n.endpoint for n in nodes)), "lb_cpu_seconds": spent,
                "lb_rss_mb": lb_rss(lab), "window_s": round(now() - start, 1)}
    except Exception as exc:
        return {"mode": mode, "nodes": size, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        procs.stop_all()


def _ms(end: float | None, start: float | None) -> float | None:
    return round((end - start) * 1000, 1) if end is not None and start is not None else None


def run_scale(modes: list[str], sizes: tuple[int, ...], workdir: Path) -> dict:
    out = {}
    for size in sizes:
        for mode in modes:
            result = scale_once(mode, size, workdir / f"scale-{mode}-{size}")
            out[f"{mode}-{size}"] = result
            print(f"   {mode}, {size} agents: all routable {result.get('all_routable_ms')} ms, "
                  f"{result.get('knew_to_routable_ms')} ms after the LB knew all, {result.get('reloads')} reloads, "
                  f"exact {result.get('upstream_exact')}", flush=True)
    return emit("scale", out, "; ".join(f"{k}: {v.get('all_routable_ms')} ms" for k, v in out.items()))
