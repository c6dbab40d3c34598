"""Settings: what each part of lbsync can be told, with one rule per key.

One frozen dataclass per concern. Top-level keys configure the LB core; the `[agent]`, `[daemon]`
and `[autoscale]` tables configure the other roles. Every field names its rule (`spec`), and one
function applies the rules to raw values wherever they came from, so `[agent] weight = 999`, an
env var and a flag are refused alike. Cross-field rules (`RELATIONS`) run after the fields.
Reading the layers (file, environment, flags) and naming the source of a bad value is `layers.py`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import rules
from .errors import ConfigError

PACKAGE_TEMPLATES = Path(__file__).resolve().parent / "templates"
ALGORITHMS = ("round_robin", "least_conn", "ip_hash", "hash")
LOG_LEVELS = ("debug", "info", "warning", "error")
DAY = 86400.0


class SettingError(ConfigError):
    """A value broke its key's rule; `key` (dotted for tables) lets the loader name its source."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


# -- rules: each turns a raw value (TOML value or environment string) into the field's value ------

Parse = Callable[[Any], Any]


def spec(default: Any, parse: Parse) -> Any:
    """A field with its rule; a tuple default stays immutable."""
    return field(default=default, metadata={"parse": parse})


def integer(low: int, high: int) -> Parse:
    return lambda value: rules.bounded_int(value, low, high)


def number(low: float, high: float, low_open: bool = False) -> Parse:
    return lambda value: rules.bounded_float(value, low, high, low_open)


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    if any(not ch.isprintable() for ch in value):
        raise ValueError(f"{rules.printable(value)} contains control characters")
    return value


def choice(*options: str) -> Parse:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"{value!r} is not one of {', '.join(options)}")
        return value
    return parse


def listed(item: Parse) -> Parse:
    """A TOML list, or a comma-separated environment string."""
    def parse(value: Any) -> tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{value!r} is not a list")
        return tuple(item(str(x).strip()) for x in items if str(x).strip())
    return parse


def address(value: Any) -> str:
    """host:port (':7373' means the local host, as Serf's CLI takes it)."""
    text(value)
    rules.split_hostport("127.0.0.1" + value if value.startswith(":") else value)
    return value


def host_with_port(value: Any) -> str:
    """HOST or HOST:PORT (Serf's default port when none is given)."""
    rules.hostport(text(value), rules.SERF_PORT)
    return value


def network(value: Any) -> str:
    try:
        ipaddress.ip_network(text(value), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a network (CIDR)") from None
    return value


def hash_key(value: Any) -> str:
    if any(ch in text(value) for ch in ";{}'\"\\"):
        raise ValueError(f"{value!r} contains characters nginx would misread")
    return value


def optional(parse: Parse) -> Parse:
    return lambda value: "" if value == "" else parse(value)


def url_path(value: Any) -> str:
    if text(value) and not value.startswith("/"):
        raise ValueError(f"{value!r} must start with /")
    return value


def gossip_key(value: Any) -> str:
    """Serf wants base64 of 16, 24 or 32 bytes; say so here rather than in Serf's log."""
    try:
        size = len(base64.b64decode(text(value), validate=True))
    except (binascii.Error, ValueError):
        size = -1
    if size not in (16, 24, 32):
        raise ValueError("is not base64 of 16, 24 or 32 bytes (see `serf keygen`)")
    return value


def command(value: Any) -> str:
    """Split like a shell would (no shell runs): unbalanced quotes are refused now, not later."""
    shlex.split(text(value))
    return value


def name_template(value: Any) -> str:
    if text(value).count("{index}") != 1 or not rules.NODE_NAME_RE.fullmatch(value.replace("{index}", "1")):
        raise ValueError(f"{value!r} needs exactly one {{index}} and otherwise only [A-Za-z0-9._-]")
    return value


# -- the settings -------------------------------------------------------------------------------

class Checked:
    """Every settings class validates itself on construction, whoever builds it (loader or test).

    Each field's rule runs on its value; then `RELATIONS`: (key, other key, holds, verb).
    """

    TABLE = ""
    RELATIONS: tuple = ()

    def __post_init__(self) -> None:
        prefix = f"{self.TABLE}." if self.TABLE else ""
        for key, parse in fields_of(type(self)).items():
            try:
                parse(getattr(self, key))
            except ValueError as exc:
                raise SettingError(prefix + key, str(exc)) from None
        for first, second, holds, verb in self.RELATIONS:
            if not holds(self):
                raise SettingError(prefix + first, f"{getattr(self, first)!r} {verb} {prefix}{second} "
                                                   f"({getattr(self, second)!r})")


@dataclass(frozen=True)
class AgentSettings(Checked):
    """A web node: its Serf agent, the tags it publishes and how it drains."""

    node_name: str = spec("", optional(rules.node_name))  # default: the host name
    bind: str = spec("0.0.0.0:7946", address)
    advertise: str = spec("", optional(host_with_port))
    rpc_addr: str = spec(rules.DEFAULT_RPC_ADDR, address)
    rpc_auth: str = spec("", text)
    join: tuple[str, ...] = spec((), listed(host_with_port))  # the LB address(es); required
    encrypt_key: str = spec("", optional(gossip_key))
    role: str = spec("web", rules.identifier)
    port: int = spec(80, integer(*rules.PORT))
    weight: int = spec(1, integer(*rules.WEIGHT))
    serf_bin: str = spec("serf", text)
    serf_config: str = spec("", text)  # an extra -config-file for the agent
    load_query: str = spec("load", rules.identifier)
    drain_timeout: float = spec(30.0, number(0, DAY))  # bounded wait for the LB to let go
    drain_quiet: float = spec(2.0, number(0, DAY))  # no request seen this long -> let go
    log_file: str = spec("", text)  # access log of the local web server to watch while draining
    load_file: str = spec("", text)  # when set and present: answer load queries with its number

    TABLE = "agent"
    RELATIONS = (("drain_quiet", "drain_timeout", lambda s: s.drain_quiet <= s.drain_timeout,
                  "must not exceed"),)


@dataclass(frozen=True)
class DaemonSettings(Checked):
    """`lbsync run`: how fast it follows Serf and how often it reloads nginx."""

    poll_interval: float = spec(0.05, number(0, 60, low_open=True))  # 20 ms while a change settles
    debounce_min: float = spec(0.02, number(0, 60))  # quiet after the last change: one unchanged poll
    debounce_max: float = spec(0.5, number(0, 60))  # never wait longer under continuous churn
    min_reload_interval: float = spec(1.0, number(0, 3600))
    resync_interval: float = spec(60.0, number(0, DAY, low_open=True))
    reconnect_max: float = spec(5.0, number(0, 3600, low_open=True))
    health_path: str = spec("", url_path)  # empty: active health checks off
    health_interval: float = spec(0.5, number(0, 3600, low_open=True))
    health_timeout: float = spec(0.5, number(0, 3600, low_open=True))
    health_rise: int = spec(2, integer(1, 100))
    health_fall: int = spec(2, integer(1, 100))
    metrics_file: str = spec("", text)

    TABLE = "daemon"
    RELATIONS = (("debounce_min", "debounce_max", lambda s: s.debounce_min <= s.debounce_max,
                  "must not exceed"),)


@dataclass(frozen=True)
class AutoscaleSettings(Checked):
    """`lbsync autoscale`: the scaling policy and the operator's commands.

    Commands are split like a shell would (no shell runs) and get {index} and {name} replaced.
    Scale-in order: drain_command (drain, then leave; optional) -> wait until the node is no
    longer alive -> scale_in_command (destroy) -> Serf force-leave -prune so the name is reusable.
    Without a drain_command, scale_in_command must drain and leave itself (lab/stop_web.sh does).
    """

    min_size: int = spec(1, integer(0, 1000))
    max_size: int = spec(4, integer(1, 1000))
    scale_out_threshold: float = spec(0.8, number(0, 100))  # normalised load (load / CPU count)
    scale_in_threshold: float = spec(0.3, number(0, 100))  # below scale_out_threshold (hysteresis)
    sustain: int = spec(3, integer(1, 100))  # consecutive samples the condition must hold
    cooldown_out: float = spec(60.0, number(0, DAY))  # after a scale-out attempt, failed or not
    cooldown_in: float = spec(120.0, number(0, DAY))  # after any attempt, before the next scale-in
    warmup: float = spec(30.0, number(0, DAY))  # a new node's load is ignored this long
    step: int = spec(1, integer(1, 1000))
    interval: float = spec(10.0, number(0, DAY, low_open=True))
    query_timeout: float = spec(2.0, number(0, 300, low_open=True))
    command_timeout: float = spec(120.0, number(0, DAY, low_open=True))
    name_template: str = spec("web{index}", name_template)  # Serf node name of the node with index N
    scale_out_command: str = spec("", command)  # e.g. "lab/boot_web.sh {index}"
    drain_command: str = spec("", command)
    scale_in_command: str = spec("", command)  # e.g. "lab/stop_web.sh {index}"
    dry_run: bool = spec(False, rules.boolean)

    TABLE = "autoscale"
    RELATIONS = (
        ("min_size", "max_size", lambda s: s.min_size <= s.max_size, "must not exceed"),
        ("scale_in_threshold", "scale_out_threshold",
         lambda s: s.scale_in_threshold < s.scale_out_threshold, "must leave a band (hysteresis) below"),
        ("step", "max_size", lambda s: s.step <= s.max_size, "must not exceed"),
    )


@dataclass(frozen=True)
class Settings(Checked):
    """The LB core: where members come from, what may be rendered, where it goes."""

    rpc_addr: str = spec(rules.DEFAULT_RPC_ADDR, address)
    rpc_auth: str = spec("", text)
    rpc_timeout: float = spec(5.0, number(0, 300, low_open=True))
    role: str = spec("web", rules.identifier)
    allowed_networks: tuple[str, ...] = spec((), listed(network))  # empty: any address
    lb_listen: tuple[str, ...] = spec((), listed(address))  # the LB's own host:port; never a backend
    upstream_name: str = spec("lbs_backend", rules.identifier)
    algorithm: str = spec("round_robin", choice(*ALGORITHMS))
    hash_key: str = spec("$request_uri", hash_key)
    keepalive: int = spec(0, integer(0, 10000))
    template: str = spec(str(PACKAGE_TEMPLATES / "lbs_upstream.conf.j2"), text)
    output: str = spec("/etc/nginx/conf.d/lbs_upstream.conf", text)
    nginx_bin: str = spec("nginx", text)
    nginx_conf: str = spec("/etc/nginx/nginx.conf", text)
    nginx_prefix: str = spec("", text)
    reload_command: str = spec("systemctl reload nginx", command)
    lock_file: str = spec("/run/lbsync.lock", text)
    lock_timeout: float = spec(30.0, number(0, 3600))
    state_dir: str = spec("/var/lib/lbsync", text)
    log_level: str = spec("info", choice(*LOG_LEVELS))
    syslog: bool = spec(True, rules.boolean)
    agent: AgentSettings = field(default_factory=AgentSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    autoscale: AutoscaleSettings = field(default_factory=AutoscaleSettings)


SECTIONS: dict[str, type] = {"agent": AgentSettings, "daemon": DaemonSettings, "autoscale": AutoscaleSettings}


def fields_of(cls: type) -> dict[str, Parse]:
    """Key -> rule for the plain fields of a settings class (tables excluded)."""
    return {f.name: f.metadata["parse"] for f in dataclasses.fields(cls) if "parse" in f.metadata}


def build(cls: type, raw: dict, tables: dict | None = None) -> Any:
    """An instance of `cls` from raw values; the first bad one raises SettingError naming its key."""
    prefix = f"{cls.TABLE}." if cls.TABLE else ""
    rule_of = fields_of(cls)
    unknown = sorted(set(raw) - set(rule_of))
    if unknown:
        raise SettingError(prefix + unknown[0], _unknown(unknown[0], rule_of))
    values = {}
    for key, value in raw.items():
        try:
            values[key] = rule_of[key](value)
        except ValueError as exc:
            raise SettingError(prefix + key, str(exc)) from None
    return cls(**values, **(tables or {}))


def _unknown(key: str, known: dict) -> str:
    import difflib

    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known))}"
    return f"unknown key; {hint}"
