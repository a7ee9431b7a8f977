#!/usr/bin/env python3
"""A GRIP origin written with the `gripcontrol` library, to run behind grip-proxy (or Pushpin).

It serves one value that clients long-poll:

  GET  /value   the value, with its ETag. A client that already has it (If-None-Match) is held by the proxy
                until the value changes: the hold is a GRIP instruct body (create_hold_response), or with
                ?via=headers GRIP headers (create_grip_channel_header). If nothing changes in time, the client
                gets 304 Not Modified.
  POST /value   sets the value and publishes it with GripPubControl: every held client gets it at once.

Every request must carry a valid Grip-Sig (validate_sig): the proof that it came through the proxy.

    python3 -m venv venv && venv/bin/pip install -r examples/python/requirements.txt
    GRIP_SIG_KEY=changeme venv/bin/python examples/python/origin.py --port 8080 &
    grip-proxy --origin http://127.0.0.1:8080
    curl -i http://127.0.0.1:7999/value                             # "1" and the value
    curl -i -H 'If-None-Match: "1"' http://127.0.0.1:7999/value     # held ...
    curl -d 'new value' http://127.0.0.1:7999/value                 # ... until this

Environment: GRIP_URL, the control API (default http://127.0.0.1:5561), with publish credentials as the client
libraries read them (?iss=ISS&key=KEY signs a JWT, ?key=KEY sends a bearer key); GRIP_SIG_KEY, the key of the
proxy's Grip-Sig (routes[].sig_key; default changeme); HOLD_TIMEOUT, seconds a client is held (default 55).
"""

import argparse
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from gripcontrol import (
    Channel,
    GripPubControl,
    HttpResponseFormat,
    Response,
    create_grip_channel_header,
    create_hold_response,
    parse_grip_uri,
    validate_sig,
)

CHANNEL = "value"
SIG_KEY = os.environ.get("GRIP_SIG_KEY", "changeme")
HOLD_TIMEOUT = int(os.environ.get("HOLD_TIMEOUT", "55"))
publisher = GripPubControl(parse_grip_uri(os.environ.get("GRIP_URL", "http://127.0.0.1:5561")))

lock = threading.Lock()
state = {"version": 1, "value": "first value\n"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the proxy pools its connections to the origin

    def do_GET(self):
        if not self.came_through_the_proxy():
            return
        url = urlsplit(self.path)
        if url.path != "/value":
            return self.answer(404, "not found\n")
        with lock:
            version, value = state["version"], state["value"]
        etag = f'"{version}"'
        if self.headers.get("If-None-Match") != etag:
            return self.answer(200, value, {"ETag": etag})
        # Up to date: hold the client until the next version. prev-id lets the proxy notice a client that
        # missed a version (it is then sent here again instead of waiting).
        channel = Channel(CHANNEL, prev_id=str(version))
        if parse_qs(url.query).get("via") == ["headers"]:
            self.answer(200, "", {
                "ETag": etag,
                "Grip-Hold": "response",
                "Grip-Channel": create_grip_channel_header(channel),
                "Grip-Timeout": str(HOLD_TIMEOUT),
                "Grip-Status": "304",
            })
        else:
            on_timeout = Response(code=304, headers={"ETag": etag})
            instruct = create_hold_response(channel, on_timeout, timeout=HOLD_TIMEOUT)
            self.answer(200, instruct, {"Content-Type": "application/grip-instruct"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.came_through_the_proxy():
            return
        if urlsplit(self.path).path != "/value":
            return self.answer(404, "not found\n")
        value = body.decode("utf-8", "replace")
        with lock:
            state["version"] += 1
            version = state["version"]
            state["value"] = value
        etag = f'"{version}"'
        update = HttpResponseFormat(code=200, headers={"ETag": etag}, body=value)
        try:
            # Outside the lock: two updates may publish out of order; id and prev-id let the proxy reorder them.
            publisher.publish_http_response(
                CHANNEL, update, id=str(version), prev_id=str(version - 1), blocking=True
            )
        except ValueError as e:
            return self.answer(502, f"publish failed: {e}\n")
        self.answer(200, value, {"ETag": etag})

    def came_through_the_proxy(self):
        if validate_sig(self.headers.get("Grip-Sig", ""), SIG_KEY):
            return True
        self.answer(403, "Grip-Sig missing or invalid: requests must come through the GRIP proxy\n")
        return False

    def answer(self, code, body, headers=None):
        data = body.encode("utf-8")
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        if VERBOSE:
            sys.stderr.write("origin.py: " + (format % args) + "\n")


VERBOSE = False


def main():
    global VERBOSE
    parser = argparse.ArgumentParser(description="A GRIP origin written with gripcontrol.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: any free port (printed)")
    parser.add_argument("--verbose", action="store_true", help="log each request on stderr")
    args = parser.parse_args()
    VERBOSE = args.verbose
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on http://{args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
