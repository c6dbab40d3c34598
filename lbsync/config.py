"""Settings: what each part of lbsync can be told, with one rule per key.

One frozen dataclass per concern. Top-level keys configure the LB core; the `[agent]`, `[daemon]`
and `[autoscale]` tables configure the other roles. Every field names its rule (`spec`), and one
function applies the rules to raw values wherever they came from, so `[agent] weight = 999`, an
env var and a flag are refused alike. Cross-field rules (`RELATIONS`) run after the fields.
Reading the layers (file, environment, flags) and naming the source of a bad value is `layers.py`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import rules
from .errors import ConfigError
from .rules import (
    Parse,
    address,
    choice,
    command,
    gossip_key,
    hash_key,
    host_with_port,
    http_url,
    integer,
    listed,
    listen_address,
    name_template,
    network,
    nginx_path,
    number,
    optional,
    text,
    url_path,
)

PACKAGE_TEMPLATES = Path(__file__).resolve().parent / "templates"
PACKAGE_LUA = Path(__file__).resolve().parent / "lua"
NGINX_MODULES = "/usr/lib/nginx/modules"
DATA_PLANES = ("auto", "live", "reload")
ALGORITHMS = ("round_robin", "least_conn", "ip_hash", "hash")
PROTOCOLS = ("http", "tcp")
LOG_LEVELS = ("debug", "info", "warning", "error")
DAY = 86400.0


class SettingError(ConfigError):
    """A value broke its key's rule; `key` (dotted for tables) lets the loader name its source."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


def spec(default: Any, parse: Parse) -> Any:
    """A field with its rule; a tuple default stays immutable."""
    return field(default=default, metadata={"parse": parse})


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
    # ROLE:PORT[:WEIGHT] each: the first is published as role/port/weight, every one as port_ROLE
    # (and weight_ROLE when given) so the pool following each role routes here; see serfagent.tags
    services: tuple[str, ...] = spec((), rules.services)
    serf_bin: str = spec("serf", text)
    serf_config: str = spec("", text)  # an extra -config-file for the agent
    load_query: str = spec("load", rules.identifier)
    drain_timeout: float = spec(30.0, number(0, DAY))  # bounded wait for the LB to let go
    drain_quiet: float = spec(2.0, number(0, DAY))  # no request seen this long -> let go
    log_file: str = spec("", text)  # access log of the local web server to watch while draining
    load_file: str = spec("", text)  # when set and present: answer load queries with its number

    TABLE = "agent"
    RELATIONS = (("drain_quiet", "drain_timeout", lambda s: s.drain_quiet <= s.drain_timeout,
                  "must not exceed"),
                 *((key, "services", lambda s, key=key: s.agrees_with_services(key),
                    "disagrees with the first service; use --service only, with role, port and weight in")
                   for key in ("role", "port", "weight")))

    def agrees_with_services(self, key: str) -> bool:
        """Role, port or weight beside services: left at its default, or what the first service
        says (it is published as role/port/weight; a spec without a weight means 1)."""
        if not self.services:
            return True
        default = type(self).__dataclass_fields__[key].default
        first = dict(zip(("role", "port", "weight"), rules.service_parts(self.services[0])))[key]
        return getattr(self, key) in (default, first)


@dataclass(frozen=True)
class DaemonSettings(Checked):
    """`lbsync run`: how fast it follows Serf and how often it reloads nginx."""

    follow_log: bool = spec(True, rules.boolean)  # serf's log (RPC monitor) says when a member changed
    idle_interval: float = spec(1.0, number(0, 60, low_open=True))  # following the log: full list this often
    poll_interval: float = spec(0.03, number(0, 60, low_open=True))  # not following: Serf's stats counters
    members_interval: float = spec(0.25, number(0, 60, low_open=True))  # not following: the full list
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
    status_listen: str = spec("", optional(address))  # the status page and /metrics; empty: off
    status_remote: bool = spec(False, rules.boolean)  # let status_listen be a non-loopback address

    TABLE = "daemon"
    RELATIONS = (("debounce_min", "debounce_max", lambda s: s.debounce_min <= s.debounce_max,
                  "must not exceed"),
                 ("status_listen", "status_remote", lambda s: s.status_remote or loopback(s.status_listen),
                  "is not a loopback address; to serve the status page there anyway set"))


@dataclass(frozen=True)
class AutoscaleSettings(Checked):
    """`lbsync autoscale`: the scaling policy and where nodes come from (the provider).

    provider "command" runs the operator's commands, split like a shell would (no shell runs),
    with {index} and {name} replaced. The clouds ("ec2", "cloudstack", "openstack") launch
    instances whose cloud-init user data makes them join by themselves; their secrets come from
    the environment or the cloud's own files, never from here. Scale-in order, for every
    provider: drain (drain_command, or for a cloud the Serf query `drain_query`) -> wait until the
    node is no longer alive -> destroy (scale_in_command / the cloud's API) -> Serf force-leave
    -prune so the name is reusable. Without a drain_command the command provider's
    scale_in_command must drain and leave itself (lab/stop_web.sh does).
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
    command_timeout: float = spec(120.0, number(0, DAY, low_open=True))  # also bounds the wait after a drain
    name_template: str = spec("web{index}", name_template)  # Serf node name of the node with index N
    provider: str = spec("command", choice("command", "ec2", "cloudstack", "openstack"))
    scale_out_command: str = spec("", command)  # e.g. "lab/boot_web.sh {index}"
    drain_command: str = spec("", command)
    scale_in_command: str = spec("", command)  # e.g. "lab/stop_web.sh {index}"
    list_command: str = spec("", command)  # optional: prints the command provider's nodes, "NAME [ID]" a line
    dry_run: bool = spec(False, rules.boolean)
    # -- instances and how they join (every provider that lists) --
    cluster_id: str = spec("", optional(rules.identifier))  # tag lbsync-cluster: which instances are ours
    boot_timeout: float = spec(900.0, number(0, DAY, low_open=True))  # launched, not in Serf after this: reported
    destroy_unjoined: bool = spec(False, rules.boolean)  # ... and destroyed
    drain_query: str = spec("lbsync-drain", rules.identifier)  # what a cloud node's serf drains on
    join: tuple[str, ...] = spec((), listed(host_with_port))  # the LB's Serf address as new nodes reach it
    node_port: int = spec(80, integer(*rules.PORT))  # port tag of new nodes (their web server)
    install_source: str = spec("lbsync", text)  # pip requirement or wheel URL the user data installs
    user_data_template: str = spec("", text)  # default: the package's cloud-init.yaml.j2
    secrets_dir: str = spec("/etc/lbsync/secrets", text)  # serf.key and rpc.token, copied to new nodes
    # -- the cloud (secrets: EC2_*/AWS_* or ~/.aws, CLOUDSTACK_KEY/SECRET, clouds.yaml) --
    endpoint_url: str = spec("", optional(http_url))  # EC2-compatible/Eucalyptus or CloudStack API
    region: str = spec("", text)  # ec2 region (default AWS_DEFAULT_REGION or us-east-1); openstack region
    cloud: str = spec("", text)  # openstack: the clouds.yaml entry
    image: str = spec("", text)  # AMI/EMI id, CloudStack template id, OpenStack image id
    size: str = spec("", text)  # EC2 instance type, CloudStack service offering id, OpenStack flavor id
    zone: str = spec("", text)  # EC2 availability zone (optional), CloudStack zone id (required)
    network: str = spec("", text)  # EC2 subnet id, CloudStack network id, OpenStack network id
    key_name: str = spec("", text)  # SSH key pair name
    security_groups: tuple[str, ...] = spec((), listed(text))  # EC2: ids with a subnet, else names
    api_timeout: float = spec(30.0, number(0, 600, low_open=True))  # one API request
    api_retries: int = spec(4, integer(0, 20))  # further tries of a failed call, with backoff

    TABLE = "autoscale"
    RELATIONS = (
        ("min_size", "max_size", lambda s: s.min_size <= s.max_size, "must not exceed"),
        ("scale_in_threshold", "scale_out_threshold",
         lambda s: s.scale_in_threshold < s.scale_out_threshold, "must leave a band (hysteresis) below"),
        ("step", "max_size", lambda s: s.step <= s.max_size, "must not exceed"),
        *((key, "provider", lambda s, key=key: s.provider == "command" or bool(getattr(s, key)),
           "must be set for") for key in ("cluster_id", "join", "image", "size")),
        ("zone", "provider", lambda s: s.provider != "cloudstack" or bool(s.zone), "must be set for"),
        ("cloud", "provider", lambda s: s.provider != "openstack" or bool(s.cloud), "must be set for"),
    )


@dataclass(frozen=True)
class PoolSettings(Checked):
    """One `[[pool]]`: a listener (HTTP or TCP) in front of the members with its role.

    Octavia's listener + pool in one table. nginx's upstream is `lbs_<name>`. `hash_key` empty
    means $request_uri for HTTP and $remote_addr for TCP. `health_check` (run by `lbsync run`):
    "" is the daemon's `health_path` for an HTTP pool and none for a TCP one; "off"; "connect"
    (a TCP connect); or a path to GET.
    """

    name: str = spec("", rules.identifier)
    role: str = spec("", optional(rules.identifier))  # the Serf role tag it follows; default: name
    protocol: str = spec("http", choice(*PROTOCOLS))
    listen: tuple[str, ...] = spec((), listed(listen_address))
    algorithm: str = spec("round_robin", choice(*ALGORITHMS))
    hash_key: str = spec("", optional(hash_key))
    keepalive: int = spec(0, integer(0, 10000))  # HTTP only: idle upstream connections per worker
    server_name: tuple[str, ...] = spec((), listed(rules.server_name))  # HTTP only; empty: any name
    timeout: float = spec(60.0, number(0, DAY, low_open=True))  # HTTP: read timeout; TCP: idle timeout
    path: str = spec("/", rules.location_path)  # HTTP only: the prefix proxied; any other path is 404
    health_check: str = spec("", rules.health_check)  # lbsync run: "", off, connect or a path to GET

    TABLE = "pool"
    RELATIONS = (
        ("listen", "name", lambda s: bool(s.listen), "needs at least one IP:PORT for pool"),
        ("algorithm", "protocol", lambda s: s.protocol == "http" or s.algorithm != "ip_hash",
         "is HTTP only (for TCP use hash, whose key defaults to $remote_addr), not for protocol"),
        *((key, "protocol", lambda s, key=key: s.protocol == "http" or not getattr(s, key),
           "is HTTP only, not for protocol") for key in ("keepalive", "server_name")),
        ("path", "protocol", lambda s: s.protocol == "http" or s.path == "/", "is HTTP only, not for protocol"),
        ("health_check", "protocol",
         lambda s: s.protocol == "http" or s.health_check in ("", "off", "connect"),
         "is a GET, HTTP only (use connect), not for protocol"),
    )

    @property
    def upstream(self) -> str:
        return f"lbs_{self.name}"

    @property
    def follows(self) -> str:
        """The Serf role tag this pool's members carry."""
        return self.role or self.name

    @property
    def key(self) -> str:
        return self.hash_key or ("$request_uri" if self.protocol == "http" else "$remote_addr")


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
    data_plane: str = spec("auto", choice(*DATA_PLANES))  # auto: live when nginx's Lua module is installed
    template: str = spec(str(PACKAGE_TEMPLATES / "lbs_upstream.conf.j2"), text)  # the reload driver's
    live_template: str = spec(str(PACKAGE_TEMPLATES / "lbs_upstream_live.conf.j2"), text)
    lua_dir: str = spec(str(PACKAGE_LUA), nginx_path)
    lua_modules: tuple[str, ...] = spec((f"{NGINX_MODULES}/ndk_http_module.so",
                                         f"{NGINX_MODULES}/ngx_http_lua_module.so"), listed(nginx_path))
    control_socket: str = spec("/run/lbsync/nginx-control.sock", nginx_path)  # in a root-only directory
    pool_file: str = spec("", optional(nginx_path))  # default: state_dir/pool-<upstream_name>.json
    output: str = spec("/etc/nginx/conf.d/lbs_upstream.conf", text)
    nginx_bin: str = spec("nginx", text)
    nginx_conf: str = spec("/etc/nginx/nginx.conf", text)
    nginx_prefix: str = spec("", text)
    nginx_pid: str = spec("/run/nginx.pid", text)  # to wait until a reload has taken over
    reload_command: str = spec("systemctl reload nginx", command)
    lock_file: str = spec("/run/lbsync/lbsync.lock", text)  # its directory is made root-only
    lock_timeout: float = spec(30.0, number(0, 3600))
    collapse_grace: float = spec(120.0, number(0, DAY))  # hold a pool that vanished without a trace
    state_dir: str = spec("/var/lib/lbsync", text)
    log_level: str = spec("info", choice(*LOG_LEVELS))
    syslog: bool = spec(True, rules.boolean)
    vip: str = spec("", optional(network))  # ADDR/PREFIX of an LB pair's floating address; empty: no pair
    pair_grace: float = spec(10.0, number(0, 3600))  # nginx may hold another pool this long before `check` fails
    stream_output: str = spec("/etc/nginx/modules-enabled/99-lbsync-stream.conf", nginx_path)  # TCP pools
    stream_module: str = spec(f"{NGINX_MODULES}/ngx_stream_module.so", nginx_path)
    pools: tuple[PoolSettings, ...] = ()  # [[pool]] tables; none: the single pool of the keys above
    agent: AgentSettings = field(default_factory=AgentSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    autoscale: AutoscaleSettings = field(default_factory=AutoscaleSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_pools(self.pools)


def check_pools(pools: tuple[PoolSettings, ...]) -> None:
    """Across pools: unique names, and no two pools on one listener. A wildcard address takes its
    port on every address of its family, so `*:80` and `10.0.0.1:80` clash too (nginx -t would
    not say so; the reload would fail to bind). nginx binds `[::]` IPv6-only."""
    names: set[str] = set()
    taken: dict[tuple[str, int], str] = {}
    for index, pool in enumerate(pools):
        if pool.name in names:
            raise SettingError(f"pool[{index}].name", f"{pool.name!r} names two pools")
        names.add(pool.name)
        mine = {_listener(listen): listen for listen in pool.listen}
        for (host, port), listen in mine.items():
            owner = next((owner for (other, other_port), owner in taken.items()
                          if other_port == port and _overlap(host, other)), None)
            if owner is not None:
                raise SettingError(f"pool[{index}].listen", f"{listen} clashes with pool {owner!r}'s listener")
        taken.update(dict.fromkeys(mine, pool.name))


def _listener(listen: str) -> tuple[str, int]:
    """(address, port) with the IPv4 wildcards spelled one way."""
    host, port = rules.split_hostport(listen)
    return ("0.0.0.0" if host == "*" else host), port


def _overlap(first: str, second: str) -> bool:
    if first == second:
        return True
    v4 = [ipaddress.ip_address(host).version == 4 for host in (first, second)]
    return v4[0] == v4[1] and any(host in ("0.0.0.0", "::") for host in (first, second))


def loopback(listen: str) -> bool:
    """Whether host:port binds only this machine ('' is off, so it binds nothing)."""
    if not listen:
        return True
    host = rules.split_hostport(listen)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


SECTIONS: dict[str, type] = {"agent": AgentSettings, "daemon": DaemonSettings, "autoscale": AutoscaleSettings}
POOLS = "pool"  # [[pool]]: an array of tables, gathered from every config file in order


def fields_of(cls: type) -> dict[str, Parse]:
    """Key -> rule for the plain fields of a settings class (tables excluded)."""
    return {f.name: f.metadata["parse"] for f in dataclasses.fields(cls) if "parse" in f.metadata}


def build(cls: type, raw: dict, tables: dict | None = None) -> Any:
    """An instance of `cls` from raw values; the first bad one raises SettingError naming its key."""
    table = getattr(cls, "TABLE", "")
    prefix = f"{table}." if table else ""
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
