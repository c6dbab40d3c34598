"""The Serf RPC codec without a real agent: address decoding, and framing/dispatch against the
kit's fake agent, scripted, dribbling its replies a few bytes at a time."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable

import msgpack
import pytest
from kit.fake_serf import FakeSerf
from kit.records import record

from lbsync import serf
from lbsync.errors import SourceError
from lbsync.serf import SerfClient, decode_addr


@pytest.fixture
def fake(fake_serf):
    """A scripted fake agent: `fake(script, chunk, pause)` (kit.fake_serf.FakeSerf)."""

    def start(script: Callable[[FakeSerf], None], chunk: int = 3, pause: float = 0.0) -> FakeSerf:
        return fake_serf(script=script, chunk=chunk, pause=pause)

    return start


# -- decode_addr ------------------------------------------------------------------------------


def test_decode_addr_ipv4():
    assert decode_addr(bytes([10, 0, 0, 5])) == ipaddress.IPv4Address("10.0.0.5")


def test_decode_addr_ipv6():
    raw = ipaddress.IPv6Address("2001:db8::7").packed
    assert decode_addr(raw) == ipaddress.IPv6Address("2001:db8::7")


def test_decode_addr_ipv4_mapped_becomes_ipv4():
    raw = ipaddress.IPv6Address("::ffff:192.0.2.9").packed
    addr = decode_addr(raw)
    assert isinstance(addr, ipaddress.IPv4Address) and str(addr) == "192.0.2.9"


@pytest.mark.parametrize("raw", [b"", b"\x01\x02\x03", b"\x00" * 5, b"\x00" * 15, b"\x00" * 17])
def test_decode_addr_bad_length(raw):
    with pytest.raises(SourceError, match=f"{len(raw)} bytes"):
        decode_addr(raw)


@pytest.mark.parametrize("raw", ["10.0.0.1", None, 167772161])
def test_decode_addr_not_bytes(raw):
    with pytest.raises(SourceError, match="address"):
        decode_addr(raw)


# -- framing and dispatch ---------------------------------------------------------------------


def test_members_reply_split_into_tiny_chunks(fake):
    def script(a: FakeSerf) -> None:
        a.handshake()
        a.reply(a.request("members"), {"Members": [record("web1", "::ffff:127.0.0.2")]})

    agent = fake(script, chunk=1, pause=0.001)
    with SerfClient(agent.addr) as client:
        [member] = client.members()
    assert member["Addr"] == ipaddress.IPv4Address("127.0.0.2")
    assert member["Tags"] == {"role": "web"} and member["Name"] == "web1"
    assert agent.requests[0] == ({"Command": "handshake", "Seq": 1}, {"Version": 1})


def test_non_utf8_tag_is_replaced_not_fatal(fake):
    def script(a: FakeSerf) -> None:
        a.handshake()
        seq = a.request("members")
        # Hand-built: a str-typed msgpack value holding invalid UTF-8.
        bad = b"\xa2\xff\xfe"
        body = msgpack.packb({"Members": [record("x", "127.0.0.1", role="PLACEHOLDER")]})
        a.conn.sendall(msgpack.packb({"Seq": seq, "Error": ""}) + body.replace(b"\xabPLACEHOLDER", bad))

    with SerfClient(fake(script).addr) as client:
        [member] = client.members()
    assert member["Tags"]["role"] == "\ufffd\ufffd"


def test_stream_records_queue_while_other_requests_run(fake):
    def script(a: FakeSerf) -> None:
        a.handshake()
        stream_seq = a.request("stream")
        a.reply(stream_seq)  # the ack: header only
        members_seq = a.request("members")
        a.reply(stream_seq, {"Event": "member-join", "Members": [record("a", "10.0.0.1", role=None)]})
        a.reply(stream_seq, {"Event": "user", "Name": "deploy", "Payload": None})
        a.reply(members_seq, {"Members": []})
        a.reply(a.request("respond"))
        a.reply(a.request("stats"), {})

    with SerfClient(fake(script).addr) as client:
        stream = client.stream("member-join,user")
        assert client.members() == []
        client.respond(1, b"ok")
        first, second = stream.next(1), stream.next(1)
        assert stream.next(0.05) is None  # nothing more queued; the connection stays usable
        assert client.stats() == {}
    assert first["Event"] == "member-join"
    assert first["Members"][0]["Addr"] == ipaddress.IPv4Address("10.0.0.1")
    assert second == {"Event": "user", "Name": "deploy", "Payload": b""}


def test_next_times_out_between_header_and_body_and_resumes(fake):
    gate = threading.Event()

    def script(a: FakeSerf) -> None:
        a.handshake()
        seq = a.request("stream")
        a.reply(seq)
        a.send({"Seq": seq, "Error": ""})
        gate.wait(5)
        a.send({"Event": "member-leave", "Members": []})
        a.reply(a.request("stats"), {"agent": {"name": "lb"}})

    with SerfClient(fake(script).addr) as client:
        stream = client.stream()
        assert stream.next(0.2) is None  # header arrived, body not yet
        gate.set()
        assert stream.next(2) == {"Event": "member-leave", "Members": []}
        assert client.stats() == {"agent": {"name": "lb"}}


def test_stop_discards_records_before_and_after_stop_reply(fake):
    def script(a: FakeSerf) -> None:
        a.handshake()
        seq = a.request("stream")
        a.reply(seq)
        stop_seq = a.request("stop")
        assert a.requests[-1][1] == {"Stop": seq}
        a.reply(seq, {"Event": "member-join", "Members": []})
        a.reply(stop_seq)
        a.reply(seq, {"Event": "member-update", "Members": []})  # late, still in flight
        a.reply(a.request("join"), {"Num": 2})

    with SerfClient(fake(script).addr) as client:
        stream = client.stream()
        stream.stop()
        assert client.join(["10.0.0.1", "10.0.0.2"]) == 2
        assert stream.next(0) is None and list(stream) == []


def test_query_collects_responses_until_done(fake):
    def script(a: FakeSerf) -> None:
        a.handshake()
        seq = a.request("query")
        a.reply(seq)
        a.reply(seq, {"Type": "ack", "From": "web1", "Payload": None})
        a.reply(seq, {"Type": "response", "From": "web1", "Payload": b"0.25"})
        a.reply(seq, {"Type": "response", "From": "web2", "Payload": None})
        a.reply(seq, {"Type": "done", "From": "", "Payload": None})

    agent = fake(script)
    with SerfClient(agent.addr) as client:
        answers = client.query("load", b"?", timeout=1.5, filter_tags={"role": "web"})
    assert answers == {"web1": b"0.25", "web2": b""}
    body = agent.requests[1][1]
    assert body["Timeout"] == 1_500_000_000 and body["Name"] == "load" and body["Payload"] == b"?"
    assert body["FilterTags"] == {"role": "web"} and body["FilterNodes"] == []


def test_query_ignores_the_senderless_records_serf_sends_as_its_channels_close(fake):
    """Serf's query stream selects on its response channel and a deadline timer; at the deadline
    the channel is closed first and reads as zero records ({"From": "", "Payload": nil}) until the
    timer wins. Seen in a real run as an answer from node ''."""
    def script(a: FakeSerf) -> None:
        a.handshake()
        seq = a.request("query")
        a.reply(seq)
        a.reply(seq, {"Type": "response", "From": "web1", "Payload": b"0.42"})
        a.reply(seq, {"Type": "response", "From": "", "Payload": None})
        a.reply(seq, {"Type": "response", "From": "", "Payload": None})
        a.reply(seq, {"Type": "done", "From": "", "Payload": None})

    with SerfClient(fake(script).addr) as client:
        assert client.query("load", timeout=1.0) == {"web1": b"0.42"}


def test_query_without_done_returns_at_margin_and_drops_late_records(fake, monkeypatch):
    monkeypatch.setattr(serf, "_QUERY_MARGIN", 0.1)
    late = threading.Event()

    def script(a: FakeSerf) -> None:
        a.handshake()
        seq = a.request("query")
        a.reply(seq)
        a.reply(seq, {"Type": "response", "From": "web1", "Payload": b"1"})
        late.wait(5)
        members_seq = a.request("members")
        a.reply(seq, {"Type": "done", "From": "", "Payload": None})
        a.reply(members_seq, {"Members": []})

    with SerfClient(fake(script).addr) as client:
        assert client.query("load", timeout=0.1) == {"web1": b"1"}
        late.set()
        assert client.members() == []


def test_stop_on_a_broken_connection_does_not_raise(fake):
    def script(a: FakeSerf) -> None:
        a.handshake()
        a.reply(a.request("stream"))

    with SerfClient(fake(script).addr) as client:
        stream = client.stream()
        with pytest.raises(SourceError, match="connection closed"):
            stream.next(2)
        stream.stop()
        assert stream.next() is None


def test_error_reply_names_agent_and_command(fake):
    def script(a: FakeSerf) -> None:
        a.handshake()
        a.reply(a.request("respond"), error="No pending queries matching ID")
        # "Authentication required" comes without a body, even for members.
        a.reply(a.request("members"), error="Authentication required")
        a.reply(a.request("members"), {"Members": []})

    agent = fake(script)
    with SerfClient(agent.addr) as client:
        with pytest.raises(SourceError) as err:
            client.respond(7, b"x")
        assert str(err.value) == f"serf agent at {agent.addr}: respond: No pending queries matching ID"
        with pytest.raises(SourceError, match="auth token"):
            client.members()
        assert client.members() == []


def test_auth_refused(fake):
    def script(a: FakeSerf) -> None:
        a.handshake()
        a.reply(a.request("auth"), error="Invalid authentication token")

    agent = fake(script)
    with pytest.raises(SourceError, match="refused the RPC auth token") as err:
        SerfClient(agent.addr, auth="wrong")
    assert agent.addr in str(err.value)


def test_read_timeout_names_address(fake):
    done = threading.Event()

    def script(a: FakeSerf) -> None:
        a.handshake()
        a.request("members")
        done.wait(5)

    agent = fake(script)
    client = SerfClient(agent.addr, timeout=0.3)
    with pytest.raises(SourceError, match=f"serf agent at {agent.addr}: members: no reply"):
        client.members()
    done.set()
    with pytest.raises(SourceError, match="closed"):
        client.members()


def test_connection_closed_names_address(fake):
    def script(a: FakeSerf) -> None:
        a.handshake()
        a.request("members")

    agent = fake(script)
    with SerfClient(agent.addr) as client, pytest.raises(SourceError) as err:
        client.members()
    assert str(err.value) == f"serf agent at {agent.addr}: members: connection closed"


def test_unreachable_agent():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(SourceError) as err:
        SerfClient(addr, timeout=1)
    assert str(err.value) == f"cannot reach serf agent at {addr}: is `serf agent` running?"


@pytest.mark.parametrize("addr", ["localhost", "127.0.0.1:http", ""])
def test_bad_address(addr):
    with pytest.raises(SourceError, match="host:port"):
        SerfClient(addr)
