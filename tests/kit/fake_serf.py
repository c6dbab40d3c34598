"""The one fake of Serf: an RPC server on 127.0.0.1 speaking Serf's msgpack protocol.

Why a server and not a fake client: lbsync's own SerfClient (framing, Seq dispatch, Addr decoding,
the wording of its errors) is code under test, and a fake client would skip all of it. Real
agents are in the integration tests; this fake is for what a real agent cannot be made to do on
cue. Two ways to drive it:

* answering (the default): handshake, auth, members, members-filtered (Serf's anchored-regex
  filters), join, leave, force-leave, tags, stats, answered from `members` (records as
  kit.records.record builds them); monitor (unless `monitor=False`), whose subscribers get
  each line `log()` is given. `down()` makes the agent vanish (each request then gets its
  connection closed, as when an agent dies) until `up()`; `close()` stops listening for good.
  `commands` lists every command seen, `requests` every (header, body).
* scripted (`script=`): one client; `script(fake)` plays the agent's side request by request
  with `request()`, `reply()`, `send()`, `handshake()`. Replies go out in `chunk`-byte pieces
  (with `pause` between), so the client meets partial msgpack data as on a slow link.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable

import msgpack

NO_BODY = frozenset({"members", "leave", "stats"})  # requests Serf reads without a body


class Channel:
    """One client connection: reads whole msgpack objects, writes in chunks."""

    def __init__(self, sock: socket.socket, chunk: int = 0, pause: float = 0.0):
        self.sock, self.chunk, self.pause = sock, chunk, pause
        self.unpacker = msgpack.Unpacker(raw=False)

    def read(self):
        """The next object; EOFError when the client went away."""
        while True:
            try:
                return self.unpacker.unpack()
            except msgpack.OutOfData:
                data = self.sock.recv(65536)
                if not data:
                    raise EOFError("client went away") from None
                self.unpacker.feed(data)

    def send(self, *objs) -> None:
        data = b"".join(msgpack.packb(o, use_bin_type=True) for o in objs)
        step = self.chunk or len(data) or 1
        for i in range(0, len(data), step):
            self.sock.sendall(data[i:i + step])
            if self.pause:
                time.sleep(self.pause)  # so each chunk is its own recv() on the client's side

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class FakeSerf:
    """A Serf agent's RPC endpoint at `addr` (see the module docstring for the two modes)."""

    def __init__(self, members: list[dict] | None = None, *, name: str = "lb",
                 script: Callable[[FakeSerf], None] | None = None, chunk: int = 3, pause: float = 0.0,
                 monitor: bool = True):
        self.members = list(members or [])
        self.monitor = monitor
        self.monitors: list[tuple[Channel, int]] = []  # (connection, Seq) of each monitor request
        self.name = name
        self.commands: list[str] = []
        self.requests: list[tuple[dict, dict | None]] = []
        self.error: BaseException | None = None
        self.is_down = False
        self.channel: Channel | None = None  # the scripted client's connection
        self._open: set[Channel] = set()
        self._lock = threading.Lock()
        self.scripted = script is not None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self.listener.getsockname()[1]}"
        if script is None:
            self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        else:  # one client, whose requests the script answers
            self.thread = threading.Thread(target=self._scripted, args=(script, chunk, pause), daemon=True)
        self.thread.start()

    # -- controls ---------------------------------------------------------------------------

    def down(self) -> None:
        """The agent is gone: every request from now on gets its connection closed, unanswered."""
        self.is_down = True

    def up(self) -> None:
        self.is_down = False

    def log(self, line: str) -> None:
        """The agent logs `line`: every monitor subscriber gets it as a record."""
        for channel, seq in list(self.monitors):
            try:
                channel.send({"Seq": seq, "Error": ""}, {"Log": line})
            except OSError:
                self.monitors.remove((channel, seq))

    def close(self) -> None:
        """Stop listening (shutdown() wakes the accept(); close() alone would not), drop every
        connection, and re-raise what a script raised."""
        if self.scripted:
            self.thread.join(5)
            assert not self.thread.is_alive(), "fake agent script did not finish"
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self._lock:
            channels, self._open = list(self._open), set()
        for channel in channels:
            channel.close()
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    # -- scripted mode: the script plays the agent -------------------------------------------

    @property
    def conn(self) -> socket.socket:
        assert self.channel is not None
        return self.channel.sock

    def request(self, expect: str) -> int:
        """Read one request, check its command, return its Seq."""
        assert self.channel is not None
        header, body = self._read_request(self.channel)
        assert header["Command"] == expect, header
        return header["Seq"]

    def send(self, *objs) -> None:
        assert self.channel is not None
        self.channel.send(*objs)

    def reply(self, seq: int, body: dict | None = None, error: str = "") -> None:
        self.send({"Seq": seq, "Error": error}, *([] if body is None else [body]))

    def handshake(self) -> None:
        self.reply(self.request("handshake"))

    def _scripted(self, script: Callable[[FakeSerf], None], chunk: int, pause: float) -> None:
        try:
            self.listener.settimeout(5)
            sock, _ = self.listener.accept()
            sock.settimeout(5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.channel = Channel(sock, chunk, pause)
            script(self)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread by close()
            self.error = exc
        finally:
            if self.channel is not None:
                self.channel.close()
            self.listener.close()

    # -- answering mode ----------------------------------------------------------------------

    def _read_request(self, channel: Channel) -> tuple[dict, dict | None]:
        header = channel.read()
        body = None if header["Command"] in NO_BODY else channel.read()
        self.commands.append(header["Command"])
        self.requests.append((header, body))
        return header, body

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            channel = Channel(sock)
            with self._lock:
                self._open.add(channel)
            threading.Thread(target=self._serve, args=(channel,), daemon=True).start()

    def _serve(self, channel: Channel) -> None:
        try:
            while True:
                header, body = self._read_request(channel)
                if self.is_down:
                    break
                reply, answer = self._answer(header["Command"], body or {})
                channel.send({"Seq": header["Seq"], "Error": reply}, *([] if answer is None else [answer]))
                if header["Command"] == "monitor" and not reply:
                    self.monitors.append((channel, header["Seq"]))
        except (EOFError, OSError):
            pass
        finally:
            with self._lock:
                self._open.discard(channel)
            channel.close()

    def _answer(self, command: str, body: dict) -> tuple[str, dict | None]:
        """(error, reply body or None) for one request, as `serf agent` answers it."""
        if command in ("handshake", "auth", "leave", "force-leave"):
            return "", None
        if command == "members":
            return "", {"Members": list(self.members)}
        if command == "members-filtered":
            return "", {"Members": [m for m in self.members if _matches(m, body)]}
        if command == "join":
            return "", {"Num": len(body.get("Existing", []))}
        if command == "tags":
            return "", None
        if command == "stats":
            return "", {"agent": {"name": self.name}, "serf": self._counters()}
        if command == "monitor" and self.monitor:
            return "", None
        return f"Unsupported command: {command}", None


    def _counters(self) -> dict[str, str]:
        """Serf's member counters, as strings like the agent's: they move when members come,
        go or fail, not when a member only changes its tags (as with a real agent)."""
        statuses = [m.get("Status") for m in self.members]
        return {"members": str(len(statuses)), "failed": str(statuses.count("failed")),
                "left": str(statuses.count("left")), "member_time": "1"}


def _matches(member: dict, body: dict) -> bool:
    """Serf's members-filtered: every filter is a regex anchored at both ends."""
    def full(pattern: str, value: str) -> bool:
        return not pattern or re.fullmatch(pattern, value) is not None

    tags = member.get("Tags", {})
    return (all(key in tags and full(pattern, tags[key]) for key, pattern in body.get("Tags", {}).items())
            and full(body.get("Status", ""), member.get("Status", ""))
            and full(body.get("Name", ""), member.get("Name", "")))
