"""The sans-IO frame parser: whole captures, every split, garbage, fuzz."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eslcdr.esl.frames import MAX_BODY, Frame, FrameParser, ProtocolError

from tests.conftest import CAPTURES, capture_bytes, capture_frames


def parse_all(chunks) -> list:
    parser = FrameParser()
    out = []
    for chunk in chunks:
        parser.feed(chunk)
        out.extend(parser.items())
    tail = parser.eof()
    if tail is not None:
        out.append(tail)
    return out


def parse_views(chunks) -> list:
    """``parse_all`` fed as the client feeds: each chunk a view of one read
    buffer that the next read overwrites as soon as ``feed`` returns."""
    parser = FrameParser()
    out = []
    buffer = bytearray(max(map(len, chunks), default=0) or 1)
    with memoryview(buffer) as view:
        for chunk in chunks:
            buffer[: len(chunk)] = chunk
            parser.feed(view[: len(chunk)])
            buffer[:] = bytes(len(buffer))  # the next recv_into
            out.extend(parser.items())
    tail = parser.eof()
    if tail is not None:
        out.append(tail)
    return out


def frame_counts(name: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for frame in capture_frames(name):
        counts[frame.content_type] = counts.get(frame.content_type, 0) + 1
    return counts


def test_s1_json_frame_inventory():
    # From the capture README: auth/request=1, command/reply=3, event-json=15, disconnect=1
    assert frame_counts("S1_json.esl") == {
        "auth/request": 1,
        "command/reply": 3,
        "text/event-json": 15,
        "text/disconnect-notice": 1,
    }


def test_s7_plain_has_300_events():
    assert frame_counts("S7_plain.esl")["text/event-plain"] == 300


def test_disconnect_notice_body_kept():
    last = capture_frames("S1_plain.esl")[-1]
    assert last.content_type == "text/disconnect-notice"
    assert last.body.startswith(b"Disconnected, goodbye.")
    assert len(last.body) == int(last.headers["Content-Length"])


@pytest.mark.parametrize("name", CAPTURES)
def test_every_capture_byte_by_byte_equals_whole(name):
    data = capture_bytes(name)
    whole = capture_frames(name)
    if len(data) > 400_000:
        rng = random.Random(name)
        chunks, pos = [], 0
        while pos < len(data):
            size = rng.choice((1, 2, 3, 7, 64, 1000, 4096))
            chunks.append(data[pos : pos + size])
            pos += size
    else:
        chunks = [data[i : i + 1] for i in range(len(data))]
    assert parse_all(chunks) == whole


def test_split_at_every_byte_boundary():
    # Two pieces, cut at every position of a stream of mixed frames: as bytes,
    # and as views of a reused buffer (what the client's reader feeds).
    data = capture_bytes("S1_plain.esl")[:9000]
    cut = data.rfind(b"Content-Length:")  # end on a frame boundary
    data = data[:cut] + b"Content-Type: api/response\nContent-Length: 5\n\n+OK\n\n"
    expected = parse_all([data])
    assert all(isinstance(item, Frame) for item in expected)
    for i in range(len(data) + 1):
        assert parse_all([data[:i], data[i:]]) == expected, i
        assert parse_views([data[:i], data[i:]]) == expected, i


def test_trailing_garbage_reported_not_fatal():
    data = capture_bytes("S3_json.esl") + b"garbage without a blank line"
    items = parse_all([data])
    assert items[:-1] == capture_frames("S3_json.esl")
    assert isinstance(items[-1], ProtocolError)


def test_truncated_body_reported_at_eof():
    data = capture_bytes("S6_json.esl")
    items = parse_all([data[: len(data) // 2]])
    assert isinstance(items[-1], ProtocolError)
    assert "body" in items[-1].reason


def test_malformed_header_resynchronises():
    good = b"Content-Type: command/reply\nReply-Text: +OK\n\n"
    bad = b"this line has no colon\nneither does this\n\n"
    items = parse_all([good + bad + good])
    assert [type(i) for i in items] == [Frame, ProtocolError, Frame]
    assert items[2].headers["Reply-Text"] == "+OK"


def test_bad_content_length_skips_header_block():
    good = b"Content-Type: command/reply\nReply-Text: +OK\n\n"
    for bad_length in (b"abc", b"-5", b"\xc2\xb2", b"1e3", str(MAX_BODY + 1).encode()):
        # Both orders: FreeSWITCH's own (Content-Length first) takes the one-match path.
        for bad in (b"Content-Type: text/event-plain\nContent-Length: " + bad_length + b"\n\n",
                    b"Content-Length: " + bad_length + b"\nContent-Type: text/event-json\n\n"):
            items = parse_all([bad + good])
            assert isinstance(items[0], ProtocolError)
            assert items[-1] == Frame({"Content-Type": "command/reply", "Reply-Text": "+OK"})


def test_usual_event_header_block_gives_the_same_frame_as_any_other_order():
    body = b'{"Event-Name":"DTMF"}'
    usual = b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(body) + body
    other = b"Content-Type: text/event-json\nContent-Length: %d\n\n" % len(body) + body
    assert parse_all([usual]) == parse_all([other]) == [
        Frame({"Content-Length": str(len(body)), "Content-Type": "text/event-json"}, body)
    ]


def test_non_utf8_header_bytes_replaced():
    items = parse_all([b"Content-Type: command/reply\nReply-Text: +OK \xff\xfe\n\n"])
    assert items == [Frame({"Content-Type": "command/reply", "Reply-Text": "+OK \ufffd\ufffd"})]


def test_crlf_line_endings_accepted():
    items = parse_all([b"Content-Type: command/reply\r\nReply-Text: +OK\r\n\n"])
    assert items[0].headers == {"Content-Type": "command/reply", "Reply-Text": "+OK"}


def test_counters():
    parser = FrameParser()
    parser.feed(capture_bytes("S1_json.esl") + b"bogus\n\n")
    parser.items()
    assert parser.frames_seen == 20
    assert parser.errors_seen == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=20))
def test_random_bytes_never_raise_and_always_progress(data, sizes):
    # Cut anywhere, the bytes give what they give whole: the same frames and
    # the same errors (the same bytes skipped), nothing lost or stuck at a cut.
    chunks = cut(data, sizes)
    items = seen(parse_all(chunks))
    assert items == seen(parse_all([data]))
    assert seen(parse_views(chunks)) == items


def seen(items: list) -> list:
    """The frames, and between them the bytes errors skipped (line ends
    aside, consecutive errors as one: how a stretch of damage is cut into
    errors is not compared, what it skipped is)."""
    out: list = []
    for item in items:
        if isinstance(item, Frame):
            out.append(item)
            continue
        skipped = item.skipped.replace(b"\r", b"").replace(b"\n", b"")
        if out and isinstance(out[-1], bytes):
            out[-1] += skipped
        else:
            out.append(skipped)
    return out


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, pos = [], 0
    for size in sizes * (len(data) // max(1, sum(sizes)) + 1):
        if pos >= len(data):
            break
        chunks.append(data[pos : pos + size])
        pos += size
    return chunks


# FreeSWITCH's frames (each opens with Content-Type or Content-Length), and
# damage between them: a header block with a line that is not a header, a bad
# Content-Length, a body shorter than announced (it eats what follows).
FRAMES = [b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n",
          b"Content-Type: api/response\nContent-Length: 4\n\n+OK\n",
          b'Content-Length: 21\nContent-Type: text/event-json\n\n{"Event-Name":"DTMF"}',
          b"Content-Length: 17\nContent-Type: text/event-plain\n\nEvent-Name: DTMF\n",
          b"Content-Length: x\nContent-Type: text/event-json\n\n",
          b"Content-Length: 7\nContent-Type: text/event-json\n\n{broken"]
DAMAGE = st.binary(max_size=40).filter(lambda b: b"\n\n" not in b and b":" not in b).map(lambda b: b + b"\n\n")
STREAMS = st.lists(st.one_of(st.sampled_from(FRAMES), DAMAGE), max_size=40).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(STREAMS, st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=20))
def test_frames_and_damage_give_the_same_items_however_the_reads_cut_them(data, sizes):
    chunks = cut(data, sizes)
    items = seen(parse_all(chunks))
    assert items == seen(parse_all([data])) == seen(parse_views(chunks))


def test_a_bad_header_block_skips_no_line_of_the_next_one_whatever_is_buffered():
    data = b"x\n\nX-Extra: 1\nContent-Type: command/reply\nReply-Text: +OK\n\n"
    whole = parse_all([data])
    assert whole == parse_all([data[i : i + 1] for i in range(len(data))])
    assert whole[1] == Frame({"X-Extra": "1", "Content-Type": "command/reply", "Reply-Text": "+OK"})
    twice = b"x\n\ny\n\n" + data[3:]
    assert [item.skipped for item in parse_all([twice])[:2]] == [b"x\n\n", b"y\n\n"]


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=20000), st.binary(max_size=50))
def test_truncated_frame_then_junk_never_raises_and_recovers_later(cut, junk):
    data = capture_bytes("S1_json.esl")
    whole = [f for f in parse_all([data])]
    # A truncated frame and junk, then (after the damage is reported) a
    # clean stream: once the parser reports an error at a frame boundary,
    # what follows a blank line and a frame header is read correctly again.
    damaged = data[:cut] + junk
    parser = FrameParser()
    parser.feed(damaged)
    items = parser.items()
    tail = parser.eof()
    assert all(isinstance(i, (Frame, ProtocolError)) for i in items)
    if tail is not None:
        assert isinstance(tail, ProtocolError)
    parser.feed(data)
    assert parser.items() == whole
