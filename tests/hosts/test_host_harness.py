"""The host harness itself: real Debian hosts with systemd as PID 1, on a private bridge.

These tests prove what later host tests rely on: distinct booted machines, a LAN between them,
commands with their output and status, units under real systemd (a sandboxed serf), crash
detection, state across a reboot, and that a run leaves nothing behind, even when it fails or its
owner is killed. Timings are printed (pytest -s shows them); nothing here is a timed assertion."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from kit.hosts import CommandFailed, Hosts, base_image, leftovers, sweep_stale

pytestmark = [pytest.mark.hosts, pytest.mark.integration]

SERF_UNIT = """\
[Unit]
Description=serf agent for the harness test
After=network.target

[Service]
ExecStart=/usr/bin/serf agent -node=%H -bind={ip}:7946 -rpc-addr=127.0.0.1:7373 -retry-join={peer} \
    -retry-interval=1s
DynamicUser=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
NoNewPrivileges=yes
CapabilityBoundingSet=
SystemCallFilter=@system-service

[Install]
WantedBy=multi-user.target
"""


def wait_until(predicate, timeout=15.0, interval=0.1):
    """Poll with a deadline; returns the seconds it took."""
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"not true within {timeout} s: {predicate.__doc__ or predicate}")
        time.sleep(interval)
    return time.monotonic() - began


def note(what, seconds):
    print(f"\n[hosts] {what}: {seconds:.2f} s", file=sys.stderr)


@pytest.fixture(scope="module")
def image():
    began = time.monotonic()
    path = base_image()
    note(f"base image ({path.name}) ready", time.monotonic() - began)
    return path


@pytest.fixture(scope="module")
def trio(image):
    """Three booted hosts shared by the module; after it, the run must have left nothing."""
    with Hosts(image) as hosts:
        hosts.boot("h1", "h2", "h3")
        note("boot of 3 hosts", hosts.timings["boot 3"])
        yield hosts
        run_id = hosts.run_id
    assert leftovers(run_id) == []


def test_hosts_boot_as_distinct_machines(trio):
    hosts = trio.hosts.values()
    for host in hosts:
        assert host.run("systemctl is-system-running", check=False).stdout.strip() in ("running", "degraded")
        assert host.run("hostname").stdout.strip() == host.name
        assert host.run("cat /proc/1/comm").stdout.strip() == "systemd"
    ids = {host.run("cat /etc/machine-id").stdout.strip() for host in hosts}
    assert len(ids) == 3 and "" not in ids


def test_hosts_reach_each_other_by_icmp_and_tcp(trio):
    for host in trio.hosts.values():
        assert host.run("ip route").stdout == f"10.77.0.0/24 dev eth0 proto kernel scope link src {host.ip} \n"
        host.run(["systemd-run", "--unit=hello", "--working-directory=/etc",
                  "python3", "-m", "http.server", "8080", "--bind", host.ip])
    for src in trio.hosts.values():
        for dst in trio.hosts.values():
            if src is dst:
                continue
            src.run(["ping", "-c1", "-W2", dst.ip])
            fetch = ["curl", "-fsS", "--retry", "20", "--retry-connrefused", "--retry-delay", "0",
                     f"http://{dst.ip}:8080/hostname"]
            assert src.run(fetch).stdout.strip() == dst.name


def test_commands_return_output_status_and_files(trio, tmp_path):
    h1 = trio["h1"]
    done = h1.run("echo out; echo err >&2; exit 3", check=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    with pytest.raises(CommandFailed, match="h1.*exited with 3"):
        h1.run(["sh", "-c", "exit 3"])
    assert h1.run(["cat"], input="piped\n").stdout == "piped\n"
    with pytest.raises(subprocess.TimeoutExpired):
        h1.run(["sleep", "30"], timeout=0.5)
    (tmp_path / "tree/sub").mkdir(parents=True)
    (tmp_path / "tree/sub/a.txt").write_text("a")
    (tmp_path / "tree/skip.pyc").write_text("x")
    (tmp_path / "one.txt").write_text("one")
    h1.copy_in(tmp_path / "tree", "/srv/tree", exclude=("*.pyc",))
    h1.copy_in(tmp_path / "one.txt", "/srv/renamed.txt")
    listing = h1.run("cd /srv && find . -type f | sort && stat -c %U tree/sub/a.txt").stdout.split()
    assert listing == ["./renamed.txt", "./tree/sub/a.txt", "root"]


def test_sandboxed_serf_units_form_a_cluster_and_see_a_crash(trio):
    h1, h2 = trio["h1"], trio["h2"]
    for host, peer in ((h1, h2), (h2, h1)):
        unit = SERF_UNIT.format(ip=host.ip, peer=peer.ip)
        host.run(["sh", "-c", "cat > /etc/systemd/system/serf-test.service"], input=unit)
        host.run("systemctl daemon-reload && systemctl enable --now serf-test")
    members = lambda: h1.run("serf members -status=alive", check=False).stdout
    wait_until(lambda: "h2" in members() and "h1" in members())
    uid = h1.run("stat -c %u /proc/$(systemctl show -p MainPID --value serf-test)").stdout.strip()
    assert uid != "0", "DynamicUser= must run serf as a transient user"
    assert h1.run("systemctl show -p CapabilityBoundingSet --value serf-test").stdout.strip() == ""

    h2.kill()
    failed = lambda: "h2" in h1.run("serf members -status=failed", check=False).stdout
    took = wait_until(failed, timeout=15)
    note("SIGKILL of h2's PID 1 seen as failed by h1", took)
    assert took < 10


def test_reboot_keeps_files_and_address(trio):
    h3 = trio["h3"]
    h3.run("echo kept > /var/lib/before-reboot")
    machine_id = h3.run("cat /etc/machine-id").stdout
    nspawn_before = h3.proc.pid
    began = time.monotonic()
    assert h3.reboot() in ("running", "degraded")
    note("reboot of h3", time.monotonic() - began)
    assert h3.proc.pid != nspawn_before, "a reboot ends nspawn (status 133); the harness starts it again"
    assert h3.run("cat /var/lib/before-reboot").stdout == "kept\n"
    assert h3.run("cat /etc/machine-id").stdout == machine_id
    assert h3.run(["ip", "-br", "addr", "show", "eth0"]).stdout.split()[2] == f"{h3.ip}/24"
    trio["h1"].run(["ping", "-c1", "-W2", h3.ip])


def test_a_failing_test_leaves_nothing_behind(image):
    with pytest.raises(RuntimeError, match="test failed"):
        with Hosts(image) as hosts:
            began = time.monotonic()
            (host,) = hosts.boot("one")
            note("boot of 1 host", time.monotonic() - began)
            run_id, pid1, workdir = hosts.run_id, host.pid1, hosts.workdir
            raise RuntimeError("test failed")
    assert leftovers(run_id) == []
    assert not Path(f"/proc/{pid1}").exists() and not workdir.exists()


def test_a_killed_run_is_swept_at_the_next_start(image):
    script = textwrap.dedent(f"""
        import sys, time
        from kit.hosts import Hosts
        hosts = Hosts({str(image)!r}).__enter__()
        hosts.boot("orphan")
        print(hosts.run_id, flush=True)
        time.sleep(300)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        run_id = owner.stdout.readline().strip()
        assert run_id, "the owner process did not boot its host"
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        owner.stdout.close()
    assert leftovers(run_id), "a SIGKILLed owner leaves its containers and namespaces"
    assert run_id in sweep_stale()
    assert leftovers(run_id) == []
