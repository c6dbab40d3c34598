"""A tiny HTTP client for nginx's control endpoint on a unix socket (the live data plane).

HTTP/1.0, one request per connection, JSON both ways. Written on `socket` directly because the
hook path must stay cheap: http.client pulls in the email parser, and nothing here needs more
than a status line, a Content-Length and a body.
"""

from __future__ import annotations

import json
import re
import socket
from typing import Any

from .errors import PushError

MAX_REPLY = 16 * 2**20  # a GET of a 10,000-backend pool is well below this
STATUS_LINE = re.compile(rb"HTTP/\d\.\d (\d{3})(?:[ \r]|$)")


def status_code(reply: bytes) -> int | None:
    """The status code of an HTTP reply that starts with `reply`, None if it does not start with
    a status line (also what the health probes read: nothing but this line)."""
    match = STATUS_LINE.match(reply)
    return int(match.group(1)) if match else None


def call(socket_path: str, method: str, path: str, body: bytes = b"", timeout: float = 2.0) -> tuple[int, Any]:
    """(status, decoded JSON reply). Unreachable, silent or garbled -> PushError."""
    head = (f"{method} {path} HTTP/1.0\r\nHost: lbsync-control\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(head + body)
            reply = _read_all(sock)
    except OSError as exc:
        raise PushError(f"nginx control socket {socket_path}: {exc.strerror or exc}") from None
    return _parse(socket_path, reply)


def _read_all(sock: socket.socket) -> bytes:
    chunks, size = [], 0
    while chunk := sock.recv(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_REPLY:
            raise OSError("reply too large")
    return b"".join(chunks)


def _parse(socket_path: str, reply: bytes) -> tuple[int, Any]:
    head, sep, body = reply.partition(b"\r\n\r\n")
    status = status_code(head)
    if not sep or status is None:
        raise PushError(f"nginx control socket {socket_path}: not an HTTP reply: {reply[:80]!r}")
    try:
        return status, json.loads(body) if body.strip() else None
    except ValueError:
        raise PushError(f"nginx control socket {socket_path}: reply is not JSON: {body[:80]!r}") from None
