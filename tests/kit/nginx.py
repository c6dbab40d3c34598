"""The one nginx layout (tests, lab and bench alike) and a real nginx running it under a prefix.

Layout under the prefix: `nginx.conf` includes `main.d/*.conf` at main level and `conf.d/*.conf`
at http level, with the shipped main-context snippet, site and 503 page, and an upstream file
(`conf.d/lbs_upstream.conf`, a `down` placeholder until lbsync renders one); an LB with [[pool]]
tables (the lab's) has neither site nor upstream file: its pools bring their own. Why these two
include directories: they are where a host's nginx takes drop-ins, so a data-plane driver that
loads modules (main.d) or adds Lua and server blocks (conf.d) works the same here and on a host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kit.net import connects, free_port, http_get, wait_until
from kit.paths import TEMPLATES
from kit.procs import Proc, Processes, died, require

READ_TIMEOUT = 2  # s: the lab's and bench's backends answer at once; a hung one is retried soon
LUA_MODULE = Path("/usr/lib/nginx/modules/ngx_http_lua_module.so")  # Debian's libnginx-mod-http-lua
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")  # Debian's libnginx-mod-stream

NGINX_CONF = """\
# The lab's nginx: everything under {prefix}, nothing in /etc/nginx.
{user}pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
worker_processes 2;
include {prefix}/main.d/*.conf;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp; uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
    include {prefix}/conf.d/*.conf;
}}
"""


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> None:
    """Write only when different: an unchanged file keeps its mtime, so watchers stay quiet."""
    try:
        same = path.read_text() == text
    except OSError:
        same = False
    if not same:
        path.write_text(text)
    path.chmod(mode)


def write_prefix(prefix: Path, listen: str = "", upstream_name: str = "lbs_backend", *, site: bool = True) -> Path:
    """nginx's whole config under `prefix` (the layout above); returns the upstream file.

    `site=False` (an LB with [[pool]] tables, whose pools bring their own server blocks): no
    legacy site on `listen` and no upstream file, a stale one of either is removed, and the path
    returned is where the HTTP pools go (conf.d/lbs_pools.conf; TCP pools: `Nginx.stream`'s path).
    """
    from lbsync.render import render

    if site and not listen:
        raise ValueError("write_prefix: the site needs a listen address")
    for sub in ("conf.d", "main.d", "tmp", "html"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    (prefix / "run").mkdir(mode=0o700, exist_ok=True)  # the live data plane's control socket
    if LUA_MODULE.exists():  # as on a Debian host with the module installed: loaded, used or not
        write_if_changed(prefix / "main.d" / "lbs_main_lua.conf", (TEMPLATES / "lbs_main_lua.conf").read_text())
    if STREAM_MODULE.exists():  # as Debian's modules-enabled/50-mod-stream.conf, before TCP pools' file
        write_if_changed(prefix / "main.d" / "50-mod-stream.conf", f"load_module {STREAM_MODULE};\n")
    user = "user root;\n" if os.geteuid() == 0 else ""  # root's workers would run as nobody
    write_if_changed(prefix / "nginx.conf", NGINX_CONF.format(prefix=prefix, user=user))
    write_if_changed(prefix / "main.d" / "lbs_main.conf", (TEMPLATES / "lbs_main.conf").read_text())
    write_if_changed(prefix / "html" / "lbs_503.html", (TEMPLATES / "lbs_503.html").read_text())
    if not site:
        for stale in ("lbs_site.conf", "lbs_upstream.conf"):
            (prefix / "conf.d" / stale).unlink(missing_ok=True)
        return prefix / "conf.d" / "lbs_pools.conf"
    text = render(TEMPLATES / "lbs_site.conf.j2", {"listen": [listen], "upstream_name": upstream_name,
                                                   "read_timeout": READ_TIMEOUT,
                                                   "error_root": str(prefix / "html")})
    write_if_changed(prefix / "conf.d" / "lbs_site.conf", text)
    upstream = prefix / "conf.d" / "lbs_upstream.conf"
    if not upstream.exists():
        upstream.write_text(f"upstream {upstream_name} {{ server 127.0.0.1:1 down; }}\n")
    return upstream


@dataclass
class Nginx:
    """A real nginx under its own prefix on 127.0.0.1:`port`, fronting the shipped site."""

    prefix: Path
    port: int
    proc: Proc | None = None

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def upstream(self) -> Path:
        return self.prefix / "conf.d" / "lbs_upstream.conf"

    @property
    def reload_command(self) -> str:
        return f"{require('nginx')} -p {self.prefix} -c {self.conf} -e stderr -s reload"

    def start(self, procs: Processes) -> Nginx:
        """Write the layout and run nginx in the foreground (so `procs` stops it by PID)."""
        write_prefix(self.prefix, f"127.0.0.1:{self.port}")
        self.proc = procs.start("nginx", [require("nginx"), "-p", str(self.prefix), "-c", str(self.conf),
                                          "-e", "stderr", "-g", "daemon off;"])
        wait_until(lambda: connects("127.0.0.1", self.port) or died(self.proc), 10, "nginx to listen")
        return self

    def get(self, path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
        return http_get("127.0.0.1", self.port, path, timeout)

    def test_config(self) -> bool:
        """`nginx -t` on the whole configuration as it is now."""
        import subprocess

        return subprocess.run([require("nginx"), "-t", "-q", "-e", "stderr", "-p", str(self.prefix),
                               "-c", str(self.conf)], capture_output=True, timeout=30).returncode == 0

    def reloads(self) -> int:
        """Reloads the master received (it logs "reconfiguring" twice per reload; SIGHUP once)."""
        return (self.prefix / "error.log").read_text(errors="replace").count("signal 1 (SIGHUP) received")

    @property
    def stream(self) -> Path:
        """Where TCP pools' main-context file goes: main.d/, sorted after every load_module."""
        return self.prefix / "main.d" / "lbs_stream.conf"

    @property
    def control_socket(self) -> Path:
        return self.prefix / "run" / "control.sock"

    def settings_env(self, workdir: Path, rpc_addr: str) -> dict[str, str]:
        """LBSYNC_* environment that points lbsync at this nginx, a Serf agent and `workdir`."""
        return {
            "LBSYNC_CONTROL_SOCKET": str(self.control_socket),
            "LBSYNC_RPC_ADDR": rpc_addr,
            "LBSYNC_OUTPUT": str(self.upstream),
            "LBSYNC_STREAM_OUTPUT": str(self.stream),
            "LBSYNC_NGINX_CONF": str(self.conf),
            "LBSYNC_NGINX_PREFIX": str(self.prefix),
            "LBSYNC_RELOAD_COMMAND": self.reload_command,
            "LBSYNC_NGINX_PID": str(self.prefix / "nginx.pid"),
            "LBSYNC_LOCK_FILE": str(workdir / "lbsync.lock"),
            "LBSYNC_STATE_DIR": str(workdir / "state"),
            "LBSYNC_SYSLOG": "false",
            "LBSYNC_LB_LISTEN": f"127.0.0.1:{self.port}",
            "LBSYNC_CONFIG": str(workdir / "lbsync.toml"),
        }


def start_nginx(procs: Processes, prefix: Path, port: int = 0) -> Nginx:
    """A real nginx under `prefix` on `port` (a free one by default)."""
    return Nginx(prefix, port or free_port()).start(procs)
