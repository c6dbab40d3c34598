"""Loopback networking for tests, lab and bench: free ports, "does it listen", one GET, waits.

Only 127.0.0.0/8 is ever used. Waits poll with a deadline; nothing sleeps for correctness.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable

_handed_out: set[int] = set()  # every port free_port picked in this process


def free_port(host: str = "127.0.0.1", preferred: int = 0) -> int:
    """A port free on `host` for TCP and UDP alike (Serf gossips over both): `preferred` when
    nothing holds it, else one the kernel picks and this process has not handed out before (a
    port is bound only later, by its user, and the kernel may pick it again meanwhile).
    SO_REUSEADDR as serf and nginx bind, so a port in TIME_WAIT counts as free, as it is for them."""
    for attempt in range(1000):
        with socket.socket() as tcp:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((host, preferred if attempt == 0 else 0))
            except OSError:
                continue
            port = tcp.getsockname()[1]
            if port in _handed_out and port != preferred:
                continue
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind((host, port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port on {host}")


def connects(host: str, port: int, timeout: float = 0.2) -> bool:
    """Something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_get(host: str, port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of one GET on a fresh connection; (0, error) when it cannot connect."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except OSError as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02):
    """Poll `predicate` until it returns something truthy (and return that); fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class HungServer:
    """A TCP port that completes handshakes (the kernel's backlog) but never answers a request:
    the backend that hangs, which health checks must catch."""

    def __init__(self, ip: str):
        self.sock = socket.create_server((ip, 0), backlog=64)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()
