"""Pools without nginx: [[pool]] config and its errors, who belongs to which pool, static members'
store and rules, the rendered files (golden; REGEN_GOLDEN=1 rewrites them) and nginx's verdict on
them (`nginx -t` in a wrapper with the stream module)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from pathlib import Path

import pytest
from kit.fake_nginx import fake_nginx

from lbsync import nginx, static
from lbsync.cli import main
from lbsync.drivers.pools import context, render_pools
from lbsync.errors import ConfigError
from lbsync.health import Target
from lbsync.layers import load
from lbsync.members import select, serves
from lbsync.pools import plan_pools, settings_for

GOLDEN = Path(__file__).parent / "golden"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

POOLS = """\
allowed_networks = ["10.0.0.0/8", "127.0.0.0/8"]
lb_listen = ["127.0.0.1:80"]

[[pool]]
name = "web"
listen = ["127.0.0.1:80", "[::]:80"]
server_name = ["example.com", "*.example.com"]

[[pool]]
name = "api"
role = "backend"
listen = ["127.0.0.1:8080"]
algorithm = "least_conn"
keepalive = 16
timeout = 2.5
path = "/v1/"

[[pool]]
name = "db"
protocol = "tcp"
listen = ["127.0.0.1:5432"]
algorithm = "hash"
"""


def settings(tmp_path, text=POOLS):
    path = tmp_path / "lbsync.toml"
    path.write_text(f'state_dir = "{tmp_path}/state"\n' + text)
    return load(path, env={})


def record(name, addr, **tags):
    return {"Name": name, "Addr": addr, "Status": "alive", "Tags": tags}


RECORDS = [
    record("web1", "10.0.0.11", role="web", port="8000"),
    record("web2", "10.0.0.12", role="web", port="8000", port_backend="9000", weight_backend="3"),
    record("api1", "10.0.0.13", role="backend", port="9000", drain="1"),
    record("db1", "10.0.0.14", role="db", port="5432"),
    record("db2", "10.0.0.15", role="db", port="5432", weight="2"),
    record("lb", "10.0.0.1", role="lb"),
]


# -- config --------------------------------------------------------------------------------------

def test_pools_load_with_their_defaults(tmp_path):
    s = settings(tmp_path)
    web, api, db = s.pools
    assert (web.follows, web.upstream, web.key, web.protocol) == ("web", "lbs_web", "$request_uri", "http")
    assert (api.follows, api.keepalive, api.timeout) == ("backend", 16, 2.5)
    assert (db.protocol, db.key) == ("tcp", "$remote_addr")


def test_no_pool_tables_is_the_single_pool_of_old(tmp_path):
    assert settings(tmp_path, 'role = "app"\n').pools == ()


def test_pools_from_several_files_add_up(tmp_path):
    (tmp_path / "lbsync.d").mkdir()
    (tmp_path / "lbsync.d" / "10-db.toml").write_text(
        '[[pool]]\nname = "db2"\nprotocol = "tcp"\nlisten = ["127.0.0.1:6379"]\n')
    assert [p.name for p in settings(tmp_path).pools] == ["web", "api", "db", "db2"]


@pytest.mark.parametrize("extra, key, reason", [
    ('[[pool]]\nname = "web"\nlisten = ["127.0.0.1:81"]\n', 'pool "web".name', "names two pools"),
    ('[[pool]]\nname = "x"\nlisten = ["127.0.0.1:8080"]\n', 'pool "x".listen', "clashes with pool 'api'"),
    ('[[pool]]\nname = "x"\nlisten = ["*:5432"]\n', 'pool "x".listen', "clashes with pool 'db'"),
    ('[[pool]]\nname = "x"\n', 'pool "x".listen', "needs at least one IP:PORT"),
    ('[[pool]]\nlisten = ["127.0.0.1:1"]\n', "pool[3].name", "is required"),
    ('[[pool]]\nname = "a b"\nlisten = ["127.0.0.1:1"]\n', "pool[3].name", "not 1-64 letters"),
    ('[[pool]]\nname = "x"\nlisten = ["example.com:80"]\n', 'pool "x".listen', "not IP:PORT"),
    ('[[pool]]\nname = "x"\nlisten = ["::1:80"]\n', 'pool "x".listen', "needs brackets"),
    ('[[pool]]\nname = "x"\nprotocol = "udp"\nlisten = ["127.0.0.1:1"]\n', 'pool "x".protocol', "not one of"),
    ('[[pool]]\nname = "x"\nprotocol = "tcp"\nlisten = ["127.0.0.1:1"]\nkeepalive = 2\n',
     'pool "x".keepalive', "HTTP only"),
    ('[[pool]]\nname = "x"\nprotocol = "tcp"\nlisten = ["127.0.0.1:1"]\nalgorithm = "ip_hash"\n',
     'pool "x".algorithm', "HTTP only"),
    ('[[pool]]\nname = "x"\nprotocol = "tcp"\nlisten = ["127.0.0.1:1"]\nserver_name = ["a.b"]\n',
     'pool "x".server_name', "HTTP only"),
    ('[[pool]]\nname = "x"\nlisten = ["127.0.0.1:1"]\nserver_name = ["~^re$"]\n', 'pool "x".server_name',
     "not a host name"),
    ('[[pool]]\nname = "x"\nlisten = ["127.0.0.1:1"]\nhash_key = "$x;}"\n', 'pool "x".hash_key', "misread"),
    ('[[pool]]\nname = "x"\nlisten = ["127.0.0.1:1"]\nlistner = 1\n', 'pool "x".listner', "did you mean 'listen'"),
    ('[[pool]]\nname = "x"\nlisten = ["127.0.0.1:1"]\npath = "/a b"\n', 'pool "x".path', "is not a path"),
    ('[[pool]]\nname = "x"\nprotocol = "tcp"\nlisten = ["127.0.0.1:1"]\npath = "/a"\n', 'pool "x".path',
     "HTTP only"),
    ('[[pool]]\nname = "x"\nprotocol = "tcp"\nlisten = ["127.0.0.1:1"]\nhealth_check = "/h"\n',
     'pool "x".health_check', "HTTP only (use connect)"),
    ('[[pool]]\nname = "x"\nlisten = ["127.0.0.1:1"]\nhealth_check = "sometimes"\n', 'pool "x".health_check',
     "is not off, connect or a URL path"),
])
def test_bad_pools_name_the_pool_key_and_its_line(tmp_path, extra, key, reason):
    with pytest.raises(ConfigError) as caught:
        settings(tmp_path, POOLS + "\n" + extra)
    message = str(caught.value)
    assert message.startswith(f"{key} (from ") and reason in message
    field = key.rpartition(".")[2]
    lines = (tmp_path / "lbsync.toml").read_text().splitlines()
    if key.startswith('pool "') and any(line.startswith(f"{field} =") for line in extra.splitlines()):
        line = max(n for n, text in enumerate(lines, 1) if text.startswith(f"{field} ="))
        assert f"lbsync.toml:{line})" in message


def test_a_bad_pool_exits_78_naming_the_key(tmp_path, capsys):
    path = tmp_path / "lbsync.toml"
    path.write_text(POOLS + '\n[[pool]]\nname = "x"\nlisten = ["127.0.0.1:8080"]\n')
    assert main(["-c", str(path), "config"]) == 78
    assert 'pool "x".listen (from ' in capsys.readouterr().err


def test_pools_come_from_files_only(tmp_path):
    path = tmp_path / "lbsync.toml"
    path.write_text("")
    with pytest.raises(ConfigError, match=r"environment: pools are \[\[pool\]\] tables in a config file"):
        load(path, env={"LBSYNC_POOL": "x"})


# -- who is in which pool ------------------------------------------------------------------------

def test_a_pool_follows_its_role_and_service_tags(tmp_path):
    s = settings(tmp_path)
    plans = {p.pool.name: p.plan for p in plan_pools(s, RECORDS, {}, frozenset())}
    assert [m.name for m in plans["web"].backends] == ["web1", "web2"]
    api = {m.name: m for m in plans["api"].backends}
    assert (api["web2"].port, api["web2"].weight, api["api1"].draining) == (9000, 3, True)
    assert [m.name for m in plans["db"].backends] == ["db1", "db2"]
    assert serves({"role": "web", "port_api": "1"}, "api") and not serves({"role": "web"}, "api")


def test_a_service_tag_is_checked_like_a_port_tag(tmp_path):
    s = settings(tmp_path)
    single = settings_for(s, s.pools[1])
    selection = select([record("x", "10.0.0.20", role="web", port_backend="99999")], single)
    assert selection.backends == () and "tag port='99999'" in selection.skipped[0].reason


def test_no_member_can_be_one_of_the_lbs_listeners(tmp_path):
    s = settings(tmp_path)
    plans = plan_pools(s, [record("evil", "127.0.0.1", role="db", port="8080")], {}, frozenset())
    db = next(p for p in plans if p.pool.name == "db").plan
    assert db.backends == () and "own listen address" in db.selection.skipped[0].reason


# -- static members ------------------------------------------------------------------------------

def test_static_members_join_their_pool_and_lose_a_name_clash_to_serf(tmp_path):
    s = settings(tmp_path)
    static.save(s.state_dir, {"web": {"legacy": static.member_from("legacy", "10.0.0.30:80", 2, False, False),
                                      "web1": static.member_from("web1", "10.0.0.31:80", 1, False, False)},
                              "db": {"far": static.member_from("far", "192.168.1.1:5432", 1, False, False)}})
    plans = {p.pool.name: p.plan for p in plan_pools(s, RECORDS, {}, frozenset())}
    web = {m.name: m for m in plans["web"].backends}
    assert web["legacy"].source == "static" and web["web1"].source == "serf"
    assert str(web["web1"].addr) == "10.0.0.11"
    reasons = {skip.name: skip.reason for skip in plans["web"].selection.skipped}
    assert "a Serf member of this pool has the same name" in reasons["web1"]
    db_reasons = {skip.name: skip.reason for skip in plans["db"].selection.skipped}
    assert "outside allowed_networks" in db_reasons["far"]


@pytest.mark.parametrize("name, endpoint, weight, reason", [
    ("bad name", "10.0.0.5:80", 1, "is not a name"),
    ("x", "10.0.0.5", 1, "is not host:port"),
    ("x", "example.com:80", 1, "does not appear to be an IPv4 or IPv6 address"),
    ("x", "::1:80", 1, "brackets"),
    ("x", "10.0.0.5:80", 0, "1..256"),
])
def test_static_member_words_are_checked(name, endpoint, weight, reason):
    with pytest.raises(ConfigError, match=reason):
        static.member_from(name, endpoint, weight, False, False)


def test_a_hand_edited_store_is_read_without_trusting_it(tmp_path):
    (tmp_path / static.STORE).write_text(json.dumps({"pools": {"web": {"ok": {"address": "10.0.0.9", "port": 80},
                                                                       "bad": {"address": "10.0.0.9", "evil": 1}},
                                                               "db": ["not", "a", "map"]}}))
    assert list(static.load(str(tmp_path))) == ["web"] and list(static.load(str(tmp_path))["web"]) == ["ok"]
    (tmp_path / static.STORE).write_text("{not json")
    assert static.load(str(tmp_path)) == {}


# -- the files -----------------------------------------------------------------------------------

def plans_for(tmp_path, unhealthy=frozenset()):
    return plan_pools(settings(tmp_path), RECORDS, {}, unhealthy)


@pytest.mark.parametrize("case", ["pools", "pools_empty"])
def test_golden(tmp_path, case):
    records = RECORDS if case == "pools" else []
    s = settings(tmp_path, POOLS + '[daemon]\nhealth_path = "/"\n')
    failing_web2 = frozenset({Target("web2", "10.0.0.12", 8000, "/")})  # its web service only, not api
    text = render_pools(s, plan_pools(s, records, {}, failing_web2))
    path = GOLDEN / f"{case}.conf"
    if os.environ.get("REGEN_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


@pytest.mark.parametrize("records", [RECORDS, []], ids=["members", "empty"])
def test_nginx_accepts_both_files(tmp_path, records):
    plans = plan_pools(settings(tmp_path), records, {}, frozenset())
    from lbsync.drivers.pools import HTTP_TEMPLATE, STREAM_TEMPLATE
    from lbsync.render import render

    http = render(HTTP_TEMPLATE, context(plans, "http"))
    stream = render(STREAM_TEMPLATE, context(plans, "tcp"))
    nginx.check(http, "nginx", tmp_path / "check", (STREAM_MODULE,), stream)


def test_nginx_refuses_a_stream_file_without_its_module(tmp_path):
    plans = plans_for(tmp_path)
    from lbsync.drivers.pools import HTTP_TEMPLATE, STREAM_TEMPLATE
    from lbsync.errors import NginxError
    from lbsync.render import render

    with pytest.raises(NginxError, match="stream"):
        nginx.check(render(HTTP_TEMPLATE, context(plans, "http")), "nginx", tmp_path / "check", (),
                    render(STREAM_TEMPLATE, context(plans, "tcp")))


def test_hostile_member_strings_never_reach_the_files(tmp_path):
    hostile = [record("x;}", "10.0.0.40", role="web", port="80"),
               record("y", "10.0.0.41", role="web", port="80; include /etc/passwd")]
    s = settings(tmp_path)
    text = render_pools(s, plan_pools(s, hostile, {}, frozenset()))
    assert "passwd" not in text and "x;}" not in text


def test_an_imported_template_is_part_of_the_fingerprint(tmp_path):
    from lbsync.render import fingerprint

    (tmp_path / "macros.j2").write_text("{% macro a() %}1{% endmacro %}")
    (tmp_path / "main.j2").write_text('{%- import "macros.j2" as m -%}{{ m.a() }}')
    before = fingerprint(tmp_path / "main.j2", {})
    (tmp_path / "macros.j2").write_text("{% macro a() %}2{% endmacro %}")
    assert fingerprint(tmp_path / "main.j2", {}) != before


def test_addresses_parse_back(tmp_path):
    plans = plans_for(tmp_path)
    assert all(isinstance(m.addr, ipaddress.IPv4Address) for p in plans for m in p.plan.backends)


def test_a_wildcard_listener_refuses_this_host_only(tmp_path):
    s = settings(tmp_path, 'allowed_networks = ["10.0.0.0/8", "127.0.0.0/8"]\n'
                           '[[pool]]\nname = "web"\nlisten = ["*:80"]\n')
    records = [record("far", "10.0.0.30", role="web", port="80"), record("self", "127.0.0.1", role="web", port="80")]
    (plan,) = plan_pools(s, records, {}, frozenset())
    assert [m.name for m in plan.plan.backends] == ["far"]
    assert "own listen address" in plan.plan.selection.skipped[0].reason


def test_every_pool_has_its_own_metrics_labels(tmp_path):
    from lbsync import exposition, state
    from lbsync.plan import Outcome, SyncResult
    from lbsync.pools import merged

    s = settings(tmp_path)
    plans = plan_pools(s, RECORDS, {}, frozenset())
    selection = merged(plans)
    result = SyncResult(Outcome.UPDATED, selection.backends, selection.skipped, "", selection, "pushed",
                        pools=tuple((p.pool.name, tuple(m.name for m in p.plan.backends)) for p in plans))
    state.record_sync(s, result)
    text = exposition.text(s, state.read(s.state_dir, state.LAST_SYNC) or {}).decode()
    assert 'lbsync_backends{pool="web"} 2.0' in text and 'lbsync_backends{pool="db"} 2.0' in text
    assert 'lbsync_backend_up{backend="web2",pool="api"} 1.0' in text
    assert 'lbsync_backend_up{backend="api1",pool="api"} 0.0' in text  # draining


FAILING_API = frozenset({Target("web2", "10.0.0.12", 9000, "/")})  # web2's api service only, not its web one


class Members:
    def members(self):
        return RECORDS


def checked_pipeline(tmp_path):
    """POOLS with HTTP health checks, the pipeline end to end with a stand-in nginx."""
    s = settings(tmp_path, POOLS + '[daemon]\nhealth_path = "/"\n')
    nginx = fake_nginx(tmp_path)
    return dataclasses.replace(s, output=str(tmp_path / "up.conf"), stream_output=str(tmp_path / "stream.conf"),
                               nginx_bin=str(nginx), reload_command=f"{nginx} -s reload", data_plane="reload",
                               lock_file=str(tmp_path / "lock"), nginx_pid=str(tmp_path / "nginx.pid"))


def test_a_backend_down_in_one_pool_is_up_in_the_others_metrics_and_status(tmp_path):
    from lbsync import exposition, state, status
    from lbsync.plan import Outcome
    from lbsync.sync import reconcile

    s = checked_pipeline(tmp_path)
    assert reconcile(s, Members(), unhealthy=FAILING_API).outcome is Outcome.UPDATED
    daemon = {"unhealthy": ["web2"]}  # the daemon's view is per node name: down somewhere
    text = exposition.text(s, state.read(s.state_dir, state.LAST_SYNC) or {}, daemon).decode()
    assert 'lbsync_backend_up{backend="web2",pool="api"} 0.0' in text
    assert 'lbsync_backend_up{backend="web2",pool="web"} 1.0' in text
    verdict = {"healthy": False, "oks": 0, "fails": 3, "error": "HTTP 503"}
    daemon = {"pid": os.getpid(), "unhealthy": ["web2"], "health": {"web2": verdict}}
    pools = {p["name"]: p for p in status.model(s, RECORDS, daemon=daemon)["pools"]}
    health = {pool: {b["name"]: b["health"] for b in pools[pool]["backends"]} for pool in ("web", "api")}
    assert health["api"]["web2"] == "down" and health["web"]["web2"] == "healthy"


def test_the_pair_check_reads_each_pools_health_verdicts_back_from_nginx(tmp_path):
    """`lbsync check` dry-runs the pipeline with the down backends nginx holds: read back per
    pool as the probes that failed (with that pool's check), nothing is pending."""
    from lbsync import paircheck
    from lbsync.plan import Outcome
    from lbsync.sync import reconcile

    s = checked_pipeline(tmp_path)
    assert reconcile(s, Members(), unhealthy=FAILING_API).outcome is Outcome.UPDATED
    assert FAILING_API <= paircheck.down_in_nginx(s)  # api1 drained also reads as down: never a probe's
    assert reconcile(s, Members(), dry_run=True, unhealthy=paircheck.down_in_nginx(s)).outcome is Outcome.UNCHANGED


def test_each_pool_gets_its_own_health_check(tmp_path):
    from lbsync.pools import health_checked, health_targets, merged

    s = settings(tmp_path)
    plans = plan_pools(s, RECORDS, {}, frozenset({Target("db1", "10.0.0.14", 5432), Target("web1", "10.0.0.11", 8000)}))
    assert health_targets(s, merged(plans).backends) == () and not health_checked(s)  # no health_path
    db = next(p.plan for p in plans if p.pool.name == "db")
    assert db.down() == []  # an HTTP verdict never takes a TCP backend down
    s = settings(tmp_path, POOLS.replace('algorithm = "hash"', 'algorithm = "hash"\nhealth_check = "connect"')
                 .replace("timeout = 2.5", 'timeout = 2.5\nhealth_check = "/healthz"')
                 + '[daemon]\nhealth_path = "/"\n')
    plans = plan_pools(s, RECORDS, {}, frozenset())
    checks = {(t.name, t.port, t.check) for t in health_targets(s, merged(plans).backends)}
    assert checks == {("web1", 8000, "/"), ("web2", 8000, "/"), ("web2", 9000, "/healthz"),
                      ("db1", 5432, "connect"), ("db2", 5432, "connect")}  # api1 drains: not probed
    s = settings(tmp_path, POOLS.replace('algorithm = "least_conn"', 'algorithm = "least_conn"\nhealth_check = "off"')
                 + '[daemon]\nhealth_path = "/"\n')
    assert {t.port for t in health_targets(s, merged(plan_pools(s, RECORDS, {}, frozenset())).backends)} == {8000}


def test_a_node_in_two_pools_is_judged_per_pool(tmp_path):
    """web2 serves the web pool on 8000 and the api pool on 9000 (its own check, /healthz); only
    its api service fails. Its verdicts must not mix: down in api after `fall` rounds, up in web."""
    from concurrent.futures import ThreadPoolExecutor

    from lbsync.health import Checker
    from lbsync.pools import health_targets, merged

    s = settings(tmp_path, POOLS.replace("timeout = 2.5", 'timeout = 2.5\nhealth_check = "/healthz"')
                 + '[daemon]\nhealth_path = "/"\nhealth_fall = 2\n')
    checker = Checker(s.daemon, lambda t, path, timeout: "HTTP 503" if path == "/healthz" else "")
    checker.set_targets(health_targets(s, merged(plan_pools(s, RECORDS, {}, frozenset())).backends))
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            checker.run_round(pool)
    down = {p.pool.name: p.plan.down() for p in plan_pools(s, RECORDS, {}, checker.unhealthy())}
    assert down == {"web": [], "api": ["web2"], "db": []}
    assert checker.snapshot()["web2"]["healthy"] is False  # the view: down somewhere


def test_status_and_the_page_show_every_pool_with_its_listener(tmp_path):
    from lbsync import status, statuspage

    # status reads the served files back: never this host's (an installed or demo LB's)
    s = settings(tmp_path, f'output = "{tmp_path}/lbs_upstream.conf"\n'
                           f'stream_output = "{tmp_path}/99-lbsync-stream.conf"\n' + POOLS)
    static.save(s.state_dir, {"web": {"legacy": static.member_from("legacy", "10.0.0.30:80", 1, False, False)}})
    data = status.model(s, RECORDS)
    pools = {p["name"]: p for p in data["pools"]}
    assert list(pools) == ["web", "api", "db"]
    assert pools["db"]["protocol"] == "tcp" and "no upstream lbs_db installed yet" in pools["db"]["served"]["error"]
    assert {b["name"] for b in pools["api"]["backends"]} == {"api1", "web2"}
    text = status.text(data)
    assert "pool db (TCP on 127.0.0.1:5432, " in text and "pool api (HTTP on 127.0.0.1:8080, " in text
    page = statuspage.page(s, RECORDS, {})
    assert "TCP on 127.0.0.1:5432" in page and 'id="pool-api"' in page
    assert data["serf"]["role"] == "backend, db, web" and data["serf"]["members"] == {"alive": 5}
    assert "roles 'backend, db, web': 5 alive" in text
    empty = status.text(status.model(s, []))
    assert "(no backend: nginx closes its connections)" in empty and "(no backend: nginx answers 503)" in empty
