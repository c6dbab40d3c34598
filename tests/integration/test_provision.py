"""The provisioning scripts, run for real into disposable roots, and what they write, checked by the
real programs: `serf agent` on every drop-in (Serf 0.8.2 stops on an unknown key), `nginx -t` on
the LB site with rendered upstreams, `systemd-analyze verify` on the units.

Only values that tie a file to a host are rewritten before serf starts: addresses become
127.0.0.x with free high ports, the snapshot goes to the test's directory, the hook command
records events instead of running lbsync. Every process is stopped by PID (the `procs` fixture).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from kit.net import free_port, wait_until
from kit.paths import ROOT
from kit.procs import Processes, require
from kit.records import decoded, record
from kit.serfnode import SerfNode, start_serf_from

from lbsync.drivers.pools import render_pools
from lbsync.drivers.reload import render_upstream
from lbsync.layers import load
from lbsync.members import select
from lbsync.plan import Plan
from lbsync.pools import plan_pools

pytestmark = pytest.mark.integration

LB_IP, WEB_IP, NETWORK = "192.168.56.10", "192.168.56.11", "192.168.56.0/24"


def provision(script: str, root: Path, secrets: Path, *args: str) -> subprocess.CompletedProcess:
    """provision/<script> --root ROOT, with this interpreter as the one that runs lbsync install."""
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["sh", str(ROOT / "provision" / script), "--root", str(root),
                           "--secrets", str(secrets), *args],
                          check=False, capture_output=True, text=True, env=env, timeout=120)


def debian_nginx(root: Path) -> None:
    """What Debian's nginx package leaves: its default site, enabled."""
    (root / "etc/nginx/sites-available").mkdir(parents=True)
    (root / "etc/nginx/sites-enabled").mkdir()
    (root / "etc/nginx/sites-available/default").write_text(
        "server {\n    listen 80 default_server;\n    root /var/www/html;\n}\n")
    (root / "etc/nginx/sites-enabled/default").symlink_to("/etc/nginx/sites-available/default")


@dataclass
class Roots:
    lb: Path
    web: Path
    secrets: Path
    tmp: Path
    nginx_port: int

    def token(self) -> str:
        return (self.secrets / "rpc.token").read_text().strip()


@pytest.fixture
def roots(tmp_path) -> Roots:
    port = free_port()
    roots = Roots(tmp_path / "lb", tmp_path / "web1", tmp_path / "secrets", tmp_path, port)
    debian_nginx(roots.lb)
    done = provision("lb.sh", roots.lb, roots.secrets, "--name", "lb", "--ip", LB_IP,
                     "--network", NETWORK, "--listen", f"127.0.0.1:{port}")
    assert done.returncode == 0, done.stderr
    done = provision("web.sh", roots.web, roots.secrets, "--name", "web1", "--ip", WEB_IP,
                     "--join", LB_IP)
    assert done.returncode == 0, done.stderr
    return roots


# --- the files -----------------------------------------------------------------------------------

def test_provisioning_again_changes_nothing(roots):
    lb = provision("lb.sh", roots.lb, roots.secrets, "--name", "lb", "--ip", LB_IP,
                   "--network", NETWORK, "--listen", f"127.0.0.1:{roots.nginx_port}")
    web = provision("web.sh", roots.web, roots.secrets, "--name", "web1", "--ip", WEB_IP, "--join", LB_IP)
    assert lb.returncode == web.returncode == 0
    assert "lbsync install: lb lb: changed 0 of 14 files" in lb.stdout
    assert "lbsync install: web web1: changed 0 of 6 files" in web.stdout
    assert not [line for line in lb.stdout.splitlines() + web.stdout.splitlines()
                if line.startswith(("created", "updated", "removed"))]


def test_lb_disables_debian_default_site_and_web_serves_its_name(roots):
    assert not os.path.lexists(roots.lb / "etc/nginx/sites-enabled/default")
    assert (roots.lb / "etc/nginx/sites-available/default").exists()
    assert (roots.web / "var/www/html/index.html").read_text() == "web1\n"


def test_a_web_node_without_the_lb_secrets_is_not_provisioned(tmp_path):
    done = provision("web.sh", tmp_path / "web", tmp_path / "empty", "--name", "web1", "--ip", WEB_IP,
                     "--join", LB_IP)
    assert done.returncode == os.EX_CONFIG
    assert "copy the secrets directory from the LB" in done.stderr
    assert not (tmp_path / "web" / "etc/serf").exists()


# --- serf ----------------------------------------------------------------------------------------

def serf_from(procs: Processes, root: Path, name: str, ip: str, workdir: Path,
              join: str | None = None, syslog: bool | None = None) -> SerfNode:
    """A real `serf agent` reading every /etc/serf/*.json the provisioner wrote under `root`."""
    def record_events(config: dict) -> None:  # instead of reconfiguring this machine
        if "event_handlers" in config:
            config["event_handlers"] = [entry.split("=", 1)[0] + f'=echo "$SERF_EVENT" >> {workdir}/events'
                                        for entry in config["event_handlers"]]

    return start_serf_from(procs, root, name, ip, workdir, join, syslog, edit=record_events)


def members(agent: SerfNode, token: str) -> dict[str, dict]:
    done = subprocess.run([require("serf"), "members", "-rpc-addr", agent.rpc_addr, "-rpc-auth", token,
                           "-format", "json"], check=False, capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    return {m["name"]: m for m in json.loads(done.stdout)["members"]}


def test_serf_runs_the_drop_ins_and_the_web_node_joins_the_lb(procs, roots):
    """Every key is accepted; retry_join, the shared key, the token and the merged tags all work."""
    lb = serf_from(procs, roots.lb, "lb", "127.0.0.1", roots.tmp)
    web = serf_from(procs, roots.web, "web1", "127.0.0.11", roots.tmp, join=lb.bind_addr)
    seen = wait_until(lambda: members(lb, roots.token()).get("web1", {}).get("status") == "alive"
                      and members(lb, roots.token()), 15, "web1 to join the LB through retry_join")
    assert seen["lb"]["tags"] == {"role": "lb"}
    assert seen["web1"]["tags"] == {"role": "web", "port": "80", "weight": "1"}
    assert seen["web1"]["addr"] == web.bind_addr  # the advertised address, not another interface's
    wait_until(lambda: "member-join" in _read(roots.tmp / "events"), 10, "the LB hook to run")
    assert (roots.tmp / "lb.snapshot").exists()


def test_sigterm_on_a_web_serf_leaves_instead_of_failing(procs, roots):
    """leave_on_terminate: systemd's or anyone's SIGTERM makes the node *left*, not *failed*."""
    lb = serf_from(procs, roots.lb, "lb", "127.0.0.1", roots.tmp)
    web = serf_from(procs, roots.web, "web1", "127.0.0.11", roots.tmp, join=lb.bind_addr)
    wait_until(lambda: members(lb, roots.token()).get("web1", {}).get("status") == "alive", 15, "web1 alive")
    assert web.proc.stop(signal.SIGTERM) == 0  # a graceful leave exits 0: Restart=on-failure keeps it down
    wait_until(lambda: members(lb, roots.token())["web1"]["status"] == "left", 15, "web1 left, not failed")


def test_enable_syslog_is_a_key_serf_acts_on(procs, roots):
    """With /dev/log serf logs there (the other tests); without, it fails on syslog, not on the key."""
    if os.path.exists("/dev/log"):
        serf_from(procs, roots.lb, "lb", "127.0.0.1", roots.tmp, syslog=True)
        return
    with pytest.raises(AssertionError, match="Syslog setup failed"):
        serf_from(procs, roots.lb, "lb", "127.0.0.1", roots.tmp, syslog=True)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


# --- nginx ---------------------------------------------------------------------------------------

DEBIAN_MAIN = """\
pid {tmp}/nginx.pid;
error_log stderr;
include {root}/etc/nginx/modules-enabled/*.conf;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
    uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
    include {root}/etc/nginx/conf.d/*.conf;
    include {root}/etc/nginx/sites-enabled/*;
}}
"""


def nginx_test(root: Path, tmp: Path) -> subprocess.CompletedProcess:
    """`nginx -t` on Debian's layout (main context, conf.d, sites-enabled) under `root`."""
    conf = tmp / "nginx.conf"
    conf.write_text(DEBIAN_MAIN.format(root=root, tmp=tmp))
    return subprocess.run([require("nginx"), "-t", "-e", "stderr", "-p", str(tmp), "-c", str(conf)],
                          check=False, capture_output=True, text=True, timeout=30)


def test_nginx_accepts_the_lb_site_with_rendered_upstreams(roots):
    empty = nginx_test(roots.lb, roots.tmp)
    assert empty.returncode == 0, empty.stderr  # as provisioned: the empty pool, 503 page
    settings = load(roots.lb / "etc/lbsync/lbsync.toml", env={})
    records = [decoded(record(f"web{n}", f"192.168.56.{10 + n}", port="80", weight=str(n))) for n in (1, 2)]
    records.append(decoded(record("stray", "10.9.9.9")))
    selection = select(records, settings)
    assert [m.name for m in selection.backends] == ["web1", "web2"]  # allowed_networks at work
    upstream = roots.lb / "etc/nginx/conf.d/lbs_upstream.conf"
    upstream.write_text(render_upstream(Plan.of(settings, selection)))
    done = nginx_test(roots.lb, roots.tmp)
    assert done.returncode == 0, done.stderr
    assert "192.168.56.12:80 weight=2" in upstream.read_text() and "10.9.9.9" not in upstream.read_text()


def test_nginx_would_refuse_the_site_next_to_a_kept_debian_default(roots):
    """Why install disables the default site: nginx sees two default servers for one port."""
    site = roots.lb / "etc/nginx/conf.d/lbs_site.conf"
    site.write_text(site.read_text().replace(f"listen 127.0.0.1:{roots.nginx_port};",
                                             f"listen 127.0.0.1:{roots.nginx_port} default_server;"))
    (roots.lb / "etc/nginx/sites-enabled/default").write_text(
        f"server {{ listen 127.0.0.1:{roots.nginx_port} default_server; }}\n")
    done = nginx_test(roots.lb, roots.tmp)
    assert done.returncode != 0 and "duplicate default server" in done.stderr


# --- systemd -------------------------------------------------------------------------------------

def test_systemd_analyze_verify_accepts_the_units(roots):
    """Loads each unit (and serf.service with our drop-in) the way systemd would.

    The units' /usr/local/bin/lbsync is pointed at a stand-in, since lbsync is not installed
    there on this machine; everything else is verified as shipped.
    """
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: `make test` installs Debian's systemd package"
    units = roots.tmp / "units"
    (units / "serf.service.d").mkdir(parents=True)
    stand_in = roots.tmp / "lbsync"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    for root, name in ((roots.lb, "lbsync-run.service"), (roots.web, "lbsync-agent.service")):
        text = (root / "etc/systemd/system" / name).read_text()
        (units / name).write_text(text.replace("/usr/local/bin/lbsync", str(stand_in)))
    debian_serf = Path("/lib/systemd/system/serf.service")
    assert debian_serf.exists(), "Debian's serf package ships serf.service: is serf installed from apt?"
    shutil.copy(debian_serf, units)
    shutil.copy(roots.web / "etc/systemd/system/serf.service.d/lbsync.conf", units / "serf.service.d")
    done = subprocess.run([analyze, "verify", "--man=no", *(str(units / n) for n in
                           ("serf.service", "lbsync-run.service", "lbsync-agent.service"))],
                          check=False, capture_output=True, text=True, timeout=60, cwd=roots.tmp)
    output = done.stdout + done.stderr
    ours = [line for line in output.splitlines() if str(units) in line or "lbsync" in line]
    assert done.returncode == 0 and not ours, output


def test_with_pools_in_lbsync_d_the_single_site_goes_and_nginx_takes_the_pools(roots):
    (roots.lb / "etc/lbsync/lbsync.d").mkdir(parents=True, exist_ok=True)
    (roots.lb / "etc/lbsync/lbsync.d/pools.toml").write_text(
        f'[[pool]]\nname = "web"\nlisten = ["127.0.0.1:{roots.nginx_port}"]\n'
        '[[pool]]\nname = "db"\nprotocol = "tcp"\nlisten = ["127.0.0.1:0"]\n'.replace(":0", f":{free_port()}"))
    site = roots.lb / "etc/nginx/conf.d/lbs_site.conf"
    assert site.exists()
    done = provision("lb.sh", roots.lb, roots.secrets, "--name", "lb", "--ip", LB_IP,
                     "--network", NETWORK, "--listen", f"127.0.0.1:{roots.nginx_port}")
    assert done.returncode == 0, done.stderr
    assert not site.exists() and "lbs_site.conf" in done.stdout
    again = provision("lb.sh", roots.lb, roots.secrets, "--name", "lb", "--ip", LB_IP,
                      "--network", NETWORK, "--listen", f"127.0.0.1:{roots.nginx_port}")
    assert "changed 0 of" in again.stdout and not site.exists()
    # what `lbsync sync` renders there, with Debian's libnginx-mod-stream enabled: nginx takes it
    (roots.lb / "etc/nginx/modules-enabled/50-mod-stream.conf").write_text(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n")
    settings = dataclasses.replace(load(roots.lb / "etc/lbsync/lbsync.toml", env={}), data_plane="reload",
                                   state_dir=str(roots.tmp / "state"))
    records = [decoded(record(f"web{n}", f"192.168.56.{10 + n}", port="80")) for n in (1, 2)]
    records.append(decoded(record("db1", "192.168.56.20", role="db", port="5432")))
    text = render_pools(settings, plan_pools(settings, records, {}, frozenset()))
    http, stream = text.split("# ---- ")[1:]
    (roots.lb / settings.output.lstrip("/")).write_text(http.partition("\n")[2])
    (roots.lb / settings.stream_output.lstrip("/")).write_text(stream.partition("\n")[2])
    done = nginx_test(roots.lb, roots.tmp)
    assert done.returncode == 0, done.stderr
    assert "server 192.168.56.20:5432;  # db1" in (roots.lb / settings.stream_output.lstrip("/")).read_text()
