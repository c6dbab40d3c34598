"""`lbsync install`: put the handlers/ files in place on an LB or web host, idempotently.

Every managed file is built in memory first, then compared with what is on disk (bytes and
mode); only a difference is written, atomically, and each action is reported as one line,
`created|updated|removed PATH`, then a summary. A second run with the same flags prints no
action, so provisioners restart serf only when a line names /etc/serf/. `--root DIR` writes
under DIR instead of / (tests, image builds). Also runnable as `python -m lbsync.install`.

Module-level imports stay light: cli.py builds this subcommand's arguments on every run,
including Serf's hook path; the rest is imported when an install actually runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

from . import rules
from .config import PACKAGE_TEMPLATES, AgentSettings, Settings
from .errors import ConfigError, LbsyncError
from .hostfiles import Target, apply
from .keys import secrets_for
from .layers import load_text
from .pairfiles import add_arguments as add_pair_arguments
from .pairfiles import lb_additions
from .rules import DEFAULT_RPC_ADDR as RPC_ADDR
from .rules import SERF_PORT, split_hostport

HANDLERS = Path(__file__).resolve().parent / "handlers"  # shipped inside the package
UPSTREAM = "/etc/nginx/conf.d/lbs_upstream.conf"
ERROR_ROOT = "/usr/share/lbsync"
DEFAULT_SITE = "/etc/nginx/sites-enabled/default"
ACCESS_LOG = "/var/log/nginx/access.log"  # a web node's server; the agent watches it to drain
SYSTEMD = "/etc/systemd/system"
READ_TIMEOUT = 10
# nginx binds the live data plane's control socket in /run/lbsync at start: it must exist, root-only
TMPFILES = (b"# Installed by lbsync: the directory of nginx's control socket and lbsync's lock.\n"
            b"d /run/lbsync 0700 root root -\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--role", choices=("lb", "web"), required=True)
    add("--ip", required=True, help="this host's private address: serf binds and advertises it")
    add("--node-name", help="serf node name (default: host name)")
    add("--join", action="append", default=[], metavar="HOST[:PORT]", help="LB to join (web; repeatable)")
    add("--network", action="append", default=[], metavar="CIDR",
        help="LB: allowed_networks, where web nodes live (repeatable; required)")
    add("--listen", action="append", default=[], help="LB: nginx listen value(s) (default 80)")
    add("--port", type=int, default=80, help="web: port tag, where this node's web server listens")
    add("--weight", type=int, default=1, help="web: weight tag")
    add("--drain-timeout", type=float, default=AgentSettings.drain_timeout, help="web: seconds")
    add("--read-timeout", type=int, default=READ_TIMEOUT,
        help="LB: seconds nginx waits for a backend's answer before trying the next one "
             f"(default {READ_TIMEOUT}; raise it for slow endpoints)")
    add("--mode", choices=("hook", "run"), default="hook",
        help="LB: serf event handler (hook) or the lbsync-run service (run)")
    add("--secrets", default=None,
        help="directory with serf.key and rpc.token; made here on an LB when missing "
             "(default: ROOT/etc/lbsync/secrets)")
    add("--handlers", default=str(HANDLERS), help="the handlers/ directory to install from")
    add("--root", default="/", help="install under this directory instead of /")
    add("--serf-bin", default="serf", help="serf binary for `serf keygen`")
    add("--dry-run", action="store_true", help="report what would change; write nothing")
    add_pair_arguments(add)


def run_install(settings: Settings | None, args: argparse.Namespace) -> int:
    """CLI entry (`lbsync install`): settings are unused; this step writes the config."""
    targets = plan(args)
    changes = apply(targets, Path(args.root), args.dry_run)
    for action, path in changes:
        print(f"{action} {path}")
    verb = "would change" if args.dry_run else "changed"
    print(f"lbsync install: {args.role} {args.node_name}: {verb} {len(changes)} of {len(targets)} files")
    return 0


def plan(args: argparse.Namespace) -> list[Target]:
    """Every file this role owns, with the content it must have. Validates all input first."""
    if not args.node_name:
        import socket

        args.node_name = socket.gethostname()
    ip = _address(args.ip, "--ip")
    if args.role == "lb" and not args.network:
        raise ConfigError("--network is required for an LB: the CIDR(s) web nodes live in")
    if args.role == "web" and not args.join:
        raise ConfigError("--join is required for a web node: the LB address(es)")
    if args.role == "web" and (args.vip or args.peer):
        raise ConfigError("--vip and --peer are for an LB pair (--role lb)")
    handlers = Path(args.handlers)
    if not (handlers / "serf").is_dir():
        raise ConfigError(f"--handlers {handlers}: no serf/ inside; point it at lbsync's handlers/")
    secrets = Path(args.secrets) if args.secrets else Path(args.root) / "etc/lbsync/secrets"
    keys = secrets_for(secrets, create=args.role == "lb", serf_bin=args.serf_bin, dry_run=args.dry_run)
    node: dict[str, Any] = {"node_name": _name(args.node_name), "bind": _hostport(ip), "advertise": _hostport(ip)}
    if args.join:
        node["retry_join"] = [_join(host) for host in args.join]
    build = _lb_targets if args.role == "lb" else _web_targets
    config, targets = build(args, handlers, ip, node, keys)
    return [
        Target(f"{SYSTEMD}/serf.service.d/lbsync.conf",
               _read(handlers / "systemd/serf.service.d/lbsync.conf")),
        Target("/etc/serf/lbsync-secrets.json",
               _json({"encrypt_key": keys["serf.key"], "rpc_auth": keys["rpc.token"]}), 0o600),
        *targets,
        Target("/etc/serf/lbsync-node.json", _json(node)),
        Target("/etc/lbsync/lbsync.toml", config.encode(), 0o600),
    ]


def _lb_targets(args, handlers: Path, ip, node: dict, keys: dict) -> tuple[str, list[Target]]:
    """Serf with role=lb (and the hook in hook mode), the nginx front end, lbsync's config."""
    listen, own = _listen(args.listen or ["80"], ip)
    pair_keys, vip_listen, pair_files = lb_additions(args, ip, listen)  # keepalived and the VIP, with --vip
    config = _toml({"rpc_addr": RPC_ADDR, "rpc_auth": keys["rpc.token"], "output": UPSTREAM,
                    "allowed_networks": [str(_network(cidr)) for cidr in args.network],
                    "lb_listen": own + vip_listen, **pair_keys},
                   daemon={"health_path": "/"})  # safe default: a hung or dead node is out in ~1.5 s
    settings = _checked(config, args.role)
    hook = _read(handlers / "serf/lbsync-hook.json") if args.mode == "hook" else None
    return config, [
        Target("/etc/serf/lbsync-lb.json", _read(handlers / "serf/lbsync-lb.json")),
        Target("/etc/serf/lbsync-hook.json", hook),
        Target(f"{SYSTEMD}/lbsync-run.service", _read(handlers / "systemd/lbsync-run.service")),
        # the autoscaler runs only where an operator enables it (it acts on a cloud or commands)
        Target(f"{SYSTEMD}/lbsync-autoscale.service", _read(handlers / "systemd/lbsync-autoscale.service")),
        # with [[pool]] tables lbsync renders every listener itself: the single pool's site must go
        Target("/etc/nginx/conf.d/lbs_site.conf",
               None if operator_pools(Path(args.root)) else _site(listen, settings, args.read_timeout)),
        Target("/etc/tmpfiles.d/lbsync.conf", TMPFILES),
        Target(UPSTREAM, _empty_upstream(settings), keep=True),
        Target("/etc/nginx/modules-enabled/50-lbsync-main.conf", _read(PACKAGE_TEMPLATES / "lbs_main.conf")),
        Target(f"{ERROR_ROOT}/lbs_503.html", _read(PACKAGE_TEMPLATES / "lbs_503.html")),
        Target(DEFAULT_SITE, None),
        *pair_files,
    ]


def _web_targets(args, handlers: Path, ip, node: dict, keys: dict) -> tuple[str, list[Target]]:
    """Serf with role=web and this node's tags, the agent's unit and its [agent] config."""
    node["tags"] = {"port": str(args.port), "weight": str(args.weight)}
    unit = _read(handlers / "systemd/lbsync-agent.service")
    _check_stop_timeout(unit, args.drain_timeout)
    config = _toml({"rpc_addr": RPC_ADDR, "rpc_auth": keys["rpc.token"]}, agent={
        "node_name": node["node_name"], "bind": node["bind"], "advertise": node["advertise"],
        "rpc_addr": RPC_ADDR, "rpc_auth": keys["rpc.token"], "join": node["retry_join"],
        "encrypt_key": keys["serf.key"], "port": args.port, "weight": args.weight,
        "drain_timeout": args.drain_timeout, "log_file": ACCESS_LOG})
    _checked(config, args.role)
    return config, [
        Target("/etc/serf/lbsync-web.json", _read(handlers / "serf/lbsync-web.json")),
        Target(f"{SYSTEMD}/lbsync-agent.service", unit),
    ]


def _site(listen: list[str], settings: Settings, read_timeout: int) -> bytes:
    from .render import render

    if not 1 <= read_timeout <= 3600:
        raise ConfigError(f"--read-timeout {read_timeout}: expected 1..3600 seconds")
    return render(PACKAGE_TEMPLATES / "lbs_site.conf.j2", {
        "listen": listen, "upstream_name": settings.upstream_name, "error_root": ERROR_ROOT,
        "read_timeout": read_timeout}).encode()


def operator_pools(root: Path) -> bool:
    """Whether the operator's lbsync.d/*.toml (install never writes there) declares [[pool]] tables."""
    import tomllib

    for path in sorted((root / "etc/lbsync/lbsync.d").glob("*.toml")):
        try:
            if tomllib.loads(path.read_text()).get("pool"):
                return True
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return False


def _empty_upstream(settings: Settings) -> bytes:
    """What `lbsync sync` renders for no members, so nginx starts valid and the first sync is a no-op."""
    from .drivers.reload import render_upstream
    from .members import select
    from .plan import Plan

    return render_upstream(Plan.of(settings, select([], settings))).encode()


def _checked(text: str, role: str) -> Settings:
    """Load the generated config through lbsync's own strict loader: a typo fails here, not later."""
    try:
        return load_text(text)
    except ConfigError as exc:
        raise ConfigError(f"generated config for {role} is invalid: {exc}") from None


def _check_stop_timeout(unit: bytes, drain_timeout: float) -> None:
    """systemd must let the drain finish: TimeoutStopSec > drain_timeout + time to leave."""
    import configparser

    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(unit.decode())
    stop = float(parser.get("Service", "TimeoutStopSec", fallback="90"))
    if stop < drain_timeout + 15:
        raise ConfigError(f"--drain-timeout {drain_timeout:g} s does not fit lbsync-agent.service's "
                          f"TimeoutStopSec={stop:g}: raise it to at least {drain_timeout + 15:g}")


def _toml(top: dict, **tables: dict) -> str:
    lines = ["# Written by `lbsync install`; re-run it instead of editing (it rewrites this file)."]
    lines += [f"{key} = {json.dumps(value)}" for key, value in top.items()]
    for table, values in tables.items():
        lines += ["", f"[{table}]"] + [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _json(data: dict) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def _address(text: str, flag: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give the private IP address, not a name") from None
    if address.is_unspecified:
        raise ConfigError(f"{flag} {text}: bind one private address, never the wildcard")
    return address


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(f"--network {text!r} is not a CIDR") from None


def _hostport(ip, port: int = SERF_PORT) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _join(text: str) -> str:
    """An LB to join: an IP or a host name, with Serf's port unless one is given."""
    try:
        return _hostport(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    host, port = text, SERF_PORT
    if ":" in text:
        try:
            host, port = split_hostport(text)
        except ValueError:
            raise ConfigError(f"--join {text!r}: expected HOST or HOST:PORT") from None
    if not host or not all(ch.isascii() and (ch.isalnum() or ch in ".-") for ch in host):
        raise ConfigError(f"--join {text!r}: expected HOST or HOST:PORT")
    return f"{host}:{port}"


def _listen(items: list[str], ip) -> tuple[list[str], list[str]]:
    """nginx listen values (PORT or HOST:PORT) and the host:port list lbsync must never render."""
    own = []
    for item in items:
        try:
            own.append(_hostport(ip, int(item)) if item.isdigit() else item)
            split_hostport(own[-1])
        except ValueError:
            raise ConfigError(f"--listen {item!r}: expected PORT or HOST:PORT") from None
    return items, own


def _name(text: str) -> str:
    try:
        return rules.node_name(text)
    except ValueError as exc:
        raise ConfigError(f"--node-name: {exc}") from None


def standalone(argv: list[str] | None = None) -> int:
    """`python -m lbsync.install`: the same step before (or without) the `lbsync` script."""
    parser = argparse.ArgumentParser(prog="lbsync install", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_install(None, args)
    except LbsyncError as exc:
        print(f"lbsync install: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(standalone())
