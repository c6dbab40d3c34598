"""The status page and `/metrics` that `lbsync run` serves on `daemon.status_listen`.

Read-only, like HAProxy's stats page: pools, backends with their state and health, drift,
recent events and a plot of the last hour, rendered from the same model as `lbsync status`
(`status.model`), plus `/metrics` (Prometheus text, or OpenMetrics when the scraper asks) and
`/status.json` (the `--json` schema).

A stdlib threading HTTP server in its own threads: a request reads only what the daemon's loop
has published (references it replaces whole; the Serf client stays the loop's alone) and nginx's
control socket (bounded by its timeout), so a slow or hostile client never holds up the loop, and
an error in a request is a 500 for that request only. It binds exactly `status_listen`, which the
config refuses to be non-loopback unless `daemon.status_remote` is set; on loopback it also
refuses Host headers that are not an address or localhost (DNS rebinding). Every string from the
network is escaped by Jinja2's autoescape; no script runs on the page (CSP `default-src 'none'`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import exposition, state, status
from .config import PACKAGE_TEMPLATES, Settings
from .rules import split_hostport

log = logging.getLogger("lbsync")

Inputs = Callable[[], tuple[Settings, list[dict], dict]]  # settings, Serf records, daemon.json's content
HOUR = 3600.0
REFRESH = 5  # seconds between the page's own reloads (no script: a meta refresh)
PLOT_W, PLOT_H, PAD_L, PAD_B, PAD_T = 640, 170, 34, 22, 10
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_env_lock = threading.Lock()
_env: Any = None


class StatusServer:
    """The page's HTTP server and its thread."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread):
        self.httpd, self.thread = httpd, thread

    @classmethod
    def start_on(cls, listen: str, inputs: Inputs) -> StatusServer | None:
        """Serve on `listen` (host:port); None, logged, when it cannot bind."""
        host, port = split_hostport(listen)
        try:
            httpd = _Server((host, port), _Handler, inputs)
        except OSError as exc:
            log.error("status page: cannot listen on %s: %s; running without it", listen, exc.strerror or exc)
            return None
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                  name="lbsync-status", daemon=True)
        thread.start()
        server = cls(httpd, thread)
        log.info("status page on %s (and /metrics, /status.json)", server.url)
        return server

    @property
    def url(self) -> str:
        host, port = str(self.httpd.server_address[0]), self.httpd.server_address[1]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never holds up the daemon's exit

    def __init__(self, address: tuple[str, int], handler, inputs: Inputs):
        self.inputs = inputs
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # seconds a client may take to send its request
    server_version = "lbsync-status"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
        try:
            settings, records, daemon = self.server.inputs()
            if not self._host_allowed(settings):
                return self._send(421, "text/plain", b"unexpected Host header\n")
            path = self.path.split("?", 1)[0]
            if path == "/":
                refresh = 0 if "refresh=0" in self.path else REFRESH
                return self._send(200, "text/html; charset=utf-8",
                                  page(settings, records, daemon, refresh=refresh).encode())
            if path == "/metrics":
                return self._metrics(settings, daemon)
            if path == "/status.json":
                data = status.model(settings, records, daemon=daemon)
                return self._send(200, "application/json", json.dumps(data, indent=1, sort_keys=True).encode())
            return self._send(404, "text/plain", b"not found: try / or /metrics\n")
        except Exception as exc:  # noqa: BLE001 -- one request fails, never the daemon
            log.warning("status page: %s %s failed: %s: %s", self.command, self.path[:100], type(exc).__name__, exc)
            return self._send(500, "text/plain", b"internal error; see the daemon's log\n")

    def _metrics(self, settings: Settings, daemon: dict) -> None:
        openmetrics = "application/openmetrics-text" in self.headers.get("Accept", "")
        body = exposition.text(settings, state.read(settings.state_dir, state.LAST_SYNC) or {}, daemon, openmetrics)
        kind = ("application/openmetrics-text; version=1.0.0; charset=utf-8" if openmetrics
                else "text/plain; version=0.0.4; charset=utf-8")
        self._send(200, kind, body)

    def _host_allowed(self, settings: Settings) -> bool:
        """On loopback, only Host: an IP address or localhost (a rebound DNS name is refused)."""
        if settings.daemon.status_remote:
            return True
        host = (self.headers.get("Host") or "").strip()
        if host.startswith("["):
            name = host[1:host.find("]")]
        else:
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        if name in ("", "localhost"):
            return True
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return False

    def _send(self, code: int, kind: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 -- http.server's signature
        log.debug("status page: %s %s", self.address_string(), format % args)


# -- the page -----------------------------------------------------------------------------------

def page(settings: Settings, records: list[dict], daemon: dict, now: float | None = None,
         refresh: int = REFRESH) -> str:
    """The HTML: the status model through templates/status.html.j2 (autoescaped); it reloads
    itself every `refresh` seconds (0: never; `/?refresh=0`)."""
    now = time.time() if now is None else now
    data = status.model(settings, records, now=now, daemon=daemon)
    return _environment().get_template("status.html.j2").render(
        data=data, now=now, ago=lambda t: status.ago(t, now), plot=plot(daemon or {}, now), refresh=refresh,
        drift_text=status.drift_text,
        events=list(reversed(data["events"][-40:])))


def _environment():
    global _env
    with _env_lock:
        if _env is None:
            from jinja2 import Environment, FileSystemLoader, StrictUndefined

            _env = Environment(loader=FileSystemLoader(str(PACKAGE_TEMPLATES)), autoescape=True,
                               undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        return _env


def plot(daemon: dict, now: float) -> dict:
    """The last hour as SVG coordinates: pool size and backends up as step lines, reloads and
    pushes as ticks. Only numbers leave here; the template draws them."""
    points = [p for p in daemon.get("points") or [] if isinstance(p, list) and len(p) == 3]
    applies = [a for a in daemon.get("applies") or [] if isinstance(a, list) and len(a) == 2]
    start = now - HOUR
    top = max([p[1] for p in points] + [1])
    width, height = PLOT_W - PAD_L - 6, PLOT_H - PAD_B - PAD_T
    x = lambda t: round(PAD_L + (max(t, start) - start) / HOUR * width, 1)
    y = lambda v: round(PAD_T + height - v / top * height, 1)

    def steps(index: int) -> str:
        coords: list[tuple[float, float]] = []
        for point in points:
            if coords:
                coords.append((x(point[0]), coords[-1][1]))
            coords.append((x(point[0]), y(point[index])))
        if coords:
            coords.append((x(now), coords[-1][1]))
        return " ".join(f"{a},{b}" for a, b in coords)

    return {
        "width": PLOT_W, "height": PLOT_H, "left": PAD_L, "right": PLOT_W - 6, "top": PAD_T,
        "bottom": PAD_T + height, "max": top, "size": steps(1), "up": steps(2),
        "ticks": [{"x": x(t), "kind": kind, "when": status.ago(t, now)} for t, kind in applies if t >= start],
        "grid": [{"y": y(v), "label": v} for v in sorted({0, top // 2, top})],
        "minutes": [{"x": x(now - m * 60), "label": f"-{m} min" if m else "now"} for m in (60, 45, 30, 15, 0)],
        "reloads": sum(1 for t, kind in applies if t >= start and kind == "reload"),
        "pushes": sum(1 for t, kind in applies if t >= start and kind == "push"),
    }
