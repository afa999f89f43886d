"""The API's resources reach the CDRs through the read-side protocol alone.

``readside.ReadSide`` is what a second backend (the collector's PostgreSQL)
implements to serve the same routes: an app given a read side that exposes
nothing but the protocol's members answers every CDR route byte for byte as
the default app over the same SQLite file does.
"""

from __future__ import annotations

import inspect

import pytest
import webtest

from eslcdr.api import app as api
from eslcdr.api.readside import ReadSide
from eslcdr.api.sqlite import SqliteReadSide
from eslcdr.api.tokens import TokenStore
from eslcdr.query.reader import InlineRunner

from tests.unit.api.test_api import ACC_A, COLLECTOR, NOW, NOW_G, Env, leg

MEMBERS = sorted(name for name in vars(ReadSide) if not name.startswith("_") and callable(getattr(ReadSide, name)))


class ProtocolOnly:
    """A read side showing only ReadSide's members of another; records which were used."""

    def __init__(self, inner: ReadSide) -> None:
        self._inner = inner
        self.used: set[str] = set()

    def __getattr__(self, name: str):
        if name not in MEMBERS:
            raise AttributeError(name)
        self.used.add(name)
        return getattr(self._inner, name)


def test_the_sqlite_read_side_has_every_member_of_the_protocol_with_its_parameters():
    assert len(MEMBERS) >= 10
    for name in MEMBERS:
        expected = list(inspect.signature(getattr(ReadSide, name)).parameters)
        assert list(inspect.signature(getattr(SqliteReadSide, name)).parameters) == expected, name


@pytest.fixture
def two_apps(tmp_path):
    env = Env(tmp_path)
    first, second = leg(NOW_G - 7200), leg(NOW_G - 3600)
    env.insert([first, leg(NOW_G - 7100, interaction=first["interaction_id"], created_g=NOW_G - 7190),
                second, leg(NOW_G - 600, owner="user-2")])
    read = ProtocolOnly(SqliteReadSide(env.config.store.path, env.config.api.statement_timeout,
                                       runner=InlineRunner(), heavy_slots=env.config.api.heavy_queries))
    app = api.create_app(env.config, tokens=TokenStore(tmp_path / "tokens"), clock=lambda: NOW,
                         runner=InlineRunner(), read=read)
    yield env, webtest.TestApp(app), read, first
    app.close()
    env.close()


def test_every_cdr_route_answers_the_same_through_the_protocol_alone(two_apps):
    env, protocol_only, read, first = two_apps
    account = "/v2/accounts/%s" % ACC_A
    urls = [
        account + "/cdrs", account + "/cdrs?page_size=1", account + "/cdrs?paginate=false",
        account + "/cdrs?accept=csv", account + "/cdrs/interaction", account + "/cdrs/interaction?accept=csv",
        account + "/users/user-1/cdrs", account + "/cdrs/%s" % first["id"],
        account + "/cdrs/%s?accept=csv" % first["id"], account + "/cdrs/nothing-here",
        account + "/cdrs/legs/%s" % first["interaction_id"], account + "/cdrs/legs/%s?accept=csv" % first["id"],
        account + "/cdrs/stats", account + "/cdrs/stats?accept=csv", account + "/cdrs/worst?kind=pdd",
        "/v2/feed/cdrs?after=1", "/v2/feed/cdrs?accept=ndjson", "/v2/cdrs",
    ]
    for url in urls:
        headers = dict(COLLECTOR if "/feed/" in url else {"X-Auth-Token": "token-a"}, **{"X-Request-ID": "r1"})
        expected = env.web.get(url, headers=headers, expect_errors=True)
        got = protocol_only.get(url, headers=headers, expect_errors=True)
        assert (got.status, got.headerlist, got.body) == (expected.status, expected.headerlist, expected.body), url
        assert expected.status_int in (200, 404) and expected.body, url
    assert read.used == set(MEMBERS) - {"close"}
