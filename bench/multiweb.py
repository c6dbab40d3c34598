#!/usr/bin/env python3
"""Many tiny web servers in one nginx: each NAME=IP:PORT answers every request with NAME.

The benchmarks need up to ~100 web nodes. One Python process per node would cost ~20 MB and a
start-up each on a 2-core machine, and one Python process for all of them (what this was) spent
0.5-1 ms of CPU per request: a 50-node "all routable" sweep then took tens of ms by itself and
competed with what it measured. So one nginx with a single worker answers for them all (~50 us
a request), with the body `NAME\n` and an `X-Node: NAME` header, as lab/webserver.py does.
Loopback addresses and plain names only: the benchmarks never send traffic anywhere else, and a
name goes into nginx's config.
Usage: multiweb.py PREFIX NAME=IP:PORT ... (writes PREFIX/nginx.conf and runs nginx in the foreground)
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from pathlib import Path

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

CONF = """\
# bench/multiweb.py: {count} tiny web servers, one per NAME=IP:PORT
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_processes 1;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 100000;
    client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp; uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
{servers}}}
"""
SERVER = """\
    server {{ listen {host}:{port}; location / {{ add_header X-Node {name}; return 200 "{name}\\n"; }} }}
"""


def parse_spec(text: str) -> tuple[str, str, int]:
    """'web1=127.0.2.1:8080' -> ('web1', '127.0.2.1', 8080); loopback IPv4 and plain names only."""
    name, _, addr = text.partition("=")
    host, _, port = addr.rpartition(":")
    try:
        loopback = ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        loopback = False
    if not NAME.match(name) or not loopback or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"multiweb: {text!r}: expected NAME=LOOPBACK_IP:PORT")
    return name, host, int(port)


def config(prefix: Path, specs: list[tuple[str, str, int]]) -> str:
    """nginx.conf for `specs` under `prefix` (pure: the checks read it)."""
    servers = "".join(SERVER.format(name=name, host=host, port=port) for name, host, port in specs)
    return CONF.format(count=len(specs), prefix=prefix, servers=servers)


def argv(nginx: str, prefix: Path, specs: list[tuple[str, str, int]]) -> list[str]:
    """Write the config under `prefix`; the command that serves it in the foreground."""
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    (prefix / "nginx.conf").write_text(config(prefix, specs))
    return [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr", "-g", "daemon off;"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", type=Path, help="directory for nginx.conf, its pid and logs")
    parser.add_argument("spec", nargs="+", help="NAME=IP:PORT")
    args = parser.parse_args()
    command = argv("nginx", args.prefix.resolve(), [parse_spec(spec) for spec in args.spec])
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
