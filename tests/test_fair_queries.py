"""The heavy lane: filtered listings run at most ``[api] heavy_queries`` at a
time; past that they wait (bounded) and then get a clear 503, while plain
pages never wait behind them.  Latency figures: bench/fair_queries.py."""

from __future__ import annotations

from eslcdr.config import from_mapping
from eslcdr.queries import KIND_CDRS, is_heavy, parse_list_query

from .test_api import ACC_A, NOW_G, Env, assert_error, leg


def test_filtered_listings_wait_for_a_heavy_slot_plain_pages_do_not(tmp_path):
    env = Env(tmp_path, heavy_queries="1", statement_timeout="0.3")
    try:
        env.insert([leg(NOW_G - i, caller_id_name="n%d" % i) for i in range(200)])
        base = "/v2/accounts/%s/cdrs" % ACC_A
        filtered = base + "?filter_not_custom_channel_vars.rate_name=none&page_size=5"
        assert len(env.get(filtered).json["data"]) == 5
        with env.app.pool.heavy.slot():  # a heavy statement holds the only slot
            assert len(env.get(base + "?page_size=5").json["data"]) == 5
            body = assert_error(env.get(filtered, status=503), 503, "datastore timeout")
            assert "too many filtered queries" in body["data"]["message"]
            assert_error(env.get(base + "?accept=csv&filter_owner_id=user-1", status=503), 503)
        assert len(env.get(filtered).json["data"]) == 5  # the slot is free again
    finally:
        env.close()


def test_what_counts_as_heavy():
    def query(**params):
        return parse_list_query({k: [v] for k, v in params.items()}, kind=KIND_CDRS, account_id=ACC_A,
                                owner_id=None, api=from_mapping({}).api,
                                now=NOW_G - 62167219200, unpaginated=False)

    assert not is_heavy(query())
    assert not is_heavy(query(page_size="1000", ascending="true"))
    assert is_heavy(query(filter_caller_id_number="+15551230001"))
    assert is_heavy(query(**{"filter_not_custom_channel_vars.owner_id": "x"}))
