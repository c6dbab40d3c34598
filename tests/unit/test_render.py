"""Golden files for the upstream template, and determinism. Regenerate with REGEN_GOLDEN=1."""

import dataclasses
import ipaddress
import os
from pathlib import Path

import pytest

from lbsync import nginx
from lbsync.config import Settings
from lbsync.drivers.reload import render_upstream
from lbsync.members import Member, Selection
from lbsync.plan import Plan

GOLDEN = Path(__file__).parent / "golden"


def member(n, **fields):
    return Member(f"web{n}", ipaddress.ip_address(f"10.0.0.{n}"), "alive", "web", **fields)


CASES = {
    "zero": ([], {}),
    "one": ([member(1)], {}),
    "three": ([member(1), member(2, port=8080), member(3, weight=5)], {}),
    "ipv6": ([Member("web6", ipaddress.ip_address("2001:db8::6"), "alive", "web", 8080)], {}),
    "draining": ([member(1), member(2, draining=True)], {}),
    "backup": ([member(1), member(2, backup=True, max_fails=2, fail_timeout=5, max_conns=50)], {}),
    "only_backups": ([member(1, backup=True), member(2, backup=True)], {}),
    "least_conn": ([member(1), member(2)], {"algorithm": "least_conn", "keepalive": 16}),
    "ip_hash": ([member(1), member(2)], {"algorithm": "ip_hash"}),
    "hash": ([member(1), member(2)], {"algorithm": "hash", "hash_key": "$remote_addr"}),
}


def rendered(case, unhealthy=frozenset()):
    backends, overrides = CASES[case]
    settings = dataclasses.replace(Settings(), **overrides)
    return render_upstream(Plan.of(settings, Selection(tuple(backends), (), {}), unhealthy))


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case):
    text = rendered(case)
    path = GOLDEN / f"{case}.conf"
    if os.environ.get("REGEN_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_files_pass_nginx(case, tmp_path):
    nginx.check((GOLDEN / f"{case}.conf").read_text(), "nginx", tmp_path / "check")


def test_zero_backends_is_only_the_placeholder():
    text = rendered("zero")
    assert text.count("server ") == 1 and "down;" in text
    assert "placeholder" not in rendered("one")


def test_unhealthy_member_rendered_down():
    text = rendered("three", frozenset({"web2"}))
    assert "server 10.0.0.2:8080 down;  # web2 (failing health checks)" in text


def test_same_input_same_bytes():
    assert rendered("three") == rendered("three")
