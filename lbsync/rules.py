"""One home for every rule a value must pass, wherever it comes from (config, tags, flags, answers).

Each check raises ValueError with a reason that names no source: the caller adds where the value
came from (a config key, a member's tag, a command-line flag), so the same rule reads the same
everywhere and is written once.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from typing import Any

DEFAULT_RPC_ADDR = "127.0.0.1:7373"  # Serf's own default; its RPC never listens on the network
SERF_PORT = 7946  # Serf's default gossip port

NODE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # Serf node names we accept
IDENTIFIER_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # roles, query names, nginx upstream names
DECIMAL_RE = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")  # a plain decimal: no sign, exponent, _ or nan
INT_RE = re.compile(r"[0-9]{1,6}")

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")

# Bounds of the numbers a member may publish as tags, and the agent may set for itself.
PORT = (1, 65535)
WEIGHT = (1, 256)
MAX_FAILS = (0, 1000)
FAIL_TIMEOUT = (1, 3600)
MAX_CONNS = (0, 100000)


def node_name(text: Any) -> str:
    if not isinstance(text, str) or not NODE_NAME_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not a name of [A-Za-z0-9._-], 1-128 characters, "
                         "starting with a letter or digit")
    return text


def identifier(text: Any) -> str:
    if not isinstance(text, str) or not IDENTIFIER_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not 1-64 letters, digits, '_' or '-'")
    return text


def boolean(value: Any) -> bool:
    """true/false, 1/0, yes/no, on/off (any case); an empty string is false."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError(f"{value!r} is not true or false")


def bounded_int(value: Any, low: int, high: int) -> int:
    """A plain decimal integer in low..high, from text (a tag, an env var) or an int (TOML)."""
    text = "" if isinstance(value, (bool, float)) else str(value)
    if not INT_RE.fullmatch(text) or not low <= int(text) <= high:
        raise ValueError(f"{value!r} is not an integer in {low}..{high}")
    return int(text)


def bounded_float(value: Any, low: float, high: float, low_open: bool = False) -> float:
    """A finite number in low..high (or (low, high] with `low_open`): never nan, inf or a bool."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number") from None
    in_range = (low < number if low_open else low <= number) and number <= high
    if not math.isfinite(number) or not in_range:
        bracket = "(" if low_open else "["
        raise ValueError(f"{value!r} is not a finite number in {bracket}{low:g}, {high:g}]")
    return number


# -- parsers for settings: each turns a raw value (TOML or environment text) into a field's value --

Parse = Callable[[Any], Any]


def integer(low: int, high: int) -> Parse:
    return lambda value: bounded_int(value, low, high)


def number(low: float, high: float, low_open: bool = False) -> Parse:
    return lambda value: bounded_float(value, low, high, low_open)


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    if any(not ch.isprintable() for ch in value):
        raise ValueError(f"{printable(value)} contains control characters")
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


MAX_SERVICES = 16  # services a web node may offer: their tags must fit Serf's SERF_TAGS_MAX bytes
SERF_TAGS_MAX = 512  # memberlist's MetaMaxSize: Serf refuses tags whose encoding is longer


def service(value: Any) -> str:
    """ROLE:PORT or ROLE:PORT:WEIGHT, one service a web node offers (`lbsync agent --service`)."""
    service_parts(value)
    return value


def service_parts(value: Any) -> tuple[str, int, int | None]:
    """'api:9000:2' -> ('api', 9000, 2); 'web:8000' -> ('web', 8000, None): no weight given."""
    parts = text(value).split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"{value!r} is not ROLE:PORT or ROLE:PORT:WEIGHT")
    checks = (("role", identifier), ("port", integer(*PORT)), ("weight", integer(*WEIGHT)))
    found = []
    for part, (name, check) in zip(parts, checks):
        try:
            found.append(check(part))
        except ValueError as exc:
            raise ValueError(f"{value!r}: {name} {exc}") from None
    return found[0], found[1], found[2] if len(found) == 3 else None


def services(value: Any) -> tuple[str, ...]:
    """A list of service()s, each role once, at most MAX_SERVICES."""
    specs = listed(service)(value)
    roles = [service_parts(spec)[0] for spec in specs]
    twice = next((role for role in roles if roles.count(role) > 1), None)
    if twice is not None:
        raise ValueError(f"role {twice!r} is given twice; a node offers one port per role")
    if len(specs) > MAX_SERVICES:
        raise ValueError(f"{len(specs)} services; at most {MAX_SERVICES} fit in Serf's "
                         f"{SERF_TAGS_MAX} bytes of tags")
    return specs


def tags_size(tags: dict[str, str]) -> int:
    """The bytes of `tags` as Serf encodes them (to compare with SERF_TAGS_MAX): a magic byte,
    then msgpack as Serf's go-msgpack writes it, strings as raw (no str8)."""
    size = 1 + (1 if len(tags) < 16 else 3 if len(tags) < 65536 else 5)
    for item in (item for pair in tags.items() for item in pair):
        length = len(item.encode())
        size += length + (1 if length < 32 else 3 if length < 65536 else 5)
    return size


def address(value: Any) -> str:
    """host:port (':7373' means the local host, as Serf's CLI takes it)."""
    text(value)
    split_hostport("127.0.0.1" + value if value.startswith(":") else value)
    return value


def host_with_port(value: Any) -> str:
    """HOST or HOST:PORT (Serf's default port when none is given)."""
    hostport(text(value), SERF_PORT)
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


def listen_address(value: Any) -> str:
    """IP:PORT nginx listens on ('*:80' and '[::]:80' included): a literal address, never a
    name, since the text reaches nginx's config as is."""
    host, port = split_hostport(text(value))
    if host != "*":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{value!r} is not IP:PORT (an address literal, or *:PORT)") from None
    if ":" in host and not value.startswith("["):
        raise ValueError(f"{value!r}: an IPv6 address needs brackets, e.g. [::1]:{port}")
    return value


SERVER_NAME_RE = re.compile(r"(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?|_")


def server_name(value: Any) -> str:
    """A host name nginx matches as is: letters, digits, '-', '_' and dots, with an optional
    leading '*.' or trailing '.*' wildcard (no regexes: they would be nginx syntax)."""
    if not SERVER_NAME_RE.fullmatch(text(value)) or len(value) > 253:
        raise ValueError(f"{value!r} is not a host name (letters, digits, '.-_', optional *. or .*)")
    return value


LOCATION_RE = re.compile(r"/[A-Za-z0-9/._~-]{0,200}")


def location_path(value: Any) -> str:
    """A URL path prefix nginx takes unquoted as a location: '/', '/api/' (no spaces, quotes,
    ;{}$ or regex characters)."""
    if not LOCATION_RE.fullmatch(text(value)):
        raise ValueError(f"{value!r} is not a path of /, letters, digits and ._~- starting with /")
    return value


def health_check(value: Any) -> str:
    """A pool's active check: '' (the daemon's health_path), 'off', 'connect' (TCP connect) or
    the URL path to GET."""
    if text(value) in ("", "off", "connect"):
        return value
    try:
        return location_path(value)
    except ValueError:
        raise ValueError(f"{value!r} is not off, connect or a URL path to GET") from None


def optional(parse: Parse) -> Parse:
    return lambda value: "" if value == "" else parse(value)


def url_path(value: Any) -> str:
    if text(value) and not value.startswith("/"):
        raise ValueError(f"{value!r} must start with /")
    return value


def gossip_key(value: Any) -> str:
    """Serf wants base64 of 16, 24 or 32 bytes; say so here rather than in Serf's log."""
    import base64
    import binascii

    try:
        size = len(base64.b64decode(text(value), validate=True))
    except (binascii.Error, ValueError):
        size = -1
    if size not in (16, 24, 32):
        raise ValueError("is not base64 of 16, 24 or 32 bytes (see `serf keygen`)")
    return value


def http_url(value: Any) -> str:
    """An http(s) URL with a host, e.g. an API endpoint ('' is left to optional())."""
    from urllib.parse import urlsplit

    parts = urlsplit(text(value))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL with a host")
    return value


def nginx_path(value: Any) -> str:
    """An absolute path nginx reads unquoted: no whitespace, quotes, backslashes, ;{}$ or #."""
    if not text(value).startswith("/") or any(ch.isspace() or ch in "'\"\\;{}$#" for ch in value):
        raise ValueError(f"{value!r} is not an absolute path without spaces, quotes or ;{{}}$#\\")
    return value


def command(value: Any) -> str:
    """Split like a shell would (no shell runs): unbalanced quotes are refused now, not later."""
    import shlex

    shlex.split(text(value))
    return value


def name_template(value: Any) -> str:
    if text(value).count("{index}") != 1 or not NODE_NAME_RE.fullmatch(value.replace("{index}", "1")):
        raise ValueError(f"{value!r} needs exactly one {{index}} and otherwise only [A-Za-z0-9._-]")
    return value


def split_hostport(text: str) -> tuple[str, int]:
    """'127.0.0.1:7373' or '[::1]:80' -> (host, port); raises ValueError with the reason."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


def hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """host:port, or a bare host when `default_port` is given ('10.0.0.1', '[::1]', 'lb.example')."""
    bare = not re.search(r":[0-9]*$", text.rsplit("]", 1)[-1])
    if default_port is not None and bare:
        return split_hostport(f"{text}:{default_port}")
    return split_hostport(text)


def printable(text: Any, limit: int = 300) -> str:
    """`text` safe for one log line or a terminal: control characters escaped, length bounded.

    Names and tags come from the network; a newline in a node name must not forge a log line and
    an escape sequence must not repaint an operator's terminal.
    """
    text = str(text)
    out = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return out if len(out) <= limit else out[:limit] + "..."
