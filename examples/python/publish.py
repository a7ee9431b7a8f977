#!/usr/bin/env python3
"""Publishes items with gripcontrol's GripPubControl, as a backend does.

    python3 publish.py CHANNEL BODY [CHANNEL BODY ...] [--id ID] [--prev-id ID] [--basic USER:PASSWORD]
    python3 publish.py --stream CHANNEL CONTENT [CHANNEL CONTENT ...]
    python3 publish.py --close CHANNEL [CHANNEL ...]

Each BODY is an HttpResponseFormat (publish_http_response: it releases the clients held on CHANNEL). With
--stream, each CONTENT is an HttpStreamFormat instead (publish_http_stream: appended to the streams open on
CHANNEL, such as an SSE event); --close publishes HttpStreamFormat(close=True), which ends those streams.

GRIP_URL is the control API (default http://127.0.0.1:5561), with credentials as the client libraries read
them: ?iss=ISS&key=KEY signs a JWT (HS256, one hour), ?key=KEY sends a static bearer key; --basic sets Basic
credentials instead. The items are published asynchronously (GripPubControl's worker batches up to 10 per
request) and `finish()` waits until they are sent. Exits 0 when every item was published, else 1 with the
reason on stderr.
"""

import argparse
import os
import sys

from gripcontrol import GripPubControl, HttpResponseFormat, HttpStreamFormat, parse_grip_uri


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", metavar="CHANNEL BODY")
    parser.add_argument("--id")
    parser.add_argument("--prev-id")
    parser.add_argument("--basic", metavar="USER:PASSWORD")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--stream", action="store_true", help="publish http-stream content")
    kind.add_argument("--close", action="store_true", help="close the streams of each CHANNEL")
    args = parser.parse_args()
    if args.close:
        args.pairs = [part for channel in args.pairs for part in (channel, None)]
    elif len(args.pairs) % 2:
        parser.error("give CHANNEL BODY pairs")

    publisher = GripPubControl(parse_grip_uri(os.environ.get("GRIP_URL", "http://127.0.0.1:5561")))
    if args.basic:
        user, _, password = args.basic.partition(":")
        for client in publisher.clients:
            client.set_auth_basic(user, password)

    failures = []

    def done(ok, message):
        if not ok:
            failures.append(message)

    ids = {"id": args.id, "prev_id": args.prev_id, "callback": done}
    for channel, body in zip(args.pairs[::2], args.pairs[1::2]):
        if args.close:
            publisher.publish_http_stream(channel, HttpStreamFormat(close=True), **ids)
        elif args.stream:
            publisher.publish_http_stream(channel, HttpStreamFormat(body), **ids)
        else:
            publisher.publish_http_response(channel, HttpResponseFormat(body=body), **ids)
    publisher.finish()
    if failures:
        print(f"publish failed: {failures[0]}", file=sys.stderr)
        sys.exit(1)
    print("published")


if __name__ == "__main__":
    main()
