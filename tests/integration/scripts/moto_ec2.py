"""moto's EC2 backend over HTTP on loopback, shaped so libcloud's EC2 drivers can talk to it.

`python moto_ec2.py PORTFILE LOG` listens on 127.0.0.1 (a free port, written to PORTFILE once
serving) and appends each request's Action to LOG (the tests assert which calls were made).
The shim fixes what would otherwise make libcloud see *empty lists without an error*:

* any path (Eucalyptus' /services/Eucalyptus) is served as "/";
* SigV2 requests (libcloud's EucNodeDriver) carry no Authorization header: one in SigV4 form
  is added, as moto reads the service and region from it;
* moto's XML namespace lacks the trailing "/" libcloud's parsers expect: it is added.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import parse_qs

from moto.moto_server.werkzeug_app import create_backend_app
from werkzeug.serving import make_server

NAMESPACE = b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15"'
SIGV4 = ("AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/ec2/aws4_request, "
         "SignedHeaders=host;x-amz-date, Signature=0")


def shim(app, log: Path):
    def wsgi(environ, start_response):
        environ["PATH_INFO"] = "/"
        environ.setdefault("HTTP_AUTHORIZATION", SIGV4)
        size = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(size) if size else b""
        query = parse_qs(environ.get("QUERY_STRING", "")) | parse_qs(body.decode(errors="replace"))
        with log.open("a") as out:
            out.write(" ".join(query.get("Action", ["?"])) + "\n")
        import io

        environ["wsgi.input"] = io.BytesIO(body)
        captured = {}

        def start(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers

        chunks = b"".join(app(environ, start)).replace(NAMESPACE, NAMESPACE[:-1] + b'/"')
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        start_response(captured["status"], headers + [("Content-Length", str(len(chunks)))])
        return [chunks]
    return wsgi


def main() -> None:
    portfile, log = Path(sys.argv[1]), Path(sys.argv[2])
    server = make_server("127.0.0.1", 0, shim(create_backend_app("ec2"), log), threaded=True)
    portfile.write_text(str(server.server_port))
    server.serve_forever()


if __name__ == "__main__":
    main()
