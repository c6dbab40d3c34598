"""The daemon's status page server on loopback: what it serves, what it refuses, that it escapes
what came from the network, and that a failing request never takes the server down."""

from __future__ import annotations

import http.client
import os
import time

import pytest
from kit.net import free_port
from kit.records import decoded, record
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from lbsync import state, statuspage
from lbsync.config import DaemonSettings, Settings


@pytest.fixture
def settings(tmp_path) -> Settings:
    # a control socket that does not exist: nginx reads as unknown, as on a host where it is down
    return Settings(state_dir=str(tmp_path / "state"), data_plane="live", control_socket=str(tmp_path / "none.sock"),
                    daemon=DaemonSettings(status_listen="127.0.0.1:1"))


def daemon_view(now: float) -> dict:
    return {"pid": os.getpid(), "started": now - 600, "serf_connected": True, "reloads": 1, "pushes": 3,
            "points": [[now - 1800, 2, 2], [now - 600, 3, 2], [now - 60, 2, 2]],
            "applies": [[now - 1800, "reload"], [now - 600, "push"], [now - 60, "push"]],
            "events": [[now - 60, "health", "<b>web2</b>", "down: <script>alert(1)</script>"]],
            "health": {}, "unhealthy": []}


def get(port: int, path: str, **headers: str) -> tuple[int, dict, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read().decode()
    finally:
        conn.close()


def test_the_page_escapes_network_strings_and_draws_the_last_hour(settings):
    now = time.time()
    members = [decoded(record("<img src=x>", "127.0.0.11", port="8080")),
               decoded(record("web9", "127.0.0.19", port="80; }<i>"))]
    html = statuspage.page(settings, members, daemon_view(now), now)
    assert "<img src=x>" not in html and "&lt;img src=x&gt;" in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<i>" not in html and "<b>web2</b>" not in html
    assert '<svg id="plot"' in html and 'class="pool-size"' in html and html.count('class="tick push"') == 2
    assert "1 reloads</span>" in html and "2 pushes</span>" in html  # the reload 30 min ago is in the hour
    assert "nginx not readable" in html


def test_drift_is_an_alert_on_the_page(settings, monkeypatch):
    from lbsync.plan import Served

    monkeypatch.setattr(statuspage.status, "choose", lambda s: type("D", (), {"served": lambda self: Served(
        "live pool v9", (("stray<x>", "127.0.0.99:9", False),))})())
    html = statuspage.page(settings, [], {}, time.time())
    assert '<div class="alert" id="drift">Drift: nginx serves stray&lt;x&gt; beyond the membership;' in html


def test_plot_steps_follow_the_pool_size():
    now = 10000.0
    plot = statuspage.plot({"points": [[now - 1800, 2, 2], [now - 900, 4, 3]], "applies": []}, now)
    xs_ys = [tuple(map(float, p.split(","))) for p in plot["size"].split()]
    assert xs_ys[0][0] < xs_ys[-1][0] == plot["right"]  # from half an hour ago to now
    assert xs_ys[0][1] > xs_ys[-1][1] == plot["top"]  # 2, then 4 (the top) until now
    assert plot["max"] == 4 and statuspage.plot({}, now)["size"] == ""


def test_the_server_serves_page_metrics_and_json_and_refuses_rebinding(settings):
    port = free_port("127.0.0.1")
    now = time.time()
    calls = []

    def inputs():
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("a bug in one request")
        return settings, [decoded(record("web1", "127.0.0.11", port="8080"))], daemon_view(now)

    server = statuspage.StatusServer.start_on(f"127.0.0.1:{port}", inputs)
    assert server is not None and server.url == f"http://127.0.0.1:{port}/"
    try:
        code, headers, body = get(port, "/")
        assert code == 200 and "web1" in body and headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert 'http-equiv="refresh"' in body and 'http-equiv="refresh"' not in get(port, "/?refresh=0")[2]
        code, headers, body = get(port, "/metrics", Accept="application/openmetrics-text; version=1.0.0")
        assert code == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
        assert any(f.name == "lbsync_serf_connected" for f in parse_openmetrics(body))
        code, _, body = get(port, "/status.json")
        assert code == 200 and '"schema": 1' in body
        assert get(port, "/")[0] == 500  # the 5th call fails: that request only
        assert get(port, "/metrics")[0] == 200
        assert get(port, "/", Host="evil.example:1234")[0] == 421
        assert get(port, "/", Host="localhost:1234")[0] == 200
        assert get(port, "/nope")[0] == 404
    finally:
        server.stop()


def test_a_port_in_use_is_logged_and_no_server_starts(settings, caplog):
    port = free_port("127.0.0.1")
    first = statuspage.StatusServer.start_on(f"127.0.0.1:{port}", lambda: (settings, [], {}))
    try:
        assert statuspage.StatusServer.start_on(f"127.0.0.1:{port}", lambda: (settings, [], {})) is None
        assert "cannot listen on" in caplog.text
    finally:
        assert first is not None
        first.stop()


def test_an_empty_state_dir_renders(settings):
    html = statuspage.page(settings, [], {}, time.time())
    assert "No backend: nginx answers 503." in html and "Nothing yet." in html
    assert state.read(settings.state_dir, state.LAST_SYNC) is None


def test_the_daemon_starts_moves_and_stops_its_page(settings, tmp_path):
    from lbsync.daemon import Daemon

    port = free_port("127.0.0.1")
    on = Settings(state_dir=settings.state_dir, data_plane="live", control_socket=settings.control_socket,
                  daemon=DaemonSettings(status_listen=f"127.0.0.1:{port}"))
    daemon = Daemon(on, lambda: on, str(tmp_path / "lbsync.toml"))
    daemon._serve_page(on)
    try:
        assert daemon.view.status_url == f"http://127.0.0.1:{port}/"
        daemon._publish()
        assert get(port, "/")[0] == 200
        assert state.read(on.state_dir, state.DAEMON)["status_url"] == daemon.view.status_url
    finally:
        daemon._serve_page(settings.__class__(state_dir=settings.state_dir))  # status_listen off
    assert daemon.page is None and daemon.view.status_url == ""
    with pytest.raises(OSError):
        get(port, "/")


@pytest.mark.parametrize("listen", ["0.0.0.0:9180", "10.1.2.3:9180", "[::]:9180", "lb.example:9180"])
def test_a_page_off_loopback_needs_status_remote(listen):
    from lbsync.config import SettingError

    with pytest.raises(SettingError, match="not a loopback address; .* daemon.status_remote"):
        DaemonSettings(status_listen=listen)
    assert DaemonSettings(status_listen=listen, status_remote=True).status_listen == listen
    for fine in ("127.0.0.1:9180", "[::1]:9180", "localhost:9180", ""):
        assert DaemonSettings(status_listen=fine).status_listen == fine
