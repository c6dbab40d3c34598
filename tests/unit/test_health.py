"""Health checks: the rise/fall rules as a pure function, a round with a fake probe, and the HTTP
probe against in-process loopback sockets (one answers, one hangs, one refuses)."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lbsync.config import DaemonSettings
from lbsync.health import BackendHealth, Checker, Target, observe, probe


def run(results: str, rise: int = 2, fall: int = 2, state: BackendHealth | None = None) -> BackendHealth:
    state = state or BackendHealth()
    for ch in results:
        state = observe(state, ch == "+", "" if ch == "+" else "timeout", rise, fall)
    return state


def test_fall_consecutive_failures_mark_down_and_rise_successes_bring_back():
    assert run("-").healthy
    assert not run("--").healthy
    assert run("-+-+-+").healthy  # failures must be consecutive
    assert not run("--+").healthy
    assert run("--++").healthy
    assert not run("--+-+").healthy  # successes must be consecutive too
    assert run("---", fall=3, rise=1).healthy is False
    assert run("---+", fall=3, rise=1).healthy


def test_a_round_probes_targets_and_forgets_members_that_left():
    answers = {"web1": "", "web2": "no answer within 0.5 s"}
    checker = Checker(DaemonSettings(health_path="/"), lambda t, path, timeout: answers[t.name])
    web1, web2 = Target("web1", "127.0.0.11", 80), Target("web2", "127.0.0.12", 80)
    checker.set_targets((web1, web2))
    with ThreadPoolExecutor(2) as pool:
        checker.run_round(pool)
        assert checker.unhealthy() == frozenset()
        checker.run_round(pool)
    assert checker.unhealthy() == {web2}
    assert checker.snapshot()["web2"] == {"healthy": False, "oks": 0, "fails": 2,
                                          "error": "no answer within 0.5 s"}
    checker.set_targets((web1,))
    assert checker.unhealthy() == frozenset() and list(checker.snapshot()) == ["web1"]


@pytest.fixture
def web():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/ok" else 500)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield Target("web", "127.0.0.1", server.server_address[1])
    server.shutdown()
    server.server_close()


def test_probe_answers(web):
    assert probe(web, "/ok", 2.0) == ""
    assert probe(web, "/broken", 2.0) == "HTTP 500"


def test_probe_of_a_hung_backend_times_out():
    with socket.create_server(("127.0.0.1", 0), backlog=8) as hung:  # accepts, never answers
        target = Target("hung", "127.0.0.1", hung.getsockname()[1])
        assert probe(target, "/", 0.2) == "no answer within 0.2 s"


def test_probe_of_a_closed_port_fails():
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    assert "ConnectionRefused" in probe(Target("gone", "127.0.0.1", port), "/", 1.0)


def one_reply_server(*parts: bytes, pause: float = 0.05):
    """A loopback server that answers one connection with `parts` (pausing between them), then closes."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = server.accept()
        with conn, contextlib.suppress(OSError):  # the probe may give up and close first
            conn.recv(4096)
            for part in parts:
                conn.sendall(part)
                time.sleep(pause)
    threading.Thread(target=serve, daemon=True).start()
    return server, Target("web", "127.0.0.1", server.getsockname()[1])


@pytest.mark.parametrize("parts, verdict", [
    ((b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n",), ""),
    ((b"HTT", b"P/1.0 200 OK\r\n\r\nbody"), ""),  # the status line split across segments
    ((b"HTTP/1.1 503 Service Unavailable\r\n\r\n",), "HTTP 503"),
    ((b"SSH-2.0-OpenSSH_9.2\r\n",), "not an HTTP reply: b'SSH-2.0-OpenSSH_9.2\\r\\n'"),
    ((), "closed without a reply"),
])
def test_probe_reads_only_the_status_line(parts, verdict):
    server, target = one_reply_server(*parts)
    with server:
        assert probe(target, "/health", 2.0) == verdict


def test_probe_deadline_covers_the_whole_exchange():
    """A backend that trickles its status line byte by byte still fails within the timeout."""
    server, target = one_reply_server(*(bytes([b]) for b in b"HTTP/1.1 200 OK\r\n"), pause=0.1)
    with server:
        started = time.monotonic()
        assert probe(target, "/", 0.3) == "no answer within 0.3 s"
        assert time.monotonic() - started < 1.0
