"""The CSV export's fast path gives the bytes of the obvious version.

``list_csv`` (one loop per chunk, caches, quoting per chunk on bytes) against
``list_csv_reference`` (list_values / interaction_values, spreadsheet_safe per
cell, the csv module) on generated rows: formula cells, quotes, commas, CR/LF,
NUL and SOH (the fast path's own separators), non-ASCII up to astral planes,
odd custom channel variables, missing and out-of-range dates.  Then the packed
chunks (one JSON BLOB per chunk, read one chunk ahead) against plain tuples
on a real SQLite file, and the CSV route end to end.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eslcdr.query import kazoo
from eslcdr.query import list_csv
from eslcdr.query import stream as streams
from eslcdr.store import db as store
from eslcdr.ingest.legs import GREGORIAN_OFFSET
from eslcdr.query.list_csv import INCEPTION_ACCOUNT, INCEPTION_USER, list_csv_reference
from eslcdr.query.params import KIND_CDRS, KIND_INTERACTIONS, ListQuery, cursor_for
from eslcdr.query.pool import ReaderPool
from eslcdr.query.reader import InlineRunner
from eslcdr.query.sql import LIST_ROW_WIDTH, list_sql, packed_sql, unpack_rows, warm_sql

from tests import kazoo_shapes
from tests.unit.api.test_api import ACC_A, HARD_NAMES, NOW_G, env, leg  # noqa: F401 -- env is a fixture
from tests.unit.query.test_queries import ACC, db, record  # noqa: F401 -- db is a fixture

G = GREGORIAN_OFFSET
INCEPTIONS = [None, INCEPTION_ACCOUNT, INCEPTION_USER]

TRICKY = ["", "plain", "=1+1", "@SUM(A1)", "\tTAB", "\rCR", "+15551234567", "-5", "-12.50", "+1 (555)",
          "-", "+", "-5\n", "+12.", "Smith, John", 'Bob "The Builder"', "Line\nBreak", "CR\r\nLF",
          "Ærøskøbing", "渡辺 健", "emoji 📞", "nul\x00inside", "soh\x01inside", "a\x00\x01b", "\"", '","',
          "2000@example.com", "=cmd|' /C calc'!A0", "-2+3", "1e5", "-1e5"]
text_cells = st.one_of(st.none(), st.sampled_from(TRICKY), st.text(max_size=12))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
              st.sampled_from(TRICKY), st.text(max_size=6)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6)
ccv_keys = st.sampled_from(["account_billing", "rate", "rate_name", "bridge_id", "recording_url",
                            "media_recordings", "call_priority", "rate_increment", "rate_minimum", "surcharge",
                            "rate_nocharge_time", "billing_seconds_offset", "discount_percentage", "other"])
ccv_dicts = st.dictionaries(ccv_keys, st.one_of(json_values, st.sampled_from(
    ["per_minute", "flat_rate", "100", "60", "6", "0.5", "junk", "-3", "12"])), max_size=8)
ccv_raw = st.one_of(st.none(), st.just(""), st.just("{}"), st.just("not json"), st.just("[1, 2]"),
                    ccv_dicts.map(json.dumps),
                    st.just('{"account_billing": "per_minute", "rate": "100", "rate_name": "US-48"}'))
timestamps = st.one_of(st.none(), st.just(0), st.integers(NOW_G - 10**8, NOW_G + 10**8),
                       st.integers(-10**12, 10**15))


@st.composite
def source_rows(draw):
    """A list_sql row: SOURCE_COLUMNS values, then two key values."""
    values = {name: draw(text_cells) for name in kazoo.SOURCE_COLUMNS}
    # REAL in an INTEGER column too (SQLite keeps 2.5 as 2.5).
    numbers = st.one_of(st.none(), st.integers(-100, 10**6), st.floats(-100, 10**6))
    values["duration_seconds"] = draw(numbers)
    values["billing_seconds"] = draw(numbers)
    values["timestamp"] = draw(timestamps)
    values["call_direction"] = draw(st.sampled_from(["inbound", "outbound", "", None, "sideways"]))
    values["account_id"] = draw(st.sampled_from([ACC, None, "other"]))
    values["authorizing_id"] = draw(st.one_of(st.sampled_from([ACC, None, "", "dev1"]), text_cells))
    values["custom_channel_vars"] = draw(ccv_raw)
    return [values[name] for name in kazoo.SOURCE_COLUMNS] + [values["timestamp"] or 0, draw(st.integers(1, 10**9))]


def reference_bytes(rows, utc_offset, inception):
    return list_csv_reference(rows, utc_offset, inception).encode("utf-8")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(source_rows(), max_size=12), utc_offset=st.sampled_from([0, 3600, -19800, 86400, -86400]),
       inception=st.sampled_from(INCEPTIONS))
@pytest.mark.slow
def test_fast_csv_is_the_reference_byte_for_byte(rows, utc_offset, inception):
    expected = reference_bytes(rows, utc_offset, inception)
    assert list_csv.list_csv(rows, utc_offset, inception) == expected
    assert list_csv.list_csv(rows, utc_offset, inception) == expected  # again, from the caches


@pytest.mark.parametrize("inception", INCEPTIONS)
def test_every_tricky_cell_in_every_column(inception):
    """Each tricky value in each column of an otherwise realistic row, one chunk
    per value (so a separator in one cell sends only its own chunk the slow way)."""
    base = [None] * LIST_ROW_WIDTH
    realistic = record(NOW_G - 100, authorizing_id="dev1", other_leg_call_id="b-leg",
                       ccv={"account_billing": "per_minute", "rate": "100", "bridge_id": "a-leg"})
    for i, name in enumerate(kazoo.SOURCE_COLUMNS):
        value = realistic.get(name)
        base[i] = json.dumps(value) if name == "custom_channel_vars" else value
    base[-2:] = [NOW_G - 100, 1]
    for value in TRICKY:
        chunk = []
        for i, name in enumerate(kazoo.SOURCE_COLUMNS):
            if name in ("duration_seconds", "billing_seconds", "timestamp", "custom_channel_vars"):
                continue
            row = list(base)
            row[i] = value
            chunk.append(row)
        for offset in (0, 3600):
            assert list_csv.list_csv(chunk, offset, inception) == reference_bytes(chunk, offset, inception), value


@pytest.mark.parametrize("inception", INCEPTIONS)
def test_only_a_chunk_with_a_separator_in_a_cell_takes_the_reference_path(inception, monkeypatch):
    """The fast path counts its separators from what its replaces add: a chunk
    whose cells hold no NUL or SOH is rendered by it (quotes, CR/LF, formulas,
    non-ASCII included), the others by the reference, with the same bytes."""
    slow = []
    reference = list_csv.list_csv_reference
    monkeypatch.setattr(list_csv, "list_csv_reference", lambda *args: slow.append(args) or reference(*args))
    row = [None] * LIST_ROW_WIDTH
    row[kazoo.SOURCE_COLUMNS.index("timestamp")], row[-2:] = NOW_G - 100, [NOW_G - 100, 1]
    for value in TRICKY:
        chunk = [list(row) for _ in kazoo.SOURCE_COLUMNS[:6]]
        for i, cells in enumerate(chunk):
            cells[i] = value
        slow.clear()
        got = list_csv.list_csv(chunk, 0, inception)
        assert len(slow) == (("\x00" in value or "\x01" in value) and 1), repr(value)
        assert got == reference_bytes(chunk, 0, inception), repr(value)


def test_the_reference_is_the_csv_module_and_spreadsheet_safe():
    """The reference itself: parsed back, every cell is list_values' text, made safe."""
    rows = [[name if n in (2, 3, 5) else None for n in range(len(kazoo.SOURCE_COLUMNS))] + [0, 1]
            for name in HARD_NAMES + ["-5\n"]]
    for row in rows:
        row[8] = NOW_G
    parsed = list(csv.reader(io.StringIO(list_csv_reference(rows), newline="")))
    assert [line[3] for line in parsed] == [kazoo.spreadsheet_safe(name) for name in HARD_NAMES + ["-5\n"]]
    assert parsed[-1][3] == "'-5\n"  # a number followed by a newline is not a plain number


def listing(kind: str, ascending: bool) -> ListQuery:
    return ListQuery(kind, ACC, None, NOW_G - 10**6, NOW_G, ascending, None, None, (), 0)


def chunks_of(query: ListQuery, packed: bool):
    def chunk_sql(start, n):
        sql = list_sql(dataclasses.replace(query, page_size=n - 1,
                                           cursor=None if start is None else cursor_for(query, start)))
        return packed_sql(*sql) if packed else sql
    return chunk_sql


@pytest.mark.parametrize("kind", [KIND_CDRS, KIND_INTERACTIONS])
@pytest.mark.parametrize("ascending", [False, True])
def test_packed_chunks_read_ahead_are_the_plain_rows(db, kind, ascending):  # noqa: F811
    path, writer = db
    iid = "%d-%s" % (NOW_G - 4000, "abcdef12")
    rows = [record(NOW_G - 5000 + i // 3, caller_id_name=HARD_NAMES[i % len(HARD_NAMES)],
                   interaction=iid if i % 50 == 0 else None, owner=None if i % 7 else "user-1",
                   ccv={"rate": i, "bridge_id": None, "list": [1, None, "x"]} if i % 5 else {})
            for i in range(700)]
    store.insert_records(writer, rows)
    pool = ReaderPool(path, 5, runner=InlineRunner())
    query = listing(kind, ascending)
    plain = [list(row) for batch in pool.keyset_stream(chunks_of(query, False), chunk=97) for row in batch]
    packed = [row for batch in pool.keyset_stream(chunks_of(query, True), chunk=61, decode=unpack_rows, ahead=True)
              for row in batch]
    assert len(plain) == (700 if kind == KIND_CDRS else 700 - 13) and packed == plain
    assert all(len(row) == LIST_ROW_WIDTH for row in packed)
    assert len(pool._idle) >= 1  # every connection came back


def test_a_stream_reading_ahead_holds_no_snapshot_and_closes_cleanly(db):  # noqa: F811
    path, writer = db
    store.insert_records(writer, [record(NOW_G - 5000 + i) for i in range(1000)])
    pool = ReaderPool(path, 5, runner=InlineRunner())
    query = listing(KIND_CDRS, False)
    stream = pool.keyset_stream(chunks_of(query, True), chunk=100, decode=unpack_rows, ahead=True)
    seen = []
    for n, batch in enumerate(stream):
        seen += [row[-1] for row in batch]
        store.insert_records(writer, [record(NOW_G - 5000 + (n * 37 + i * 11) % 900) for i in range(5)])
        busy, log, done = writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0 and log == done  # the chunk read ahead is finished too
        if n == 3:
            break
    stream.close()  # a client that went away: the chunk read ahead gives its connection back
    assert len(seen) == 400 and len(set(seen)) == 400
    assert len(pool._idle) == 1


@pytest.mark.parametrize("ascending", [False, True])
def test_a_cold_stream_warms_the_rows_ahead_and_changes_nothing(db, monkeypatch, ascending):  # noqa: F811
    """On a cold page cache (forced here) the stream reads the key range ahead
    with a second statement, window after window; the rows are the same, every
    connection comes back, no snapshot is held between chunks."""
    path, writer = db
    store.insert_records(writer, [record(NOW_G - 5000 + i // 2) for i in range(1200)])
    pool = ReaderPool(path, 5, runner=InlineRunner())
    query = listing(KIND_CDRS, ascending)
    plain = [list(row) for batch in pool.keyset_stream(chunks_of(query, False), chunk=10**6) for row in batch]
    monkeypatch.setattr(streams, "waited_on_disk", lambda wall, cpu: True)
    windows = []

    def warm(low, high):
        windows.append((low, high))
        return warm_sql(ACC, None, low, high)

    stream = pool.keyset_stream(chunks_of(query, True), chunk=50, decode=unpack_rows, ahead=True, warm=warm,
                                descending=not ascending)
    got = []
    for batch in stream:
        got += batch
        busy, log, done = writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0 and log == done
    stream.close()
    assert got == plain and len(got) == 1200
    assert len(windows) >= 2
    ordered = sorted(windows, reverse=not ascending)
    assert windows == ordered and all(low <= high for low, high in windows)
    covered = [key for key in (row[-2] for row in got) if any(low <= key <= high for low, high in windows)]
    assert len(covered) > 1000  # the windows ran ahead of the chunks over nearly every row
    assert len(pool._idle) == 2  # the chunks' connection and the warm statements'


def test_csv_route_is_the_reference(env):  # noqa: F811
    """The CSV export over the real route (a chunk boundary inside) against the
    reference rendering of the same rows fetched as plain tuples."""
    iid = "%d-%s" % (NOW_G - 3000, "0badcafe")
    env.insert([leg(NOW_G - 3000 + i, caller_id_name=HARD_NAMES[i % len(HARD_NAMES)],
                    callee_id_name=["=1+2", "+4412", "-3", "@x"][i % 4], interaction=iid if i % 3 == 0 else None,
                    call_direction="outbound" if i % 2 else "inbound")
                for i in range(2500)])
    pool = ReaderPool(env.path, 5, runner=InlineRunner())
    for path, kind, inception in (("/cdrs", KIND_CDRS, None), ("/cdrs/interaction", KIND_INTERACTIONS,
                                                                INCEPTION_ACCOUNT)):
        query = dataclasses.replace(listing(kind, False), account_id=ACC_A, created_from=NOW_G - 31 * 86400)
        rows = [row for batch in pool.keyset_stream(chunks_of(query, False), chunk=10**6) for row in batch]
        body = env.get("/v2/accounts/%s%s?accept=csv&created_from=%d&created_to=%d" % (
            ACC_A, path, NOW_G - 31 * 86400, NOW_G)).body
        columns = kazoo_shapes.INTERACTION_COLUMNS if inception else kazoo_shapes.LIST_COLUMNS
        header = kazoo.csv_records([kazoo_shapes.csv_header(columns)]).encode("utf-8")
        assert body == header + reference_bytes(rows, 0, inception)
        assert len(rows) > 1000
    pool.close()
