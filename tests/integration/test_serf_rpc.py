"""lbsync.serf against real `serf agent` processes on loopback addresses (127.0.0.1 = LB,
127.0.0.2 = web). Every agent is started with Popen and stopped by its PID in a finaliser;
waits poll with a deadline."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Callable

import pytest
from kit.net import free_port, wait_until
from kit.serfnode import SerfNode, start_serf

from lbsync.errors import SourceError
from lbsync.serf import SerfClient

pytestmark = pytest.mark.integration

LB_IP, WEB_IP = "127.0.0.1", "127.0.0.2"
WEB_TAGS = {"role": "web", "port": "8080"}


@pytest.fixture
def start_agent(procs, tmp_path) -> Callable[..., SerfNode]:
    """Factory for real agents; `procs` stops each by PID even when the test fails."""

    def start(name: str, ip: str, tags: dict[str, str] | None = None, auth: str = "") -> SerfNode:
        extra = []
        if auth:  # serf 0.8/0.9 has no -rpc-auth flag: the token comes from a config file
            config = tmp_path / f"{name}-auth.json"
            config.write_text(json.dumps({"rpc_auth": auth}))
            extra = ["-config-file", str(config)]
        return start_serf(procs, name, ip, tags, extra=extra)

    return start


def rpc(agent: SerfNode, **kwargs) -> SerfClient:
    return SerfClient(agent.rpc_addr, **kwargs)


def _by_name(client: SerfClient) -> dict[str, dict]:
    return {m["Name"]: m for m in client.members()}


@pytest.fixture
def pair(start_agent) -> tuple[SerfNode, SerfNode]:
    """An LB agent and a web agent, joined over RPC."""
    lb = start_agent("lb", LB_IP, {"role": "lb"})
    web = start_agent("web1", WEB_IP, WEB_TAGS)
    with rpc(lb) as client:
        assert client.join([web.bind_addr]) == 1
        wait_until(lambda: len(client.members_filtered(status="alive")) == 2, 10, "both members alive")
    return lb, web


def test_handshake_and_members(start_agent):
    lb = start_agent("lb", LB_IP, {"role": "lb", "port": "80"})
    with rpc(lb) as client:
        [me] = client.members()
        assert client.stats()["agent"]["name"] == "lb"
    assert me["Name"] == "lb" and me["Status"] == "alive"
    assert me["Addr"] == ipaddress.IPv4Address(LB_IP) and isinstance(me["Addr"], ipaddress.IPv4Address)
    assert me["Tags"] == {"role": "lb", "port": "80"}
    assert me["Port"] == int(lb.bind_addr.rsplit(":", 1)[1])


def test_members_filtered_by_tag_status_and_name(pair):
    lb, _ = pair
    with rpc(lb) as client:
        [web] = client.members_filtered(tags={"role": "web"})
        assert web["Name"] == "web1" and web["Addr"] == ipaddress.IPv4Address(WEB_IP)
        assert web["Tags"] == WEB_TAGS
        assert {m["Name"] for m in client.members_filtered(status="alive")} == {"lb", "web1"}
        assert client.members_filtered(status="left") == []
        assert client.members_filtered(tags={"role": "we"}) == []  # anchored regex
        assert [m["Name"] for m in client.members_filtered(tags={"port": "80[0-9]+"}, name="web.*")] == [
            "web1"
        ]


def test_tags_set_and_delete_seen_by_peer(pair):
    lb, web = pair
    with rpc(web) as web_client, rpc(lb) as lb_client:
        web_client.tags(set={"weight": "5", "drain": "1"}, delete=["port"])
        wanted = {"role": "web", "weight": "5", "drain": "1"}
        wait_until(lambda: _by_name(lb_client)["web1"]["Tags"] == wanted, 10, "new tags gossiped to lb")
        web_client.tags(delete=["drain"])
        wait_until(lambda: "drain" not in _by_name(lb_client)["web1"]["Tags"], 10, "tag deletion gossiped")


def test_stream_sees_join_then_stop_keeps_client_usable(start_agent):
    lb = start_agent("lb", LB_IP, {"role": "lb"})
    web = start_agent("web1", WEB_IP, WEB_TAGS)
    with rpc(lb) as client:
        stream = client.stream()
        assert client.join([web.bind_addr]) == 1  # join reply and stream records share the connection
        deadline = time.monotonic() + 10
        while (event := stream.next(max(0.0, deadline - time.monotonic()))) is not None:
            if event["Event"] == "member-join" and any(m["Name"] == "web1" for m in event["Members"]):
                break
        assert event is not None, "no member-join for web1 within 10 s"
        [joined] = [m for m in event["Members"] if m["Name"] == "web1"]
        assert joined["Addr"] == ipaddress.IPv4Address(WEB_IP) and joined["Tags"] == WEB_TAGS
        stream.stop()
        assert stream.next(0) is None
        assert set(_by_name(client)) == {"lb", "web1"}
        assert client.stats()["agent"]["name"] == "lb"


def test_query_and_respond_round_trip(pair):
    lb, web = pair
    responder = rpc(web)
    stream = responder.stream("query:load")  # registered before the query is sent
    seen: list[dict] = []

    def answer() -> None:  # from here on the responder client belongs to this thread only
        event = stream.next(10)
        if event is not None:
            seen.append(event)
            responder.respond(event["ID"], b"0.42")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        with rpc(lb) as client:
            answers = client.query("load", b"how busy?", timeout=1.0, filter_tags={"role": "web"})
    finally:
        thread.join(10)
        responder.close()
    assert answers == {"web1": b"0.42"}
    assert seen and seen[0]["Event"] == "query" and seen[0]["Name"] == "load"
    assert seen[0]["Payload"] == b"how busy?"


def test_auth_token(start_agent):
    lb = start_agent("lb", LB_IP, {"role": "lb"}, auth="s3cret")
    with rpc(lb) as client, pytest.raises(SourceError, match="auth token is required"):
        client.members()
    with pytest.raises(SourceError, match="refused the RPC auth token") as err:
        rpc(lb, auth="wrong")
    assert lb.rpc_addr in str(err.value)
    with rpc(lb, auth="s3cret") as client:
        assert [m["Name"] for m in client.members()] == ["lb"]


def test_unreachable_agent_says_so():
    addr = f"{LB_IP}:{free_port(LB_IP)}"
    with pytest.raises(SourceError, match=r"is `serf agent` running\?") as err:
        SerfClient(addr, timeout=1)
    assert addr in str(err.value)


def test_leave_exits_agent_and_force_leave_prunes(pair):
    lb, web = pair
    with rpc(web) as client:
        client.leave()
    wait_until(lambda: not web.proc.alive(), 10, "the web agent to exit after leave")
    with rpc(lb) as client:
        wait_until(lambda: _by_name(client)["web1"]["Status"] == "left", 10, "lb to see web1 left")
        client.force_leave("web1", prune=True)  # frees the name for a replacement node
        wait_until(lambda: "web1" not in _by_name(client), 10, "web1 pruned from lb's members")
