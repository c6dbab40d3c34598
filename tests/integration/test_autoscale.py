"""`lbsync autoscale` against real Serf agents, one loopback address per node.

The main test drives the real lab: lab/up.sh (nginx behind `lbsync handle`), lab/boot_web.sh and
lab/stop_web.sh as the operator commands, `lbsync agent` on each node answering the `load` query
from a file the test writes (agent.load_file), so decisions never depend on this machine's load.

The other tests need no nginx: their web nodes are a plain `serf agent` on 127.0.3.N beside the
lab's tiny web server, answering `load` through a Serf query handler (`cat` of a load file: Serf
sends a query handler's stdout back as the response). Their operator commands are small scripts
in scripts/: boot, drain (drain tag, wait until no request comes, leave) and destroy (stop both
by PID); each appends its invocation to ops.log. Whatever the scripts or the lab start is
recorded in pid files and stopped by PID in a finaliser, even when the test fails.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kit.labrun import RequestLoop, running_lab
from kit.net import wait_until
from kit.paths import ROOT, WEB_SERVER
from kit.procs import Processes, require
from kit.serfnode import SerfNode, serf_members, start_serf

pytestmark = pytest.mark.integration

LAB_NET = "127.0.78"  # this module's lab network: test_lab.py uses 127.0.77

SCRIPTS = Path(__file__).resolve().parent / "scripts"  # the operator's commands (boot, drain, ...)
PYTHONPATH = f"{ROOT}:{ROOT / 'tests'}"  # lbsync and the kit, for lbsync and the scripts


class Ops:
    """The operator scripts, their invocation log and the load files of one test."""

    def __init__(self, workdir: Path):
        self.dir = workdir / "ops"
        self.run, self.loads = self.dir / "run", self.dir / "loads"
        for path in (self.run, self.loads):
            path.mkdir(parents=True, exist_ok=True)
        self.log, self.fail = self.dir / "ops.log", self.dir / "fail"
        self.config = self.dir / "config.json"

    def write(self, join: str) -> None:
        """The scripts' config (scripts/opslib.py reads it): where things go, whom to join."""
        self.config.write_text(json.dumps({
            "run": str(self.run), "log": str(self.log), "fail": str(self.fail), "loads": str(self.loads),
            "join": join, "serf": require("serf"), "webserver": str(WEB_SERVER)}))

    def argv(self, name: str, *args: str) -> list[str]:
        return [sys.executable, str(SCRIPTS / f"{name}.py"), str(self.config), *args]

    def command(self, name: str, arg: str) -> str:
        """The autoscaler's command line; `arg` may hold its placeholders ({index}, {name})."""
        return f"{shlex.join(self.argv(name))} {arg}"

    def set_load(self, value: str, node: str = "all") -> None:
        (self.loads / node).write_text(value + "\n")

    def calls(self, action: str | None = None) -> list[tuple[float, str, str]]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        calls = [(float(t), what, arg) for t, what, arg in (line.split() for line in lines)]
        return [call for call in calls if action in (None, call[1])]

    def stop_all(self) -> None:
        """Stop every process the scripts started, by PID, if it is still one of ours."""
        for pid_file in self.run.glob("*.pid"):
            pid = int(pid_file.read_text())
            try:
                if str(self.dir) not in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " "):
                    continue  # gone, and the PID reused by someone else
                os.kill(pid, signal.SIGTERM)
                wait_until(lambda pid=pid: _exited(pid), 10, f"pid {pid} to exit")
            except (OSError, AssertionError):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


def _exited(pid: int) -> bool:
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


@pytest.fixture
def ops(tmp_path):
    ops = Ops(tmp_path)
    yield ops
    ops.stop_all()


def autoscale_config(ops: Ops, **policy) -> str:
    values = {"min_size": 1, "max_size": 3, "sustain": 2, "interval": 0.5, "query_timeout": 0.4,
              "command_timeout": 40, "warmup": 1, "scale_out_command": ops.command("boot", "{index}"),
              "scale_in_command": ops.command("destroy", "{index}"), **policy}
    return "[autoscale]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def start_autoscaler(procs: Processes, env: dict, *flags: str, name: str = "autoscale"):
    return procs.start(name, [sys.executable, "-m", "lbsync", *flags, "autoscale"], env)


@pytest.fixture
def lab(tmp_path):
    """The real lab (lab/*.sh, `lbsync agent`, nginx behind `lbsync handle`) on its own network."""
    with running_lab(tmp_path, LAB_NET) as lab:
        yield lab


def test_lab_scales_out_once_per_cooldown_to_max_then_in_to_min_with_no_failed_request(lab, procs, tmp_path):
    """`lab` before `procs`: the autoscaler is stopped before the lab goes down."""
    lab.sh("up.sh")
    for n in (1, 2, 3):  # each node's `lbsync agent` answers the load query from this file
        (lab.dir / f"web{n}").mkdir(parents=True, exist_ok=True)
        (lab.dir / f"web{n}" / "load").write_text("0.9\n")
    ops = tmp_path / "ops.log"
    record = f"{sys.executable} {SCRIPTS / 'record.py'} {ops}"
    policy = {"min_size": 1, "max_size": 3, "sustain": 2, "interval": 0.5, "query_timeout": 0.4,
              "cooldown_out": 4, "cooldown_in": 2, "warmup": 1, "name_template": "serf-web{index}",
              "scale_out_command": f"{record} boot {{index}} {ROOT}/lab/boot_web.sh {{index}}",
              "scale_in_command": f"{record} stop {{index}} {ROOT}/lab/stop_web.sh {{index}}"}
    flags = [arg for key, value in policy.items() for arg in ("--set", f"autoscale.{key}={value}")]
    config = ["-c", str(lab.dir / "lb" / "lbsync.toml")]
    scaler = procs.start("autoscale", [sys.executable, "-m", "lbsync", *config, *flags, "autoscale"], lab.env)

    # size 0 < min_size boots web1 at once; sustained 0.9 > 0.8 then boots one node per cooldown
    wait_until(lambda: lab.served() == {"serf-web1", "serf-web2", "serf-web3"}, 90, "three nodes served")
    wait_until(lambda: scaler.output().count("at max_size 3") >= 3, 30, "holding at max_size")
    boots = [(t, arg) for t, what, arg in _calls(ops) if what == "boot"]
    assert [arg for _, arg in boots] == ["1", "2", "3"], scaler.output()[-3000:]
    assert all(b[0] - a[0] >= policy["cooldown_out"] - 0.5 for a, b in itertools.pairwise(boots)), boots
    assert scaler.output().count("decision: scale-out") == 3

    loop = RequestLoop(lab)
    wait_until(lambda: len(loop.results) >= 30, 30, "the request loop to get going")
    for n in (1, 2, 3):
        (lab.dir / f"web{n}" / "load").write_text("0.1\n")
    wait_until(lambda: len([c for c in _calls(ops) if c[1] == "stop"]) == 2
               and lab.served() == {"serf-web1"}, 90, "scale-in to min_size")
    wait_until(lambda: scaler.output().count("at min_size 1") >= 2, 30, "holding at min_size")
    results = loop.stop()
    assert loop.failures() == [] and len(results) > 50, loop.failures()[:5]
    assert [(what, arg) for _, what, arg in _calls(ops) if what == "stop"] == [("stop", "3"), ("stop", "2")]
    members = lab.members()
    assert members.get("serf-web1") == "alive" and not {"serf-web2", "serf-web3"} & set(members), members
    status = subprocess.run([sys.executable, "-m", "lbsync", *config, "status"], env=lab.env,
                            capture_output=True, text=True, timeout=30, check=False)
    assert "last decision hold " in status.stdout and "warming none;" in status.stdout, status.stdout


def _calls(log: Path) -> list[tuple[float, str, str]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [(float(t), what, arg) for t, what, arg in (line.split() for line in lines)]


def test_drain_command_runs_before_destroy_then_the_name_is_pruned(procs, ops, tmp_path):
    env, lb = _plain_lb(procs, tmp_path / "lb", autoscale_config(
        ops, cooldown_in=1, drain_command=ops.command("drain", "{name}")))
    ops.write(lb.bind_addr)
    ops.set_load("0.1")
    for index in ("1", "2"):
        subprocess.run(ops.argv("boot", index), check=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": PYTHONPATH})
    scaler = start_autoscaler(procs, env)
    wait_until(lambda: "at min_size 1" in scaler.output(), 60, "scale-in to min_size")
    assert [(what, arg) for _, what, arg in ops.calls()] == [
        ("boot", "1"), ("boot", "2"), ("drain", "web2"), ("destroy", "2")], scaler.output()[-3000:]
    names = {m["name"]: m["status"] for m in serf_members(lb)}
    assert names == {"lb": "alive", "web1": "alive"}, names


def _plain_lb(procs: Processes, workdir: Path, config: str) -> tuple[dict, SerfNode]:
    """An LB Serf agent without nginx: enough for the autoscaler's own decisions."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "lbsync.toml").write_text(config)
    lb = start_serf(procs, "lb", "127.0.0.1")
    env = {"PYTHONPATH": PYTHONPATH, "LBSYNC_CONFIG": str(workdir / "lbsync.toml"),
           "LBSYNC_RPC_ADDR": lb.rpc_addr, "LBSYNC_STATE_DIR": str(workdir / "state"),
           "LBSYNC_LOCK_FILE": str(workdir / "lbsync.lock"), "LBSYNC_SYSLOG": "false"}
    return env, lb


def test_failing_scale_out_is_retried_only_after_cooldown_by_twins_and_across_restart(procs, ops, tmp_path):
    """A failing command is logged with its output; no tight loop, no double fire (two autoscalers
    on one state_dir, then a restart): every attempt is a cooldown after the previous one."""
    ops.fail.touch()
    cooldown = 3.0
    env, lb = _plain_lb(procs, tmp_path / "lb", autoscale_config(ops, cooldown_out=cooldown,
                                                                  interval=0.3, query_timeout=0.2))
    ops.write(lb.bind_addr)
    first = start_autoscaler(procs, env)
    twin = start_autoscaler(procs, env, name="autoscale-twin")  # same state_dir: lock + re-read state
    wait_until(lambda: len(ops.calls("boot")) == 2, 30, "a retry after the cooldown")
    log = first.output() + twin.output()
    assert "scale-out web1 failed" in log and "exited 3" in log and "cannot boot: quota exceeded" in log
    assert "size 0 is below min_size 1; scale-out cooling down" in log  # it kept deciding, not retrying
    assert log.count("Traceback") == 0
    for scaler in (first, twin):
        assert scaler.stop(signal.SIGTERM) == 0

    second = start_autoscaler(procs, env, name="autoscale-restarted")  # restart: state says cooling down
    wait_until(lambda: len(ops.calls("boot")) == 3, 30, "the next retry after a restart")
    times = [t for t, _, _ in ops.calls("boot")]
    assert all(b - a >= cooldown - 0.5 for a, b in itertools.pairwise(times)), times
    assert "cooling down" in second.output()
    status = subprocess.run([sys.executable, "-m", "lbsync", "status"], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=30, check=False)
    assert status.returncode == 0 and "last scale-out " in status.stdout, status.stdout
    assert "last scale-out -," not in status.stdout  # the failed attempts count: the cooldown runs from them


def test_dry_run_decides_and_logs_but_runs_nothing(procs, ops, tmp_path):
    env, lb = _plain_lb(procs, tmp_path / "lb", autoscale_config(ops, interval=0.3, query_timeout=0.2))
    ops.write(lb.bind_addr)
    dry = procs.start("dry-run", [sys.executable, "-m", "lbsync", "autoscale", "--dry-run"], env)
    wait_until(lambda: "dry run: would scale-out web1; nothing launched or destroyed" in dry.output(), 20,
               "a dry-run decision")
    wait_until(lambda: "cooling down" in dry.output(), 20, "the simulated cooldown")
    assert ops.calls() == [] and not (tmp_path / "lb" / "state" / "autoscale.json").exists()
    assert "sample: fleet load none; nodes 0" in dry.output()
    stamped = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} lbsync: INFO: decision: "  # every line has its time
    assert re.search(stamped, dry.output()), dry.output()[:500]


def test_demo_with_autoscale_never_drops_the_pool_below_min_size(lab):
    """Before: with LAB_AUTOSCALE=1 the demo's graceful-stop step (stop web2) left 1 node under
    min_size 2 until the autoscaler booted another. Now the demo grows to 3 first."""
    import threading
    import time

    sizes: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                with lab.client() as client:
                    sizes.append(sum(1 for m in client.members() if m["Status"] == "alive"
                                     and m["Name"].startswith("serf-web") and m["Tags"].get("drain") != "1"))
            except Exception:  # noqa: BLE001 - the LB is not up yet
                pass
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        demo = subprocess.Popen([str(ROOT / "lab" / "demo.sh")], env={**lab.env, "LAB_AUTOSCALE": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        watcher.start()
        output, _ = demo.communicate(timeout=400)
        assert demo.returncode == 0, output[-3000:]
    finally:
        done.set()
        watcher.join(5)
        pid_file = lab.dir / "lb" / "autoscale.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (OSError, ValueError):
                pass
    reached = sizes.index(2) if 2 in sizes else len(sizes)
    assert max(sizes) >= 3 and min(sizes[reached:]) >= 2, sizes


def test_lab_as_a_provider_launch_join_route_drain_destroy_through_the_cloud_code_path(lab, procs, tmp_path):
    """The command provider with all its steps, on lab nodes: launch (boot_web.sh) -> listed and
    counted while booting -> joins -> routed -> drain (SIGTERM to the agent, as a cloud node's
    drain-query handler does) -> the scaler waits until it left -> destroy (stop_web.sh) ->
    force-leave -prune; no request fails meanwhile."""
    lab.sh("up.sh")
    for n in (1, 2):
        (lab.dir / f"web{n}").mkdir(parents=True, exist_ok=True)
        (lab.dir / f"web{n}" / "load").write_text("0.9\n")
    nodes = f"{sys.executable} {SCRIPTS / 'lab_nodes.py'} {lab.dir}"
    ops = tmp_path / "ops.log"
    record = f"{sys.executable} {SCRIPTS / 'record.py'} {ops}"
    policy = {"min_size": 1, "max_size": 2, "sustain": 2, "interval": 0.5, "query_timeout": 0.4,
              "cooldown_out": 2, "cooldown_in": 2, "warmup": 1, "name_template": "serf-web{index}",
              "command_timeout": 60, "list_command": f"{nodes} list",
              "scale_out_command": f"{record} boot {{index}} {ROOT}/lab/boot_web.sh {{index}}",
              "drain_command": f"{record} drain {{index}} {nodes} drain {{index}}",
              "scale_in_command": f"{record} destroy {{index}} {ROOT}/lab/stop_web.sh {{index}}"}
    flags = [arg for key, value in policy.items() for arg in ("--set", f"autoscale.{key}={value}")]
    config = ["-c", str(lab.dir / "lb" / "lbsync.toml")]
    scaler = procs.start("autoscale", [sys.executable, "-m", "lbsync", *config, *flags, "autoscale"], lab.env)
    wait_until(lambda: lab.served() == {"serf-web1", "serf-web2"}, 90, "two nodes served")
    loop = RequestLoop(lab)
    wait_until(lambda: len(loop.results) >= 30, 30, "the request loop to get going")
    for n in (1, 2):
        (lab.dir / f"web{n}" / "load").write_text("0.1\n")
    wait_until(lambda: "forgotten (force-leave -prune)" in scaler.output(), 90, "the scale-in to finish")
    results = loop.stop()
    assert loop.failures() == [] and len(results) > 50, loop.failures()[:5]
    assert [(what, arg) for _, what, arg in _calls(ops)] == [
        ("boot", "1"), ("boot", "2"), ("drain", "2"), ("destroy", "2")], scaler.output()[-3000:]
    assert lab.served() == {"serf-web1"} and "serf-web2" not in lab.members()
    assert "serf-web2=booting" in scaler.output() or "size 2" in scaler.output()
