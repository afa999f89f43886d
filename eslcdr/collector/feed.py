"""Pulling one node's feed: HTTP, NDJSON lines, checked records.

``GET /v2/feed/cdrs?after=N&limit=L`` with ``Accept: application/x-ndjson``
answers one JSON record per line, in seq order, and the database's id in
the ``X-DB-ID`` header.  NDJSON rather than JSON pages: the records are
parsed and written while the response is still arriving, memory holds one
batch whatever the page size, and a connection cut mid-stream keeps every
complete line before the cut (bench/collect.py has the figures).

``LineSplitter`` is sans-IO: bytes in, complete lines out, and a line that
grows past ``max_line`` bytes without its newline raises ``RecordTooLarge``
(memory stays bounded whatever a node sends).  ``parse_record`` checks one
line: valid UTF-8 JSON object, an integer ``seq`` above the previous one,
a ``call_id`` string and a usable hangup time.  A line whose seq cannot be
read stops the pull (``FeedProtocolError``: retried, never skipped); a
line with a good seq but a bad body becomes a ``Rejected`` item that the
store keeps in ``collector_rejects`` while the cursor moves past it.

``FeedClient`` holds one keep-alive connection to the node; every socket
operation has ``timeout`` (a stalled node raises, it never hangs the
worker), and any error closes the connection so the next pull starts clean.
"""

from __future__ import annotations

import http.client
import urllib.parse
from dataclasses import dataclass
from typing import Iterator

import orjson

from .. import __version__
from .pgstore import FeedRecord, Rejected, hangup_micros

FEED_PATH = "/v2/feed/cdrs"
READ_CHUNK = 256 * 1024
ERROR_BODY_BYTES = 2048


class FeedError(Exception):
    """The node answered something other than a feed."""


class FeedProtocolError(FeedError):
    """A line of the feed cannot be used (no readable seq, seq going back)."""


class RecordTooLarge(FeedProtocolError):
    """A line longer than max_record_bytes."""


# Transport errors: worth a retry after a backoff.
TRANSPORT_ERRORS = (OSError, http.client.HTTPException, FeedError)


class LineSplitter:
    """Bytes in, complete ``\\n``-terminated lines out (without the newline)."""

    def __init__(self, max_line: int) -> None:
        self._max = max_line
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        end = buf.rfind(b"\n")
        if end < 0:
            if len(buf) > self._max:
                raise RecordTooLarge("a feed line exceeds %d bytes" % self._max)
            return []
        lines = bytes(buf[:end]).split(b"\n")
        del buf[: end + 1]
        for line in lines:
            if len(line) > self._max:
                raise RecordTooLarge("a feed line exceeds %d bytes" % self._max)
        if len(buf) > self._max:
            raise RecordTooLarge("a feed line exceeds %d bytes" % self._max)
        return [line for line in lines if line.strip()]

    @property
    def pending(self) -> int:
        """Bytes of an incomplete last line (dropped if the stream ends)."""
        return len(self._buf)


def parse_record(line: bytes, previous_seq: int) -> FeedRecord | Rejected:
    try:
        doc = orjson.loads(line)  # also checks the bytes are UTF-8
    except orjson.JSONDecodeError as exc:
        raise FeedProtocolError("feed line after seq %d is not UTF-8 JSON: %s" % (previous_seq, exc)) from None
    if type(doc) is not dict:
        raise FeedProtocolError("feed line after seq %d is not a JSON object" % previous_seq)
    seq = doc.get("seq")
    if type(seq) is not int:
        raise FeedProtocolError("feed line after seq %d has no integer seq" % previous_seq)
    if seq <= previous_seq:
        raise FeedProtocolError("feed seq %d does not follow %d" % (seq, previous_seq))
    call_id = doc.get("call_id")
    if type(call_id) is not str or not call_id or len(call_id) > 256:
        return Rejected(seq, None, "record has no usable call_id", line.decode("utf-8", "replace"))
    hangup_us = hangup_micros(doc.get("hangup_us"), doc.get("timestamp"))
    if hangup_us is None:
        return Rejected(seq, call_id, "record has no usable hangup_us or timestamp", line.decode("utf-8", "replace"))
    return FeedRecord(seq, call_id, hangup_us, line, doc)


@dataclass(frozen=True, slots=True)
class FeedResponse:
    db_id: str | None
    last_seq: int | None  # the node's newest seq, when it says (X-Feed-Last-Seq)
    chunks: Iterator[bytes]


class FeedClient:
    def __init__(self, url: str, token: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self.requests = 0

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def open(self, after: int, limit: int) -> FeedResponse:
        """Send the request; the response's body is read through ``chunks``."""
        path = "%s%s?%s" % (self._prefix, FEED_PATH, urllib.parse.urlencode({"after": after, "limit": limit}))
        conn = self._connection()
        try:
            conn.request(
                "GET",
                path,
                headers={
                    "X-Auth-Token": self._token,
                    "Accept": "application/x-ndjson",
                    "User-Agent": "eslcdr-collect/" + __version__,
                },
            )
            resp = conn.getresponse()
        except BaseException:
            self.close()
            raise
        self.requests += 1
        if resp.status != 200:
            body = b""
            try:
                body = resp.read(ERROR_BODY_BYTES)
            except TRANSPORT_ERRORS:
                pass
            self.close()
            message = body.decode("utf-8", "replace").strip().replace("\n", " ")[:300]
            raise FeedError("HTTP %d from the feed: %s" % (resp.status, message))
        db_id = resp.getheader("X-DB-ID")
        last = resp.getheader("X-Feed-Last-Seq")
        last_seq = int(last) if last and last.isdigit() else None
        return FeedResponse(db_id=db_id, last_seq=last_seq, chunks=self._chunks(resp))

    def _chunks(self, resp: http.client.HTTPResponse) -> Iterator[bytes]:
        done = False
        try:
            while True:
                # read1 never reads past the body, so the connection stays
                # usable; it returns b"" at the end (also for an empty body).
                data = resp.read1(READ_CHUNK) if resp.length != 0 else b""
                if not data:
                    done = True
                    return
                yield data
        finally:
            if done and not resp.will_close:
                resp.close()  # marks the response read: the next request may reuse the socket
            else:
                # An abandoned or broken body leaves the connection unusable.
                self.close()


def lines_of(response: FeedResponse, max_line: int) -> Iterator[bytes]:
    splitter = LineSplitter(max_line)
    for data in response.chunks:
        yield from splitter.feed(data)
    if splitter.pending:
        raise FeedError("feed ended inside a line (%d bytes): connection cut" % splitter.pending)


__all__ = [
    "FeedClient",
    "FeedError",
    "FeedProtocolError",
    "FeedResponse",
    "LineSplitter",
    "RecordTooLarge",
    "Rejected",
    "TRANSPORT_ERRORS",
    "lines_of",
    "parse_record",
]
