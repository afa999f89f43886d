"""The collector feed: ``GET /v2/feed/cdrs``, every account's CDRs in seq order.

Only the collector scope (the ``*`` token, or a session logged in with it)
reads it.  ``after=N`` pulls the records with seq > N, as a JSON page (with
``next_after`` and ``db_id``) or streamed as NDJSON; ``X-DB-ID`` and
``X-Feed-Last-Seq`` go on every answer.  Pulling with ``after=N`` says "I
have stored every seq <= N": the acknowledgement retention waits for
(docs/database.md), stored through ``acknowledge(key, after, at_us)`` keyed
by the token's sha256 (a session's: its API key's), never the token.
"""

from __future__ import annotations

from typing import Any

import bottle

from ..query.params import parse_feed_query
from .core import Core, Route, forbidden
from .readside import AckFn, ReadSide
from .streams import ndjson_body, records_json
from .tokens import COLLECTOR, token_key


class Feed:
    def __init__(self, core: Core, read: ReadSide, acknowledge: AckFn) -> None:
        self.core = core
        self.read = read
        self.acknowledge = acknowledge

    def routes(self) -> list[Route]:
        return [("/v2/feed/cdrs", "GET", self.core.guard(self.feed))]

    def feed(self) -> Any:
        core = self.core
        params = core.params()
        if core.scope() != COLLECTOR:
            raise forbidden()
        ndjson = core.wants(params, ("application/x-ndjson",), "ndjson")
        query = parse_feed_query(params, streamed=ndjson)
        token = core.presented_token() or ""
        session_key = core.sessions.key_of(token)
        self.acknowledge(session_key.hex() if session_key is not None else token_key(token), query.after,
                         int(core.clock() * 1_000_000))
        db_id = self.read.db_id()
        bottle.response.set_header("X-DB-ID", db_id)
        bottle.response.set_header("X-Feed-Last-Seq", str(self.read.last_seq()))
        if ndjson:
            return ndjson_body(core, self.read.feed_rows(query))
        rows = self.read.feed_page(query)
        core.count_rows("json", len(rows))
        next_after = rows[-1][1] if rows else query.after
        return core.envelope("[%s]" % ",".join(records_json(rows)),
                             {"next_after": next_after, "db_id": db_id})
