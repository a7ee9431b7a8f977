#!/usr/bin/env python3
"""Reads a Server-Sent Events stream with `sseclient-py` (over `requests`) and prints what it gets, as a browser's
EventSource would see it, one JSON object a line, as soon as it arrives:

    {"status": 200, "content-type": "text/event-stream"}      the response head, first
    {"id": "2", "event": "message", "data": "second value"}    then each event, in order

It exits when the stream ends (0), or at once if the answer is not an event stream (1).

    venv/bin/python examples/python/sse_client.py http://127.0.0.1:7999/events
"""

import json
import sys

import requests
import sseclient


def main():
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} URL")
    response = requests.get(sys.argv[1], stream=True, headers={"Accept": "text/event-stream"})
    content_type = response.headers.get("Content-Type", "")
    print(json.dumps({"status": response.status_code, "content-type": content_type}), flush=True)
    if response.status_code != 200 or not content_type.startswith("text/event-stream"):
        sys.exit(1)
    for event in sseclient.SSEClient(response).events():
        print(json.dumps({"id": event.id, "event": event.event, "data": event.data}), flush=True)


if __name__ == "__main__":
    main()
