"""Command line: argparse subcommands; the only place that prints errors or picks exit codes.

Commands that are not on Serf's hook path (run, agent, autoscale) live in their own modules and
are imported only when asked for, so `lbsync handle` stays cheap.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import ConfigError, LbsyncError
from .layers import load

if TYPE_CHECKING:
    import argparse

    from .config import Settings
    from .plan import MemberSource

log = logging.getLogger("lbsync")

MEMBER_EVENTS = ("member-join", "member-leave", "member-failed", "member-update", "member-reap")
MAX_EVENT_LINES = 50  # the event's members are logged for the record, never used as state

# flag -> (settings key, help); every flag is also settable in the config file and LBSYNC_* env
COMMON_FLAGS = {
    "--rpc-addr": ("rpc_addr", "Serf agent RPC address (default 127.0.0.1:7373)"),
    "--output": ("output", "the upstream file nginx includes"),
    "--template": ("template", "Jinja2 template to render"),
}
AGENT_FLAGS = {
    "--join": ("agent.join", "LB address(es) to join, comma-separated"),
    "--node-name": ("agent.node_name", "Serf node name (default: host name)"),
    "--bind": ("agent.bind", "Serf gossip bind address host:port"),
    "--agent-rpc-addr": ("agent.rpc_addr", "RPC address of this node's Serf agent"),
    "--port": ("agent.port", "port tag: where this node's web server listens"),
    "--weight": ("agent.weight", "weight tag (1-256)"),
    "--service": ("agent.services", "a service this node offers (repeatable): the LB pool following ROLE "
                  "routes to PORT here. The first is published as role/port/weight tags, each one as "
                  "port_ROLE (and weight_ROLE when WEIGHT is given); replaces --port and --weight"),
}
REPEATABLE = {"--service": "ROLE:PORT[:WEIGHT]"}  # flag -> metavar; each use adds one list item


def main(argv: Sequence[str] | None = None,
         source_factory: Callable[[Settings], MemberSource] | None = None) -> int:
    """`lbsync ARGS`. `source_factory` replaces the Serf agent as the member source (benchmarks
    feed `handle` members from a file this way)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args: Any
    if argv == ["handle"]:  # Serf's hook takes no option: skip argparse (~10 ms a run, serially)
        args = SimpleNamespace(func=cmd_handle, config=None, verbose=False, set=[])
    else:
        args = build_parser(argv).parse_args(argv)
    args.source_factory = source_factory or _serf_source
    if args.func is INSTALL:  # install writes the config file, so a broken one must not stop it
        _setup_logging(args.verbose, syslog=False)
        return _run(args.func, None, args)
    try:
        args.overrides, args.flags = _overrides(args)  # kept for commands that reload settings (run)
        settings = load(args.config, overrides=args.overrides, flags=args.flags)
    except LbsyncError as exc:
        _setup_logging(args.verbose, syslog=False)
        log.error("%s", exc)
        return exc.exit_code
    _setup_logging(args.verbose or settings.log_level == "debug", settings.syslog)
    return _run(args.func, settings, args)


def _run(func: Callable, settings: Settings | None, args: argparse.Namespace) -> int:
    try:
        return func(settings, args)
    except LbsyncError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Every command is listed; only the one in `argv` gets its options built (all of them when
    none is named, e.g. for --help). Serf runs the hook serially, so `lbsync handle` builds one
    small subparser instead of all of them, and never imports the installer."""
    import argparse  # here, not at the top: the hook never parses (see main)

    class _Parser(argparse.ArgumentParser):
        """argparse, but a usage error exits with EX_USAGE (64) as sysexits(3) asks."""

        def error(self, message: str):
            self.print_usage(sys.stderr)
            self.exit(os.EX_USAGE, f"{self.prog}: error: {message}\n")

    parser = _Parser(
        prog="lbsync",
        description="Keep nginx's upstream equal to the web nodes Serf knows are alive.",
        epilog="Config: /etc/lbsync/lbsync.toml (or --config / LBSYNC_CONFIG), lbsync.d/*.toml, then "
               "LBSYNC_* environment variables, then flags. Exit codes follow sysexits(3).",
    )
    parser.add_argument("--version", action="version", version=f"lbsync {__version__}")
    _add_globals(parser, default=None)
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND",
                                     parser_class=_Parser)
    chosen = next((word for word in argv or () if word in COMMANDS), None)
    for name, (func, help_text, add_options) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text, epilog=SETTINGS_EPILOG)
        sub.set_defaults(func=func)
        if chosen in (None, name):
            _add_globals(sub, default=argparse.SUPPRESS)  # `lbsync sync --rpc-addr X` works too
            add_options(sub)
    return parser


def _sync_options(sync: argparse.ArgumentParser) -> None:
    sync.add_argument("--dry-run", action="store_true", help="render and compare; write nothing (exit 0)")
    sync.add_argument("--check", action="store_true",
                      help="like --dry-run, but exit 1 when a change is pending (for CI and monitoring)")
    sync.add_argument("--diff", action="store_true", help="print the change as a unified diff")


def _status_options(status: argparse.ArgumentParser) -> None:
    status.add_argument("--json", action="store_true", help="the same as JSON (schema: lbsync/status.py)")


def _agent_options(agent: argparse.ArgumentParser) -> None:
    _add_flags(agent, AGENT_FLAGS)


def _autoscale_options(scale: argparse.ArgumentParser) -> None:
    scale.add_argument("--dry-run", dest="opt:autoscale.dry_run", action="store_const",
                       const="true", help="log every decision; run no command")


def _member_options(member: argparse.ArgumentParser) -> None:
    from .membercmd import add_options

    add_options(member)


def _install_options(install: argparse.ArgumentParser) -> None:
    from .install import add_arguments

    add_arguments(install)


def _no_options(parser: argparse.ArgumentParser) -> None:
    pass


def cmd_handle(settings: Settings, args: argparse.Namespace) -> int:
    """The Serf hook. Any member event triggers a full reconcile; other events are not ours."""
    event = os.environ.get("SERF_EVENT", "")
    if event not in MEMBER_EVENTS:
        log.debug("event %r is not a member event; nothing to do", event)
        return 0
    for line in _event_lines(sys.stdin):
        log.info("event %s: %s", event, line)
    from .sync import reconcile

    reconcile(settings, args.source_factory(settings))
    return 0


def cmd_sync(settings: Settings, args: argparse.Namespace) -> int:
    from .plan import Outcome
    from .sync import reconcile

    result = reconcile(settings, args.source_factory(settings), dry_run=args.dry_run or args.check)
    if args.diff and result.diff:
        sys.stdout.write(result.diff)
    return 1 if args.check and result.outcome is Outcome.DRY_RUN else 0


def cmd_render(settings: Settings, args: argparse.Namespace) -> int:
    from .drivers.reload import render_upstream
    from .members import select
    from .plan import Plan
    from .sync import log_skips

    records = args.source_factory(settings).members()
    if settings.pools:
        from .drivers.pools import render_pools
        from .pools import merged, plan_pools

        plans = plan_pools(settings, records, {}, frozenset())
        log_skips(merged(plans))
        sys.stdout.write(render_pools(settings, plans))
        return 0
    selection = select(records, settings)
    log_skips(selection)
    sys.stdout.write(render_upstream(Plan.of(settings, selection)))
    return 0


def _serf_source(settings: Settings) -> MemberSource:
    from .serf import SerfSource

    return SerfSource(settings)


def _event_lines(stream) -> list[str]:
    """Serf's stdin lines (name, addr, role, tags; tab-separated), escaped, bounded."""
    from .rules import printable

    lines = []
    for number, raw in enumerate(stream):
        if number == MAX_EVENT_LINES:
            lines.append("(more members not shown)")
            break
        fields = raw.rstrip("\n").split("\t")
        lines.append(printable(" ".join(fields[:2]) + (f" ({' '.join(fields[2:])})" if len(fields) > 2 else "")))
    return lines


def _add_globals(parser: argparse.ArgumentParser, default) -> None:
    """The options every command takes, before or after its name. After it they default to
    SUPPRESS, so a value given before the command is not reset by the command's parser."""
    parser.add_argument("-c", "--config", default=default, help="config file (TOML); unknown keys are an error")
    parser.add_argument("-v", "--verbose", action="store_true", default=default or False,
                        help="log debug details")
    parser.add_argument("--set", action="append", dest="set" if default is None else "set_after",
                        default=[] if default is None else default, metavar="KEY=VALUE",
                        help="override any setting, e.g. --set algorithm=least_conn "
                             "--set daemon.resync_interval=30 (repeatable)")
    for flag, (key, help_text) in COMMON_FLAGS.items():
        parser.add_argument(flag, dest=f"opt:{key}", metavar="VALUE", default=default, help=help_text)


def _commands() -> dict[str, tuple[Callable, str, Callable[[argparse.ArgumentParser], None]]]:
    return {
        "handle": (cmd_handle, "Serf event handler: on a member event, reconcile from the full membership",
                   _no_options),
        "sync": (cmd_sync, "reconcile once now", _sync_options),
        "render": (cmd_render, "print the upstream file the reload driver would render (with [[pool]] "
                   "tables: the HTTP and the TCP pools' files)", _no_options),
        "config": (_lazy("configview", "show_config"),
                   "print the effective settings and where each came from (secrets hidden)", _no_options),
        "status": (_lazy("status", "show_status"), "per pool: backends, what nginx serves, drift; last run, "
                   "daemon, autoscaler, recent events", _status_options),
        "run": (_lazy("daemon", "run_daemon"),
                "long-running LB mode: follow Serf over RPC, push or reload, resync, health checks", _no_options),
        "agent": (_lazy("agent", "run_agent"),
                  "web node: join the cluster with role/port/weight tags (or --service ones); drain on SIGTERM",
                  _agent_options),
        "autoscale": (_lazy("scaler", "run_autoscaler"), "scale the web pool on fleet load with operator commands",
                      _autoscale_options),
        "member": (_lazy("membercmd", "run_member"), "static members of a [[pool]]: add, remove, list "
                   "(backends that run no Serf agent)", _member_options),
        "check": (_lazy("paircheck", "run_check"), "LB pair: keepalived's track script; exit 1 when this LB's "
                  "data plane has been stale past pair_grace while the peer serves the right pool", _no_options),
        "install": (INSTALL, "put lbsync's files in place on an LB or web host; report what changed",
                    _install_options),
    }


def _lazy(module: str, function: str) -> Callable[[Settings, argparse.Namespace], int]:
    """Run `lbsync.<module>.<function>(settings, args)`, importing the module only when chosen."""
    def run(settings: Settings, args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(f"lbsync.{module}"), function)(settings, args)
    return run


INSTALL = _lazy("install", "run_install")
COMMANDS = _commands()


SETTINGS_EPILOG = ("Every setting can also come from /etc/lbsync/lbsync.toml (and lbsync.d/*.toml), an "
                   "LBSYNC_<KEY> environment variable or --set KEY=VALUE; `lbsync config` lists them "
                   "with their values and sources.")


def _add_flags(parser: argparse.ArgumentParser, flags: dict[str, tuple[str, str]]) -> None:
    for flag, (key, help_text) in flags.items():
        if flag in REPEATABLE:
            parser.add_argument(flag, dest=f"opt:{key}", metavar=REPEATABLE[flag], action="append", help=help_text)
        else:
            parser.add_argument(flag, dest=f"opt:{key}", metavar="VALUE", help=help_text)


def _overrides(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, str]]:
    """Settings given on the command line, and the flag that gave each (for error messages)."""
    flag_of = {key: flag for flag, (key, _) in {**COMMON_FLAGS, **AGENT_FLAGS}.items()}
    values = {key[4:]: value for key, value in vars(args).items()
              if key.startswith("opt:") and value is not None}
    flags = {key: f"flag {flag_of.get(key, '--dry-run')}" for key in values}
    for item in args.set + getattr(args, "set_after", []):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        values[key.strip()] = value
        flags[key.strip()] = f"flag --set {key.strip()}"
    return values, flags


def _setup_logging(verbose: bool, syslog: bool) -> None:
    root = logging.getLogger("lbsync")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("lbsync: %(levelname)s: %(message)s"))
    root.handlers[:] = [stderr]
    from .sdnotify import stderr_is_journal

    if syslog and not stderr_is_journal() and os.path.exists("/dev/log"):
        from logging.handlers import SysLogHandler  # only where syslog is: it imports socket

        try:
            handler = SysLogHandler(address="/dev/log")
            handler.setFormatter(logging.Formatter("lbsync[%(process)d]: %(message)s"))
            root.addHandler(handler)
        except OSError:
            pass
    root.propagate = False
