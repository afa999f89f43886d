"""The KPI resources: ``cdrs/stats`` (KPIs per time bucket) and ``cdrs/worst``.

Both under ``/v2/accounts/{A}[/users/{U}]``, JSON or CSV, scoped to the
path's account (and user).  Stats go through the read side's heavy lane:
``max_range`` by minute is 44,701 buckets, whose statements read the whole
range and whose adding up and rendering is half a second of Python -- that
Python work is paced (``ReadSide.pacer``) so other requests keep being
answered.  Worst legs: lowest MOS, longest PDD, or no RTP received.
"""

from __future__ import annotations

from typing import Any

from ..query import kazoo
from ..query.stats import WORST_COLUMNS, paced_chunks, parse_stats_query, parse_worst_query
from ..query.stats import csv_text as stats_csv
from .core import ACCOUNT, Core, Route, dumps
from .readside import ReadSide


class Stats:
    def __init__(self, core: Core, read: ReadSide) -> None:
        self.core = core
        self.read = read

    def routes(self) -> list[Route]:
        guard = self.core.guard
        return [
            (ACCOUNT + "/cdrs/stats", "GET", guard(self.stats)),
            (ACCOUNT + "/cdrs/worst", "GET", guard(self.worst)),
            (ACCOUNT + "/users/<user_id>/cdrs/stats", "GET", guard(self.stats)),
            (ACCOUNT + "/users/<user_id>/cdrs/worst", "GET", guard(self.worst)),
        ]

    def stats(self, account_id: str, user_id: str | None = None) -> Any:
        """KPIs per time bucket (query/stats.py): JSON, or the buckets as CSV."""
        core = self.core
        params = core.account_params(account_id)
        query = parse_stats_query(params, account_id=account_id, owner_id=user_id, api=core.api,
                                  now=core.clock())
        as_csv = core.wants_csv(params)
        with self.read.heavy_slot():
            result = self.read.stats(query)
            breathe = self.read.pacer()
            if as_csv:
                body = stats_csv(result, breathe)
            else:
                parts = [dumps(chunk)[1:-1] for chunk in paced_chunks(result["buckets"], breathe)]
                body = '{"totals":%s,"buckets":[%s]}' % (dumps(result["totals"]), ",".join(parts))
        if as_csv:
            core.csv_headers(core.file_name(params, "cdr-stats.csv"))
            return body.encode("utf-8")
        return core.envelope(body, {})

    def worst(self, account_id: str, user_id: str | None = None) -> Any:
        """The worst legs of a range: lowest MOS, longest PDD, or no RTP received."""
        core = self.core
        params = core.account_params(account_id)
        query = parse_worst_query(params, account_id=account_id, owner_id=user_id, api=core.api,
                                  now=core.clock())
        rows = self.read.worst(query)
        legs = [{name: value for name, value in zip(WORST_COLUMNS, row) if value is not None} for row in rows]
        if core.wants_csv(params):
            core.csv_headers(core.file_name(params, "cdr-worst-%s.csv" % query.kind))
            cells = [["" if leg.get(name) is None else str(leg[name]) for name in WORST_COLUMNS] for leg in legs]
            return kazoo.csv_records([WORST_COLUMNS] + cells).encode("utf-8")
        return core.envelope(dumps(legs), {"page_size": len(legs)})
