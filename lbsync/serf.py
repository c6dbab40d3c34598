"""A small client for the Serf agent's RPC (msgpack over TCP, see Serf's ``client/rpc_client.go``).

Why our own: serfclient needs ``pkg_resources`` (gone from modern venvs), lacks tags, leave,
query/respond, and cannot stop a stream (DESIGN.md section 5).

Wire format: every request is a header map ``{"Command", "Seq"}`` followed by a body map for
commands that take one. Every reply is a header ``{"Seq", "Error"}``, followed by a body only for
commands that return one. ``stream`` and ``query`` first get a body-less ack header; later headers
with the same Seq each carry one record, so records can arrive between the replies to other
requests. The reader therefore dispatches by Seq and queues records per open stream.

One TCP connection per `SerfClient`. It is **not thread-safe**: use one client per thread. A query
event must be answered (`respond`) on the client whose stream received it: Serf keeps pending
query IDs per connection.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol, Self

import msgpack

from .errors import SourceError
from .rules import DEFAULT_RPC_ADDR, split_hostport

MEMBER_EVENTS = "member-join,member-leave,member-failed,member-update,member-reap"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Commands used here whose reply header is followed by a body (ipc.go sends it even with an Error).
_BODY_REPLIES = {"members", "members-filtered", "join", "stats"}  # monitor's ack, like stream's, has none
# Errors the agent sends before dispatching the command, hence never with a body.
_BARE_ERRORS = {"Authentication required", "Handshake required", "Unsupported command"}
# join/leave/force-leave wait for gossip (broadcast timeout 5 s, memberlist TCP dial 10 s).
_GOSSIP_WAIT = 15.0
_QUERY_MARGIN = 2.0  # serf sends "done" at the query deadline; allow for scheduling


def decode_addr(raw: Any) -> IPAddress:
    """Serf's ``Addr`` (a Go net.IP: 4 or 16 raw bytes) -> an address object.

    Go often sends IPv4 in the 16-byte IPv4-mapped form; that becomes an IPv4Address so nginx
    gets ``10.0.0.5``, not ``::ffff:10.0.0.5``.
    """
    if isinstance(raw, bytes) and len(raw) == 4:
        return ipaddress.IPv4Address(raw)
    if isinstance(raw, bytes) and len(raw) == 16:
        addr = ipaddress.IPv6Address(raw)
        return addr.ipv4_mapped or addr
    size = f"{len(raw)} bytes" if isinstance(raw, bytes) else type(raw).__name__
    raise SourceError(f"serf sent a member address of {size}; expected 4 or 16 bytes")


def _decode_member(member: Any) -> dict:
    """Decode Addr; an undecodable one is passed on as it came, so members.py skips that member
    (with the reason logged) instead of one odd record failing the whole snapshot."""
    if not isinstance(member, dict):
        raise SourceError(f"serf sent a member that is not a map: {member!r:.80}")
    try:
        return {**member, "Addr": decode_addr(member.get("Addr"))}
    except SourceError:
        return member


def _decode_members(body: Any) -> list[dict]:
    members = body.get("Members") if isinstance(body, dict) else None
    if not isinstance(members, list):
        raise SourceError(f"serf sent a members reply without a Members list: {body!r:.80}")
    return [_decode_member(m) for m in members]


def _decode_record(rec: Any) -> dict:
    """Stream record -> dict with member addresses decoded and a missing Payload as b""."""
    if not isinstance(rec, dict):
        raise SourceError(f"serf sent a stream record that is not a map: {rec!r:.80}")
    if isinstance(rec.get("Members"), list):
        rec = {**rec, "Members": [_decode_member(m) for m in rec["Members"]]}
    if "Payload" in rec and rec["Payload"] is None:
        rec = {**rec, "Payload": b""}
    return rec


def _split_addr(addr: str) -> tuple[str, int]:
    """host:port (":7373" means loopback), with the config's own parser and a SourceError."""
    try:
        return split_hostport("127.0.0.1" + addr if addr.startswith(":") else addr)
    except ValueError:
        raise SourceError(f"bad serf RPC address {addr!r}: expected host:port") from None


class Stream:
    """Events from one ``stream`` request. Records queue here while the client does other work."""

    def __init__(self, client: SerfClient, seq: int):
        self.seq = seq
        self._client = client
        self._records: deque = deque()
        self.stopped = False

    def next(self, timeout: float | None = None) -> dict | None:
        """The next event, or None after `timeout` seconds (the client stays usable) or once stopped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._records and not self.stopped:
            if not self._client._pump(deadline):
                return None
        return _decode_record(self._records.popleft()) if self._records else None

    def __iter__(self) -> Iterator[dict]:
        while (record := self.next()) is not None:
            yield record

    def stop(self) -> None:
        """Ask the agent to stop; records still in flight for this Seq are read and dropped."""
        client = self._client
        if not self.stopped:
            self.stopped = True
            self._records.clear()
            client._channels.pop(self.seq, None)
            client._dead.add(self.seq)
            if client._sock is not None:  # a broken connection has stopped streaming anyway
                client._call("stop", {"Stop": self.seq})


class SerfClient:
    """One RPC connection to a Serf agent. Not thread-safe: use one client per thread."""

    def __init__(self, addr: str = DEFAULT_RPC_ADDR, auth: str = "", timeout: float = 5.0):
        self.addr, self.timeout = addr, timeout
        self._seq = 0
        self._pending: tuple[int, str] | None = None  # the one request awaiting its reply
        self._header: dict | None = None  # a header read whose body has not arrived yet
        self._answer: tuple[dict, Any] = ({}, None)  # header and body of the last reply
        self._channels: dict[int, deque] = {}  # open stream/query seq -> its record queue
        self._dead: set[int] = set()  # stopped/abandoned seqs whose late records are dropped
        self._unpacker = msgpack.Unpacker(raw=False, unicode_errors="replace")
        self._packer = msgpack.Packer(use_bin_type=True)
        try:
            self._sock: socket.socket | None = socket.create_connection(_split_addr(addr), timeout=timeout)
        except OSError as exc:
            raise SourceError(f"cannot reach serf agent at {addr}: is `serf agent` running?") from exc
        try:
            self._call("handshake", {"Version": 1})
            if auth:
                self._call("auth", {"AuthKey": auth})
        except SourceError:
            self.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- commands -----------------------------------------------------------------------------

    def members(self) -> list[dict]:
        return _decode_members(self._call("members"))

    def members_filtered(
        self, tags: dict[str, str] | None = None, status: str = "", name: str = ""
    ) -> list[dict]:
        """Members whose tags/status/name match. Serf treats every value as an anchored Go regex
        and drops the connection (SourceError "connection closed") when one does not compile."""
        body = {"Tags": tags or {}, "Status": status, "Name": name}
        return _decode_members(self._call("members-filtered", body))

    def tags(self, set: dict[str, str] | None = None, delete: list[str] | None = None) -> None:
        self._call("tags", {"Tags": set or {}, "DeleteTags": delete or []})

    def join(self, addrs: list[str], replay: bool = False) -> int:
        """Join the cluster through `addrs`; returns how many of them were contacted."""
        return self._call("join", {"Existing": addrs, "Replay": replay}, _GOSSIP_WAIT)["Num"]

    def leave(self) -> None:
        """Gracefully leave the cluster; the agent then shuts down and closes this connection."""
        self._call("leave", None, _GOSSIP_WAIT)

    def force_leave(self, node: str, prune: bool = False) -> None:
        """Mark a failed node left; `prune` also forgets it so its name can be reused at once."""
        self._call("force-leave", {"Node": node, "Prune": prune}, _GOSSIP_WAIT)

    def stats(self) -> dict:
        return self._call("stats")

    def stream(self, types: str = MEMBER_EVENTS) -> Stream:
        """Subscribe to events (Serf filter syntax, e.g. ``"member-join,query:load"``)."""
        return self._subscribe("stream", {"Type": types})

    def monitor(self, level: str = "INFO") -> Stream:
        """Subscribe to the agent's log lines at `level` and above (records: {"Log": line}).

        Unlike event streams they are not coalesced: "serf: EventMemberJoin: NAME ADDR" is logged
        as the agent learns of the join. The agent first replays its recent lines."""
        return self._subscribe("monitor", {"LogLevel": level})

    def _subscribe(self, command: str, body: dict) -> Stream:
        self._call(command, body)  # the ack; records follow under the same Seq
        stream = Stream(self, self._seq)
        self._channels[self._seq] = stream._records
        return stream

    def query(
        self,
        name: str,
        payload: bytes = b"",
        timeout: float = 2.0,
        filter_nodes: list[str] | None = None,
        filter_tags: dict[str, str] | None = None,
    ) -> dict[str, bytes]:
        """Ask the cluster; returns {node: payload}. Serf sends "done" only at the deadline, even
        when every node has answered, so this always blocks for about `timeout` seconds."""
        body = {"FilterNodes": filter_nodes or [], "FilterTags": filter_tags or {}, "RequestAck": False}
        body |= {"RelayFactor": 0, "Timeout": int(timeout * 1e9), "Name": name, "Payload": payload}
        self._call("query", body)  # the ack; records follow under the same Seq
        seq = self._seq
        records = self._channels[seq] = deque()
        deadline = time.monotonic() + timeout + _QUERY_MARGIN
        answers: dict[str, bytes] = {}
        try:
            while records or self._pump(deadline):
                while records:
                    rec = _decode_record(records.popleft())
                    if rec.get("Type") == "done":
                        return answers
                    # From "" is no answer: at its deadline Serf closes the query's channels, and
                    # its stream (a select on them and a timer) sends their zero values until the
                    # timer fires ("done")
                    if rec.get("Type") == "response" and rec.get("From"):
                        answers[rec["From"]] = rec.get("Payload") or b""
            self._dead.add(seq)  # no "done" in time: drop whatever still comes for it
            return answers
        finally:
            self._channels.pop(seq, None)

    def respond(self, query_id: int, payload: bytes) -> None:
        """Answer a query event's ``ID`` (must be this client's stream, before the query times out)."""
        self._call("respond", {"ID": query_id, "Payload": payload})

    # -- plumbing -----------------------------------------------------------------------------

    def _call(self, command: str, body: dict | None = None, wait: float = 0.0) -> Any:
        """Send one request and read until its reply, queueing stream records met on the way."""
        if self._sock is None:
            raise SourceError(f"serf agent at {self.addr}: {command}: client is closed")
        self._seq += 1
        data = self._packer.pack({"Command": command, "Seq": self._seq})
        if body is not None:
            data += self._packer.pack(body)
        try:
            self._sock.settimeout(self.timeout)
            self._sock.sendall(data)
        except OSError as exc:
            raise self._broken(f"sending {command} failed: {exc}") from exc
        self._pending = (self._seq, command)
        wait = max(wait, self.timeout)
        deadline = time.monotonic() + wait
        while self._pending is not None:
            if not self._pump(deadline):
                raise self._broken(f"no reply within {wait:g}s")
        header, body = self._answer
        error = header.get("Error") or ""
        if error == "Invalid authentication token":
            raise SourceError(f"serf agent at {self.addr} refused the RPC auth token")
        if error == "Authentication required":
            raise SourceError(f"serf agent at {self.addr}: {command}: an RPC auth token is required")
        if error:
            raise SourceError(f"serf agent at {self.addr}: {command}: {error}")
        return body

    def _pump(self, deadline: float | None) -> bool:
        """Read one message and route it; False if `deadline` passed first."""
        if self._header is None:
            header = self._read(deadline)
            if header is _TIMEOUT:
                return False
            if not isinstance(header, dict) or not isinstance(header.get("Seq"), int):
                raise self._broken(f"malformed reply header {header!r:.80}")
            self._header = header
        header, seq = self._header, self._header["Seq"]
        pending = self._pending if self._pending is not None and self._pending[0] == seq else None
        if pending:
            wants_body = pending[1] in _BODY_REPLIES and header.get("Error") not in _BARE_ERRORS
        elif seq in self._channels or seq in self._dead:
            wants_body = True
        else:
            raise self._broken(f"reply for unknown request {seq}")
        body = self._read(deadline) if wants_body else None
        if body is _TIMEOUT:
            return False  # keep self._header; the body is read on the next call
        self._header = None
        if pending:
            self._pending, self._answer = None, (header, body)
        elif seq in self._channels:
            self._channels[seq].append(body)
        return True

    def _read(self, deadline: float | None) -> Any:
        """One msgpack object from the socket, buffering partial data; _TIMEOUT at `deadline`."""
        while True:
            try:
                return self._unpacker.unpack()
            except msgpack.OutOfData:
                pass
            except (ValueError, msgpack.UnpackException) as exc:
                raise self._broken(f"undecodable data: {exc}") from exc
            if self._sock is None:
                raise SourceError(f"serf agent at {self.addr}: client is closed")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return _TIMEOUT
            try:
                self._sock.settimeout(remaining)
                data = self._sock.recv(65536)
            except TimeoutError:
                return _TIMEOUT
            except OSError as exc:
                raise self._broken(f"read failed: {exc}") from exc
            if not data:
                raise self._broken("connection closed")
            self._unpacker.feed(data)

    def _broken(self, why: str) -> SourceError:
        """Close (the stream position is unknown now) and describe the failure."""
        self.close()
        doing = f"{self._pending[1]}: " if self._pending else ""
        return SourceError(f"serf agent at {self.addr}: {doing}{why}")


_TIMEOUT = object()


class RpcTarget(Protocol):
    """Settings that say where a Serf agent's RPC is: the LB's core settings or a web node's."""

    @property
    def rpc_addr(self) -> str: ...

    @property
    def rpc_auth(self) -> str: ...


def connect(target: RpcTarget) -> SerfClient:
    """The one way lbsync opens an RPC connection: address, token and timeout from settings."""
    return SerfClient(target.rpc_addr, target.rpc_auth, getattr(target, "rpc_timeout", 5.0))


def lb_members(client: SerfClient, settings: Any) -> list[dict]:
    """The records a reconcile needs: members of our role, or with [[pool]] tables every member
    (a pool follows a role tag or a node's port_ROLE service tag, which Serf cannot filter on)."""
    if settings.pools:
        return client.members()
    return client.members_filtered(tags={"role": settings.role})


class SerfSource:
    """Members of our role(s) from the local Serf agent: one connection per snapshot."""

    def __init__(self, settings: Any):
        self.settings = settings

    def members(self) -> list[dict]:
        with connect(self.settings) as client:
            return lb_members(client, self.settings)
