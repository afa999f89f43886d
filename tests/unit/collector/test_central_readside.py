"""The central read side over rows of several nodes (real PostgreSQL): seqs are
per node, so two nodes' rows may share (timestamp, seq); paging must still give
every row exactly once, and a start_key a node would refuse stays refused."""

from __future__ import annotations

import psycopg
import pytest
import webtest
from prometheus_client import CollectorRegistry

from eslcdr.api import app as api
from eslcdr.api.tokens import TokenStore
from eslcdr.collector import pgmigrations
from eslcdr.collector.pgstore import PgStore
from eslcdr.collector.readside import PgReadSide, render
from eslcdr.config import from_mapping
from eslcdr.query.params import KIND_CDRS, Cursor, decode_cursor, encode_cursor

from tests.unit.api.test_api import A, ACC_A, NOW, NOW_G, TOKENS, leg
from tests.unit.collector.test_collector_store import feed_items


def central_app(tmp_path, pg_dsn, now: float = NOW):
    """A migrated PgStore and the central API app over it (clock ``now``)."""
    conn = psycopg.connect(pg_dsn)
    pgmigrations.migrate(conn)
    store = PgStore(conn)
    tokens = tmp_path / "tokens"
    tokens.write_text("".join("%s %s\n" % item for item in TOKENS.items()))
    cfg = from_mapping({"api": {"tokens_file": str(tokens)}}).api
    app = api.assemble(cfg, "central", PgReadSide(pg_dsn, cfg.statement_timeout, heavy_slots=1),
                       registry=CollectorRegistry(), tokens=TokenStore(tokens), clock=lambda: now)
    return store, app


@pytest.fixture
def central(tmp_path, pg_dsn):
    store, app = central_app(tmp_path, pg_dsn)
    yield store, webtest.TestApp(app)
    app.close()
    store.close()


def test_rows_of_two_nodes_with_the_same_timestamp_and_seq_page_exactly_once(central, tmp_path):
    store, web = central
    stored = []
    for node in ("fs-a", "fs-b", "fs-c"):
        # Every node's file starts at seq 1: (timestamp, seq) repeats across nodes.
        records = [leg(NOW_G - 100) for _ in range(3)] + [leg(NOW_G - 200 - i) for i in range(2)]
        store.node_state(node, "http://127.0.0.1:1")
        store.store_batch(node, "db-" + node, 0, feed_items(tmp_path, records))
        stored += [r["id"] for r in records]
    for ascending in ("false", "true"):
        for size in (1, 2, 4):
            seen, url = [], "/v2/accounts/%s/cdrs?page_size=%d&ascending=%s" % (ACC_A, size, ascending)
            while url:
                assert len(seen) <= len(stored), "rows repeated: %r" % seen
                body = web.get(url, headers=A).json
                seen += [row["id"] for row in body["data"]]
                key = body.get("next_start_key")
                url = key and "/v2/accounts/%s/cdrs?page_size=%d&ascending=%s&start_key=%s" % (
                    ACC_A, size, ascending, key)
                # A page's own start_key gives the same page again.
                again = web.get("/v2/accounts/%s/cdrs?page_size=%d&ascending=%s&start_key=%s" % (
                    ACC_A, size, ascending, body["start_key"]), headers=A).json
                assert again["data"] == body["data"]
            assert sorted(seen) == sorted(stored), (ascending, size)


def test_an_export_of_rows_sharing_timestamp_and_seq_across_nodes_reads_each_once(central, tmp_path, pg_dsn,
                                                                                  monkeypatch):
    """A CDR export reads its chunks without the key column (its timestamp
    value): the rows are as wide as a node's listing rows, and the next chunk
    starts after (timestamp, seq, node) of the last one, also where three
    nodes' rows share (timestamp, seq); both directions; the CSV is the
    listing's rows."""
    from eslcdr.collector import readside
    from eslcdr.query.list_csv import list_csv
    from eslcdr.query.params import ListQuery
    from eslcdr.query.sql import LIST_ROW_WIDTH

    store, web = central
    for node in ("fs-a", "fs-b", "fs-c"):
        records = [leg(NOW_G - 100) for _ in range(3)] + [leg(NOW_G - 200 - i) for i in range(2)]
        store.node_state(node, "http://127.0.0.1:1")
        store.store_batch(node, "db-" + node, 0, feed_items(tmp_path, records))
    read = PgReadSide(pg_dsn, 5.0, heavy_slots=1)
    try:
        for ascending in (False, True):
            query = ListQuery(kind=KIND_CDRS, account_id=ACC_A, owner_id=None, created_from=NOW_G - 86400,
                              created_to=NOW_G, ascending=ascending, page_size=None, cursor=None, filters=(),
                              utc_offset=0)
            whole = [row for batch in read.list_rows(query, sourced=False) for row in batch]
            assert len(whole) == 15 and len({row[0] for row in whole}) == 15
            for size, piece in ((1, 250), (2, 250), (4, 250), (4, 3), (3, 1)):
                monkeypatch.setattr(readside, "EXPORT_CHUNK", size)
                monkeypatch.setattr(readside, "RENDER_ROWS", piece)
                batches = list(read.list_export(query))
                assert max(map(len, batches)) == min(size, piece)
                rows = [row for batch in batches for row in batch]
                assert [row[0] for row in rows] == [row[0] for row in whole], (ascending, size, piece)
                assert {len(row) for row in rows} == {LIST_ROW_WIDTH}
                assert b"".join(list_csv(batch) for batch in batches) == list_csv(whole)
    finally:
        read.close()


def test_a_cursor_names_its_node_only_when_it_must():
    plain = Cursor(KIND_CDRS, 5, 7, 0, 10)
    tied = Cursor(KIND_CDRS, 5, 7, 0, 10, "fs-b")
    assert decode_cursor(encode_cursor(plain), KIND_CDRS, 100) == plain
    assert decode_cursor(encode_cursor(tied), KIND_CDRS, 100) == tied
    assert len(encode_cursor(plain)) < len(encode_cursor(tied))


def test_records_render_as_sqlite_renders_them(tmp_path):
    """``render`` of PostgreSQL's values == the node's record_sql text, also for
    JSON values whose key order jsonb changes, floats and a fax boolean."""
    from eslcdr.query.sql import detail_sql
    from eslcdr.store import db as node_store
    from eslcdr.store.schema import COLUMN_NAMES, JSON_COLUMNS

    record = leg(NOW_G - 5, fax_success=1, audio_in_mos=4.38, audio_in_jitter_max_variance=0.1 + 0.2,
                 custom_channel_vars={"zz": 1, "a": {"yy": [1.5, "x", {"b": 2, "aa": None}], "c": True}, "mm": "é"})
    conn = node_store.connect_writer(tmp_path / "n.db")
    node_store.insert_records(conn, [record])
    for fmt in ("json", "csv"):
        want = conn.execute(*detail_sql(ACC_A, record["id"], fmt)).fetchone()[0]
        # As psycopg gives them: JSON columns parsed (jsonb: keys reordered), fax a bool.
        row = dict(zip(COLUMN_NAMES, conn.execute("SELECT * FROM cdrs").fetchone()))
        import json
        for name in JSON_COLUMNS:
            parsed = json.loads(row[name])
            row[name] = dict(sorted(parsed.items(), key=lambda kv: (len(kv[0]), kv[0])))
        row["fax_success"] = bool(row["fax_success"])
        assert render([tuple(row[n] for n in COLUMN_NAMES)], fmt) == [want]
    conn.close()


# custom_channel_vars a listing reads (rate, rate_name, call_type, bridge_id,
# recordings, cost...): flat strings (the fast path), and what it must leave to
# the node's stored text -- nested objects (jsonb puts shorter keys first, the
# node's text sorts them), big numbers, lists -- with CSV's odd cells.
ODD_VARS = [
    {"account_billing": "per_minute", "rate": "250", "rate_name": 'Smith, "J"\r\nx', "bridge_id": "=1+2",
     "call_priority": "渡辺 健", "recording_url": "-x", "surcharge": "+5"},
    {"account_billing": {"b": 1, "aa": [2, {"yy": None, "c": True}]}, "rate": 1e20,
     "rate_name": 12345678901234567890123, "surcharge": 1.5, "media_recordings": [{"b": 1, "aa": "x,y"}, "r\n1"]},
    {"account_billing": "per_minute", "rate": True, "rate_name": None, "call_priority": False, "bridge_id": "",
     "rate_increment": 60, "rate_minimum": 30, "discount_percentage": 18446744073709551615},
    {"account_billing": "per_minute", "rate": "1.5", "rate_name": 2.0, "rate_increment": "6", "x": 0.1 + 0.2},
    {"rate_name": "\u00e6\u00f8 '@SUM(A1)", "recording_url": "\ttab", "big": 18446744073709551616},
    {},
    None,
]


# Variables an export's chunk passes on whole (listing_vars' proof holds for the
# chunk): strings only -- odd ones, colons inside -- and texts that are no object.
STRING_VARS = [
    {"account_billing": "per_minute", "rate": "250", "rate_name": '渡辺 "健", =x', "call_priority": "12:30",
     "recording_url": "http://h:80/a", "bridge_id": "-x", "surcharge": "+5", "note": 'x": '},
    {"account_billing": "flat", "rate_name": "\u00e6\t@SUM(A1)", "bridge_id": ""},
    [1, 2.50, "x"],
    1.50,
    "text",
    {},
    None,
]


@pytest.mark.parametrize("variables", [ODD_VARS, STRING_VARS], ids=["odd", "strings"])
def test_listings_with_odd_custom_variables_are_the_nodes_byte_for_byte(tmp_path, pg_dsn, monkeypatch, variables):
    """The central listings (CSV and JSON; CDRs, interactions, a user's) take
    jsonb's text of custom_channel_vars where it parses to the node's values
    (readside.listing_vars, for a chunk of an export at once) and the node's
    text elsewhere: the same bytes; an export in small chunks and pieces."""
    from eslcdr.collector import readside
    from tests.unit.api.test_api import HARD_NAMES, CentralEnv

    monkeypatch.setattr(readside, "EXPORT_CHUNK", 4)
    monkeypatch.setattr(readside, "RENDER_ROWS", 3)
    env = CentralEnv(tmp_path, pg_dsn)
    try:
        env.insert([leg(NOW_G - 10 * i, caller_id_name=HARD_NAMES[i % len(HARD_NAMES)], custom_channel_vars=ccv,
                        owner="user-1" if i % 2 else "user-2")
                    for i, ccv in enumerate(variables * 2)])
        node = webtest.TestApp(env.node_app)
        for path in ("/cdrs", "/cdrs/interaction", "/users/user-1/cdrs", "/users/user-1/cdrs/interaction"):
            for query in ("?accept=csv", "?paginate=false", "?page_size=3"):
                url = "/v2/accounts/%s%s%s" % (ACC_A, path, query)
                want, got = node.get(url, headers=A), env.get(url)
                if query == "?accept=csv":
                    assert got.body == want.body, url
                    assert want.body.count(b"\r\n") > len(variables)
                else:
                    # Central rows end with their node (source); the rest is the node's row.
                    assert [{k: v for k, v in row.items() if k != "source"} for row in got.json["data"]] \
                        == want.json["data"], url
                    assert want.json["data"] and all("source" in row for row in got.json["data"])
    finally:
        env.close()




def test_an_export_chunk_is_passed_on_whole_unless_a_text_is_not_the_nodes(tmp_path, pg_dsn, monkeypatch):
    """An export's chunk: psycopg's rows themselves (tuples) where its variables
    pass listing_vars' proofs together (a colon in a value: the expression), texts
    that are no object included; else only a row whose text is not the node's
    becomes a list holding the node's text."""
    from eslcdr.collector import readside
    from eslcdr.collector.readside import listing_vars
    from eslcdr.query.kazoo import SOURCE_COLUMNS
    from eslcdr.query.params import ListQuery

    at = SOURCE_COLUMNS.index("custom_channel_vars")
    whole = [{"a": "1", "b": "2"}, None, [1, 2.50], "x", 1.50, {}, {"u": "http://h:80/", "t": "12:30"}]
    mixed = [{"a": "x", "b": "y"}, {"n": {"c": 2, "bb": 1}, "m": "z"}]  # jsonb puts "c" first, the node "bb"
    store, app = central_app(tmp_path, pg_dsn)
    store.node_state("fs-a", "http://127.0.0.1:1")
    store.store_batch("fs-a", "db-fs-a", 0, feed_items(tmp_path, [
        leg(NOW_G - 10 * i, custom_channel_vars=ccv) for i, ccv in enumerate(whole + mixed)]))
    monkeypatch.setattr(readside, "EXPORT_CHUNK", len(whole))
    read = PgReadSide(pg_dsn, 5.0, heavy_slots=1)
    try:
        query = ListQuery(kind=KIND_CDRS, account_id=ACC_A, owner_id=None, created_from=NOW_G - 86400,
                          created_to=NOW_G, ascending=False, page_size=None, cursor=None, filters=(), utc_offset=0)
        first, second = list(read.list_export(query))
        assert [type(row) for row in first] == [tuple] * len(whole)
        assert [type(row) for row in second] == [tuple, list]
        texts = read.pg.fetch("SELECT custom_channel_vars::text FROM cdrs WHERE custom_channel_vars ? 'n'", ())
        assert second[1][at] == listing_vars(texts[0][0]) != texts[0][0]
    finally:
        read.close()
        app.close()
        store.close()


def test_an_export_hands_a_chunk_out_in_pieces_and_the_chunk_ahead_reads_between_them():
    import gevent

    from eslcdr.collector.readside import PgBatches

    log = []

    def next_chunk(rows):  # a statement ahead whose rows come in three reads
        for _ in range(3):
            log.append("read")
            gevent.sleep(0)
        return []

    pieces = []
    for piece in PgBatches(list(range(7)), next_chunk, ahead=5.0, piece=3):
        pieces.append(piece)
        log.append(len(pieces))
    assert pieces == [[0, 1, 2], [3, 4, 5], [6]]
    # Not all read before the first piece, nor after the last: between them.
    assert log.index("read") < log.index(1) < len(log) - 1 - log[::-1].index("read") < log.index(3)


def test_between_two_pieces_the_chunk_ahead_reads_what_has_come():
    """A turn of the hub's loop between pieces, I/O included: the statement ahead
    takes PostgreSQL's answer already on its socket (gevent.sleep(0) may not poll)."""
    import gevent
    import gevent.socket

    from eslcdr.collector.readside import PgBatches

    ours, theirs = gevent.socket.socketpair()
    got = []

    def next_chunk(rows):
        gevent.socket.wait_read(ours.fileno(), timeout=5)
        got.append(ours.recv(100))
        return []

    try:
        theirs.sendall(b"rows")  # the answer is there before the export starts
        stream = iter(PgBatches([1, 2, 3, 4], next_chunk, ahead=5.0, piece=1))
        assert next(stream) == [1] and next(stream) == [2]  # (the turn's timer may come first)
        assert next(stream) == [3] and got == [b"rows"]
    finally:
        ours.close()
        theirs.close()


def test_pieces_are_handed_out_while_other_greenlets_keep_the_loop_busy():
    """The turn between two pieces does not wait for an idle loop: two greenlets
    bouncing a byte keep an event ready in every turn, as a busy collector may."""
    import gevent
    import gevent.socket

    from eslcdr.collector.readside import PgBatches

    ping, pong = gevent.socket.socketpair()

    def bounce(sock, first):
        if first:
            sock.sendall(b"x")
        while True:
            sock.recv(1)
            sock.sendall(b"x")

    players = [gevent.spawn(bounce, ping, True), gevent.spawn(bounce, pong, False)]
    try:
        with gevent.Timeout(10, AssertionError("the export waited for an idle loop")):
            assert list(PgBatches([1, 2, 3], lambda rows: [], ahead=5.0, piece=1)) == [[1], [2], [3]]
    finally:
        gevent.killall(players)
        ping.close()
        pong.close()


def test_only_objects_of_strings_are_their_own_text_whatever_the_spacing():
    from eslcdr.collector.readside import listing_vars

    for text in ('{"a": "1", "b": "x"}', '{}', '{"a":"1" , "b" :"=x"}', '{"u": "http://x:80/", "t": "12:30"}',
                 '{"a": "x\\": ", "b": "y"}'):
        assert listing_vars(text) is text
    # Anything else is the node's stored text (sorted keys, json's spacing),
    # also where a string holds what the cheap proof counts ("as many colons as '": "'").
    for text, node in (('{"a":1}', '{"a": 1}'), ('{"bb" :{"c": "d"}, "a": "x"}', '{"a": "x", "bb": {"c": "d"}}'),
                       ('{"a":\ttrue}', '{"a": true}'), ('[1,"x"]', '[1, "x"]'),
                       ('{"a": "x\\": ", "b": 2}', '{"a": "x\\": ", "b": 2}'),
                       ('{"a": "\\": \\": \\"", "b": [1]}', '{"a": "\\": \\": \\"", "b": [1]}'),
                       ('{"b": 2, "a": "\\": \\""}', '{"a": "\\": \\"", "b": 2}')):
        assert listing_vars(text) == node
    assert listing_vars(None) is None


def test_an_export_reads_a_chunk_ahead_and_a_closed_one_gives_its_connections_back(tmp_path, pg_dsn, monkeypatch):
    from eslcdr.collector import readside
    from eslcdr.query.params import ListQuery

    store, app = central_app(tmp_path, pg_dsn)
    store.node_state("fs-a", "http://127.0.0.1:1")
    store.store_batch("fs-a", "db-fs-a", 0, feed_items(tmp_path, [leg(NOW_G - 10 * i) for i in range(7)]))
    monkeypatch.setattr(readside, "CHUNK", 2)
    monkeypatch.setattr(readside, "EXPORT_CHUNK", 3)  # an export's own chunks
    read = PgReadSide(pg_dsn, 5.0, heavy_slots=1, pool_size=2)
    query = ListQuery(kind=KIND_CDRS, account_id=ACC_A, owner_id=None, created_from=NOW_G - 86400,
                      created_to=NOW_G, ascending=False, page_size=None, cursor=None, filters=(), utc_offset=0)
    try:
        whole = [row[0] for batch in read.list_rows(query) for row in batch]
        batches = list(read.list_export(query))
        assert [len(batch) for batch in batches] == [3, 3, 1]
        assert [len(batch) for batch in read.list_rows(query)] == [2, 2, 2, 1]
        assert [row[0] for batch in batches for row in batch] == whole and len(set(whole)) == 7
        export = read.list_export(query)
        stream = iter(export)
        assert [row[0] for row in next(stream)] == whole[:3]  # the next chunk is under way
        export.close()
        assert list(stream) == []
        assert read.pg._slots.qsize() == 2  # both connections free again
        assert [row[0] for batch in read.list_export(query) for row in batch] == whole
        # A chunk ahead that fails fails the export where it is read.
        from eslcdr.query.reader import StatementTimeout
        fetch, calls = read.pg.fetch, []

        def failing(sql, args, binary=False):
            calls.append(sql)
            if len(calls) == 2:
                raise StatementTimeout("statement ran longer than 5.0 s")
            return fetch(sql, args, binary)

        monkeypatch.setattr(read.pg, "fetch", failing)
        stream = iter(read.list_export(query))
        assert len(next(stream)) == 3
        with pytest.raises(StatementTimeout):
            next(stream)
        assert read.pg._slots.qsize() == 2
    finally:
        read.close()
        app.close()
        store.close()


def test_a_chunk_ahead_that_never_comes_is_a_statement_timeout_not_a_hang():
    import gevent

    from eslcdr.collector.readside import PgBatches
    from eslcdr.query.reader import StatementTimeout

    stuck = []

    def next_chunk(rows):  # a statement that never answers (its own timeout broken)
        stuck.append(gevent.getcurrent())
        gevent.sleep(3600)
        return rows

    stream = iter(PgBatches([1, 2], next_chunk, ahead=0.1))
    assert next(stream) == [1, 2]
    with gevent.Timeout(30, AssertionError("the export waited on its chunk with no bound")):
        with pytest.raises(StatementTimeout, match="next chunk"):
            next(stream)
    stuck[0].join(5)
    assert stuck[0].dead  # the greenlet reading it was killed, not left behind


def test_a_slow_statement_is_cancelled_and_a_failure_names_no_password(pg_dsn):
    from eslcdr.collector.config import dsn_secrets, redact_secrets
    from eslcdr.collector.readside import PgPool
    from eslcdr.query.reader import DatastoreError, StatementTimeout

    pool = PgPool(pg_dsn, 0.2, 5, 1, redact=lambda text: text)
    with pytest.raises(StatementTimeout):  # pg_sleep would return (no error) at 5 s if not cancelled
        pool.fetch("SELECT pg_sleep(5)", ())
    with psycopg.connect(pg_dsn) as watcher:  # cancelled, not left running on the server
        assert watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                               " AND query LIKE %s", ("%pg_sleep(5)%",)).fetchone()[0] == 0
    assert pool.fetch("SELECT 1", ()) == [(1,)]  # the connection is still good
    with pytest.raises(DatastoreError):  # read-only: the API never writes
        pool.fetch("CREATE TABLE x (y int)", ())
    pool.close()
    dsn = "postgresql://eslcdr:S3cret-pass@127.0.0.1:1/eslcdr"
    bad = PgPool(dsn, 1, 1, 1, redact=lambda text: redact_secrets(text, dsn_secrets(dsn)))
    with pytest.raises(DatastoreError) as failure:
        bad.fetch("SELECT 1", ())
    assert "S3cret" not in str(failure.value)


def test_a_statement_the_server_lets_run_on_is_given_up_by_the_pool(pg_dsn):
    """A server alive that does not enforce statement_timeout (here: turned off in
    the session) holds the wait at most 2 x statement_timeout + 1 s: StatementTimeout,
    the connection dropped, its slot free for the next request."""
    from eslcdr.collector.readside import PgPool
    from eslcdr.query.reader import StatementTimeout

    pool = PgPool(pg_dsn, 0.5, 5, 1, redact=lambda text: text)
    with pytest.raises(StatementTimeout):
        pool.run(lambda conn: (conn.execute("SET statement_timeout = 0"), conn.execute("SELECT pg_sleep(15)")))
    assert pool.fetch("SELECT 1", ()) == [(1,)]  # one slot: given back, a new connection
    pool.close()


def test_the_wait_asks_the_hub_only_when_nothing_is_there_and_lets_others_run(monkeypatch):
    """``cooperative_wait`` (the pool's connections): data already on the socket
    is taken without a wait in gevent's hub; with nothing there the greenlet
    waits in the hub (others run meanwhile), and psycopg hears of each state."""
    import socket

    import gevent
    from psycopg.waiting import READY_R, READY_W, WAIT_R, WAIT_W

    from eslcdr.collector import readside

    waits = []
    for state, wait in list(readside.WAITS.items()):
        monkeypatch.setitem(readside.WAITS, state, lambda fd, timeout, _w=wait, _s=state: (waits.append(_s),
                                                                                            _w(fd, timeout=timeout)))
    ours, theirs = socket.socketpair()
    heard = []

    def generator():  # as psycopg's: yields what it waits for, is sent what is ready
        heard.append((yield WAIT_R))
        ours.recv(1)
        heard.append((yield WAIT_R))
        ours.recv(1)
        heard.append((yield WAIT_W))
        return "done"

    theirs.send(b"x")  # the first read: already there
    ticks = []
    sender = gevent.spawn(lambda: (ticks.extend(range(3)), gevent.sleep(0.05), theirs.send(b"y")))
    assert readside.cooperative_wait(generator(), ours.fileno(), 1.0) == "done"
    assert heard == [READY_R, READY_R, READY_W]
    assert waits == [WAIT_R]  # the hub only for the second byte, not there yet
    assert ticks == [0, 1, 2]  # the sender ran while the reader waited
    sender.join(1)
    # Nothing within the interval: psycopg is told nothing came, then waits on.
    waits.clear()
    heard.clear()
    later = gevent.spawn_later(0.15, theirs.send, b"z")

    def patient():
        while not (yield WAIT_R):
            heard.append("nothing yet")
        ours.recv(1)
        return "late"

    assert readside.cooperative_wait(patient(), ours.fileno(), 0.05) == "late"
    assert heard and set(heard) == {"nothing yet"} and len(waits) >= 2
    later.join(1)
    ours.close()
    theirs.close()


def test_a_pool_connection_reads_a_long_result_and_errors_through_its_wait(pg_dsn):
    """A result of many libpq reads (~2 MB) comes whole through the pool's
    connection while another greenlet keeps running; a statement failing after
    its first rows is a DatastoreError, and the connection serves again."""
    import gevent

    from eslcdr.collector.readside import GreenConnection, PgPool
    from eslcdr.query.reader import DatastoreError

    pool = PgPool(pg_dsn, 10.0, 5, 1, redact=lambda text: text)
    ticks = []
    ticker = gevent.spawn(lambda: [(ticks.append(1), gevent.sleep(0.001)) for _ in range(10_000)])
    sql = "SELECT i, repeat(chr(945 + i %% 20), 1000) FROM generate_series(1, %s) AS i"
    rows = pool.fetch(sql + ", pg_sleep(0.2)", [2000], binary=True)
    assert [row[0] for row in rows] == list(range(1, 2001))
    assert all(row[1] == chr(945 + row[0] % 20) * 1000 for row in rows)
    assert ticks  # the hub ran the other greenlet during the statement
    with pytest.raises(DatastoreError):
        pool.fetch("SELECT 1 / (5000 - i) FROM generate_series(1, 10000) AS i", [])
    assert pool.fetch("SELECT 1", []) == [(1,)]
    assert all(isinstance(conn, GreenConnection) for conn in pool._idle)
    ticker.kill()
    pool.close()


def test_the_read_side_notices_a_server_gone_silent(pg_dsn):
    """Its pooled connections carry TCP keepalive (keepalive.py): a request on
    one whose server vanished without FIN/RST fails instead of hanging."""
    from eslcdr.keepalive import libpq_keepalive

    read = PgReadSide(pg_dsn, 5.0, heavy_slots=1)
    try:
        params = read.pg.run(lambda conn: conn.info.get_parameters())
    finally:
        read.close()
    wanted = libpq_keepalive()
    assert {name: params.get(name) for name in wanted} == {name: str(v) for name, v in wanted.items()}



def assert_rate_filters(tmp_path, pg_dsn, rates: list, cases: list[tuple[str, int]]) -> None:
    """Legs with these custom_channel_vars.rate values on a node and centrally:
    filter_ by each case's value matches its count of legs on both, filter_not_ the rest."""
    import urllib.parse

    from tests.unit.api.test_api import CentralEnv

    env = CentralEnv(tmp_path, pg_dsn)
    try:
        env.insert([leg(NOW_G - 10 * (i + 1), custom_channel_vars={"rate": rate}) for i, rate in enumerate(rates)])
        node = webtest.TestApp(env.node_app)
        for value, matches in cases:
            for name, hits in (("filter_", matches), ("filter_not_", len(rates) - matches)):
                query = urllib.parse.urlencode({name + "custom_channel_vars.rate": value})
                url = "/v2/accounts/%s/cdrs?%s" % (ACC_A, query)
                assert len(node.get(url, headers=A).json["data"]) == hits, url
                assert len(env.get(url).json["data"]) == hits, url
    finally:
        env.close()


def test_a_filter_on_a_json_array_or_object_matches_the_nodes_text_of_it(tmp_path, pg_dsn):
    """A node compares SQLite's text of the value (its writer's: keys sorted, no
    spaces); jsonb's text has spaces and its own key order: centrally the node's text
    matched nothing and jsonb's text matched (found by test_central_equivalence's property)."""
    assert_rate_filters(tmp_path, pg_dsn, [["a", {"bb": 1, "c": "é"}], "[1]", [1]],  # "[1]": a string
                        [('["a",{"bb":1,"c":"é"}]', 1), ('["a", {"c": "é", "bb": 1}]', 0), ("[1]", 2),
                         ("[1, 2]", 0), ("[ 1]", 0)])


def test_a_filter_on_a_json_number_matches_sqlites_text_of_it(tmp_path, pg_dsn):
    """A node reads a JSON real (and an integer past 64 bits) as a REAL, whose text
    has 15 significant digits: ``0.3`` matches 0.1 + 0.2 there and
    ``0.30000000000000004`` does not; centrally jsonb's text was compared: the
    reverse (found by test_central_equivalence's property)."""
    assert_rate_filters(tmp_path, pg_dsn, [0.1 + 0.2, 2**64 - 1, 2.0, 30, "0.3", -2**63, 1e-7],
                        [("0.3", 2), ("0.30000000000000004", 0), ("1.84467440737096e+19", 1),
                         ("18446744073709551615", 0), ("2.0", 1), ("2", 0), ("30", 1), ("30.0", 0),
                         ("-9223372036854775808", 1), ("1.0e-07", 1), ("1e-07", 0), ("inf", 0)])
