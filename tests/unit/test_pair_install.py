"""`lbsync install --role lb --vip ... --peer ...` (issue 16): the LB pair's files, its flags refused
with their reasons, and keepalived.conf through the real `keepalived -t` where Debian's keepalived
is installed (tools/system-deps.sh; the host test runs it on the installed file in any case)."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lbsync import install, keys, pairfiles
from lbsync.errors import ConfigError
from lbsync.hostfiles import apply
from lbsync.layers import load

ROOT = Path(__file__).resolve().parents[2]
VIP = "192.168.56.100/24"


# --- lbsync install --vip -------------------------------------------------------------------------

@pytest.fixture
def secrets(tmp_path):
    directory = tmp_path / "secrets"
    keys.secrets_for(directory, create=True)
    return directory


def lb_args(root: Path, secrets: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    install.add_arguments(parser)
    return parser.parse_args(["--role", "lb", "--node-name", "lb", "--ip", "192.168.56.10", "--network",
                              "192.168.56.0/24", "--secrets", str(secrets), "--root", str(root), *extra])


PAIR = ("--vip", VIP, "--peer", "192.168.56.9", "--vip-interface", "eth1")


def run(namespace) -> list[tuple[str, str]]:
    return apply(install.plan(namespace), Path(namespace.root), namespace.dry_run)


def test_a_pair_lb_gets_keepalived_the_nginx_hooks_and_the_vip_in_its_config(tmp_path, secrets):
    root = tmp_path / "root"
    created = {path for action, path in run(lb_args(root, secrets, *PAIR)) if action == "created"}
    assert created >= {pairfiles.KEEPALIVED_CONF, pairfiles.KEEPALIVED_DROPIN, pairfiles.NGINX_DROPIN,
                       pairfiles.ALIVE_CONF}
    conf = (root / pairfiles.KEEPALIVED_CONF.lstrip("/")).read_text()
    for line in ("state BACKUP", "nopreempt", "vrrp_version 3", "advert_int 0.1", "unicast_src_ip 192.168.56.10",
                 "192.168.56.9", "check_unicast_src", f"{VIP} dev eth1", "interface eth1", "priority 100",
                 "virtual_router_id 51", 'script "/usr/local/bin/lbsync check"', "enable_script_security"):
        assert line in conf, line
    assert "VRRP version 3 (RFC 5798) has no authentication" in conf and "auth_pass" not in conf
    assert stat.S_IMODE((root / pairfiles.KEEPALIVED_CONF.lstrip("/")).stat().st_mode) == 0o600
    settings = load(root / "etc/lbsync/lbsync.toml", env={})
    assert settings.vip == VIP and "192.168.56.100:80" in settings.lb_listen  # never a backend
    assert "listen unix:/run/lbsync/nginx-alive.sock;" in (root / pairfiles.ALIVE_CONF.lstrip("/")).read_text()
    assert run(lb_args(root, secrets, *PAIR)) == []  # idempotent


def test_leaving_the_pair_removes_its_files_but_never_a_foreign_keepalived_conf(tmp_path, secrets):
    root = tmp_path / "root"
    run(lb_args(root, secrets, *PAIR))
    removed = {path for action, path in run(lb_args(root, secrets)) if action == "removed"}
    assert removed == {pairfiles.KEEPALIVED_CONF, pairfiles.KEEPALIVED_DROPIN, pairfiles.NGINX_DROPIN,
                       pairfiles.ALIVE_CONF}
    foreign = root / pairfiles.KEEPALIVED_CONF.lstrip("/")
    foreign.write_text("vrrp_instance theirs {}\n")
    run(lb_args(root, secrets))
    assert foreign.read_text() == "vrrp_instance theirs {}\n"


def test_vrrp_version_2_uses_the_shared_password_from_the_secrets_directory(tmp_path, secrets):
    root = tmp_path / "root"
    run(lb_args(root, secrets, *PAIR, "--vrrp-version", "2"))
    word = (secrets / "vrrp.pass").read_text().strip()
    assert len(word) == 8 and stat.S_IMODE((secrets / "vrrp.pass").stat().st_mode) == 0o600
    conf = (root / pairfiles.KEEPALIVED_CONF.lstrip("/")).read_text()
    assert f"auth_pass {word}" in conf and "advert_int 1\n" in conf and "plain-text password" in conf
    other = tmp_path / "root2"  # another LB with the same secrets directory gets the same password
    run(lb_args(other, secrets, *PAIR, "--vrrp-version", "2"))
    assert f"auth_pass {word}" in (other / pairfiles.KEEPALIVED_CONF.lstrip("/")).read_text()


@pytest.mark.parametrize("extra, message", [
    (("--vip", VIP, "--vip-interface", "eth1"), "--vip needs --peer"),
    (("--peer", "192.168.56.9"), "--peer is for an LB pair"),
    ((*PAIR, "--listen", "192.168.56.10:80"), "give --listen as a port"),
    (("--vip", "10.9.9.9/24", "--peer", "192.168.56.9", "--vip-interface", "eth1"), "not on the network"),
    (("--vip", "192.168.56.100", "--peer", "192.168.56.9", "--vip-interface", "eth1"), "prefix length"),
    (("--vip", "192.168.56.10/24", "--peer", "192.168.56.9", "--vip-interface", "eth1"), "not --ip"),
    (("--vip", VIP, "--peer", "192.168.56.10", "--vip-interface", "eth1"), "the other LB's own address"),
    (("--vip", VIP, "--peer", "lb2", "--vip-interface", "eth1"), "private IP address"),
    ((*PAIR, "--vrrp-version", "2", "--advert-int", "0.5"), "whole seconds"),
    ((*PAIR, "--advert-int", "0.005"), "0.01..40.95"),
    ((*PAIR, "--priority", "255"), "--priority 255"),
    ((*PAIR, "--vrid", "0"), "--vrid 0"),
    (("--vip", VIP, "--peer", "192.168.56.9"), "--vip-interface is required with --root"),
    (("--vip", VIP, "--peer", "192.168.56.9", "--vip-interface", "eth1; rm"), "not an interface name"),
])
def test_bad_pair_input_is_refused_with_its_reason(tmp_path, secrets, extra, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        install.plan(lb_args(tmp_path / "root", secrets, *extra))


def test_a_web_node_takes_no_vip(tmp_path, secrets):
    parser = argparse.ArgumentParser()
    install.add_arguments(parser)
    namespace = parser.parse_args(["--role", "web", "--ip", "192.168.56.11", "--join", "192.168.56.10",
                                   "--secrets", str(secrets), "--root", str(tmp_path), *PAIR])
    with pytest.raises(ConfigError, match="are for an LB pair"):
        install.plan(namespace)


def keepalived() -> str:
    path = shutil.which("keepalived") or shutil.which("keepalived", path="/usr/sbin:/sbin")
    if path is None:  # `make test` installs it: a missing one is a failure, never a silent skip
        pytest.fail("keepalived is not installed: Debian's keepalived package (tools/system-deps.sh)")
    return path


@pytest.mark.parametrize("version", [3, 2])
def test_keepalived_accepts_the_rendered_config(tmp_path, secrets, version):
    """`keepalived -t`: every keyword known to Debian's keepalived (2.2.7 on bookworm), the scripts
    secure (root's, not writable by others), the interface present. On this machine the lbsync
    path is replaced by one that exists; the host test runs it on the installed file."""
    binary = keepalived()
    root = tmp_path / "root"
    # keepalived -t also wants the interface to exist (and not be a loopback): one of this machine's
    interface = next((name for _, name in socket.if_nameindex() if name != "lo"), None)
    if interface is None:
        pytest.skip("keepalived -t needs a network interface other than lo on this machine")
    run(lb_args(root, secrets, "--vip", VIP, "--peer", "192.168.56.9", "--vip-interface", interface,
                "--vrrp-version", str(version)))
    conf = (root / pairfiles.KEEPALIVED_CONF.lstrip("/")).read_text()
    test_conf = tmp_path / "keepalived.conf"
    test_conf.write_text(conf.replace(pairfiles.LBSYNC_BIN, shutil.which("true") or "/bin/true"))
    done = subprocess.run([binary, "-t", "-f", str(test_conf)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_provision_lb_sh_passes_the_pair_flags_to_install(tmp_path, secrets):
    """The Vagrant pair's lb2 line (provision/plan.rb with LB_NODES=2), files only (--root)."""
    root = tmp_path / "lb2"
    argv = ["sh", str(ROOT / "provision/lb.sh"), "--root", str(root), "--name", "lb2", "--ip", "192.168.56.9",
            "--network", "192.168.56.0/24", "--secrets", str(secrets), "--join", "192.168.56.10", "--vip", VIP,
            "--peer", "192.168.56.10", "--priority", "90", "--vip-interface", "eth1"]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable},
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"created {pairfiles.KEEPALIVED_CONF}" in done.stdout
    conf = (root / pairfiles.KEEPALIVED_CONF.lstrip("/")).read_text()
    assert "priority 90" in conf and "unicast_src_ip 192.168.56.9" in conf and "192.168.56.10\n" in conf
    refused = subprocess.run(argv[:-8] + ["--peer", "192.168.56.10"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 64 and "add --vip" in refused.stderr
