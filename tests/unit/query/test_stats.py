"""KPIs (``cdrs/stats``), worst legs (``cdrs/worst``) and the quality columns
through the API, on a hand-computed set of legs."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eslcdr.query.percentiles import nearest_ranks, sorted_ranks
from eslcdr.query.stats import CSV_COLUMNS, KPI_FIELDS, StatsQuery, compute

from tests.unit.api.test_api import (ACC_A, ACC_B, CENTRAL_TOO, COLLECTOR, B, CentralEnv, Env, NOW_G, assert_error,
                                    leg)

HOUR = 3600
H0 = (NOW_G // HOUR) * HOUR - 3 * HOUR  # start of the first bucket (aligned)
RANGE = "created_from=%d&created_to=%d" % (H0, H0 + 3 * HOUR - 1)  # three hourly buckets
STATS = "/v2/accounts/%s/cdrs/stats" % ACC_A


def seizure(ts, cause, *, answered=False, billing=0, pdd=None, mos=None, no_rtp=None, **fields):
    extra = {"answered_us": (ts - 62167219200 - 30) * 10**6 if answered else 0}
    return leg(ts, call_direction="outbound", hangup_cause=cause, billing_seconds=billing if answered else 0,
               pdd_ms=pdd, audio_in_mos=mos, no_rtp_in=no_rtp, **{**extra, **fields})


def attempt(ts, *, answered=True, cause="NORMAL_CLEARING", **fields):
    if not answered:
        fields.update(answered_us=0, billing_seconds=0)
    return leg(ts, call_direction="inbound", hangup_cause=cause, **fields)


def hand_set() -> dict[str, list[dict]]:
    t1, t2 = H0 + 10, H0 + HOUR + 10
    return {
        "bucket1": [
            attempt(t1, pdd_ms=2000, audio_in_mos=4.4, no_rtp_in=0, codec="PCMA"),  # answered attempt
            attempt(t1 + 1, answered=False, cause="ORIGINATOR_CANCEL"),  # caller gave up
            seizure(t1 + 2, "NORMAL_CLEARING", answered=True, billing=100, pdd=1200, mos=4.2, no_rtp=0,
                    codec="PCMA", owner_id="user-9"),
            seizure(t1 + 3, "NORMAL_CLEARING", answered=True, billing=50, pdd=3000, mos=3.1, no_rtp=0,
                    codec="PCMU"),
            seizure(t1 + 4, "NORMAL_CLEARING", answered=True, billing=10, pdd=500, no_rtp=1, codec="PCMU"),
            seizure(t1 + 5, "USER_BUSY", pdd=800, owner_id="user-9"),  # busy
            seizure(t1 + 6, "CALL_REJECTED"),  # rejected, no ringing
            seizure(t1 + 7, "ORIGINATOR_CANCEL", pdd=4000),  # cancelled while ringing
            seizure(t1 + 8, "NORMAL_TEMPORARY_FAILURE"),  # network failure
            seizure(t1 + 9, "LOSE_RACE", pdd=100, mos=2.0),  # another phone of the group answered
            seizure(t1 + 10, "NORMAL_CLEARING", answered=True, billing=999, pdd=9999, mos=1.0, no_rtp=1,
                    channel_name="loopback/bridge-a"),  # loopback: counts nowhere
        ],
        "bucket2": [
            attempt(t2, audio_in_mos=4.0, no_rtp_in=0),
            attempt(t2 + 1, channel_name="loopback/bridge-b"),
        ],
        "elsewhere": [
            seizure(t1, "NORMAL_CLEARING", answered=True, billing=70, pdd=10, mos=1.5, account=ACC_B),
            seizure(H0 - 1, "NORMAL_CLEARING", answered=True, billing=70, pdd=10, mos=1.5),  # before the range
            seizure(H0 + 3 * HOUR, "USER_BUSY", pdd=10),  # after it
        ],
    }


BUCKET1 = {
    "legs": 10, "attempts": 2, "answered_attempts": 1, "seizures": 7, "answered": 3, "user_outcomes": 3,
    "failures": 1, "asr": 3 * 100 / 7, "ner": 6 * 100 / 7, "acd_seconds": 160 / 3,
    "pdd_legs": 5, "pdd_ms_p50": 1200, "pdd_ms_p95": 4000,
    "mos_legs": 4, "mos_avg": (4.4 + 4.2 + 3.1 + 2.0) / 4, "low_mos": 2, "rtp_legs": 4, "no_rtp": 1,
    "hangup_causes": {"NORMAL_CLEARING": 3, "CALL_REJECTED": 1, "NORMAL_TEMPORARY_FAILURE": 1,
                      "ORIGINATOR_CANCEL": 1, "USER_BUSY": 1},
}
BUCKET2 = {
    "legs": 1, "attempts": 1, "answered_attempts": 1, "seizures": 0, "answered": 0, "user_outcomes": 0,
    "failures": 0, "pdd_legs": 0, "mos_legs": 1, "mos_avg": 4.0, "low_mos": 0, "rtp_legs": 1, "no_rtp": 0,
    "hangup_causes": {},
}
EMPTY = {"legs": 0, "attempts": 0, "answered_attempts": 0, "seizures": 0, "answered": 0, "user_outcomes": 0,
         "failures": 0, "pdd_legs": 0, "mos_legs": 0, "low_mos": 0, "rtp_legs": 0, "no_rtp": 0,
         "hangup_causes": {}}
RATIOS = ("asr", "ner", "acd_seconds", "pdd_ms_p50", "pdd_ms_p95", "mos_avg")


@pytest.fixture
def env(request, tmp_path):
    """The hand set on a node; with ``CENTRAL_TOO``, also in the collector's PostgreSQL."""
    if getattr(request, "param", "node") == "central":
        environment = CentralEnv(tmp_path, request.getfixturevalue("pg_dsn"))
    else:
        environment = Env(tmp_path)
    for legs in hand_set().values():
        environment.insert(legs)
    yield environment
    environment.close()


def approx_equal(got: dict, expected: dict) -> None:
    assert set(got) == set(expected), sorted(set(got) ^ set(expected))
    for name, value in expected.items():
        if isinstance(value, float):
            assert got[name] == pytest.approx(value), name
        else:
            assert got[name] == value, name


@CENTRAL_TOO
def test_kpis_of_the_hand_computed_legs(env):
    body = env.get("%s?%s" % (STATS, RANGE)).json
    assert body["status"] == "success" and set(body["data"]) == {"totals", "buckets"}
    buckets = body["data"]["buckets"]
    assert [(b["from"], b["to"]) for b in buckets] == [
        (H0, H0 + HOUR - 1), (H0 + HOUR, H0 + 2 * HOUR - 1), (H0 + 2 * HOUR, H0 + 3 * HOUR - 1)]
    approx_equal({k: v for k, v in buckets[0].items() if k not in ("from", "to")}, BUCKET1)
    approx_equal({k: v for k, v in buckets[1].items() if k not in ("from", "to")}, BUCKET2)
    approx_equal({k: v for k, v in buckets[2].items() if k not in ("from", "to")}, EMPTY)
    totals = body["data"]["totals"]
    approx_equal(totals, {
        **BUCKET1, "legs": 11, "attempts": 3, "answered_attempts": 2, "mos_legs": 5,
        "mos_avg": (4.4 + 4.2 + 3.1 + 2.0 + 4.0) / 5, "rtp_legs": 5,
    })
    assert list(buckets[0])[2:] == list(KPI_FIELDS)  # every figure, in the documented order


@CENTRAL_TOO
def test_ratios_over_zero_legs_are_absent_never_zero(env):
    buckets = env.get("%s?%s" % (STATS, RANGE)).json["data"]["buckets"]
    for bucket in buckets[1:]:
        for name in ("asr", "ner", "acd_seconds", "pdd_ms_p50", "pdd_ms_p95"):
            assert name not in bucket, name
    assert "mos_avg" not in buckets[2]
    # The same for a range without a single leg: totals hold counts only.
    quiet = env.get("%s?created_from=%d&created_to=%d" % (STATS, H0 - 10 * HOUR, H0 - 9 * HOUR)).json["data"]
    assert not set(RATIOS) & set(quiet["totals"]) and quiet["totals"]["legs"] == 0


@CENTRAL_TOO
def test_totals_are_the_sum_of_the_buckets(env):
    for interval in (60, 600, 1800, 3600, 7200, 86400):
        data = env.get("%s?%s&interval=%d" % (STATS, RANGE, interval)).json["data"]
        buckets, totals = data["buckets"], data["totals"]
        for name in ("legs", "attempts", "answered_attempts", "seizures", "answered", "user_outcomes",
                     "failures", "pdd_legs", "mos_legs", "low_mos", "rtp_legs", "no_rtp"):
            assert totals[name] == sum(b[name] for b in buckets), (interval, name)
        causes: dict[str, int] = {}
        for bucket in buckets:
            for cause, n in bucket["hangup_causes"].items():
                causes[cause] = causes.get(cause, 0) + n
        assert causes == totals["hangup_causes"]
        assert sum(causes.values()) == totals["seizures"] == 7
        # Buckets tile the range exactly, aligned to multiples of the interval.
        assert buckets[0]["from"] == H0 and buckets[-1]["to"] == H0 + 3 * HOUR - 1
        for before, after in zip(buckets, buckets[1:]):
            assert after["from"] == before["to"] + 1 and after["from"] % interval == 0


@CENTRAL_TOO
def test_daily_buckets_start_at_midnight_utc_and_are_clipped_to_the_range(env):
    data = env.get("%s?%s&interval=86400" % (STATS, RANGE)).json["data"]
    for bucket in data["buckets"]:
        assert H0 <= bucket["from"] <= bucket["to"] <= H0 + 3 * HOUR - 1
    midnight = (H0 // 86400 + 1) * 86400
    starts = [b["from"] for b in data["buckets"]]
    assert starts == ([H0, midnight] if H0 < midnight <= H0 + 3 * HOUR - 1 else [H0])
    assert (H0 - 62167219200) % 3600 == 0  # Gregorian hours are Unix hours


@CENTRAL_TOO
def test_csv_is_the_json_buckets(env):
    json_buckets = env.get("%s?%s&interval=1800" % (STATS, RANGE)).json["data"]["buckets"]
    for request in ({"headers": {**env_headers(), "Accept": "text/csv"}, "url": "%s?%s&interval=1800"},
                    {"headers": env_headers(), "url": "%s?%s&interval=1800&accept=csv"}):
        response = env.get(request["url"] % (STATS, RANGE), headers=request["headers"])
        assert response.content_type == "text/csv"
        rows = list(csv.reader(io.StringIO(response.text)))
        assert tuple(rows[0]) == CSV_COLUMNS
        assert len(rows) - 1 == len(json_buckets)
        for cells, bucket in zip(rows[1:], json_buckets):
            parsed = {}
            for name, cell in zip(CSV_COLUMNS, cells):
                if cell != "":
                    parsed[name] = json.loads(cell)
            assert parsed == bucket


def env_headers() -> dict:
    return {"X-Auth-Token": "token-a"}


@CENTRAL_TOO
def test_user_stats_count_only_the_users_legs(env):
    data = env.get("/v2/accounts/%s/users/user-9/cdrs/stats?%s&interval=10800" % (ACC_A, RANGE)).json["data"]
    approx_equal(data["totals"], {
        "legs": 2, "attempts": 0, "answered_attempts": 0, "seizures": 2, "answered": 1, "user_outcomes": 1,
        "failures": 0, "asr": 50.0, "ner": 100.0, "acd_seconds": 100.0, "pdd_legs": 2, "pdd_ms_p50": 800,
        "pdd_ms_p95": 1200, "mos_legs": 1, "mos_avg": 4.2, "low_mos": 0, "rtp_legs": 1, "no_rtp": 0,
        "hangup_causes": {"NORMAL_CLEARING": 1, "USER_BUSY": 1},
    })


@CENTRAL_TOO
def test_tenancy_another_accounts_legs_never_count(env):
    # Account B sees its one leg; A's figures above never include it.
    mine = env.get("/v2/accounts/%s/cdrs/stats?%s" % (ACC_B, RANGE), headers=B).json["data"]["totals"]
    assert mine["legs"] == 1 and mine["mos_avg"] == 1.5
    assert_error(env.get("/v2/accounts/%s/cdrs/stats?%s" % (ACC_B, RANGE), status=403), 403)
    assert_error(env.get("/v2/accounts/%s/users/user-9/cdrs/stats" % ACC_B, status=403), 403)
    assert_error(env.get("%s?%s" % (STATS, RANGE), headers={}, status=401), 401)
    assert_error(env.get("%s?%s" % (STATS, RANGE), headers={"X-Auth-Token": "nope"}, status=401), 401)
    as_collector = env.get("%s?%s" % (STATS, RANGE), headers=COLLECTOR).json["data"]["totals"]
    assert as_collector["legs"] == 11


@CENTRAL_TOO
@pytest.mark.parametrize("query, param", [
    ("interval=59", "interval"),
    ("interval=abc", "interval"),
    ("interval=1e3", "interval"),
    ("created_from=100&created_to=50", "created_from"),
    ("created_from=0&created_to=%d" % NOW_G, "created_from"),
    ("created_from=x", "created_from"),
])
def test_bad_parameters_are_validation_errors(env, query, param):
    body = assert_error(env.get("%s?%s" % (STATS, query), status=400), 400, "validation error")
    assert param in body["data"]


def test_too_many_buckets_is_a_validation_error(tmp_path):
    environment = Env(tmp_path, max_range=str(400 * 86400))
    try:
        body = assert_error(environment.get("%s?created_from=%d&created_to=%d&interval=60" % (
            STATS, NOW_G - 60 * 86400, NOW_G), status=400), 400, "validation error")
        assert "interval" in body["data"]
    finally:
        environment.close()


@CENTRAL_TOO
def test_filters_narrow_the_stats(env):
    totals = env.get("%s?%s&filter_codec=PCMU" % (STATS, RANGE)).json["data"]["totals"]
    assert (totals["legs"], totals["seizures"], totals["answered"], totals["no_rtp"]) == (2, 2, 2, 1)
    assert_error(env.get("%s?filter_nonsense=1" % STATS, status=400), 400, "validation error")


def test_nearest_rank():
    values = {15: 1, 20: 1, 35: 1, 40: 1, 50: 1}  # the textbook example
    assert nearest_ranks(values, 5, (5, 30, 40, 50, 95, 100)) == [15, 20, 20, 35, 50, 50]
    assert nearest_ranks({7: 3, 9: 1}, 4, (50, 95)) == [7, 9] and nearest_ranks({7: 3, 9: 1}, 4, (95,)) == [9]
    # the same ranks from a sorted histogram whose values repeat (hours of one bucket)
    assert sorted_ranks([15, 20, 20, 35, 40, 50], [1, 1, 1, 1, 1, 1], (5, 30, 50, 95)) == (6, [15, 20, 20, 50])
    assert sorted_ranks([], [], (50,)) == (0, [])


_PDD_ROWS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40), st.integers(1, 5)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(hours=_PDD_ROWS, edges=_PDD_ROWS, interval_hours=st.integers(1, 3))
def test_sorted_pdd_histograms_give_the_figures_of_pdd_rows(hours, edges, interval_hours):
    # The collector's PDD hours come as one sorted histogram per hour (the
    # fourth kind), the ragged edges' as (bucket, pdd_ms, n) rows; the figures
    # must be those of every value given as rows, buckets and totals.
    interval = interval_hours * HOUR
    query = StatsQuery("a", None, H0, H0 + 4 * HOUR - 1, interval, ())
    per_hour: dict[int, dict[int, int]] = {}
    for hour, value, n in hours:
        per_hour.setdefault(hour, {})
        per_hour[hour][value] = per_hour[hour].get(value, 0) + n
    bucket_of = {hour: (H0 + hour * HOUR) // interval for hour in per_hour}
    sorted_rows = [(bucket_of[hour], sorted(histogram), [histogram[v] for v in sorted(histogram)])
                   for hour, histogram in per_hour.items()]
    edge_rows = [((H0 + hour * HOUR) // interval, value, n) for hour, value, n in edges]
    hour_rows = [(bucket_of[hour], value, n) for hour, histogram in per_hour.items() for value, n in histogram.items()]
    assert compute(query, [[], [], edge_rows, sorted_rows]) == compute(query, [[], [], edge_rows + hour_rows])


# --------------------------------------------------------------- worst legs


@CENTRAL_TOO
def test_worst_legs_by_mos_pdd_and_no_rtp(env):
    base = "/v2/accounts/%s/cdrs/worst?%s" % (ACC_A, RANGE)
    by_mos = env.get(base + "&by=mos").json["data"]
    assert [row["audio_in_mos"] for row in by_mos] == [2.0, 3.1, 4.0, 4.2, 4.4]  # no loopback, no B
    assert {"id", "call_id", "interaction_id", "timestamp", "hangup_cause"} <= set(by_mos[0])
    by_pdd = env.get(base + "&by=pdd&limit=3").json["data"]
    assert [row["pdd_ms"] for row in by_pdd] == [4000, 3000, 1200]  # seizures only
    no_rtp = env.get(base + "&by=no_rtp").json["data"]
    assert [(row["no_rtp_in"], row["billing_seconds"]) for row in no_rtp] == [(1, 10)]
    # Each row links to its full record.
    detail = env.get("/v2/accounts/%s/cdrs/%s" % (ACC_A, by_mos[0]["id"])).json["data"]
    assert detail["audio_in_mos"] == 2.0
    assert_error(env.get(base + "&by=jitter", status=400), 400, "validation error")
    assert_error(env.get(base + "&limit=0", status=400), 400, "validation error")
    assert_error(env.get("/v2/accounts/%s/cdrs/worst" % ACC_B, status=403), 403)
    user = env.get("/v2/accounts/%s/users/user-9/cdrs/worst?%s&by=pdd" % (ACC_A, RANGE)).json["data"]
    assert [row["pdd_ms"] for row in user] == [1200, 800]
    rows = list(csv.reader(io.StringIO(env.get(base + "&by=mos&accept=csv").text)))
    assert [float(r[rows[0].index("audio_in_mos")]) for r in rows[1:]] == [2.0, 3.1, 4.0, 4.2, 4.4]


# --------------------------------------------------- quality columns in the API


def test_full_records_carry_quality_and_list_rows_stay_kazoos(env):
    listing = env.get("/v2/accounts/%s/cdrs?%s&filter_codec=PCMA" % (ACC_A, RANGE)).json["data"]
    assert len(listing) == 2
    assert not {"codec", "audio_in_mos", "pdd_ms", "no_rtp_in"} & set(listing[0])
    detail = env.get("/v2/accounts/%s/cdrs/%s" % (ACC_A, listing[0]["id"])).json["data"]
    assert detail["codec"] == "PCMA" and isinstance(detail["audio_in_mos"], float)
    legs = env.get("/v2/accounts/%s/cdrs/legs/%s" % (ACC_A, listing[0]["id"])).json["data"]
    assert legs[0]["codec"] == "PCMA" and legs[0]["no_rtp_in"] == 0
    feed = env.get("/v2/feed/cdrs?after=0", headers=COLLECTOR).json["data"]
    pdds = sorted(row["pdd_ms"] for row in feed if row.get("pdd_ms") is not None)
    assert pdds == sorted([2000, 1200, 3000, 500, 800, 4000, 100, 9999, 10, 10, 10])
    assert all(isinstance(p, int) for p in pdds)
    by_rtp = env.get("/v2/accounts/%s/cdrs?%s&filter_no_rtp_in=1" % (ACC_A, RANGE)).json["data"]
    assert len(by_rtp) == 2  # the SIP leg and the loopback one (lists filter, they do not judge)
    by_mos = env.get("/v2/accounts/%s/cdrs?%s&filter_audio_in_mos=4.2" % (ACC_A, RANGE)).json["data"]
    assert len(by_mos) == 1


# ------------------------------------------------------------- end to end


@pytest.mark.subprocess
def test_captured_sip_call_through_the_daemon_to_the_kpis(tmp_path):
    """S4 replayed by the stand-in over TCP into ``eslcdr run``; the KPIs and a
    full record read back over HTTP from the daemon's own API."""
    import http.client

    from eslcdr.fakefs import FakeFreeSWITCH, ReplaySource

    from tests.conftest import DATA, capture_events
    from tests.harness import DaemonProcess, settle, wait_rows, write_config

    hangup_ts = [int(e["Event-Date-Timestamp"]) // 10**6 + 62167219200
                 for e in capture_events("S4_json.esl") if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"]
    fake = FakeFreeSWITCH(events=ReplaySource([DATA / "S4_json.esl"]), hold=True)
    fake.start()
    ini = write_config(tmp_path, fake.port)
    # The two SIP legs carry X-Account-ID; the loopback legs have no account.
    ini.write_text(ini.read_text().replace("[cdr]\n", "[cdr]\naccount_id_vars = sip_h_X-Account-ID\n"))
    (tmp_path / "tokens").write_text("tok-acme acme\n")
    daemon = DaemonProcess(ini, tmp_path / "daemon.log")
    try:
        assert len(wait_rows(tmp_path / "cdrs.db", 4)) == 4
        assert fake.wait_done(timeout=30)
        settle(tmp_path / "cdrs.db", 0.2)
        conn = http.client.HTTPConnection("127.0.0.1", daemon.api_port(), timeout=10)
        query = "created_from=%d&created_to=%d&interval=60" % (min(hangup_ts) - 120, max(hangup_ts) + 120)
        conn.request("GET", "/v2/accounts/acme/cdrs/stats?" + query, headers={"X-Auth-Token": "tok-acme"})
        response = conn.getresponse()
        body = json.loads(response.read())
        assert response.status == 200, body
        totals = body["data"]["totals"]
        # B-leg: answered seizure that received 99 audio packets (MOS 4.5);
        # callee leg: answered attempt that received none (no MOS, no_rtp 1).
        assert {k: totals[k] for k in ("legs", "attempts", "answered_attempts", "seizures", "answered",
                                       "asr", "ner", "mos_legs", "mos_avg", "rtp_legs", "no_rtp",
                                       "hangup_causes")} == {
            "legs": 2, "attempts": 1, "answered_attempts": 1, "seizures": 1, "answered": 1, "asr": 100.0,
            "ner": 100.0, "mos_legs": 1, "mos_avg": 4.5, "rtp_legs": 2, "no_rtp": 1,
            "hangup_causes": {"NORMAL_CLEARING": 1}}
        assert totals["pdd_legs"] == 1 and totals["pdd_ms_p50"] == totals["pdd_ms_p95"] >= 0
        assert sum(b["legs"] for b in body["data"]["buckets"]) == 2
        conn.request("GET", "/v2/accounts/acme/cdrs/worst?by=no_rtp&" + query, headers={"X-Auth-Token": "tok-acme"})
        worst = json.loads(conn.getresponse().read())["data"]
        assert [(w["channel_name"], w["no_rtp_in"]) for w in worst] == [("sofia/external/1000@127.0.0.1", 1)]
        conn.request("GET", "/v2/accounts/acme/cdrs/%s" % worst[0]["id"], headers={"X-Auth-Token": "tok-acme"})
        record = json.loads(conn.getresponse().read())["data"]
        assert (record["codec"], record["codec_rate"], record["audio_in_media_packets"]) == ("PCMU", 8000, 0)
        assert record.get("audio_in_mos") is None and record["audio_out_media_packets"] == 100
        conn.close()
    finally:
        code = daemon.stop()
        fake.stop()
    assert code == 0, (tmp_path / "daemon.log").read_text()[-3000:]


# ------------------------------------------------------------------ roll-ups


def random_legs(rng, n: int, base: int) -> list[dict]:
    causes = ["NORMAL_CLEARING", "USER_BUSY", "NO_ANSWER", "ORIGINATOR_CANCEL", "LOSE_RACE", "PICKED_OFF",
              "NORMAL_TEMPORARY_FAILURE", None, ""]
    out = []
    for _ in range(n):
        answered = rng.random() < 0.5
        fields = dict(
            account=rng.choice([ACC_A, ACC_A, ACC_B, None]),
            call_direction=rng.choice(["inbound", "outbound", "outbound", None]),
            hangup_cause=rng.choice(causes),
            channel_name=rng.choice(["sofia/internal/1000@x", "sofia/external/2000@y", "loopback/z-a", None]),
            answered_us=rng.randrange(1, 10**12) if answered else 0,
            billing_seconds=rng.randrange(0, 600) if answered else 0,
            pdd_ms=rng.choice([None, rng.randrange(0, 9000), 1000]),
            audio_in_mos=rng.choice([None, round(rng.uniform(1, 4.5), 2), 4.5]),
            no_rtp_in=rng.choice([None, 0, 1]),
        )
        account = fields.pop("account")
        record = leg(base + rng.randrange(0, 3 * 86400), account=account or ACC_A, **fields)
        record["account_id"] = account
        out.append(record)
    return out


def test_rollups_give_the_figures_of_the_legs_through_inserts_rewrites_and_deletes(tmp_path):
    import random

    from eslcdr.query.stats import StatsQuery, read_stats

    rng = random.Random(5)
    base = H0 - 2 * 86400
    conn = store_writer(tmp_path / "r.db")
    legs = random_legs(rng, 600, base)
    store_insert(conn, legs)
    # Rewrites (REPLACE: what merges and backfill do), updates by hand, deletes (retention).
    from eslcdr.store import db as store

    conn.execute("BEGIN")
    store.replace_records(conn, [dict(r, hangup_cause="USER_BUSY", answered_us=0, pdd_ms=777)
                                 for r in legs[:40]])
    store.rewrite_rows(conn, "call_id IN (%s)" % ",".join("?" * 30), [r["call_id"] for r in legs[40:70]],
                       {"interaction_id": "merged-1"})
    conn.execute("COMMIT")
    conn.execute("UPDATE cdrs SET audio_in_mos = 2.5, pdd_ms = NULL WHERE seq % 7 = 0")
    conn.execute("UPDATE cdrs SET \"timestamp\" = \"timestamp\" + 3600 WHERE seq % 11 = 0")
    conn.execute("DELETE FROM cdrs WHERE seq % 5 = 0")
    store_insert(conn, random_legs(rng, 200, base))
    assert conn.execute("SELECT count(*) FROM stats_minutes WHERE legs <= 0").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM stats_pdd_hours WHERE seizures <= 0").fetchone()[0] == 0
    checked = 0
    for _ in range(60):
        low = base + rng.randrange(-3600, 3 * 86400)
        high = low + rng.randrange(0, 2 * 86400)
        interval = rng.choice([60, 120, 300, 3600, 7200, 86400, 90, 61])
        for account in (ACC_A, ACC_B):
            query = StatsQuery(account, None, low, high, interval, ())
            fast, slow = read_stats(conn, query), read_stats(conn, query, use_rollups=False)
            assert_same_stats(fast, slow)
            checked += fast["totals"]["legs"]
    assert checked > 1000
    conn.close()


def assert_same_stats(fast: dict, slow: dict) -> None:
    assert len(fast["buckets"]) == len(slow["buckets"])
    for got, want in zip([fast["totals"]] + fast["buckets"], [slow["totals"]] + slow["buckets"]):
        assert set(got) == set(want)
        for name, value in want.items():
            if isinstance(value, float):
                assert got[name] == pytest.approx(value, rel=1e-9), name
            else:
                assert got[name] == value, name


def test_upgrade_fills_the_rollups_from_the_rows_already_there(tmp_path):
    import random

    from eslcdr.store import schema
    from eslcdr.store import db as store
    from eslcdr.query.stats import StatsQuery, read_stats

    from tests.harness import database_before

    path = tmp_path / "old.db"
    old = database_before(path, schema.add_stats_rollups)
    legs = random_legs(random.Random(9), 300, H0 - 86400)
    # The columns of that version: later migrations append theirs at the end.
    columns = schema.RECORD_COLUMNS[: len(schema.RECORD_COLUMNS) - len(schema.START_COLUMNS) - len(schema.SIP_COLUMNS)]
    old.executemany("INSERT INTO cdrs (%s) VALUES (%s)" % (", ".join('"%s"' % c for c in columns),
                                                          ", ".join("?" * len(columns))),
                    [store.record_row(r)[: len(columns)] for r in legs])
    old.close()
    conn = store.connect_writer(path)
    query = StatsQuery(ACC_A, None, H0 - 86400, H0 + 2 * 86400, 3600, ())
    fast = read_stats(conn, query)
    assert fast["totals"]["legs"] > 50
    assert_same_stats(fast, read_stats(conn, query, use_rollups=False))
    conn.close()


def store_writer(path):
    from eslcdr.store import db as store

    return store.connect_writer(path)


def store_insert(conn, records):
    from eslcdr.store import db as store

    store.insert_records(conn, records)


def test_rollups_stay_exact_when_a_batch_merges_rows_it_just_inserted(tmp_path):
    # The writer adds a batch's rows to the roll-ups once per statement; a
    # merge in the same transaction rewrites rows of that very batch (their
    # delete trigger fires), so the roll-up must already hold them by then.
    import random

    from eslcdr.store import db as store
    from eslcdr.query.stats import StatsQuery, read_stats

    rng = random.Random(12)
    base = H0 - 86400
    conn = store_writer(tmp_path / "m.db")
    legs = random_legs(rng, 300, base)
    for n, record in enumerate(legs):
        record["interaction_id"] = "loser-%d" % (n % 3)
    replaced = [dict(r, hangup_cause="USER_BUSY", answered_us=0) for r in random_legs(rng, 20, base)]
    store.insert_records(conn, replaced[:10])
    store.insert_records(conn, legs, merges=[("loser-0", "winner"), ("loser-1", "winner")],
                         replacements=[dict(r, pdd_ms=4321) for r in replaced[:10]] + replaced[10:])
    assert conn.execute("SELECT count(*) FROM cdrs WHERE interaction_id = 'winner'").fetchone()[0] == 200
    for account in (ACC_A, ACC_B):
        query = StatsQuery(account, None, base - 3600, base + 4 * 86400, 3600, ())
        fast, slow = read_stats(conn, query), read_stats(conn, query, use_rollups=False)
        assert slow["totals"]["legs"] > 20
        assert_same_stats(fast, slow)
    conn.close()
