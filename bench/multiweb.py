#!/usr/bin/env python3
"""Many tiny web servers in one process: each NAME=IP:PORT answers every request with NAME.

The benchmarks need up to ~100 web nodes; one Python process per node would cost ~20 MB and a
start-up each on a 2-core machine, so one asyncio process serves them all. It answers with
`Connection: close` (nginx opens a fresh upstream connection per request without `keepalive`).
Loopback addresses only: the benchmarks never send traffic anywhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress


def responder(name: str):
    body = f"{name}\n".encode()
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"X-Node: {name}\r\nConnection: close\r\n\r\n").encode()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(head + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    return answer


def parse_spec(text: str) -> tuple[str, str, int]:
    """'web1=127.0.2.1:8080' -> ('web1', '127.0.2.1', 8080); loopback only."""
    name, _, addr = text.partition("=")
    host, _, port = addr.rpartition(":")
    if not name or not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"multiweb: {text!r}: expected NAME=LOOPBACK_IP:PORT")
    return name, host, int(port)


async def serve(specs: list[tuple[str, str, int]]) -> None:
    servers = [await asyncio.start_server(responder(name), host, port, reuse_address=True)
               for name, host, port in specs]
    print(f"multiweb: serving {len(servers)} addresses", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="+", help="NAME=IP:PORT")
    asyncio.run(serve([parse_spec(spec) for spec in parser.parse_args().spec]))


if __name__ == "__main__":
    main()
