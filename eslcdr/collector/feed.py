"""Pulling one node's feed: HTTP, NDJSON lines, checked records.

``GET /v2/feed/cdrs?after=N&limit=L`` with ``Accept: application/x-ndjson``
answers one JSON record per line, in seq order, and the database's id in
the ``X-DB-ID`` header.  NDJSON rather than JSON pages: the records are
parsed and written while the response is still arriving, memory holds one
batch whatever the page size, and a connection cut mid-stream keeps every
complete line before the cut (bench/collect.py has the figures).

Memory and time stay bounded whatever a node sends: ``LineSplitter`` refuses
a line past ``max_line`` bytes, ``FeedClient`` a pull past its deadline or
below its byte rate.  A line whose seq cannot be read stops the pull
(``FeedProtocolError``: retried, never skipped); a line with a good seq but
a bad body becomes a ``Rejected`` item (``parse_record``).
"""

from __future__ import annotations

import http.client
import time
import urllib.parse
from dataclasses import dataclass
from typing import Iterator

import gevent
import orjson

from .. import __version__
from .pgrecords import REASON_BAD_RECORD, REASON_OUT_OF_WINDOW, FeedRecord, Rejected, hangup_micros

FEED_PATH = "/v2/feed/cdrs"
READ_CHUNK = 256 * 1024
ERROR_BODY_BYTES = 2048
YIELD_INTERVAL = 0.002  # seconds a pull may read before it lets the other workers run
FUTURE_SLACK_US = 86_400 * 10**6  # a hangup up to a day ahead (clock skew) is plausible


class FeedError(Exception):
    """The node answered something other than a feed."""


class FeedProtocolError(FeedError):
    """A line of the feed cannot be used (no readable seq, seq going back)."""


class RecordTooLarge(FeedProtocolError):
    """A line longer than max_record_bytes."""


class PullTooSlow(FeedError):
    """The node's answer ran past max_pull_seconds or under min_pull_rate."""


# Transport errors: worth a retry after a backoff.
TRANSPORT_ERRORS = (OSError, http.client.HTTPException, FeedError)

ERROR_CHARS = 300  # the most of a node's own error message an error quotes
# What an operator does about a refused token (the node's answer says only "invalid credentials").
TOKEN_HINTS = {
    401: "the node does not know this [node:NAME] token: add one there (eslcdr token add --account '*')"
         " and set it as the node's token in collector.ini",
    403: "this [node:NAME] token is not a '*' token on the node",
}


def error_message(body: bytes, limit: int = ERROR_CHARS) -> str:
    """A node's error answer in one short line: Kazoo's ``message`` (and its
    ``data.message``) when it is an envelope, else the text itself."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if type(doc) is dict and isinstance(doc.get("message"), str):
        text = doc["message"]
        data = doc.get("data")
        if type(data) is dict and isinstance(data.get("message"), str):
            text += ": " + data["message"]
    else:
        text = body.decode("utf-8", "replace")
    return " ".join(text.split())[:limit]


class LineSplitter:
    """Bytes in, complete ``\\n``-terminated lines out (without the newline).

    Sans-IO; a line that grows past ``max_line`` bytes without its newline
    raises ``RecordTooLarge`` (memory stays bounded whatever a node sends).  It
    looks for newlines only in the bytes just fed: a long line arriving a byte
    at a time costs linear time, not a rescan of the whole buffer per byte.
    """

    def __init__(self, max_line: int) -> None:
        self._max = max_line
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        # Only the new bytes can hold the newline that ends the pending line.
        end = data.rfind(b"\n")
        buf = self._buf
        if end < 0:
            if len(buf) + len(data) > self._max:
                raise RecordTooLarge("a feed line exceeds %d bytes" % self._max)
            buf += data
            return []
        if buf:
            buf += data[: end + 1]
            lines = bytes(buf[:-1]).split(b"\n")
            buf.clear()
        else:
            lines = data[:end].split(b"\n")
        tail = data[end + 1:]
        if max(map(len, lines)) > self._max or len(tail) > self._max:
            raise RecordTooLarge("a feed line exceeds %d bytes" % self._max)
        buf += tail
        # Blank lines skipped; isspace stops at a line's first byte (strip copied it).
        return [line for line in lines if line and not line.isspace()]

    @property
    def pending(self) -> int:
        """Bytes of an incomplete last line (dropped if the stream ends)."""
        return len(self._buf)


@dataclass(frozen=True, slots=True)
class HangupWindow:
    """The hangup times a record may carry (µs since the epoch, inclusive):
    no older than ``max_record_age_days``, no later than a day ahead."""

    oldest_us: int
    newest_us: int

    @classmethod
    def around(cls, now: float, max_age_days: int) -> "HangupWindow":
        now_us = int(now * 1_000_000)
        return cls(now_us - max_age_days * 86_400 * 10**6, now_us + FUTURE_SLACK_US)

    def check(self, hangup_us: int) -> str | None:
        """Why ``hangup_us`` is outside the window (None when inside)."""
        if hangup_us < self.oldest_us:
            return "hangup %s is older than the window (from %s)" % (_iso(hangup_us), _iso(self.oldest_us))
        if hangup_us > self.newest_us:
            return "hangup %s is later than the window (until %s)" % (_iso(hangup_us), _iso(self.newest_us))
        return None


def _iso(micros: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(micros // 1_000_000))


def parse_record(line: bytes, previous_seq: int, window: HangupWindow | None = None) -> FeedRecord | Rejected:
    """One line checked: valid UTF-8 JSON object, an integer ``seq`` above the
    previous one, a ``call_id`` string and a usable hangup time inside the
    plausible window (``HangupWindow``).  A line whose seq cannot be read
    raises ``FeedProtocolError`` (the pull stops: retried, never skipped); a
    line with a good seq but a bad body becomes a ``Rejected`` item (with its
    reason) that the store keeps in ``collector_rejects`` while the cursor
    moves past it.
    """
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
        return Rejected(seq, None, "record has no usable call_id", line.decode("utf-8", "replace"), REASON_BAD_RECORD)
    hangup_us = hangup_micros(doc.get("hangup_us"), doc.get("timestamp"))
    if hangup_us is None:
        return Rejected(seq, call_id, "record has no usable hangup_us or timestamp", line.decode("utf-8", "replace"),
                        REASON_BAD_RECORD)
    if window is not None:
        outside = window.check(hangup_us)
        if outside is not None:
            return Rejected(seq, call_id, outside, line.decode("utf-8", "replace"), REASON_OUT_OF_WINDOW)
    return FeedRecord(seq, call_id, hangup_us, line, doc)


@dataclass(frozen=True, slots=True)
class FeedResponse:
    db_id: str | None
    last_seq: int | None  # the node's newest seq, when it says (X-Feed-Last-Seq)
    chunks: Iterator[bytes]


class FeedClient:
    """One keep-alive connection to a node's feed.

    Every socket operation has ``timeout`` (a stalled node raises, it never
    hangs the worker), and any error closes the connection so the next pull
    starts clean.  A pull also has a wall-clock deadline (``max_seconds``) and,
    once it is ``timeout`` old, a minimum average byte rate (``min_rate``),
    both over the time spent waiting for and reading the node's answer (not
    the time spent storing it): a node that trickles or never ends its answer
    fails the pull (``PullTooSlow``) instead of holding its worker forever.
    The body is read in whatever the node sends, possibly one byte per chunk,
    and data that is always there never makes the socket wait, so the reader
    lets the other greenlets run (``gevent.idle``) at least every
    ``YIELD_INTERVAL`` seconds: every node's worker keeps its pace whatever
    this one receives.
    """

    def __init__(self, url: str, token: str, timeout: float, max_seconds: float = 300.0,
                 min_rate: int = 0) -> None:
        parts = urllib.parse.urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._max_seconds = max_seconds
        self._min_rate = min_rate
        self._conn: http.client.HTTPConnection | None = None
        self.requests = 0

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout)
        return self._conn

    def _read_timeout(self, seconds: float) -> None:
        if self._conn is not None and self._conn.sock is not None:
            self._conn.sock.settimeout(max(0.001, seconds))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def open(self, after: int, limit: int) -> FeedResponse:
        """Send the request; the response's body is read through ``chunks``."""
        path = "%s%s?%s" % (self._prefix, FEED_PATH, urllib.parse.urlencode({"after": after, "limit": limit}))
        started = time.monotonic()
        conn = self._connection()
        self._read_timeout(self._timeout)  # a kept-alive socket may hold a shorter one
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
            hint = TOKEN_HINTS.get(resp.status)
            raise FeedError("HTTP %d from the feed: %s%s" % (resp.status, error_message(body),
                                                             " (%s)" % hint if hint else ""))
        db_id = resp.getheader("X-DB-ID")
        last = resp.getheader("X-Feed-Last-Seq")
        last_seq = int(last) if last and last.isdigit() else None
        return FeedResponse(db_id=db_id, last_seq=last_seq, chunks=self._chunks(resp, started))

    def _chunks(self, resp: http.client.HTTPResponse, started: float) -> Iterator[bytes]:
        # The deadline and the rate count the time spent on the node's
        # answer, not the time the worker spends storing what it got.
        clock = time.monotonic
        done = False
        deadline = started + self._max_seconds
        rate_from = started + self._timeout  # the rate is judged once the pull is this old
        received = 0
        away = 0.0  # seconds the consumer held the generator suspended
        resumed = clock()
        try:
            while True:
                now = clock() - away
                if now >= deadline:
                    raise PullTooSlow("the node's answer took longer than %g s (max_pull_seconds); %d bytes received"
                                      % (self._max_seconds, received))
                if now >= rate_from and received < self._min_rate * (now - started):
                    raise PullTooSlow("the node sends %d bytes/s, under min_pull_rate %d bytes/s"
                                      % (received / (now - started), self._min_rate))
                if clock() - resumed >= YIELD_INTERVAL:
                    # Data that is always there never makes the socket wait:
                    # let the other workers run before reading on.
                    before = clock()
                    gevent.idle()
                    resumed = clock()
                    away += resumed - before
                    now = resumed - away
                if deadline - now < self._timeout:
                    self._read_timeout(deadline - now)
                # read1 never reads past the body, so the connection stays
                # usable; it returns b"" at the end (also for an empty body).
                try:
                    data = resp.read1(READ_CHUNK) if resp.length != 0 else b""
                except TimeoutError:
                    if clock() - away >= deadline:
                        continue  # the deadline's own error, above
                    raise
                if not data:
                    done = True
                    return
                received += len(data)
                suspended = clock()
                yield data
                away += clock() - suspended
        finally:
            if done and not resp.will_close:
                resp.close()  # marks the response read: the next request may reuse the socket
            else:
                # An abandoned or broken body leaves the connection unusable.
                self.close()


def lines_of(response: FeedResponse, max_line: int) -> Iterator[bytes]:
    """The complete lines of a response, as they arrive."""
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
    "HangupWindow",
    "LineSplitter",
    "PullTooSlow",
    "RecordTooLarge",
    "Rejected",
    "TRANSPORT_ERRORS",
    "error_message",
    "lines_of",
    "parse_record",
]
