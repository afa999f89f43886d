"""KPIs per time bucket and the worst legs: the ``cdrs/stats`` and ``cdrs/worst`` routes' queries.

Which legs count and what each figure means is docs/api.md#kpis: legs by ``timestamp`` (their
hangup) in the inclusive range, loopback legs nowhere, attempts / seizures / answered / user
outcomes / failures, in buckets of ``interval`` seconds aligned to multiples of the interval in
Gregorian seconds.  A mean or ratio over zero legs is left out, never 0.

Invariants.  Three kinds of rows (counters, seizures per cause, seizures per ``pdd_ms``: a
histogram read exactly by nearest rank) are read in one transaction -- one snapshot, so the
totals are exactly the sum of the buckets -- and added up per bucket by ``compute()``.  An
account's range reads the roll-ups the writer and store/schema.py's triggers keep
(``stats_minutes``, ``stats_pdd_hours``) for its whole minutes / hours and the legs only for the
ragged edges (``plan()``); a user's, a filtered one or an interval that is not whole minutes
reads the legs (the partial covering index ``idx_cdrs_stats``, or the owner index).
"""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from . import kazoo, percentiles
from ..config import ApiConfig
from .params import (
    SECONDS,
    Filter,
    ParamError,
    Params,
    effective_range,
    first,
    parse_filters,
    parse_int,
    requested_range,
)
from .pool import ReaderPool
from .sql import HANGUP_IN_RANGE, account_scope, column_sql, where_filters
from ..store.schema import LOW_MOS, STATS_INDEX, STATS_INDEX_WHERE, seizure_sql, sql_list

DEFAULT_INTERVAL = 3600
MIN_INTERVAL = 60
MAX_INTERVAL = 366 * 86400
MAX_BUCKETS = 50_000
USER_OUTCOMES = ("USER_BUSY", "NO_USER_RESPONSE", "NO_ANSWER", "SUBSCRIBER_ABSENT", "CALL_REJECTED",
                 "ORIGINATOR_CANCEL")
UNKNOWN_CAUSE = "UNKNOWN"  # a seizure written without a cause (hangup never seen)
WORST_KINDS = ("mos", "pdd", "no_rtp")
WORST_DEFAULT_LIMIT = 20
WORST_MAX_LIMIT = 500
# Rows or buckets between two calls of the pacing breathe(): a few hundred µs of work.
PACE_EVERY = 256
T = TypeVar("T")

# The figures of one bucket, in the order of the JSON object and the CSV.
KPI_FIELDS = (
    "legs", "attempts", "answered_attempts", "seizures", "answered", "user_outcomes", "failures",
    "asr", "ner", "acd_seconds", "pdd_legs", "pdd_ms_p50", "pdd_ms_p95",
    "mos_legs", "mos_avg", "low_mos", "rtp_legs", "no_rtp", "hangup_causes",
)
CSV_COLUMNS = ("from", "to") + KPI_FIELDS
# The fields of a worst-legs row.
WORST_COLUMNS = (
    "id", "call_id", "interaction_id", "timestamp", "call_direction", "channel_name", "caller_id_number",
    "callee_id_number", "hangup_cause", "billing_seconds", "codec", "remote_media_ip", "audio_in_mos",
    "audio_in_quality_percentage", "audio_in_media_packets", "pdd_ms", "no_rtp_in",
)


@dataclass(frozen=True, slots=True)
class StatsQuery:
    account_id: str
    owner_id: str | None
    created_from: int
    created_to: int
    interval: int
    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class WorstQuery:
    account_id: str
    owner_id: str | None
    created_from: int
    created_to: int
    kind: str
    limit: int
    filters: tuple[Filter, ...]


def _range(params: Params, api: ApiConfig, now: float) -> tuple[int, int]:
    """created_from / created_to as the list route takes them (no cursor here)."""
    return effective_range(*requested_range(params), None, api.max_range, now)


def parse_stats_query(params: Params, *, account_id: str, owner_id: str | None, api: ApiConfig,
                      now: float) -> StatsQuery:
    created_from, created_to = _range(params, api, now)
    interval = parse_int(params, "interval", MIN_INTERVAL, MAX_INTERVAL, SECONDS)
    interval = interval or DEFAULT_INTERVAL
    buckets = created_to // interval - created_from // interval + 1
    if buckets > MAX_BUCKETS:
        raise ParamError("interval", "minimum", "the range holds %d buckets of %d s; at most %d" % (
            buckets, interval, MAX_BUCKETS), interval)
    return StatsQuery(account_id, owner_id, created_from, created_to, interval, parse_filters(params))


def parse_worst_query(params: Params, *, account_id: str, owner_id: str | None, api: ApiConfig,
                      now: float) -> WorstQuery:
    created_from, created_to = _range(params, api, now)
    kind = first(params, "by")
    kind = "mos" if kind is None else kind
    if kind not in WORST_KINDS:
        raise ParamError("by", "enum", "by must be one of %s" % ", ".join(WORST_KINDS), kind[:64])
    limit = parse_int(params, "limit", 1, WORST_MAX_LIMIT) or WORST_DEFAULT_LIMIT
    return WorstQuery(account_id, owner_id, created_from, created_to, kind, limit, parse_filters(params))


# ----------------------------------------------------------------------- SQL

# A seizure, of a leg (c) or of a roll-up row (s: hangup_cause '' when none).
_SEIZURE_OF = seizure_sql("{t}.call_direction", "{cause}")
_SEIZURE = _SEIZURE_OF.format(t="c", cause="ifnull(c.hangup_cause, '')")
_ANSWERED = "c.answered_us > 0"
_USER_OUTCOMES = sql_list(USER_OUTCOMES)
_USER_OUTCOME = "c.hangup_cause IN (%s)" % _USER_OUTCOMES


def _source(owner_id: str | None) -> str:
    # An account's range: the covering index, always (the planner, without
    # ANALYZE figures, may prefer the narrower account index and then visit
    # every row).  A user's range: the owner index picks the few legs.
    return "cdrs AS c" if owner_id is not None else "cdrs AS c INDEXED BY %s" % STATS_INDEX


def _scope(account_id: str, owner_id: str | None, low: int, high: int,
           filters: Sequence[Filter]) -> tuple[str, list[Any]]:
    # The loopback term is written exactly as the partial index's WHERE:
    # that is how SQLite knows the index holds every leg the query wants.
    clauses, args = account_scope(account_id, owner_id)
    clauses += [HANGUP_IN_RANGE, STATS_INDEX_WHERE.replace("channel_name", "c.channel_name")]
    args += [low, high]
    filter_clauses, filter_args = where_filters(filters, "c")
    return " AND ".join(clauses + filter_clauses), args + filter_args


def stats_statements(query: StatsQuery) -> list[tuple[str, list[Any]]]:
    """(sql, args) of the three aggregates; every row starts with its bucket."""
    where, args = _scope(query.account_id, query.owner_id, query.created_from, query.created_to,
                         query.filters)
    bucket = 'c."timestamp" / %d' % query.interval  # an int from parse: no client text in SQL
    counters = (
        "SELECT {b}, count(*),"
        " sum(c.call_direction = 'inbound'),"
        " sum(c.call_direction = 'inbound' AND {ans}),"
        " sum({seiz}),"
        " sum({seiz} AND {ans}),"
        " sum({seiz} AND NOT {ans} AND {user}),"
        " total(CASE WHEN {seiz} AND {ans} THEN c.billing_seconds END),"
        " count(c.audio_in_mos), total(c.audio_in_mos), sum(c.audio_in_mos < {low}),"
        " count(c.no_rtp_in), sum(c.no_rtp_in = 1)"
        " FROM {src} WHERE {where} GROUP BY 1"
    ).format(src=_source(query.owner_id), b=bucket, ans=_ANSWERED, seiz=_SEIZURE, user=_USER_OUTCOME, low=LOW_MOS, where=where)
    causes = ("SELECT {b}, CASE WHEN ifnull(c.hangup_cause, '') = '' THEN '{unknown}' ELSE c.hangup_cause END,"
              " count(*) FROM {src}"
              " WHERE {where} AND {seiz} GROUP BY 1, 2").format(
        src=_source(query.owner_id), b=bucket, unknown=UNKNOWN_CAUSE, where=where, seiz=_SEIZURE)
    pdd = ("SELECT {b}, c.pdd_ms, count(*) FROM {src} WHERE {where} AND {seiz}"
           " AND c.pdd_ms IS NOT NULL GROUP BY 1, 2").format(src=_source(query.owner_id), b=bucket, where=where, seiz=_SEIZURE)
    return [(counters, args), (causes, list(args)), (pdd, list(args))]


def worst_sql(query: WorstQuery) -> tuple[str, list[Any]]:
    where, args = _scope(query.account_id, query.owner_id, query.created_from, query.created_to,
                         query.filters)
    if query.kind == "mos":
        where += " AND c.audio_in_mos IS NOT NULL"
        order = 'c.audio_in_mos ASC, c."timestamp" DESC, c.seq DESC'
    elif query.kind == "pdd":
        where += " AND %s AND c.pdd_ms IS NOT NULL" % _SEIZURE
        order = 'c.pdd_ms DESC, c."timestamp" DESC, c.seq DESC'
    else:
        where += " AND c.no_rtp_in = 1"
        order = 'c."timestamp" DESC, c.seq DESC'
    columns = ", ".join(column_sql(name) for name in WORST_COLUMNS)
    sql = "SELECT %s FROM %s WHERE %s ORDER BY %s LIMIT ?" % (columns, _source(query.owner_id), where, order)
    return sql, args + [query.limit]


# ------------------------------------------------------------------ figures


class _Bucket:
    __slots__ = ("legs", "attempts", "answered_attempts", "seizures", "answered", "user_outcomes",
                 "billing", "mos_legs", "mos_sum", "low_mos", "rtp_legs", "no_rtp", "causes", "pdd", "ranked")

    def __init__(self) -> None:
        self.legs = self.attempts = self.answered_attempts = self.seizures = 0
        self.answered = self.user_outcomes = self.mos_legs = self.low_mos = self.rtp_legs = self.no_rtp = 0
        self.billing = self.mos_sum = 0.0
        self.causes: dict[str, int] = {}
        self.pdd: dict[int, int] = {}
        self.ranked: list[percentiles.Sorted] = []  # PDD histograms sorted by value

    def add_counters(self, other: "_Bucket") -> None:
        """Add ``other``'s counters (not its causes and pdd: compute() counts
        the totals' from the rows)."""
        for name in ("legs", "attempts", "answered_attempts", "seizures", "answered", "user_outcomes",
                     "billing", "mos_legs", "mos_sum", "low_mos", "rtp_legs", "no_rtp"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def figures(self) -> dict[str, Any]:
        """The bucket's KPIs; a mean or a ratio over zero legs is left out."""
        out: dict[str, Any] = {
            "legs": self.legs, "attempts": self.attempts, "answered_attempts": self.answered_attempts,
            "seizures": self.seizures, "answered": self.answered, "user_outcomes": self.user_outcomes,
            "failures": self.seizures - self.answered - self.user_outcomes,
        }
        if self.seizures:
            out["asr"] = self.answered * 100 / self.seizures
            out["ner"] = (self.answered + self.user_outcomes) * 100 / self.seizures
        if self.answered:
            out["acd_seconds"] = self.billing / self.answered
        pdd_legs, ranks = percentiles.ranks(self.pdd, self.ranked, (50, 95))
        out["pdd_legs"] = pdd_legs
        if pdd_legs:
            out["pdd_ms_p50"], out["pdd_ms_p95"] = ranks
        out["mos_legs"] = self.mos_legs
        if self.mos_legs:
            out["mos_avg"] = self.mos_sum / self.mos_legs
        out["low_mos"] = self.low_mos
        out["rtp_legs"] = self.rtp_legs
        out["no_rtp"] = self.no_rtp
        out["hangup_causes"] = dict(sorted(self.causes.items(), key=lambda item: (-item[1], item[0])))
        return out


def _no_pause() -> None:
    pass


def _paced(items: Iterable[T], breathe: Callable[[], None]) -> Iterator[list[T]]:
    """``items`` in lists of PACE_EVERY, calling ``breathe()`` before each."""
    rest = iter(items)
    while chunk := list(itertools.islice(rest, PACE_EVERY)):
        breathe()
        yield chunk


def compute(query: StatsQuery, results: Sequence[Iterable[tuple]],
            breathe: Callable[[], None] = _no_pause) -> dict[str, Any]:
    """``{"totals": K, "buckets": [K + from/to]}`` from the rows of stats_statements
    (counters, causes, pdd) and optionally a fourth kind, the seizures per pdd_ms
    as histograms sorted by value: rows (bucket, values, counts);
    ``breathe()`` is called every few rows and buckets (HeavyLane.pacer)."""
    counters, causes, pdd, *sorted_pdd = (_paced(rows, breathe) for rows in results)
    buckets: dict[int, _Bucket] = {}
    totals = _Bucket()

    def at(key: int) -> _Bucket:
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = _Bucket()
        return bucket

    # The same bucket may come from several statements (roll-ups and the
    # raw edges of the range): everything adds up.  The totals' causes and
    # pdd values are counted from the rows; their counters are the buckets'
    # added up in bucket order (float sums: the same order every time).
    for chunk in counters:
        for (key, legs, attempts, answered_attempts, seizures, answered, user_outcomes, billing,
             mos_legs, mos_sum, low_mos, rtp_legs, no_rtp) in chunk:
            bucket = at(key)
            bucket.legs += legs
            bucket.attempts += attempts or 0
            bucket.answered_attempts += answered_attempts or 0
            bucket.seizures += seizures or 0
            bucket.answered += answered or 0
            bucket.user_outcomes += user_outcomes or 0
            bucket.billing += billing or 0
            bucket.mos_legs += mos_legs or 0
            bucket.mos_sum += mos_sum or 0
            bucket.low_mos += low_mos or 0
            bucket.rtp_legs += rtp_legs or 0
            bucket.no_rtp += no_rtp or 0
    for kind, name in ((causes, "causes"), (pdd, "pdd")):
        every = getattr(totals, name)
        for chunk in kind:
            for key, value, n in chunk:
                found = getattr(at(key), name)
                found[value] = found.get(value, 0) + n
                every[value] = every.get(value, 0) + n
    for chunk in itertools.chain.from_iterable(sorted_pdd):
        for key, values, counts in chunk:
            at(key).ranked.append((values, counts))
            totals.ranked.append((values, counts))

    interval, low, high = query.interval, query.created_from, query.created_to
    empty = _Bucket().figures()  # most minutes of a month may have no leg
    out = []
    for chunk in _paced(range(low // interval, high // interval + 1), breathe):
        for key in chunk:
            start = key * interval
            bucket = buckets.get(key)
            if bucket is None:  # adds nothing to the totals
                figures = empty
            else:
                totals.add_counters(bucket)
                figures = bucket.figures()
            out.append({"from": max(start, low), "to": min(start + interval - 1, high), **figures})
    return {"totals": totals.figures(), "buckets": out}


# Roll-up statements (store/schema.py's stats_minutes / stats_pdd_hours), rows
# shaped as stats_statements' rows.
_R_SEIZURE = _SEIZURE_OF.format(t="s", cause="s.hangup_cause")
_ROLLUP_COUNTERS_SQL = (
    "SELECT s.minute * 60 / {i}, sum(s.legs),"
    " sum(CASE WHEN s.call_direction = 'inbound' THEN s.legs ELSE 0 END),"
    " sum(CASE WHEN s.call_direction = 'inbound' AND s.answered THEN s.legs ELSE 0 END),"
    " sum(CASE WHEN {seiz} THEN s.legs ELSE 0 END),"
    " sum(CASE WHEN {seiz} AND s.answered THEN s.legs ELSE 0 END),"
    " sum(CASE WHEN {seiz} AND NOT s.answered AND s.hangup_cause IN ({user}) THEN s.legs ELSE 0 END),"
    " total(CASE WHEN {seiz} AND s.answered THEN s.billing_seconds END),"
    " sum(s.mos_legs), total(s.mos_sum), sum(s.low_mos), sum(s.rtp_legs), sum(s.no_rtp)"
    " FROM stats_minutes AS s WHERE s.account_id = ? AND s.minute BETWEEN ? AND ? GROUP BY 1"
)
_ROLLUP_CAUSES_SQL = (
    "SELECT s.minute * 60 / {i}, CASE s.hangup_cause WHEN '' THEN '%s' ELSE s.hangup_cause END, sum(s.legs)"
    " FROM stats_minutes AS s WHERE s.account_id = ? AND s.minute BETWEEN ? AND ? AND {seiz} GROUP BY 1, 2"
    % UNKNOWN_CAUSE
)
# No GROUP BY: the rows come in key order straight from the table, and
# compute() adds up the hours of one bucket (a sort of every row otherwise).
_ROLLUP_PDD_SQL = (
    "SELECT p.hour * 3600 / {i}, p.pdd_ms, p.seizures FROM stats_pdd_hours AS p"
    " WHERE p.account_id = ? AND p.hour BETWEEN ? AND ?"
)


def _whole_units(low: int, high: int, unit: int) -> tuple[int, int] | None:
    """The units (minutes, hours) lying wholly inside [low, high], or None."""
    first, last = -(-low // unit), (high + 1) // unit - 1
    return (first, last) if first <= last else None


def _raw(query: StatsQuery, low: int, high: int) -> list[tuple[str, list[Any]]]:
    return stats_statements(StatsQuery(query.account_id, query.owner_id, low, high, query.interval,
                                       query.filters))


@dataclass(frozen=True, slots=True)
class Split:
    """Where an account's KPIs come from: the roll-ups of the whole ``minutes``
    (and the PDD roll-ups of the whole ``hours``, None: none), the legs of the
    ranges ``edges`` (counters, causes) and ``pdd_edges`` (PDD)."""
    minutes: tuple[int, int]
    edges: tuple[tuple[int, int], ...]
    hours: tuple[int, int] | None
    pdd_edges: tuple[tuple[int, int], ...]


def _ranges(low: int, high: int, whole: tuple[int, int], unit: int) -> tuple[tuple[int, int], ...]:
    """The parts of [low, high] before and after the whole units ``whole``."""
    edges = ((low, whole[0] * unit - 1), ((whole[1] + 1) * unit, high))
    return tuple(edge for edge in edges if edge[0] <= edge[1])


def split(query: StatsQuery, use_rollups: bool = True) -> Split | None:
    """How to read ``query``: None when from the legs alone (a user's stats,
    filtered stats, intervals that are not whole minutes, ranges without a
    whole minute); else the roll-ups for the whole minutes (PDD: whole hours,
    when the interval is a multiple of an hour) inside the range and the legs
    only for the ragged edges.  One rule for the node and the collector."""
    low, high, interval = query.created_from, query.created_to, query.interval
    minutes = _whole_units(low, high, 60)
    if not (use_rollups and query.owner_id is None and not query.filters and interval % 60 == 0 and minutes):
        return None
    hours = _whole_units(low, high, 3600) if interval % 3600 == 0 else None
    pdd_edges = ((low, high),) if hours is None else _ranges(low, high, hours, 3600)
    return Split(minutes, _ranges(low, high, minutes, 60), hours, pdd_edges)


def plan(query: StatsQuery, use_rollups: bool = True) -> list[list[tuple[str, list[Any]]]]:
    """The statements whose rows, added up, are the KPIs: per kind (counters,
    causes, pdd) a list of (sql, args), as ``split()`` says."""
    kinds: list[list[tuple[str, list[Any]]]] = [[], [], []]
    parts = split(query, use_rollups)
    if parts is None:
        for kind, statement in zip(kinds, _raw(query, query.created_from, query.created_to)):
            kind.append(statement)
        return kinds
    fmt = {"i": query.interval, "seiz": _R_SEIZURE, "user": _USER_OUTCOMES}
    args = [query.account_id, parts.minutes[0], parts.minutes[1]]
    kinds[0].append((_ROLLUP_COUNTERS_SQL.format(**fmt), list(args)))
    kinds[1].append((_ROLLUP_CAUSES_SQL.format(**fmt), list(args)))
    for edge_low, edge_high in parts.edges:
        counters, causes, _ = _raw(query, edge_low, edge_high)
        kinds[0].append(counters)
        kinds[1].append(causes)
    if parts.hours is not None:
        kinds[2].append((_ROLLUP_PDD_SQL.format(**fmt), [query.account_id, parts.hours[0], parts.hours[1]]))
    for edge_low, edge_high in parts.pdd_edges:
        kinds[2].append(_raw(query, edge_low, edge_high)[2])
    return kinds


def read_rows(conn: sqlite3.Connection, query: StatsQuery, use_rollups: bool = True) -> list[list[tuple]]:
    """The rows of plan()'s statements per kind, from one connection in one
    read transaction (one snapshot for every statement, so the totals are
    exactly the sum of the buckets)."""
    kinds = plan(query, use_rollups)
    began = not conn.in_transaction
    if began:
        conn.execute("BEGIN")
    try:
        return [[row for sql, args in kind for row in conn.execute(sql, args).fetchall()] for kind in kinds]
    finally:
        if began and conn.in_transaction:
            conn.execute("COMMIT")


def read_stats(conn: sqlite3.Connection, query: StatsQuery, use_rollups: bool = True) -> dict[str, Any]:
    """The KPIs from one connection (read_rows, compute)."""
    return compute(query, read_rows(conn, query, use_rollups))


def run_stats(pool: ReaderPool, query: StatsQuery) -> dict[str, Any]:
    """The KPIs through the API's reader pool: the statements in its thread
    pool (statement timeout), the buckets added up here, on the hub, paced
    by the pool's heavy lane (HeavyLane.pacer).  Not in the worker thread:
    that would hold the GIL the whole time, and the hub and every other
    thread would wait up to the switch interval each time they want it back."""
    reader = pool.acquire()
    try:
        rows = pool.runner.spawn(lambda: reader.call(lambda: read_rows(reader.conn, query))).get()
    finally:
        pool.release(reader)
    return compute(query, rows, pool.heavy.pacer())


def csv_cells(bucket: Mapping[str, Any]) -> list[str]:
    """A bucket as CSV cells (CSV_COLUMNS order): numbers as their JSON text,
    absent figures empty, hangup_causes as compact JSON.

    An int's or a finite float's JSON text is its repr (what json.dumps
    writes), taken here without json.dumps' call: 20x faster, and the longest
    range by minute has 44,701 buckets."""
    cells = []
    for name in CSV_COLUMNS:
        value = bucket.get(name)
        kind = type(value)
        if kind is int:
            cells.append(_int_text(value))
        elif kind is float and math.isfinite(value):
            cells.append(_float_text(value))
        elif value is None:
            cells.append("")
        elif name == "hangup_causes":
            cells.append(json.dumps(value, separators=(",", ":"), ensure_ascii=False) if value else "{}")
        else:
            cells.append(json.dumps(value))
    return cells


_int_text = int.__repr__
_float_text = float.__repr__


def paced_chunks(items: Sequence[T], breathe: Callable[[], None]) -> Iterator[Sequence[T]]:
    """``items`` PACE_EVERY at a time, ``breathe()`` before each."""
    for start in range(0, len(items), PACE_EVERY):
        breathe()
        yield items[start:start + PACE_EVERY]


def csv_text(result: Mapping[str, Any], breathe: Callable[[], None] = _no_pause) -> str:
    """The buckets of ``compute``'s result as CSV records, the CSV_COLUMNS
    header first, built PACE_EVERY buckets at a time (``breathe()`` between)."""
    parts = [kazoo.csv_records([CSV_COLUMNS])]
    for chunk in paced_chunks(result["buckets"], breathe):
        parts.append(kazoo.csv_records([csv_cells(bucket) for bucket in chunk]))
    return "".join(parts)
