#!/usr/bin/env python3
"""A GRIP origin written with the `gripcontrol` library, to run behind grip-proxy (or Pushpin).

It serves one value that clients long-poll, or follow over Server-Sent Events:

  GET  /value   the value, with its ETag. A client that already has it (If-None-Match) is held by the proxy
                until the value changes: the hold is a GRIP instruct body (create_hold_response), or with
                ?via=headers GRIP headers (create_grip_channel_header). If nothing changes in time, the client
                gets 304 Not Modified.
  GET  /events  an SSE stream: the value now as a first event, then the proxy keeps the response open on the
                same channel (a stream hold: create_hold_stream, or with ?via=headers Grip-Hold: stream and an
                SSE comment as Grip-Keep-Alive).
  POST /value   sets the value and publishes it with GripPubControl, as one item with two formats: an
                HttpResponseFormat for the held clients and an HttpStreamFormat (an SSE event) for the streams.

Every request must carry a valid Grip-Sig (validate_sig): the proof that it came through the proxy.

    python3 -m venv venv && venv/bin/pip install -r examples/python/requirements.txt
    GRIP_SIG_KEY=changeme venv/bin/python examples/python/origin.py --port 8080 &
    grip-proxy --origin http://127.0.0.1:8080
    curl -i http://127.0.0.1:7999/value                             # "1" and the value
    curl -i -H 'If-None-Match: "1"' http://127.0.0.1:7999/value     # held ...
    curl -d 'new value' http://127.0.0.1:7999/value                 # ... until this
    curl -N http://127.0.0.1:7999/events                            # an event now, and one each change

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
    HttpStreamFormat,
    Response,
    create_grip_channel_header,
    create_hold_response,
    create_hold_stream,
    parse_grip_uri,
    validate_sig,
)
from pubcontrol import Item

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
        if url.path == "/events":
            return self.events(parse_qs(url.query).get("via") == ["headers"])
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

    def events(self, via_headers):
        """An SSE stream: the value now, then the proxy holds the response open on the channel. A change
        published between this answer and the proxy subscribing the stream is not seen by it."""
        with lock:
            first = "retry: 2000\n" + sse_event(state["version"], state["value"])
        sse = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        if via_headers:
            self.answer(200, first, {
                **sse,
                "Grip-Hold": "stream",
                "Grip-Channel": create_grip_channel_header(CHANNEL),
                # Backslash-n as two characters: the proxy decodes the cstring into ":" and two newlines.
                "Grip-Keep-Alive": ":\\n\\n; format=cstring; timeout=20",
            })
        else:
            instruct = create_hold_stream(CHANNEL, Response(code=200, headers=sse, body=first))
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
        # One item, two formats: held clients get the response, streams get the SSE event.
        update = Item(
            [
                HttpResponseFormat(code=200, headers={"ETag": etag}, body=value),
                HttpStreamFormat(sse_event(version, value)),
            ],
            id=str(version),
            prev_id=str(version - 1),
        )
        try:
            # Outside the lock: two updates may publish out of order; id and prev-id let the proxy reorder them.
            publisher.publish(CHANNEL, update, blocking=True)
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


def sse_event(version, value):
    """One SSE event: the version as its id, each line of the value as a data line."""
    lines = value.removesuffix("\n").replace("\r", "").split("\n")
    return f"id: {version}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


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
