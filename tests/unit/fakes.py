"""Unit-test fakes: a Serf RPC endpoint that serves fixed member records, and a fake nginx.

They exercise lbsync's own code paths (process start, env, stdin, RPC framing, install) without
claiming anything about real serf or nginx; the integration tests do that.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import msgpack


class FakeSerf:
    """Answers handshake, auth, members and members-filtered over msgpack, like `serf agent`."""

    def __init__(self, members: list[dict]):
        self.members = members
        self.commands: list[str] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        """Stop listening now: shutdown() wakes the thread blocked in accept(); close() alone would not."""
        try:
            self.server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.server.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        with conn:
            while chunk := conn.recv(65536):
                unpacker.feed(chunk)
                for message in unpacker:
                    self._answer(conn, unpacker, message)

    def _answer(self, conn, unpacker, header) -> None:
        command, seq = header["Command"], header["Seq"]
        self.commands.append(command)
        if command in ("handshake", "auth", "members-filtered"):
            next(unpacker)  # the request body
        reply = msgpack.packb({"Seq": seq, "Error": ""}, use_bin_type=True)
        if command.startswith("members"):
            reply += msgpack.packb({"Members": self.members}, use_bin_type=True)
        conn.sendall(reply)


def member(name: str, ip: str, status: str = "alive", **tags) -> dict:
    """A member record exactly as Serf's RPC sends it (Addr as 4 raw bytes)."""
    return {"Name": name, "Addr": socket.inet_aton(ip), "Port": 7946, "Status": status,
            "Tags": {"role": "web", **tags}, "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
            "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4}


def fake_nginx(directory: Path, exit_code: int = 0) -> Path:
    """An executable that records each invocation's arguments and exits with `exit_code`."""
    script = directory / "fake-nginx"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{directory}/nginx-calls"\n'
                      f'[ {exit_code} -eq 0 ] || echo "nginx: [emerg] fake refusal" >&2\n'
                      f"exit {exit_code}\n")
    script.chmod(0o755)
    return script
