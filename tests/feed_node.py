"""A fake media server for the collector's hostile-node tests: a real HTTP
server in its own process answering ``GET /v2/feed/cdrs`` with crafted NDJSON.

    python tests/feed_node.py PLAN.json     # prints "feed node on PORT"

The plan (JSON, re-read at every request, so a test can change it while the
node runs):

- ``lines``: a file of NDJSON records, each with its ``seq`` (what a node
  serves); a request gets those after ``after=``, at most ``limit=``;
- ``rate``: when set, only the first ``rate * seconds since start`` records
  exist yet (a node taking calls at a steady pace);
- ``db_id``: the ``X-DB-ID`` header; ``"flap"`` answers a new one every time;
- ``tail``: what follows the records (the answer then chunked, each piece
  one chunk in its own write): ``"onebyte"`` a 1 MiB line in 1-byte writes, ``"trickle"`` one byte a
  second forever, ``"drip"`` 1 KiB of empty lines every 0.1 s, forever.

Each request is appended to the ``requests`` file of the plan as one JSON
line (time, after, db_id answered).
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
import uuid

ONE_MIB = 1 << 20


class Plan:
    def __init__(self, path: str) -> None:
        self.path = path
        self.started = time.time()
        self._lines_path: str | None = None
        self._lines_mtime = 0.0
        self._lines: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()

    def read(self) -> dict:
        with open(self.path) as handle:
            return json.load(handle)

    def lines(self, plan: dict) -> list[tuple[int, bytes]]:
        path = plan.get("lines")
        if not path:
            return []
        with self._lock:
            mtime = os.stat(path).st_mtime
            if path != self._lines_path or mtime != self._lines_mtime:
                with open(path, "rb") as handle:
                    raw = [line.rstrip(b"\n") for line in handle if line.strip()]
                self._lines = [(json.loads(line)["seq"], line) for line in raw]
                self._lines_path, self._lines_mtime = path, mtime
            return self._lines


def handler(plan: Plan):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 -- http.server's name
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            after = int(query.get("after", ["0"])[0])
            limit = int(query.get("limit", ["10000"])[0])
            current = plan.read()
            db_id = current.get("db_id", "db-fake")
            if db_id == "flap":
                db_id = uuid.uuid4().hex
            records = plan.lines(current)
            if current.get("rate"):
                records = records[: int((time.time() - plan.started) * current["rate"])]
            picked = [line for seq, line in records if seq > after][:limit]
            body = b"".join(line + b"\n" for line in picked)
            with open(current["requests"], "a") as log:
                log.write(json.dumps({"t": time.time(), "after": after, "db_id": db_id}) + "\n")
            tail = current.get("tail")
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("X-DB-ID", db_id)
            if not tail:
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            # Streamed like a real node (chunked), then the tail, each piece
            # its own chunk and its own write.
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sock = self.connection
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def chunk(data: bytes) -> None:
                sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))

            try:
                if body:
                    chunk(body)
                if tail == "onebyte":
                    for _ in range(ONE_MIB):
                        chunk(b"x")
                    chunk(b"\n")
                elif tail == "trickle":
                    while True:
                        chunk(b" ")
                        time.sleep(1.0)
                elif tail == "drip":
                    while True:
                        chunk(b"\n" * 1024)
                        time.sleep(0.1)
                sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass

        def log_message(self, *args):
            pass

    return Handler


def main() -> None:
    plan = Plan(sys.argv[1])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler(plan))
    server.daemon_threads = True
    print("feed node on %d" % server.server_address[1], flush=True)
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
