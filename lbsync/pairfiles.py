"""`lbsync install --role lb --vip ADDR/PREFIX --peer ADDR`: the files of an LB pair (issue 16).

Two LBs share one floating address (Octavia's ACTIVE_STANDBY): keepalived (Debian's package)
runs VRRP between them, unicast to the peer, and puts the VIP on the healthy one. What makes an
LB unhealthy, fastest first:
- nginx stopped or died: nginx.service's drop-in writes 1 to a file keepalived watches;
- nginx does not answer: a curl to a location nginx answers itself, on a root-only unix socket;
- lbsync's data plane is stale: `lbsync check` (paircheck.py).
nginx listens on the VIP's port on all addresses (`--listen PORT`), so the address serves the
moment keepalived adds it: no `net.ipv4.ip_nonlocal_bind`, no nginx reload at a failover.

VRRP version 3 (the default, 0.1 s adverts: a dead LB's address moves in about 0.4 s) has no
authentication; `--vrrp-version 2` takes a plain-text password from the secrets directory
(`vrrp.pass`) but advertises at most once a second. Either way the config says so.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from pathlib import Path
from typing import Any

from .config import PACKAGE_TEMPLATES
from .errors import ConfigError, InstallError
from .hostfiles import Target
from .pair import NGINX_DOWN

KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
KEEPALIVED_DROPIN = "/etc/systemd/system/keepalived.service.d/lbsync.conf"
NGINX_DROPIN = "/etc/systemd/system/nginx.service.d/lbsync-pair.conf"
ALIVE_CONF = "/etc/nginx/conf.d/lbs_alive.conf"
ALIVE_SOCKET = "/run/lbsync/nginx-alive.sock"
ALIVE_URL = "http://lbsync/alive"
LBSYNC_BIN = "/usr/local/bin/lbsync"
CURL_BIN = "/usr/bin/curl"
PASS_FILE = "vrrp.pass"
MANAGED = "# Managed by lbsync"
IFNAME = re.compile(r"[A-Za-z0-9_.@-]{1,15}")
PASS = re.compile(r"[A-Za-z0-9_-]{1,8}")

KEEPALIVED_UNIT = b"""# Installed by `lbsync install --vip`: how systemd runs Debian's keepalived.service on an LB.
[Unit]
# The track scripts ask nginx and lbsync (through serf): start after them, so the first checks
# find them running instead of failing and holding the address back for a round.
After=nginx.service serf.service

[Service]
# A keepalived killed outright (parent and VRRP child) leaves the VIP on this host while the peer
# takes it too. Starting again removes it, and keepalived comes back as BACKUP (nopreempt).
Restart=on-failure
RestartSec=1
"""
NGINX_UNIT = b"""# Installed by `lbsync install --vip`: tell keepalived at once when nginx stops or dies.
[Service]
# keepalived watches this file (track_file): 1 gives the VIP to the peer within a few ms of the
# main process going, instead of at the next health check.
ExecStartPost=/bin/sh -c 'mkdir -p -m 0700 /run/lbsync && echo 0 > /run/lbsync/nginx-down'
ExecStopPost=/bin/sh -c 'mkdir -p -m 0700 /run/lbsync && echo 1 > /run/lbsync/nginx-down'
# A killed nginx leaves its unix socket behind, and bind() then fails: nginx would not start again.
ExecStartPre=/bin/rm -f /run/lbsync/nginx-alive.sock
"""
ALIVE = f"""# Managed by lbsync (`lbsync install --vip`): keepalived asks nginx here whether it serves.
server {{
    listen unix:{ALIVE_SOCKET};
    access_log off;
    location = /alive {{
        return 200 "ok\\n";
    }}
    location / {{
        return 404;
    }}
}}
""".encode()


def add_arguments(add) -> None:
    """The pair's flags on `lbsync install`'s parser (`add` is its add_argument)."""
    add("--vip", metavar="ADDR/PREFIX", help="LB pair: the floating address keepalived moves between the LBs")
    add("--peer", action="append", default=[], metavar="ADDR",
        help="LB pair: the other LB's private address, where VRRP adverts go (repeatable; required with --vip)")
    add("--priority", type=int, default=100, help="LB pair: VRRP priority 1-254; the higher wins the first "
        "election only, since an LB that comes back never takes the address back (default 100)")
    add("--vrid", type=int, default=51, help="LB pair: virtual router id 1-255, the same on both LBs and "
        "unique on the network (default 51)")
    add("--vip-interface", metavar="NAME", help="LB pair: interface for the VIP (default: the one with --ip)")
    add("--vrrp-version", type=int, choices=(2, 3), default=3,
        help="LB pair: 3 (default; no authentication, 0.1 s adverts) or 2 (plain-text password from the "
             "secrets directory's vrrp.pass, adverts at most once a second)")
    add("--advert-int", type=float, help="LB pair: seconds between VRRP adverts (default 0.1, version 2: 1)")


def lb_additions(args, ip, listen: list[str]) -> tuple[dict[str, Any], list[str], list[Target]]:
    """For an LB: (lbsync.toml keys, host:port values lbsync must never render as a backend,
    files). Without --vip: nothing added, and what a pair left removed (keepalived.conf only when
    it is ours); an LB that never was in a pair gets no extra target."""
    if not args.vip:
        if args.peer:
            raise ConfigError("--peer is for an LB pair: give --vip too")
        root = Path(args.root)
        left = [path for path in (ALIVE_CONF, NGINX_DROPIN, KEEPALIVED_DROPIN) if (root / path.lstrip("/")).exists()]
        if _is_ours(root / KEEPALIVED_CONF.lstrip("/")):
            left.append(KEEPALIVED_CONF)
        return {}, [], [Target(path, None) for path in left]
    vip = _vip(args.vip, ip)
    ports = _ports(listen)
    context = {"name": args.node_name, "ip": str(ip), "peers": _peers(args.peer, ip, vip), "vip": str(vip),
               "interface": args.vip_interface or interface_of(ip, args.root),
               "vrid": _bounded(args.vrid, "--vrid", 255), "priority": _bounded(args.priority, "--priority", 254),
               "version": args.vrrp_version, "advert_int": _advert(args.advert_int, args.vrrp_version),
               "lbsync": LBSYNC_BIN, "curl": CURL_BIN, "alive_url": ALIVE_URL, "alive_socket": ALIVE_SOCKET,
               "nginx_down": NGINX_DOWN}
    if not IFNAME.fullmatch(context["interface"]):
        raise ConfigError(f"--vip-interface {context['interface']!r} is not an interface name")
    if args.vrrp_version == 2:
        context["auth_pass"] = vrrp_pass(_secrets_dir(args), dry_run=args.dry_run)
    never = [f"[{vip.ip}]:{port}" if vip.version == 6 else f"{vip.ip}:{port}" for port in ports]
    return {"vip": str(vip)}, never, [
        Target(KEEPALIVED_CONF, render(context), 0o600),
        Target(KEEPALIVED_DROPIN, KEEPALIVED_UNIT),
        Target(NGINX_DROPIN, NGINX_UNIT),
        Target(ALIVE_CONF, ALIVE),
    ]


def render(context: dict[str, Any]) -> bytes:
    from .render import render as render_template

    return render_template(PACKAGE_TEMPLATES / "keepalived.conf.j2", context).encode()


def _vip(text: str, ip) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        vip = ipaddress.ip_interface(text)
    except ValueError:
        raise ConfigError(f"--vip {text!r}: expected ADDR/PREFIX, e.g. 192.168.56.100/24") from None
    if "/" not in text:
        raise ConfigError(f"--vip {text!r}: give the prefix length too (ADDR/PREFIX, as on the LB's network)")
    if vip.version != ip.version or vip.ip == ip or vip.ip == vip.network.network_address:
        raise ConfigError(f"--vip {text}: must be an unused host address of the LBs' network, not --ip {ip}")
    if ip not in vip.network:
        raise ConfigError(f"--vip {text}: not on the network of --ip {ip}; VRRP moves it on one segment")
    return vip


def _peers(items: list[str], ip, vip) -> list[str]:
    if not items:
        raise ConfigError("--vip needs --peer: the other LB's private address (VRRP adverts go there, unicast)")
    peers = []
    for text in items:
        try:
            peer = ipaddress.ip_address(text)
        except ValueError:
            raise ConfigError(f"--peer {text!r}: give the other LB's private IP address") from None
        if peer in (ip, vip.ip) or peer.version != ip.version:
            raise ConfigError(f"--peer {text}: must be the other LB's own address, not this LB's or the VIP")
        peers.append(str(peer))
    return sorted(set(peers))


def _ports(listen: list[str]) -> list[int]:
    """The VIP is served on every port nginx listens on, which must then be all addresses."""
    if not all(item.isdigit() for item in listen):
        raise ConfigError(f"--vip: nginx must listen on the VIP's port on all addresses, so the VIP serves "
                          f"the moment it arrives: give --listen as a port, not {' '.join(listen)}")
    return [int(item) for item in listen]


def _bounded(value: int, flag: str, high: int) -> int:
    if not 1 <= value <= high:
        raise ConfigError(f"{flag} {value}: expected 1..{high}")
    return value


def _advert(value: float | None, version: int) -> str:
    """VRRP v3 counts centiseconds (0.01..40.95 s); v2 whole seconds (1..255)."""
    if version == 2:
        value = 1 if value is None else value
        if value != int(value) or not 1 <= value <= 255:
            raise ConfigError(f"--advert-int {value:g}: VRRP version 2 takes whole seconds 1..255")
        return str(int(value))
    value = 0.1 if value is None else value
    if round(value * 100) != value * 100 or not 0.01 <= value <= 40.95:
        raise ConfigError(f"--advert-int {value:g}: VRRP version 3 takes 0.01..40.95 s in steps of 0.01")
    return f"{value:g}"


def interface_of(ip, root: str = "/") -> str:
    """The interface that holds `ip` on this host (`ip -o addr`); an error names --vip-interface."""
    import subprocess

    if root != "/":
        raise ConfigError("--vip-interface is required with --root (this host's interfaces are not the target's)")
    try:
        out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot list interfaces to find --ip {ip} ({exc}): give --vip-interface") from None
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] in ("inet", "inet6") and fields[3].split("/")[0] == str(ip):
            return fields[1].split("@")[0]
    raise ConfigError(f"no interface holds --ip {ip} on this host: give --vip-interface")


def vrrp_pass(directory: Path, dry_run: bool = False) -> str:
    """VRRP v2's password: the secrets directory's vrrp.pass, made (O_EXCL) by the first LB that
    needs it; the other LB must get the same directory, like the gossip key."""
    path = directory / PASS_FILE
    if not path.exists() and not dry_run:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(6) + "\n")  # 8 characters: all that PASS carries
        except FileExistsError:
            pass
        except OSError as exc:
            raise InstallError(f"cannot create {path}: {exc.strerror or exc}") from None
    if dry_run and not path.exists():
        return "unmade"  # what the real install makes is not known yet
    try:
        word = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not PASS.fullmatch(word):
        raise ConfigError(f"{path}: VRRP version 2 takes 1-8 letters, digits, '-' or '_'")
    return word


def _secrets_dir(args) -> Path:
    return Path(args.secrets) if args.secrets else Path(args.root) / "etc/lbsync/secrets"


def _is_ours(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(MANAGED)) == MANAGED.encode()
    except OSError:
        return False
