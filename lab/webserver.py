#!/usr/bin/env python3
"""A tiny web server for the lab and the tests: answers every GET with its node name.

Stands in for a real application on a web node. It logs each request to a file when asked
(`--access-log`), which is how a draining web agent sees that the LB stopped sending.
"""

import argparse
import http.server
import time


def make_handler(name: str, access_log: str | None, delay: float):
    body = f"{name}\n".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 (http.server's naming)
            if delay:
                time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Node", name)
            self.end_headers()
            self.wfile.write(body)
            if access_log:
                with open(access_log, "a") as handle:
                    handle.write(f"{time.time():.3f} {self.client_address[0]} {self.path}\n")

        def log_message(self, *args):
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True, help="text to answer with, e.g. serf-web1")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--access-log", help="append one line per request to this file")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering")
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer((args.bind, args.port),
                                             make_handler(args.name, args.access_log, args.delay))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
