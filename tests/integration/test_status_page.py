"""The status page as a person sees it: a real LB (serf, nginx with the live data plane, `lbsync
run` serving the page), web nodes that join, drain and leave, and a real headless Chromium driven
through chromedriver's WebDriver protocol (plain HTTP + JSON: no Python dependency).

What is checked is what a browser renders: the visible text of each backend's row, the drift-free
header, the plot drawn with a size on screen, /metrics answering; a screenshot is kept under the
test's tmp directory and its path printed. Chromium missing is a failure with the fix, never a
skip: `make test` installs Debian's chromium and chromium-driver (tools/system-deps.sh)."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kit.lb import FAST_DAEMON, start_lb
from kit.net import connects, free_port, http_get, wait_until
from kit.procs import Processes, died
from kit.serfnode import serf

pytestmark = pytest.mark.integration

CONVERGE = 30
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--window-size=1280,1100"]


def require_chromium() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("the status page test needs a real Chromium: install Debian's chromium and chromium-driver "
                    "(`apt-get install chromium chromium-driver`, or `make deps`)", pytrace=False)
    return chromium, driver


class Browser:
    """One Chromium session through chromedriver (W3C WebDriver over HTTP)."""

    def __init__(self, procs: Processes, profile: Path):
        chromium, driver = require_chromium()
        for attempt in range(5):  # chromedriver binds ::1 too: a port free on 127.0.0.1 may be taken there
            self.port = free_port("127.0.0.1")
            self.driver = procs.start(f"chromedriver-{attempt}", [driver, f"--port={self.port}",
                                                                  "--allowed-ips=127.0.0.1"])
            try:
                wait_until(lambda: connects("127.0.0.1", self.port) or died(self.driver), 20, "chromedriver")
                break
            except AssertionError:
                if attempt == 4 or "Address already in use" not in self.driver.output():
                    raise
        options = {"binary": chromium, "args": [*CHROME_ARGS, f"--user-data-dir={profile}"]}
        reply = self.call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": options, "pageLoadStrategy": "normal"}}})
        self.session = reply["sessionId"]

    def call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                return json.loads(reply.read())["value"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"webdriver {method} {path}: {exc.code} {exc.read()[:500]!r}") from None

    def open(self, url: str) -> None:
        self.call("POST", f"/session/{self.session}/url", {"url": url})

    def find(self, css: str) -> list[str]:
        found = self.call("POST", f"/session/{self.session}/elements", {"using": "css selector", "value": css})
        return [next(iter(element.values())) for element in found]

    def text(self, element: str) -> str:
        """What a person reads there (rendered, visible text)."""
        return self.call("GET", f"/session/{self.session}/element/{element}/text")

    def rect(self, element: str) -> dict:
        return self.call("GET", f"/session/{self.session}/element/{element}/rect")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("GET", f"/session/{self.session}/screenshot")))
        return path

    def quit(self) -> None:
        try:
            self.call("DELETE", f"/session/{self.session}")
        finally:
            self.driver.stop(signal.SIGTERM)


def rows(browser: Browser, url: str) -> dict[str, str]:
    """Backend name -> the visible text of its row, from a fresh load of the page."""
    browser.open(url)
    texts = [browser.text(row) for row in browser.find("tr.backend")]
    return {text.split()[0]: text for text in texts if text}


def test_a_person_sees_backends_their_state_and_the_last_hour(procs, tmp_path):
    require_chromium()
    page_port = free_port("127.0.0.1")
    config = FAST_DAEMON + f'status_listen = "127.0.0.1:{page_port}"\nhealth_path = "/"\nhealth_interval = 0.2\n'
    lb = start_lb(procs, tmp_path / "lb", config, mode="run", data_plane="live")
    lb.start_daemon()
    wait_until(lb.settled, CONVERGE, "the daemon's first reconcile")
    url = f"http://127.0.0.1:{page_port}/?refresh=0"  # no reload under the test's feet
    nodes = {n: lb.web(n) for n in (1, 2, 3)}
    wait_until(lambda: lb.served_by(9) == {"serf-web1", "serf-web2", "serf-web3"}, CONVERGE, "three routed")
    serf("tags", "-rpc-addr", nodes[2].rpc_addr, "-set", "drain=1")  # web2 drains: in the pool, no new requests
    serf("leave", "-rpc-addr", nodes[3].rpc_addr)
    wait_until(lambda: lb.served_by(6) == {"serf-web1"}, CONVERGE, "only web1 takes new requests")

    browser = Browser(procs, tmp_path / "chromium-profile")
    try:
        seen = wait_until(lambda: (lambda r: r if ("draining" in r.get("web2", "") and "left" in r.get("web3", ""))
                                   else None)(rows(browser, url)), CONVERGE, "the page to show web2 draining")
        assert "serving" in seen["web1"] and "127.0.0.11:" in seen["web1"] and "healthy" in seen["web1"], seen
        assert "draining" in seen["web2"] and "yes" in seen["web2"], seen  # drain tag: yes; still in nginx
        assert "left" in seen["web3"], seen
        heading = browser.text(browser.find("section.pool h2")[0])
        assert "lbs_backend" in heading and "live data plane" in heading and "nginx serves live pool v" in heading
        assert not browser.find("#drift")  # nginx holds what the membership renders
        plot = browser.find("svg#plot")
        assert plot and browser.rect(plot[0])["width"] > 300 and browser.rect(plot[0])["height"] > 100
        assert browser.find("svg#plot polyline.pool-size") and browser.find("svg#plot line.tick.push")
        legend = browser.text(browser.find("#legend")[0])
        assert "pushes in the last hour" in legend and "0 pushes" not in legend, legend
        daemon = browser.text(browser.find("#daemon")[0])
        assert "running" in daemon and "Serf connected" in daemon, daemon
        events = browser.text(browser.find("#events")[0])
        assert "drain web2" in events and events.count("leave web3") == 1 and "push" in events, events
        shot = browser.screenshot(tmp_path / "status-page.png")
        print(f"status page screenshot: {shot}")
        assert shot.stat().st_size > 10000
    finally:
        browser.quit()
    code, metrics = http_get("127.0.0.1", page_port, "/metrics")
    assert code == 200 and 'lbsync_backend_up{backend="web1",pool="lbs_backend"} 1.0' in metrics
    assert 'lbsync_backend_up{backend="web2",pool="lbs_backend"} 0.0' in metrics  # draining
    assert "Traceback" not in lb.log()
