"""Settings: defaults <- TOML file <- LBSYNC_* environment <- command-line flags.

One frozen dataclass per concern. Top-level keys configure the LB core; the `[agent]`,
`[daemon]` and `[autoscale]` tables configure the other roles. Unknown keys are an error (a typo
must never silently fall back to a default on a load balancer). Environment variables are
`LBSYNC_<KEY>` for top-level keys and `LBSYNC_<TABLE>_<KEY>` for the tables; list values in the
environment are comma-separated.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_CONFIG = Path("/etc/lbsync/lbsync.toml")
PACKAGE_TEMPLATES = Path(__file__).resolve().parent / "templates"
ALGORITHMS = ("round_robin", "least_conn", "ip_hash", "hash")


@dataclass(frozen=True)
class AgentSettings:
    """A web node: its Serf agent, the tags it publishes and how it drains."""

    node_name: str = ""  # default: the host name
    bind: str = "0.0.0.0:7946"
    advertise: str = ""
    rpc_addr: str = "127.0.0.1:7373"
    rpc_auth: str = ""
    join: tuple[str, ...] = ()  # the LB address(es); required
    encrypt_key: str = ""
    role: str = "web"
    port: int = 80
    weight: int = 1
    serf_bin: str = "serf"
    serf_config: str = ""  # an extra -config-file for the agent
    load_query: str = "load"
    drain_timeout: float = 30.0  # bounded wait for the LB to stop sending before leaving
    drain_quiet: float = 2.0  # no request seen for this long -> the LB has let go
    log_file: str = ""  # access log of the local web server to watch while draining
    load_file: str = ""  # when set and present: answer load queries with its number (tests, lab)


@dataclass(frozen=True)
class DaemonSettings:
    """`lbsync run`: how fast it follows Serf and how often it reloads nginx."""

    poll_interval: float = 0.05  # idle members-filtered poll; 20 ms while a change settles
    debounce_min: float = 0.02  # quiescence after the last change: one unchanged poll
    debounce_max: float = 0.5  # never wait longer than this under continuous churn
    min_reload_interval: float = 1.0
    resync_interval: float = 60.0
    reconnect_max: float = 5.0
    health_path: str = ""  # empty: active health checks off
    health_interval: float = 0.5
    health_timeout: float = 0.5
    health_rise: int = 2
    health_fall: int = 2
    metrics_file: str = ""

    def __post_init__(self) -> None:
        """A zero poll would spin a core; a cap below the window would make the window a lie."""
        for name in ("poll_interval", "health_interval", "health_timeout", "resync_interval", "reconnect_max"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"daemon.{name} must be > 0, not {getattr(self, name)}")
        if not 0 <= self.debounce_min <= self.debounce_max:
            raise ConfigError(f"daemon.debounce_min ({self.debounce_min}) must be 0..debounce_max "
                              f"({self.debounce_max})")
        if self.min_reload_interval < 0:
            raise ConfigError(f"daemon.min_reload_interval must be >= 0, not {self.min_reload_interval}")
        if not (1 <= self.health_rise <= 100 and 1 <= self.health_fall <= 100):
            raise ConfigError("daemon.health_rise and daemon.health_fall must be 1..100")
        if self.health_path and not self.health_path.startswith("/"):
            raise ConfigError(f"daemon.health_path {self.health_path!r} must start with /")


@dataclass(frozen=True)
class AutoscaleSettings:
    """`lbsync autoscale`: the scaling policy and the operator's commands.

    Commands are split like a shell would (no shell runs) and get {index} and {name} replaced.
    Scale-in order: drain_command (drain, then leave; optional) -> wait until the node is no
    longer alive -> scale_in_command (destroy) -> Serf force-leave -prune so the name is reusable.
    Without a drain_command, scale_in_command must drain and leave itself (lab/stop_web.sh does).
    """

    min_size: int = 1
    max_size: int = 4
    scale_out_threshold: float = 0.8  # normalised 1-minute load (load / CPU count)
    scale_in_threshold: float = 0.3  # must be below scale_out_threshold (hysteresis)
    sustain: int = 3  # consecutive samples the condition must hold
    cooldown_out: float = 60.0  # after a scale-out attempt, failed or not
    cooldown_in: float = 120.0  # after any attempt, before the next scale-in
    warmup: float = 30.0  # a new node's load is ignored this long; it counts toward size
    step: int = 1
    interval: float = 10.0
    query_timeout: float = 2.0
    command_timeout: float = 120.0
    name_template: str = "web{index}"  # Serf node name of the node with index N
    scale_out_command: str = ""  # e.g. "lab/boot_web.sh {index}"
    drain_command: str = ""
    scale_in_command: str = ""  # e.g. "lab/stop_web.sh {index}"
    dry_run: bool = False

    def __post_init__(self) -> None:
        checks = (
            (0 <= self.min_size <= self.max_size, f"min_size {self.min_size} must be 0..max_size"),
            (self.max_size >= 1, f"max_size {self.max_size} must be at least 1"),
            (0 <= self.scale_in_threshold < self.scale_out_threshold,
             f"scale_in_threshold {self.scale_in_threshold:g} must be >= 0 and below "
             f"scale_out_threshold {self.scale_out_threshold:g} (hysteresis)"),
            (1 <= self.sustain <= 100, f"sustain {self.sustain} must be 1..100 samples"),
            (1 <= self.step <= self.max_size, f"step {self.step} must be 1..max_size"),
            (min(self.cooldown_out, self.cooldown_in, self.warmup) >= 0, "cooldowns and warmup must be >= 0"),
            (min(self.interval, self.query_timeout, self.command_timeout) > 0,
             "interval, query_timeout and command_timeout must be > 0"),
            (self.name_template.count("{index}") == 1
             and _is_nginx_name(self.name_template.replace("{index}", "1").replace(".", "")),
             f"name_template {self.name_template!r} needs one {{index}} and only [A-Za-z0-9._-]"),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"autoscale.{message}")
        import shlex

        for key in ("scale_out_command", "drain_command", "scale_in_command"):
            try:
                shlex.split(getattr(self, key))
            except ValueError as exc:
                raise ConfigError(f"autoscale.{key}: {exc}") from None


@dataclass(frozen=True)
class Settings:
    """The LB core: where members come from, what may be rendered, where it goes."""

    rpc_addr: str = "127.0.0.1:7373"
    rpc_auth: str = ""
    rpc_timeout: float = 5.0
    role: str = "web"
    allowed_networks: tuple[str, ...] = ()  # empty: any address; else CIDRs
    lb_listen: tuple[str, ...] = ()  # host:port the LB itself listens on; never a backend
    upstream_name: str = "lbs_backend"
    algorithm: str = "round_robin"
    hash_key: str = "$request_uri"
    keepalive: int = 0
    template: str = str(PACKAGE_TEMPLATES / "lbs_upstream.conf.j2")
    output: str = "/etc/nginx/conf.d/lbs_upstream.conf"
    nginx_bin: str = "nginx"
    nginx_conf: str = "/etc/nginx/nginx.conf"
    nginx_prefix: str = ""
    reload_command: str = "systemctl reload nginx"
    lock_file: str = "/run/lbsync.lock"
    lock_timeout: float = 30.0
    state_dir: str = "/var/lib/lbsync"
    log_level: str = "info"
    syslog: bool = True
    agent: AgentSettings = field(default_factory=AgentSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    autoscale: AutoscaleSettings = field(default_factory=AutoscaleSettings)

    def __post_init__(self) -> None:
        _validate(self)


SECTIONS = {"agent": AgentSettings, "daemon": DaemonSettings, "autoscale": AutoscaleSettings}


def load(
    path: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings from the layers. `overrides` uses dotted keys for tables ("agent.port")."""
    env = os.environ if env is None else env
    explicit = path or env.get("LBSYNC_CONFIG")
    config_path = Path(explicit) if explicit else DEFAULT_CONFIG
    layers = _read_toml(config_path, required=bool(explicit))
    _merge(layers, _from_env(env))
    _merge(layers, _nest(overrides or {}))
    return _build(layers, str(config_path))


def _read_toml(path: Path, required: bool) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist") from None
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def _from_env(env: Mapping[str, str]) -> dict:
    """LBSYNC_* variables as a nested dict of strings (converted later with the other layers)."""
    out: dict = {}
    for name, value in env.items():
        if not name.startswith("LBSYNC_") or name == "LBSYNC_CONFIG":
            continue
        key = name[len("LBSYNC_"):].lower()
        table = next((t for t in SECTIONS if key.startswith(t + "_")), None)
        if table and key[len(table) + 1:] in _field_types(SECTIONS[table]):
            out.setdefault(table, {})[key[len(table) + 1:]] = value
        else:
            out[key] = value
    return out


def _nest(overrides: Mapping[str, Any]) -> dict:
    out: dict = {}
    for key, value in overrides.items():
        if value is None:
            continue
        table, _, sub = key.rpartition(".")
        (out.setdefault(table, {}) if table else out)[sub] = value
    return out


def _merge(base: dict, top: dict) -> None:
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _build(values: dict, source: str) -> Settings:
    tables = {}
    for table, cls in SECTIONS.items():
        raw = values.pop(table, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: [{table}] must be a table")
        tables[table] = cls(**_convert(cls, raw, f"{source}: {table}."))
    try:
        return Settings(**_convert(Settings, values, f"{source}: "), **tables)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in SECTIONS}


def _convert(cls: type, raw: dict, where: str) -> dict:
    types_ = _field_types(cls)
    unknown = sorted(set(raw) - set(types_))
    if unknown:
        raise ConfigError(f"{where}unknown key {unknown[0]!r} (known: {', '.join(sorted(types_))})")
    return {key: _coerce(value, types_[key], f"{where}{key}") for key, value in raw.items()}


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Turn a TOML value or an environment string into the field's type, or say why not."""
    if typing.get_origin(kind) is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(str(item).strip() for item in items if str(item).strip())
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind in (int, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            return kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(kind, types.UnionType) or kind is not str:
        raise ConfigError(f"{where}: unsupported type {kind}")
    return str(value)


def _validate(settings: Settings) -> None:
    if settings.algorithm not in ALGORITHMS:
        raise ConfigError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {settings.algorithm!r}")
    if not _is_nginx_name(settings.role):
        raise ConfigError(f"role {settings.role!r}: use letters, digits, _ and -")
    if not _is_nginx_name(settings.upstream_name):
        raise ConfigError(f"upstream_name {settings.upstream_name!r}: use letters, digits, _ and -")
    if not 0 <= settings.keepalive <= 10000:
        raise ConfigError(f"keepalive must be 0..10000, not {settings.keepalive}")
    if any(ch in settings.hash_key for ch in ";{}\n'\"\\"):
        raise ConfigError(f"hash_key {settings.hash_key!r} contains characters nginx would misread")
    for cidr in settings.allowed_networks:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"allowed_networks: {cidr!r} is not a network (CIDR)") from None
    for listen in settings.lb_listen:
        try:
            split_hostport(listen)
        except ValueError as exc:
            raise ConfigError(f"lb_listen: {exc}") from None


def _is_nginx_name(text: str) -> bool:
    return bool(text) and all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in text)


def split_hostport(text: str) -> tuple[str, int]:
    """'127.0.0.1:7373' or '[::1]:80' -> (host, port); raises ValueError with the reason."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)
