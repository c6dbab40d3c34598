"""lbsync.serf against real `serf agent` processes on loopback addresses (127.0.0.1 = LB,
127.0.0.2 = web). Every agent is started with Popen and stopped by its PID in a finaliser;
waits poll with a deadline."""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lbsync.errors import SourceError
from lbsync.serf import SerfClient

pytestmark = pytest.mark.integration

LB_IP, WEB_IP = "127.0.0.1", "127.0.0.2"
WEB_TAGS = {"role": "web", "port": "8080"}


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> object:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
    return value


def free_port(ip: str) -> int:
    """A port free on `ip` for TCP and UDP (serf gossips over both)."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind((ip, 0))
            port = tcp.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind((ip, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port on {ip}")


@dataclass
class Agent:
    name: str
    ip: str
    bind: str
    rpc: str
    proc: subprocess.Popen
    log: Path

    def client(self, **kwargs) -> SerfClient:
        return SerfClient(self.rpc, **kwargs)

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture(scope="session")
def serf_bin() -> str:
    path = shutil.which("serf")
    if path is None:  # fail, never skip: these tests are the proof the RPC client works
        pytest.fail("`serf` is not installed (apt-get install serf); the Serf RPC tests need it")
    return path


@pytest.fixture
def start_agent(serf_bin: str, tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """Factory for agents; the finaliser stops each by PID (TERM, wait, KILL) even on failure."""
    agents: list[Agent] = []

    def start(name: str, ip: str, tags: dict[str, str] | None = None, auth: str = "") -> Agent:
        bind, rpc = f"{ip}:{free_port(ip)}", f"{ip}:{free_port(ip)}"
        argv = [
            serf_bin,
            "agent",
            "-profile",
            "local",
            "-node",
            name,
            "-bind",
            bind,
            "-rpc-addr",
            rpc,
            "-log-level",
            "debug",
        ]
        for key, value in (tags or {}).items():
            argv += ["-tag", f"{key}={value}"]
        if auth:  # serf 0.8/0.9 has no -rpc-auth flag: the token comes from a config file
            config = tmp_path / f"{name}-auth.json"
            config.write_text(json.dumps({"rpc_auth": auth}))
            argv += ["-config-file", str(config)]
        log = tmp_path / f"serf-{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        agent = Agent(name, ip, bind, rpc, proc, log)
        agents.append(agent)
        wait_for(lambda: _rpc_listening(agent), f"serf agent {name} RPC on {rpc}")
        return agent

    yield start
    for agent in reversed(agents):
        if agent.alive():
            agent.proc.terminate()
            try:
                agent.proc.wait(5)
            except subprocess.TimeoutExpired:
                agent.proc.kill()
                agent.proc.wait(5)


def _rpc_listening(agent: Agent) -> bool:
    if not agent.alive():
        raise AssertionError(f"serf agent {agent.name} exited:\n{agent.log.read_text()[-2000:]}")
    host, port = agent.rpc.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=0.2).close()
        return True
    except OSError:
        return False


def _by_name(client: SerfClient) -> dict[str, dict]:
    return {m["Name"]: m for m in client.members()}


@pytest.fixture
def pair(start_agent) -> tuple[Agent, Agent]:
    """An LB agent and a web agent, joined over RPC."""
    lb = start_agent("lb", LB_IP, {"role": "lb"})
    web = start_agent("web1", WEB_IP, WEB_TAGS)
    with lb.client() as client:
        assert client.join([web.bind]) == 1
        wait_for(lambda: len(client.members_filtered(status="alive")) == 2, "both members alive")
    return lb, web


def test_handshake_and_members(start_agent):
    lb = start_agent("lb", LB_IP, {"role": "lb", "port": "80"})
    with lb.client() as client:
        [me] = client.members()
        assert client.stats()["agent"]["name"] == "lb"
    assert me["Name"] == "lb" and me["Status"] == "alive"
    assert me["Addr"] == ipaddress.IPv4Address(LB_IP) and isinstance(me["Addr"], ipaddress.IPv4Address)
    assert me["Tags"] == {"role": "lb", "port": "80"}
    assert me["Port"] == int(lb.bind.rsplit(":", 1)[1])


def test_members_filtered_by_tag_status_and_name(pair):
    lb, _ = pair
    with lb.client() as client:
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
    with web.client() as web_client, lb.client() as lb_client:
        web_client.tags(set={"weight": "5", "drain": "1"}, delete=["port"])
        wanted = {"role": "web", "weight": "5", "drain": "1"}
        wait_for(lambda: _by_name(lb_client)["web1"]["Tags"] == wanted, "new tags gossiped to lb")
        web_client.tags(delete=["drain"])
        wait_for(lambda: "drain" not in _by_name(lb_client)["web1"]["Tags"], "tag deletion gossiped")


def test_stream_sees_join_then_stop_keeps_client_usable(start_agent):
    lb = start_agent("lb", LB_IP, {"role": "lb"})
    web = start_agent("web1", WEB_IP, WEB_TAGS)
    with lb.client() as client:
        stream = client.stream()
        assert client.join([web.bind]) == 1  # join reply and stream records share the connection
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
    responder = web.client()
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
        with lb.client() as client:
            answers = client.query("load", b"how busy?", timeout=1.0, filter_tags={"role": "web"})
    finally:
        thread.join(10)
        responder.close()
    assert answers == {"web1": b"0.42"}
    assert seen and seen[0]["Event"] == "query" and seen[0]["Name"] == "load"
    assert seen[0]["Payload"] == b"how busy?"


def test_auth_token(start_agent):
    lb = start_agent("lb", LB_IP, {"role": "lb"}, auth="s3cret")
    with lb.client() as client, pytest.raises(SourceError, match="auth token is required"):
        client.members()
    with pytest.raises(SourceError, match="refused the RPC auth token") as err:
        lb.client(auth="wrong")
    assert lb.rpc in str(err.value)
    with lb.client(auth="s3cret") as client:
        assert [m["Name"] for m in client.members()] == ["lb"]


def test_unreachable_agent_says_so():
    addr = f"{LB_IP}:{free_port(LB_IP)}"
    with pytest.raises(SourceError, match=r"is `serf agent` running\?") as err:
        SerfClient(addr, timeout=1)
    assert addr in str(err.value)


def test_leave_exits_agent_and_force_leave_prunes(pair):
    lb, web = pair
    with web.client() as client:
        client.leave()
    wait_for(lambda: not web.alive(), "the web agent to exit after leave")
    with lb.client() as client:
        wait_for(lambda: _by_name(client)["web1"]["Status"] == "left", "lb to see web1 left")
        client.force_leave("web1", prune=True)  # frees the name for a replacement node
        wait_for(lambda: "web1" not in _by_name(client), "web1 pruned from lb's members")
