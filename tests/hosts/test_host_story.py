"""The host story, for real (issue 17): Debian hosts with systemd as PID 1, provisioned by the same
provision/*.sh the Vagrantfile runs, from a wheel, with the shipped units and their sandboxing.

The cluster (one per module): `lb` (hook mode: serf runs `lbsync handle`), `web1`, `web2`, `lb2`
(`--mode run`: lbsync-run.service, joined to lb) and `client` (runs nothing of lbsync's; it sends
the traffic and plays the stranger). Both LBs follow the same membership, so every step checks
the hook and the run mode side by side. What nginx serves is read from its live data plane's
control socket on each LB. Every wait polls with a deadline; timings are printed (pytest -s).

The tests run in file order on the shared cluster; each one first waits until both LBs serve both
web hosts, and leaves the cluster that way.
"""

from __future__ import annotations

import base64
import json
import sys
import time

import pytest
from kit.hosts import Hosts, leftovers
from kit.lbhosts import ClientLoop, Lab
from kit.net import wait_until

pytestmark = [pytest.mark.hosts, pytest.mark.integration]

WEBS = ["web1", "web2"]
READ_ONLY = "Read-only file system"


def note(what: str, seconds: float) -> None:
    print(f"\n[hosts] {what}: {seconds:.2f} s", file=sys.stderr)


@pytest.fixture(scope="module")
def lab():
    with Hosts() as hosts:
        lab = Lab(hosts, webs=2, lbs={"lb": "hook", "lb2": "run"}).up()
        for step, seconds in lab.timings.items():
            note(step, seconds)
        yield lab
        run_id = hosts.run_id
    assert leftovers(run_id) == []


def members(lab: Lab, host) -> dict[str, str]:
    """name -> status, as the host's serf agent knows them (the token from the environment)."""
    done = host.run(["serf", "members", "-format", "json"], env={"SERF_RPC_AUTH": lab.token()})
    return {m["name"]: m["status"] for m in json.loads(done.stdout)["members"]}


def main_pid(host, unit: str) -> int:
    return int(host.run(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout)


def show(host, unit: str, *props: str) -> dict[str, str]:
    args = [f"-p{p}" for p in props]
    out = host.run(["systemctl", "show", *args, unit]).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def proc_status(host, pid: int) -> dict[str, str]:
    lines = host.run(["cat", f"/proc/{pid}/status"]).stdout.splitlines()
    return {key: value.strip() for key, value in (line.split(":", 1) for line in lines)}


def in_sandbox(host, unit: str, script: str):
    """Run `script` in the unit's own mount namespace (as root: only the mounts stop it)."""
    return host.run(["nsenter", "-t", str(main_pid(host, unit)), "-m", "sh", "-c", script], check=False)


# --- provisioning --------------------------------------------------------------------------------

def test_every_host_runs_lbsync_from_a_wheel_in_opt_lbsync(lab):
    probe = ("import importlib.metadata as m, lbsync; print(lbsync.__file__); "
             "print(m.distribution('lbsync').read_text('direct_url.json'))")
    for host in [*lab.lbs, *lab.webs]:
        assert host.run(["readlink", "-f", "/usr/local/bin/lbsync"]).stdout.strip() == "/opt/lbsync/bin/lbsync"
        where, origin = host.run(["/opt/lbsync/bin/python", "-c", probe]).stdout.split("\n", 1)
        assert where.startswith("/opt/lbsync/lib/python3.11/site-packages/lbsync/"), where
        origin = json.loads(origin)
        assert origin["url"].startswith("file:///vagrant/wheels/lbsync-") and origin["url"].endswith(".whl")
        assert "dir_info" not in origin, "an editable or source-tree install, not the wheel"
        assert host.run(["test", "-e", "/vagrant/lbsync"], check=False).returncode == 1  # no source tree


def test_provisioning_again_changes_nothing_and_restarts_nothing(lab):
    web1, lb2 = lab.hosts["web1"], lab.hosts["lb2"]
    units = {web1: ["serf", "nginx", "lbsync-agent"], lb2: ["serf", "nginx", "lbsync-run"]}
    before = {(host, unit): main_pid(host, unit) for host, names in units.items() for unit in names}
    for host in units:
        output = lab.provision(host)
        assert not [line for line in output.splitlines() if line.startswith(("created", "updated", "removed"))]
        assert "changed 0 of" in output
    assert {key: main_pid(*key) for key in before} == before


# --- the units under systemd ---------------------------------------------------------------------

def test_each_host_runs_its_units_and_they_start_again_at_boot(lab):
    expected = {"lb": ["serf", "nginx"], "lb2": ["serf", "nginx", "lbsync-run"],
                "web1": ["serf", "nginx", "lbsync-agent"], "web2": ["serf", "nginx", "lbsync-agent"]}
    for name, units in expected.items():
        host = lab.hosts[name]
        assert host.run(["systemctl", "is-active", *units]).stdout.split() == ["active"] * len(units)
        assert host.run(["systemctl", "is-enabled", *units]).stdout.split() == ["enabled"] * len(units)
        assert host.failed_units() == []
    # hook mode: no daemon, serf runs the hook; run mode: the daemon, no hook
    assert lab.lb.run(["systemctl", "is-enabled", "lbsync-run"], check=False).stdout.strip() == "disabled"
    assert lab.lb.run(["test", "-f", "/etc/serf/lbsync-hook.json"], check=False).returncode == 0
    assert lab.hosts["lb2"].run(["test", "-f", "/etc/serf/lbsync-hook.json"], check=False).returncode == 1


def test_lbsync_run_is_sandboxed_and_writes_only_where_it_must(lab):
    lb2 = lab.hosts["lb2"]
    props = show(lb2, "lbsync-run", "Type", "ActiveState", "ProtectSystem", "ProtectHome", "PrivateTmp",
                 "NoNewPrivileges", "CapabilityBoundingSet", "RestrictAddressFamilies")
    assert props == {"Type": "notify", "ActiveState": "active", "ProtectSystem": "strict", "ProtectHome": "yes",
                     "PrivateTmp": "yes", "NoNewPrivileges": "yes",
                     "CapabilityBoundingSet": "cap_chown cap_dac_override cap_net_bind_service",
                     "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX"}
    status = proc_status(lb2, main_pid(lb2, "lbsync-run"))
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"  # seccomp filter mode
    assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == (1 << 0) | (1 << 1) | (1 << 10)
    lb2.run("echo marker > /root/host-marker; echo marker > /tmp/host-marker")
    done = in_sandbox(lb2, "lbsync-run", "touch /etc/probe; touch /usr/local/bin/probe; touch /var/lib/probe; "
                                         "touch /etc/lbsync/probe; ls -A /root /tmp")
    assert done.stderr.count(READ_ONLY) == 4, done.stderr
    assert "host-marker" not in done.stdout  # ProtectHome, PrivateTmp
    for path in ("/etc/nginx/conf.d", "/var/lib/lbsync", "/run/lbsync", "/var/log/nginx", "/var/lib/nginx"):
        done = in_sandbox(lb2, "lbsync-run", f"touch {path}/.probe && rm {path}/.probe")
        assert done.returncode == 0, (path, done.stderr)


def test_the_agent_is_sandboxed_and_writes_nothing(lab):
    web1 = lab.hosts["web1"]
    props = show(web1, "lbsync-agent", "Type", "ActiveState", "ProtectSystem", "MemoryDenyWriteExecute",
                 "CapabilityBoundingSet", "NoNewPrivileges", "StatusText")
    assert props == {"Type": "notify", "ActiveState": "active", "ProtectSystem": "strict",
                     "MemoryDenyWriteExecute": "yes", "CapabilityBoundingSet": "", "NoNewPrivileges": "yes",
                     "StatusText": "in the cluster as web on port 80"}  # sd_notify's STATUS=
    status = proc_status(web1, main_pid(web1, "lbsync-agent"))
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == 0
    done = in_sandbox(web1, "lbsync-agent", "touch /etc/lbsync/probe; touch /var/lib/probe; touch /var/log/probe")
    assert done.stderr.count(READ_ONLY) == 3, done.stderr
    # MemoryDenyWriteExecute, seccomp and no capabilities, yet psutil answers Serf's load query
    answers = lab.lb.run(["serf", "query", "-format", "json", "-timeout", "1s", "load"],
                         env={"SERF_RPC_AUTH": lab.token()}).stdout
    assert set(json.loads(answers)["Responses"]) == set(WEBS)


# --- traffic -------------------------------------------------------------------------------------

def test_traffic_through_each_lb_reaches_both_web_hosts(lab):
    note("both LBs serve both web hosts", lab.converge())
    for lb in lab.lbs:
        answers = lab.client.run(f"for i in $(seq 12); do curl -sS --max-time 5 http://{lb.ip}/; done").stdout
        assert set(answers.split()) == set(WEBS), (lb.name, answers)
        report = json.loads(lb.run(["lbsync", "status", "--json"]).stdout)  # schema: lbsync/status.py
        (pool,) = report["pools"]
        assert (pool["data_plane"], pool["drift"], pool["serving"]) == ("live", None, 2), pool
        assert {b["name"] for b in pool["backends"] if b["in_nginx"]} == set(WEBS)
        assert (report["daemon"]["state"] == "running") == (lab.modes[lb.name] == "run"), report["daemon"]
    assert lab.served(lab.lb)["digest"] == lab.served(lab.hosts["lb2"])["digest"]  # hook and run agree


def test_stopping_the_agent_drains_the_web_host_and_both_lbs_follow(lab):
    lab.converge()
    web1 = lab.hosts["web1"]
    with ClientLoop(lab.client, [lb.ip for lb in lab.lbs]) as loop:
        wait_until(lambda: "web1" in loop.poll().answered_by(), 10, "web1 to answer the loop")
        began = time.monotonic()
        web1.run(["systemctl", "stop", "lbsync-agent"])  # returns when the drain and the leave are done
        note("systemctl stop lbsync-agent (drain, leave)", time.monotonic() - began)
        stopped = time.time()
        note("both LBs serve web2 only", lab.converge(["web2"], timeout=5))
        wait_until(lambda: sum(loop.poll().answered_by(since=stopped).values()) >= 40, 15, "answers after the stop")
    assert len(loop.results) > 100
    assert loop.failures == [], loop.failures[:5]
    assert loop.answered_by(since=stopped).keys() == {"web2"}
    assert members(lab, lab.lb)["web1"] == members(lab, lab.hosts["lb2"])["web1"] == "left"
    # serf left on purpose and stays down (Restart=on-failure); starting the agent starts it again
    assert web1.run(["systemctl", "is-active", "serf"], check=False).stdout.strip() == "inactive"
    web1.run(["systemctl", "start", "lbsync-agent"])
    note("agent started: web1 back on both LBs", lab.converge())


def test_a_rebooted_web_host_comes_back_into_the_pool_without_a_lost_request(lab):
    lab.converge()
    web2 = lab.hosts["web2"]
    with ClientLoop(lab.client, [lb.ip for lb in lab.lbs]) as loop:
        began = time.monotonic()
        web2.reboot()  # systemd stops the agent first: a drain, then nginx
        note("reboot of web2", time.monotonic() - began)
        note("web2 back on both LBs", lab.converge())
        back = time.time()
        wait_until(lambda: loop.poll().answered_by(since=back).get("web2", 0) >= 5, 15, "web2 to answer again")
    assert loop.failures == [], loop.failures[:5]
    assert web2.run(["systemctl", "is-active", "serf", "nginx", "lbsync-agent"]).stdout.split() == ["active"] * 3


def test_a_rebooted_lb_keeps_its_state_and_serves_the_pool_at_once(lab):
    lab.converge()
    for lb in lab.lbs:
        before = lab.served(lb)
        state = lb.run("cd /var/lib/lbsync && ls && sha256sum pool-lbs_backend.json && ls /var/lib/serf").stdout
        began = time.monotonic()
        lb.reboot()
        after = wait_until(lambda: lab.served(lb), 20, f"nginx on {lb.name} to answer on its control socket")
        note(f"reboot of {lb.name}: nginx serving again", time.monotonic() - began)
        # the pool nginx loads from lbsync's state at start, before Serf or lbsync said anything
        assert (after["version"], after["digest"]) == (before["version"], before["digest"])
        assert lb.run("cd /var/lib/lbsync && ls && sha256sum pool-lbs_backend.json && ls /var/lib/serf").stdout == state
        assert lb.run(["stat", "-c", "%a %U", "/run/lbsync"]).stdout.strip() == "700 root"  # tmpfiles.d, at boot
        assert lab.in_rotation(lb) == WEBS
        answers = lab.client.run(f"for i in $(seq 8); do curl -sS --max-time 5 http://{lb.ip}/; done").stdout
        assert set(answers.split()) == set(WEBS)
        assert lb.failed_units() == []
    assert lab.hosts["lb2"].run(["systemctl", "is-active", "lbsync-run"]).stdout.strip() == "active"
    lab.converge()


# --- secrets -------------------------------------------------------------------------------------

def stranger(client, name: str, *flags: str) -> None:
    """A serf agent on the client host, as a transient unit; waits for its RPC port."""
    client.run(["systemd-run", "--quiet", "--collect", f"--unit={name}", "serf", "agent", f"-node={name}",
                f"-bind={client.ip}:7946", "-rpc-addr=127.0.0.1:7373", *flags])
    wait_until(lambda: client.run(["serf", "members"], check=False).returncode == 0, 10, f"{name}'s RPC")


def leave(client, name: str) -> None:
    client.run(["serf", "leave"], check=False)
    wait_until(lambda: client.run(["systemctl", "is-active", "-q", name], check=False).returncode, 10,
               f"{name} to stop")


def test_a_host_without_the_gossip_key_cannot_join(lab):
    client, key = lab.client, (lab.secrets / "serf.key").read_text().strip()
    other_key = base64.b64encode(b"another cluster's key, 32 bytes!").decode()
    for name, flags, refusal in (("nokey", (), "encryption is not configured"),
                                 ("wrongkey", (f"-encrypt={other_key}",), "No installed keys could decrypt")):
        stranger(client, name, *flags)
        done = client.run(["serf", "join", lab.lb.ip], check=False)
        assert done.returncode == 1 and refusal in done.stdout + done.stderr, done
        leave(client, name)
        assert name not in members(lab, lab.lb)
    # the control: with the key the same host joins (then leaves), so the key was the reason
    stranger(client, "withkey", f"-encrypt={key}")
    client.run(["serf", "join", lab.lb.ip])
    wait_until(lambda: members(lab, lab.lb).get("withkey") == "alive", 10, "withkey alive on lb")
    leave(client, "withkey")
    wait_until(lambda: members(lab, lab.lb).get("withkey") == "left", 10, "withkey to have left")
    assert lab.in_rotation(lab.lb) == WEBS  # no role tag: never a backend


def test_serf_rpc_needs_the_token_and_is_not_on_the_network(lab):
    lb = lab.lb
    refused = lb.run(["serf", "members"], check=False)
    assert refused.returncode == 1 and "Authentication required" in refused.stdout + refused.stderr
    wrong = lb.run(["serf", "members"], env={"SERF_RPC_AUTH": "not-the-token"}, check=False)
    assert wrong.returncode == 1 and "Invalid authentication token" in wrong.stdout + wrong.stderr
    assert set(members(lab, lb)) >= {"lb", "lb2", *WEBS}
    probe = f"import socket; socket.create_connection(('{lb.ip}', 7373), timeout=3)"
    done = lab.client.run(["python3", "-c", probe], check=False)
    assert "ConnectionRefusedError" in done.stderr, done.stderr
    argv = lb.run("cat /proc/[0-9]*/cmdline | tr '\\0' ' '", check=False).stdout
    assert "serf" in argv and lab.token() not in argv  # never on a command line


# --- run mode: a structural change inside the sandbox --------------------------------------------

def test_lbsync_run_reloads_nginx_for_a_structural_change_from_inside_its_sandbox(lab):
    """SIGHUP via systemctl reload, then nginx -t (Lua module, port 80) and `systemctl reload nginx`
    over D-Bus, all from lbsync-run's sandbox; re-provisioning puts the shipped config back."""
    lab.converge()
    lb2 = lab.hosts["lb2"]
    assert lab.served(lb2)["algorithm"] == "round_robin"
    workers = lambda: lb2.run("cat /proc/$(cat /run/nginx.pid)/task/*/children").stdout.split()
    old = workers()
    lb2.run(["sed", "-i", 's/^output = /algorithm = "least_conn"\\noutput = /', "/etc/lbsync/lbsync.toml"])
    lb2.run(["systemctl", "reload", "lbsync-run"])
    wait_until(lambda: lab.served(lb2).get("algorithm") == "least_conn", 10, "nginx on lb2 to use least_conn")
    assert not set(old) & set(workers()), "a reload starts new workers"
    assert show(lb2, "lbsync-run", "ActiveState", "NRestarts") == {"ActiveState": "active", "NRestarts": "0"}
    assert lab.in_rotation(lb2) == WEBS
    output = lab.provision(lb2)
    assert "updated /etc/lbsync/lbsync.toml" in output
    wait_until(lambda: lab.served(lb2).get("algorithm") == "round_robin", 10, "lb2 back to round_robin")
    lab.converge()
