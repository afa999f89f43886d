"""Query layer and Kazoo row shapes: parameters, cursors, filters, SQL, streaming."""

from __future__ import annotations

import base64
import csv
import io
import json
import time
import tracemalloc
import uuid

import pytest

from eslcdr.query import kazoo
from eslcdr.store import db as store
from eslcdr.config import from_mapping
from eslcdr.ingest.legs import GREGORIAN_OFFSET
from eslcdr.query.params import (
    KIND_CDRS,
    KIND_INTERACTIONS,
    Cursor,
    ListQuery,
    ParamError,
    decode_cursor,
    encode_cursor,
    parse_feed_query,
    parse_list_query,
)
from eslcdr.query.pool import ReaderPool
from eslcdr.query.reader import InlineRunner, StatementTimeout
from eslcdr.query.sql import legs_sql, list_sql

from tests import kazoo_shapes

G = GREGORIAN_OFFSET
API = from_mapping({}).api
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
NOW_G = int(NOW) + G
ACC = "4b0cd3c1e0a2f2c6a8d9e1f20a3b4c5d"


def params(**kwargs):
    return {k: [v] for k, v in kwargs.items()}


def parse(kind=KIND_CDRS, unpaginated=False, **kwargs):
    return parse_list_query(params(**kwargs), kind=kind, account_id=ACC, owner_id=None, api=API,
                            now=NOW, unpaginated=unpaginated)


def record(ts_g, *, account=ACC, owner="user-1", interaction=None, created_us=None, ccv=None, **fields):
    call_id = str(uuid.uuid4())
    base = {
        "id": time.strftime("%Y%m", time.gmtime(ts_g - G)) + "-" + call_id,
        "call_id": call_id,
        "interaction_id": interaction or "%d-%s" % (ts_g - 60, uuid.uuid4().hex[:8]),
        "account_id": account, "owner_id": owner, "call_direction": "inbound",
        "caller_id_name": "Caller", "caller_id_number": "+15551234567",
        "request": "2000@example.com", "to": "2000@example.com", "from": "1000@example.com",
        "from_uri": "1000@example.com", "timestamp": ts_g, "duration_seconds": 60, "billing_seconds": 50,
        "created_us": created_us if created_us is not None else (ts_g - G - 60) * 10**6,
        "hangup_us": (ts_g - G) * 10**6,
        "custom_channel_vars": ccv if ccv is not None else {"owner_id": owner},
        "custom_sip_headers": {}, "media_server": "fs1.example.com",
    }
    base.update(fields)
    return base


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "cdrs.db"
    writer = store.connect_writer(path)
    yield path, writer
    writer.close()


# ----------------------------------------------------------------- parsing


def test_defaults_are_kazoos():
    q = parse()
    assert (q.created_from, q.created_to) == (NOW_G - 2682000, NOW_G)
    assert q.page_size == 50 and not q.ascending and q.cursor is None and q.filters == ()
    assert parse(page_size="7", ascending="true").page_size == 7
    assert parse(paginate="false").page_size is None
    assert parse(unpaginated=True).page_size is None
    only_to = parse(created_to=str(NOW_G - 100))
    assert only_to.created_from == NOW_G - 100 - 2682000


@pytest.mark.parametrize(
    "args, param, code, fragment",
    [
        ({"created_from": "abc"}, "created_from", "type", "Gregorian"),
        ({"created_to": "1e9"}, "created_to", "type", "Gregorian"),
        ({"created_from": "-5"}, "created_from", "minimum", "between"),
        ({"created_to": "9" * 30}, "created_to", "type", "integer"),
        ({"created_from": "63900000100", "created_to": "63900000000"}, "created_from", "date_range",
         "created_to 63900000000 is prior to created_from 63900000100"),
        ({"created_from": "63800000000", "created_to": "63900000000"}, "created_from", "date_range",
         "created_to 63900000000 is more than 2682000 seconds from created_from 63800000000"),
        ({"page_size": "0"}, "page_size", "minimum", "between 1 and 1000"),
        ({"page_size": "-1"}, "page_size", "minimum", "between"),
        ({"page_size": "1001"}, "page_size", "maximum", "between"),
        ({"page_size": "ten"}, "page_size", "type", "integer"),
        ({"page_size": "1_0"}, "page_size", "type", "integer"),
        ({"utc_offset": "3600.5"}, "utc_offset", "type", "integer"),
        ({"ascending": "sure"}, "ascending", "type", "true or false"),
        ({"filter_nope": "1"}, "filter_nope", "unknown_field", "not a CDR field"),
        ({"filter_not_caller": "1"}, "filter_not_caller", "unknown_field", "not a CDR field"),
        ({"has_key": "custom_channel_vars"}, "has_key", "type", ""),
    ],
)
def test_bad_parameters(args, param, code, fragment):
    if args == {"has_key": "custom_channel_vars"}:
        parse(**args)  # a whole JSON column is a field too
        return
    with pytest.raises(ParamError) as info:
        parse(**args)
    data = info.value.as_data()
    assert list(data) == [param] and list(data[param]) == [code]
    assert fragment in data[param][code]["message"]


def test_date_range_causes_match_kazoo():
    with pytest.raises(ParamError) as info:
        parse(created_from="63900000100", created_to="63900000000")
    assert info.value.as_data()["created_from"]["date_range"]["cause"] == 63900000100
    with pytest.raises(ParamError) as info:
        parse(created_from="63800000000", created_to="63900000000")
    assert info.value.as_data()["created_from"]["date_range"]["cause"] == 63900000000


@pytest.mark.parametrize(
    "name",
    ["custom_channel_vars.owner_id\"", "custom_channel_vars.", "custom_channel_vars..x", "local_sdp.x",
     "custom_sip_headers.a b", "cdrs", "seq; DROP TABLE cdrs", "1=1", "custom_channel_vars.$.x"],
)
def test_unknown_or_unsafe_filter_fields(name):
    with pytest.raises(ParamError):
        parse(**{"filter_" + name: "x"})
    with pytest.raises(ParamError):
        parse(has_key=name)


def test_dot_paths_become_bound_json_paths():
    q = parse(**{"filter_custom_channel_vars.owner_id": "u1", "key_missing": "custom_sip_headers.x_a-b"})
    paths = sorted(f.field.json_path for f in q.filters)
    assert paths == ['$."owner_id"', '$."x_a-b"']
    sql, args = list_sql(q)
    assert "owner_id" not in sql.split("WHERE", 1)[1].replace("c.owner_id", "")
    assert '$."owner_id"' in args


def test_call_id_filter_accepts_a_cdr_id():
    q = parse(filter_call_id="202601-abc-def")
    assert q.filters[0].value == "abc-def"


def test_cursor_round_trip_and_validation():
    cursor = Cursor(KIND_CDRS, NOW_G - 5, 42, NOW_G - 1000, NOW_G)
    text = encode_cursor(cursor)
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert decode_cursor(text, KIND_CDRS, API.max_range) == cursor
    q = parse(start_key=text)
    assert (q.cursor, q.created_from, q.created_to) == (cursor, NOW_G - 1000, NOW_G)
    # Explicit bounds win over the cursor's.
    assert parse(start_key=text, created_from=str(NOW_G - 10)).created_from == NOW_G - 10

    def b64(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    bad = [
        "", "zzz", "!!!!", "a" * 600, b64({"k": 1}), b64([1, "c", 1, 2, 3]), b64([2, "c", 1, 2, 3, 4]),
        b64([1, "c", "1", 2, 3, 4]), b64([1, "c", 1, 2, 5, 4]), b64([1, "c", 1, 2, 0, 10**10]),
        b64([1, "c", True, 2, 3, 4]), b64([1, "c", 1, -2, 3, 4]), b64([1, "c", 1.5, 2, 3, 4]),
        encode_cursor(Cursor(KIND_INTERACTIONS, "63900000000-abc", 0, 3, 4)),
        "' OR 1=1 --",
    ]
    for text in bad:
        if text == "":
            continue
        with pytest.raises(ParamError):
            decode_cursor(text, KIND_CDRS, API.max_range)


def test_interaction_cursor_keys_are_start_and_id():
    for iid in ("63900000000-0badcafe", "8d3c0a3e-5a4f-4b7e-9f0e-2b1c6f1d2e3a"):
        cursor = Cursor(KIND_INTERACTIONS, 63900000000, iid, NOW_G - 10, NOW_G)
        assert decode_cursor(encode_cursor(cursor), KIND_INTERACTIONS, API.max_range) == cursor
    with pytest.raises(ParamError):
        decode_cursor(encode_cursor(Cursor(KIND_CDRS, 5, 1, NOW_G - 10, NOW_G)), KIND_INTERACTIONS, API.max_range)
    for bad in (Cursor(KIND_INTERACTIONS, 5, 0, NOW_G - 10, NOW_G),
                Cursor(KIND_INTERACTIONS, "63900000000-0badcafe", "x", NOW_G - 10, NOW_G),
                Cursor(KIND_INTERACTIONS, 5, "", NOW_G - 10, NOW_G),
                Cursor(KIND_INTERACTIONS, 5, "x" * 257, NOW_G - 10, NOW_G)):
        with pytest.raises(ParamError):
            decode_cursor(encode_cursor(bad), KIND_INTERACTIONS, API.max_range)
    # A version-1 interaction cursor (the interaction id alone) is refused, not misread.
    import base64
    old = base64.urlsafe_b64encode(b'[1,"i","63900000000-0badcafe",0,%d,%d]' % (NOW_G - 10, NOW_G)).decode()
    with pytest.raises(ParamError):
        decode_cursor(old.rstrip("="), KIND_INTERACTIONS, API.max_range)


def test_feed_parameters():
    assert parse_feed_query({}, streamed=False).limit == 1000
    assert parse_feed_query({}, streamed=True).limit is None
    assert parse_feed_query(params(after="17", limit="5"), streamed=False) == type(
        parse_feed_query({}, streamed=False))(17, 5)
    for bad in ({"after": "-1"}, {"after": "x"}, {"limit": "0"}, {"limit": "10001"}):
        with pytest.raises(ParamError):
            parse_feed_query(params(**bad), streamed=False)


# ------------------------------------------------------------ SQL semantics


def run(pool, query):
    sql, args = list_sql(query)
    return pool.fetch_all(sql, args)


def call_ids(rows, records):
    by_id = {r["id"]: r["call_id"] for r in records}
    return [by_id[row[0]] for row in rows]


def test_filters_select_the_right_rows(db):
    path, writer = db
    recs = [
        record(NOW_G - 10, ccv={"owner_id": "u1", "flag": True, "n": 5}, hangup_cause="NORMAL_CLEARING",
               digits_dialed="", fax_success=True),
        record(NOW_G - 20, ccv={"owner_id": "u2"}, hangup_cause="USER_BUSY", digits_dialed="123"),
        record(NOW_G - 30, ccv={}, hangup_cause=None, fax_success=False),
        record(NOW_G - 40, account="other", ccv={"owner_id": "u1"}),
    ]
    store.insert_records(writer, recs)
    pool = ReaderPool(path, 5, runner=InlineRunner())

    def ids(**kw):
        q = parse_list_query({k: v if isinstance(v, list) else [v] for k, v in kw.items()}, kind=KIND_CDRS,
                             account_id=ACC, owner_id=None, api=API, now=NOW, unpaginated=False)
        return call_ids(run(pool, q), recs)

    c0, c1, c2 = (r["call_id"] for r in recs[:3])
    assert ids() == [c0, c1, c2]
    assert ids(**{"filter_custom_channel_vars.owner_id": "u1"}) == [c0]
    assert ids(**{"filter_not_custom_channel_vars.owner_id": "u1"}) == [c1, c2]
    assert ids(filter_hangup_cause="USER_BUSY") == [c1]
    assert ids(filter_not_hangup_cause="USER_BUSY") == [c0, c2]
    assert ids(filter_duration_seconds="60") == [c0, c1, c2]
    assert ids(filter_duration_seconds="sixty") == []
    assert ids(filter_fax_success="true") == [c0]
    assert ids(filter_fax_success="false") == [c2]
    assert ids(**{"filter_custom_channel_vars.flag": "true"}) == [c0]
    assert ids(**{"filter_custom_channel_vars.n": "5"}) == [c0]
    assert ids(has_key="custom_channel_vars.owner_id") == [c0, c1]
    assert ids(key_missing="custom_channel_vars.owner_id") == [c2]
    assert ids(has_key="hangup_cause") == [c0, c1]
    assert ids(has_value="digits_dialed") == [c1]
    assert ids(value_missing="digits_dialed") == [c0, c2]
    assert ids(has_key=["hangup_cause", "custom_channel_vars.owner_id"],
               **{"filter_not_custom_channel_vars.owner_id": "u2"}) == [c0]
    assert ids(filter_account_id="other") == []  # the account scope is not a filter
    assert ids(filter_caller_id_name="' OR 1=1 --") == []
    assert ids(ascending="true") == [c2, c1, c0]
    assert ids(created_from=str(NOW_G - 20), created_to=str(NOW_G - 10)) == [c0, c1]  # inclusive


def test_interaction_rows_are_first_legs_in_account_and_owner(db):
    path, writer = db
    first = "%d-0badcafe" % (NOW_G - 500)
    second = "%d-00c0ffee" % (NOW_G - 300)
    b = record(NOW_G - 90, interaction=first, created_us=(NOW_G - G - 400) * 10**6, owner="u2",
               call_direction="outbound")
    other_account_first = record(NOW_G - 95, interaction=first, created_us=(NOW_G - G - 900) * 10**6,
                                 account="other")
    single = record(NOW_G - 50, interaction=second, created_us=(NOW_G - G - 300) * 10**6, owner="u2")
    orphan = record(NOW_G - 40, created_us=(NOW_G - G - 200) * 10**6)
    orphan["interaction_id"] = None  # not part of any interaction: not listed
    store.insert_records(writer, [b, other_account_first, single, orphan])
    pool = ReaderPool(path, 5, runner=InlineRunner())

    def listing(owner=None, created_from=NOW_G - 3600, ascending=False):
        q = ListQuery(KIND_INTERACTIONS, ACC, owner, created_from, NOW_G, ascending, 50, None, (), 0)
        return [(row[-1], row[1]) for row in run(pool, q)]

    assert listing() == [(second, single["call_id"]), (first, b["call_id"])]
    # The A-leg's CDR arrives after its B-leg's: it becomes the interaction's
    # row, and the interaction keeps its place (its id orders it).
    a = record(NOW_G - 80, interaction=first, created_us=(NOW_G - G - 500) * 10**6, owner="u1")
    store.insert_records(writer, [a])
    assert listing() == [(second, single["call_id"]), (first, a["call_id"])]
    assert listing(ascending=True) == [(first, a["call_id"]), (second, single["call_id"])]
    assert listing("u2") == [(second, single["call_id"]), (first, b["call_id"])]
    assert listing("u1") == [(first, a["call_id"])]
    # The range applies to the interaction's start (the time in its id).
    assert listing(created_from=NOW_G - 450) == [(second, single["call_id"])]
    assert listing(created_from=NOW_G - 500) == [(second, single["call_id"]), (first, a["call_id"])]


def plan_of(conn, sql, args):
    return " / ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args))


def test_an_interaction_is_read_by_its_id_not_by_its_account(db):
    # The listing's earliest-leg test and the legs route find the legs of an
    # interaction through idx_cdrs_interaction (~3 rows) and check the account
    # on the row: an account's index (account_id=?) alone reads every leg of
    # the account, for each row listed or each legs request (the legs route
    # did; schema 10 dropped the (account_id, interaction_id) index, #18).
    path, writer = db
    store.insert_records(writer, [record(NOW_G - n, owner="u%d" % (n % 4)) for n in range(40)])
    for owner in (None, "u1"):
        q = ListQuery(KIND_INTERACTIONS, ACC, owner, NOW_G - 3600, NOW_G, False, 50, None, (), 0)
        plan = plan_of(writer, *list_sql(q))
        outer, inner = plan.split("CORRELATED SCALAR SUBQUERY")
        assert "_istart" in outer and "TEMP B-TREE" not in plan, plan
        assert "SEARCH o USING INDEX idx_cdrs_interaction (interaction_id=?)" in inner, plan
    for start, limit in ((None, None), ((1, 2), 10)):
        plan = plan_of(writer, *legs_sql(ACC, "x", start=start, limit=limit))
        assert plan.startswith("MULTI-INDEX OR / INDEX 1 / SEARCH c USING INDEX idx_cdrs_interaction"), plan
        assert "(account_id=?)" not in plan and "SCAN c" not in plan, plan


# ---------------------------------------------------------------- execution


def test_statement_timeout_aborts_long_statement(db):
    path, _ = db
    pool = ReaderPool(path, 0.05, runner=InlineRunner())
    slow = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
    started = time.monotonic()
    with pytest.raises(StatementTimeout):
        pool.fetch_all(slow, [])
    assert time.monotonic() - started < 2
    assert pool.fetch_all("SELECT 1", []) == [(1,)]  # the connection is reusable


def test_row_stream_is_constant_memory_and_releases(db):
    path, writer = db
    store.insert_records(writer, [record(NOW_G - i, caller_id_name="x" * 200) for i in range(3000)])
    pool = ReaderPool(path, 5, runner=InlineRunner())
    q = ListQuery(KIND_CDRS, ACC, None, NOW_G - 10**6, NOW_G, False, None, None, (), 0)
    sql, args = list_sql(q)

    def peak_while_streaming(stream):
        tracemalloc.start()
        count = 0
        for batch in stream:
            count += len(batch)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return count, peak

    count, peak = peak_while_streaming(pool.stream(sql, args, batch=100))
    assert count == 3000
    assert peak < 1_500_000  # 3,000 rows of ~1 kB would be several MB
    assert len(pool._idle) == 1  # returned to the pool on exhaustion

    abandoned = pool.stream(sql, args, batch=100)
    assert len(pool._idle) == 0
    abandoned.close()
    assert len(pool._idle) == 1


# --------------------------------------------------------------- row shapes


def list_source(rec):
    return tuple(rec.get(name) if name != "custom_channel_vars" else json.dumps(rec.get(name))
                 for name in kazoo.SOURCE_COLUMNS)


def list_row(values, utc_offset=0):
    return dict(zip(kazoo.LIST_COLUMNS, kazoo.list_values(values, utc_offset)))


def test_list_row_derivations_match_kazoo():
    start_g = 63_654_228_683  # 2017-02-13T18:11:23Z
    rec = record(start_g + 90, duration_seconds=90, billing_seconds=61, call_direction="outbound",
                 to="+4930123@carrier.example", from_uri="alice@example.com", authorizing_id="dev1",
                 ccv={"account_billing": "per_minute", "rate": "100", "rate_increment": "60",
                      "rate_minimum": "60", "surcharge": "50", "rate_name": "DE-mobile",
                      "media_recordings": "rec-1.mp3", "call_priority": "high", "bridge_id": "a-leg"})
    row = list_row(list_source(rec))
    assert list(row) == kazoo_shapes.LIST_COLUMNS
    assert row["timestamp"] == str(start_g)
    assert row["unix_timestamp"] == str(start_g - G) == "1487009483"
    assert row["rfc_1036"] == "Mon, 13 Feb 2017 18:11:23 GMT"
    assert row["iso_8601"] == "2017-02-13"
    assert row["iso_8601_combined"] == "2017-02-13T18:11:23Z"
    assert row["datetime"] == "2017-02-13 18:11:23"
    assert row["dialed_number"] == "+4930123" and row["calling_from"] == "alice"
    assert row["direction"] == "outbound" and row["authorizing_id"] == "dev1"
    # 60 s minimum at 100 units/min + 1 more 60 s increment + 50 surcharge.
    assert row["cost"] == "250" and row["rate"] == "0.01" and row["call_type"] == "per_minute"
    assert row["media_recordings"] == ["rec-1.mp3"] and row["bridge_id"] == "a-leg"
    assert row["call_priority"] == "high" and row["rate_name"] == "DE-mobile"
    assert list_row(list_source(rec), utc_offset=-3600)["datetime"] == "2017-02-13 17:11:23"
    shifted = list_row(list_source(rec), utc_offset=7 * 3600)
    assert shifted["datetime"] == "2017-02-14 01:11:23" and shifted["iso_8601"] == "2017-02-13"

    plain = list_row(list_source(record(start_g, ccv={}, authorizing_id=ACC, other_leg_call_id="b",
                                              owner=None)))
    assert plain["cost"] == "0" and plain["rate"] == "0.0" and plain["call_type"] == ""
    assert plain["authorizing_id"] == "" and plain["owner_id"] == ""
    assert plain["media_recordings"] == [] and plain["bridge_id"] == "b"
    assert plain["dialed_number"] == "2000" and plain["calling_from"] == "+15551234567"


def test_call_cost_edge_cases():
    ccv = {"rate": "600", "rate_increment": "6", "rate_minimum": "30", "rate_nocharge_time": "5",
           "discount_percentage": "10"}
    assert kazoo.call_cost(ccv, 0) == 0
    assert kazoo.call_cost(ccv, 5) == 0
    assert kazoo.call_cost(ccv, 20) == 270  # minimum 30 s -> 300, 10 % off
    assert kazoo.call_cost(ccv, 31) == 324  # 300 + one 6 s increment (60), 10 % off
    assert kazoo.call_cost({"rate": "junk"}, 100) == 0


def test_csv_records_are_rfc4180():
    rows = [["a", 'say "hi"', "x,y", "multi\r\nline", "", "ünï", "nul\x00byte"]]
    text = kazoo.csv_records(rows + [["plain"] * 7])
    back = list(csv.reader(io.StringIO(text, newline="")))
    assert back == rows + [["plain"] * 7]
    assert text.endswith("\r\n") and text.count('"plain"') == 7
