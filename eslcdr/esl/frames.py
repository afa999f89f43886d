"""Sans-IO parser for FreeSWITCH Event Socket frames.

The Event Socket speaks a simple framing: a block of ``Name: value`` header
lines ended by an empty line, optionally followed by exactly
``Content-Length`` bytes of body.  ``FrameParser`` takes bytes as they come
off the socket (in chunks of any size) and returns whole ``Frame`` values; it
never does I/O, so it can be tested whole, split at every byte and with
trailing garbage.

A malformed header block (a line without ``:``, a non-numeric or absurd
``Content-Length``) is reported as a ``ProtocolError`` item in the output,
and the parser resynchronises at the next line that starts a frame header.
It never raises on input, so one bad frame cannot kill the reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# The largest body we accept.  FreeSWITCH events are a few KiB (a bridged SIP
# leg's CHANNEL_HANGUP_COMPLETE is about 11 KiB); api responses such as
# ``show channels as json`` on a busy box reach a few MiB.
MAX_BODY = 64 * 1024 * 1024
# A header block longer than this without a blank line is garbage.
MAX_HEADER_BLOCK = 64 * 1024

# (Blank lines before it skipped, as next_item does before any frame.)
_USUAL_HEADERS = re.compile(rb"[\r\n]*Content-Length: ([0-9]{1,9})\nContent-Type: ([!-~]{1,64})\n\n")
_FRAME_STARTS = (b"Content-Type:", b"Content-Length:", b"Reply-Text:", b"Job-UUID:")


@dataclass(frozen=True, slots=True)
class Frame:
    """One ESL frame: its outer headers and its raw body (bytes)."""

    headers: dict[str, str]
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")


# The parser's own Frame constructor, per frame: the slots set directly (the
# frozen dataclass's __init__ goes through object.__setattr__, twice as slow).
_new_frame = object.__new__
_set_headers = Frame.__dict__["headers"].__set__
_set_body = Frame.__dict__["body"].__set__


def _frame(headers: dict[str, str], body: bytes) -> Frame:
    frame = _new_frame(Frame)
    _set_headers(frame, headers)
    _set_body(frame, body)
    return frame


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A stretch of input that was not a valid frame; it was skipped."""

    reason: str
    skipped: bytes = field(repr=False, default=b"")


class FrameParser:
    """Incremental ESL frame parser.

    ``feed(data)`` appends bytes (or a view of them, copied); ``next_item()`` returns the next ``Frame`` or
    ``ProtocolError``, or ``None`` when more bytes are needed.  ``items()``
    drains everything available.  ``eof()`` tells it the stream ended; any
    partial frame still buffered is then reported as a ``ProtocolError``.
    """

    __slots__ = ("_buf", "_view", "_pos", "_pending", "frames_seen", "errors_seen")

    def __init__(self) -> None:
        self._buf = bytearray()
        # A view of _buf the bodies are copied out of, made again whenever
        # _buf is resized (which it cannot be while a view exists).
        self._view = memoryview(self._buf)
        self._pos = 0
        # (headers, body length) of a frame whose body has not fully arrived
        self._pending: tuple[dict[str, str], int] | None = None
        self.frames_seen = 0
        self.errors_seen = 0

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``, copied before this returns: the caller may reuse its
        buffer at once (the client hands over a view of its read buffer)."""
        self._view.release()
        try:
            if self._pos and self._pos > (len(self._buf) >> 1):
                del self._buf[: self._pos]
                self._pos = 0
            self._buf += data
        finally:
            self._view = memoryview(self._buf)

    def items(self) -> list[Frame | ProtocolError]:
        out = []
        while True:
            item = self.next_item()
            if item is None:
                return out
            out.append(item)

    def eof(self) -> ProtocolError | None:
        """Report (and drop) whatever partial frame is left at end of stream."""
        left = bytes(self._buf[self._pos :])
        self._view.release()
        self._buf.clear()
        self._view = memoryview(self._buf)
        self._pos = 0
        pending, self._pending = self._pending, None
        if pending is not None:
            self.errors_seen += 1
            return ProtocolError("stream ended inside a frame body", left)
        if left.strip():
            self.errors_seen += 1
            return ProtocolError("stream ended inside a frame header", left)
        return None

    def next_item(self) -> Frame | ProtocolError | None:
        if self._pending is not None:
            return self._take_body(*self._pending)
        buf = self._buf
        # The usual event frame, "Content-Length: N\nContent-Type: T\n\n",
        # read with one match instead of the general header loop below, and
        # cut here when its body is in (this runs for every event).
        usual = _USUAL_HEADERS.match(buf, self._pos)
        if usual is not None:
            raw_length, ctype = usual.groups()
            length = int(raw_length)
            if length <= MAX_BODY:
                headers = {"Content-Length": raw_length.decode("ascii"), "Content-Type": ctype.decode("ascii")}
                start = usual.end()
                end = start + length
                if len(buf) < end:
                    self._pos = start
                    self._pending = (headers, length)
                    return None
                self._pos = end
                self.frames_seen += 1
                return _frame(headers, self._view[start:end].tobytes())

        # Skip blank lines between frames (FreeSWITCH never sends them, but a
        # peer that does should not cause errors).
        pos = self._pos
        n = len(buf)
        while pos < n and buf[pos] in (0x0A, 0x0D):
            pos += 1
        self._pos = pos
        end = buf.find(b"\n\n", pos)
        if end < 0:
            if n - pos > MAX_HEADER_BLOCK:
                return self._resync("header block too long", n - 16)
            return None
        # One decode per header block, not per line: this runs per event.
        text = buf[pos:end].decode("utf-8", "replace")
        headers: dict[str, str] = {}
        for line in text.split("\n"):
            name, colon, value = line.partition(":")
            if not colon or not name:
                return self._resync("header line without a name: %r" % line[:80], end + 2)
            if value.endswith("\r"):
                value = value[:-1]
            headers[name] = value[1:] if value.startswith(" ") else value
        self._pos = end + 2
        raw_length = headers.get("Content-Length")
        if raw_length is None:
            self.frames_seen += 1
            return Frame(headers)
        length = int(raw_length) if raw_length.isascii() and raw_length.isdigit() else -1
        if not 0 <= length <= MAX_BODY:
            self.errors_seen += 1
            return ProtocolError("bad Content-Length %r" % raw_length[:40], bytes(buf[pos:end]))
        return self._take_body(headers, length)

    def _take_body(self, headers: dict[str, str], length: int) -> Frame | None:
        start = self._pos
        end = start + length
        if len(self._buf) < end:
            self._pending = (headers, length)
            return None
        self._pending = None
        self._pos = end
        self.frames_seen += 1
        # One copy (a bytearray slice would copy twice).
        return _frame(headers, self._view[start:end].tobytes())

    def _resync(self, reason: str, fallback: int) -> ProtocolError:
        """Skip to the next line of the bad header block that looks like the
        start of a frame, else to ``fallback`` (always past the current
        position): the block's end.  Never past it, so what follows the block
        is read the same however the reads cut the stream.
        """
        buf = self._buf
        start = self._pos
        best = -1
        for marker in _FRAME_STARTS:
            found = buf.find(b"\n" + marker, start, fallback)
            if found >= 0 and (best < 0 or found < best):
                best = found
        target = best + 1 if best >= 0 else fallback
        target = max(target, start + 1)
        skipped = bytes(buf[start:target])
        self._pos = target
        self.errors_seen += 1
        return ProtocolError(reason, skipped)
