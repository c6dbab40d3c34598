#!/usr/bin/env python3
"""A tiny TCP service for the lab and the tests: each line it reads comes back as `NAME: LINE`.

Stands in for a TCP backend (a database read replica, a cache) behind a TCP pool, so the bytes
that go through nginx's stream proxy can be seen end to end:
    printf 'ping\\n' | nc 127.0.0.1 6380   ->   echo1: ping
"""

from __future__ import annotations

import argparse
import signal
import socketserver
import sys


class Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(self.server.name + b": " + line.rstrip(b"\r\n") + b"\n")  # type: ignore[attr-defined]


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="what every answer starts with")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = Server((args.bind, args.port), Echo)
    server.name = args.name.encode()  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"echo {args.name} on {args.bind}:{args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
