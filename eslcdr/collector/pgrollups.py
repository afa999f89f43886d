"""The KPI roll-ups in PostgreSQL: ``stats_minutes``, ``stats_hours`` and the hours' causes, PDDs.

The cells and counters of a node's (store/schema.py; which legs count: query/stats.py): per
account, Gregorian minute, direction, cause ('' when none) and answered-or-not, additive
counters (``mos_sum`` ``numeric``: exact under subtraction); per account, hour and direction
(central only: an hourly month reads two rows an hour), the KPI counters themselves (attempts,
seizures, ...: ``HOUR_COUNTERS``) and per account, hour and cause, the seizures; per account,
hour and ``pdd_ms``, the seizures.  A seizure is outbound: a direction filter (``direction_of``)
reads the roll-ups too.  Loopback legs and legs without an account ('') count nowhere.
Kept by pgstore.store_batch in the transaction that stores the rows, from what it did: each
row inserted (``_staged`` once the insert is done) counts +1, each row deleted (``_gone``, from
the DELETE's RETURNING) -1.  One grouped upsert per table and batch, cells in key order (no
deadlock between workers); cells left unchanged are not written, cells emptied are deleted.
So the roll-ups equal ``recount_sql()`` over ``cdrs`` after every commit.
"""

from __future__ import annotations

from typing import Any, Sequence

import psycopg

from ..query.params import Filter
from ..query.stats import UNKNOWN_CAUSE, USER_OUTCOMES
from ..store.schema import LOW_MOS, SEIZURE_DIRECTION, counted_sql, seizure_sql, sql_list

MINUTES = "stats_minutes"
HOURS = "stats_hours"
HOUR_CAUSES = "stats_hour_causes"
PDD_HOURS = "stats_pdd_hours"
# The columns of a cdrs row the roll-ups read; ``_gone`` holds them for the
# rows a batch deleted.
SOURCE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("account_id", "text"), ("timestamp", "bigint"), ("channel_name", "text"), ("call_direction", "text"),
    ("hangup_cause", "text"), ("answered_us", "bigint"), ("billing_seconds", "bigint"),
    ("audio_in_mos", "double precision"), ("no_rtp_in", "bigint"), ("pdd_ms", "bigint"),
)
SOURCE_NAMES = tuple(name for name, _ in SOURCE_COLUMNS)
GONE_TABLE = "CREATE TEMPORARY TABLE IF NOT EXISTS _gone (%s) ON COMMIT DELETE ROWS" % ", ".join(
    '"%s" %s' % column for column in SOURCE_COLUMNS)

# Over a row r with a sign r.d (+1 counted in, -1 counted out).
KEY = (
    ("account_id", "r.account_id"),
    ("minute", 'coalesce(r."timestamp", 0) / 60'),
    ("call_direction", "coalesce(r.call_direction, '')"),
    ("hangup_cause", "coalesce(r.hangup_cause, '')"),
    ("answered", "coalesce(r.answered_us, 0) > 0"),
)
HOUR_KEY = (("account_id", "r.account_id"), ("hour", 'coalesce(r."timestamp", 0) / 3600'),
            ("call_direction", "coalesce(r.call_direction, '')"))
HOUR_CAUSE_KEY = HOUR_KEY[:2] + (("hangup_cause", "coalesce(r.hangup_cause, '')"),)
_QUALITY = (
    ("mos_legs", "r.d * (r.audio_in_mos IS NOT NULL)::int"),
    ("mos_sum", "r.d * coalesce(r.audio_in_mos, 0)::numeric"),
    ("low_mos", "r.d * coalesce((r.audio_in_mos < %r)::int, 0)" % LOW_MOS),
    ("rtp_legs", "r.d * (r.no_rtp_in IS NOT NULL)::int"),
    ("no_rtp", "r.d * coalesce((r.no_rtp_in = 1)::int, 0)"),
)
COUNTERS = (("legs", "r.d"), ("billing_seconds", "r.d * coalesce(r.billing_seconds, 0)")) + _QUALITY
# Which legs of a cell each KPI counter counts, over a cell's key (a
# direction, a cause '' when none, answered-or-not); billing_seconds: those
# of the answered seizures.
_USER = sql_list(USER_OUTCOMES)
_SEIZURE_OF = seizure_sql("{dir}", "{cause}")  # (the causes and PDD roll-ups count seizures only)
KPI_COUNTS = (
    ("attempts", "{dir} = 'inbound'"),
    ("answered_attempts", "{dir} = 'inbound' AND {ans}"),
    ("seizures", _SEIZURE_OF),
    ("answered", _SEIZURE_OF + " AND {ans}"),
    ("user_outcomes", _SEIZURE_OF + " AND NOT {ans} AND {cause} IN (%s)" % _USER),
)
_ANSWERED_SEIZURE = dict(KPI_COUNTS)["answered"]
_OF_ROW = {"dir": "r.call_direction", "cause": "coalesce(r.hangup_cause, '')", "ans": "coalesce(r.answered_us, 0) > 0"}
HOUR_COUNTERS = (
    (("legs", "r.d"),)
    + tuple((name, "CASE WHEN %s THEN r.d ELSE 0 END" % when.format(**_OF_ROW)) for name, when in KPI_COUNTS)
    + (("billing_seconds", "CASE WHEN %s THEN r.d * coalesce(r.billing_seconds, 0) ELSE 0 END"
        % _ANSWERED_SEIZURE.format(**_OF_ROW)),)
    + _QUALITY
)
COUNTS = "r.account_id <> '' AND " + counted_sql("coalesce(r.channel_name, '')")
SEIZURE_COUNTS = COUNTS + " AND " + _SEIZURE_OF.format(**_OF_ROW)
PDD_COUNTS = SEIZURE_COUNTS + " AND r.pdd_ms IS NOT NULL"
PDD_KEY = (("account_id", "r.account_id"), ("hour", 'coalesce(r."timestamp", 0) / 3600'), ("pdd_ms", "r.pdd_ms"))

# The rows a batch stored (+1) and deleted (-1).
_source = ", ".join('s."%s"' % name for name in SOURCE_NAMES[1:])
BATCH_ROWS = (
    "WITH r AS (SELECT 1 AS d, coalesce(s.account_id, '') AS account_id, %s FROM _staged AS s"
    " UNION ALL SELECT -1, %s FROM _gone AS s) " % (_source, ", ".join('s."%s"' % n for n in SOURCE_NAMES))
)


def _upsert(table: str, key: Sequence[tuple[str, str]], counters: Sequence[tuple[str, str]], when: str) -> str:
    names = [name for name, _ in key] + [name for name, _ in counters]
    sums = ["sum(%s)" % expr for _, expr in counters]
    group = ", ".join(str(i + 1) for i in range(len(key)))
    return (
        BATCH_ROWS + "INSERT INTO %s AS m (%s) SELECT %s, %s FROM r WHERE %s GROUP BY %s"
        " HAVING (%s) <> (%s) ORDER BY %s ON CONFLICT (%s) DO UPDATE SET %s"
        % (table, ", ".join(names), ", ".join(expr for _, expr in key), ", ".join(sums), when, group,
           ", ".join(sums), ", ".join("0" for _ in sums), group, ", ".join(name for name, _ in key),
           ", ".join("%s = m.%s + EXCLUDED.%s" % (n, n, n) for n, _ in counters))
    )


def _empties(table: str, key: Sequence[tuple[str, str]], count: str, when: str) -> str:
    names = [name for name, _ in key]
    return ("DELETE FROM %s AS m USING (SELECT DISTINCT %s FROM _gone AS r WHERE %s) AS g"
            " WHERE (%s) = (%s) AND m.%s = 0" % (
                table, ", ".join("%s AS %s" % (expr, name) for name, expr in key), when,
                ", ".join("m.%s" % n for n in names), ", ".join("g.%s" % n for n in names), count))


UPSERT_MINUTES = _upsert(MINUTES, KEY, COUNTERS, COUNTS)
UPSERT_HOURS = _upsert(HOURS, HOUR_KEY, HOUR_COUNTERS, COUNTS)
UPSERT_HOUR_CAUSES = _upsert(HOUR_CAUSES, HOUR_CAUSE_KEY, (("seizures", "r.d"),), SEIZURE_COUNTS)
UPSERT_PDD = _upsert(PDD_HOURS, PDD_KEY, (("seizures", "r.d"),), PDD_COUNTS)
# A cell whose legs (seizures) fell to 0 holds nothing: every counter
# counts some of its legs.  Only cells a deleted row counted in can empty.
DELETE_EMPTY = (_empties(MINUTES, KEY, "legs", COUNTS), _empties(HOURS, HOUR_KEY, "legs", COUNTS),
                _empties(HOUR_CAUSES, HOUR_CAUSE_KEY, "seizures", SEIZURE_COUNTS),
                _empties(PDD_HOURS, PDD_KEY, "seizures", PDD_COUNTS))


def apply_batch(cur: psycopg.Cursor, deleted: bool) -> None:
    """Count the batch's stored rows in, its deleted ones (``deleted``:
    ``_gone`` holds some) out."""
    cur.execute(UPSERT_MINUTES)
    cur.execute(UPSERT_HOURS)
    cur.execute(UPSERT_HOUR_CAUSES)
    cur.execute(UPSERT_PDD)
    if deleted:
        for statement in DELETE_EMPTY:
            cur.execute(statement)


def recount_sql() -> tuple[str, str, str, str]:
    """The roll-ups counted from the legs (GROUP BY over ``cdrs``): minutes,
    pdd hours, hours, hour causes; rows in the tables' column order, key
    order: to check them or rebuild them."""
    rows = "WITH r AS (SELECT 1 AS d, %s FROM cdrs AS c) " % ", ".join('c."%s"' % n for n in SOURCE_NAMES)

    def cells(key: Sequence[tuple[str, str]], counters: Sequence[tuple[str, str]], when: str = COUNTS) -> str:
        group = ", ".join(str(i + 1) for i in range(len(key)))
        sums = ", ".join("sum(%s)::%s" % (expr, "numeric" if name == "mos_sum" else "bigint") for name, expr in counters)
        return rows + "SELECT %s, %s FROM r WHERE %s GROUP BY %s ORDER BY %s" % (
            ", ".join(expr for _, expr in key), sums, when, group, group)

    return (cells(KEY, COUNTERS), cells(PDD_KEY, (("seizures", "r.d"),), PDD_COUNTS), cells(HOUR_KEY, HOUR_COUNTERS),
            cells(HOUR_CAUSE_KEY, (("seizures", "r.d"),), SEIZURE_COUNTS))


# ------------------------------------------------------------------ reading
# Rows shaped as query/stats.py's (its compute() adds them up): counters,
# seizures per cause, seizures per pdd_ms, per bucket of ``interval`` s.
# Over [first_minute, last_minute]: the hour rows of the whole hours
# [first_hour, last_hour] (as their first minute), the minute cells of the
# rest, their KPI counters counted here as the writer counts the hours'.
_KPI_NAMES = ("legs",) + tuple(name for name, _ in KPI_COUNTS) + (
    "billing_seconds", "mos_legs", "mos_sum", "low_mos", "rtp_legs", "no_rtp")
_OF_MINUTE = {"dir": "m.call_direction", "cause": "m.hangup_cause", "ans": "m.answered"}
_MINUTE_KPIS = ", ".join(
    ["m.legs"] + ["CASE WHEN %s THEN m.legs ELSE 0 END" % when.format(**_OF_MINUTE) for _, when in KPI_COUNTS]
    + ["CASE WHEN %s THEN m.billing_seconds ELSE 0 END" % _ANSWERED_SEIZURE.format(**_OF_MINUTE),
       "m.mos_legs", "m.mos_sum", "m.low_mos", "m.rtp_legs", "m.no_rtp"])
_HOURS_IN = "h.account_id = %(account_id)s AND h.hour BETWEEN %(first_hour)s AND %(last_hour)s"
_MINUTES_IN = ("m.account_id = %(account_id)s AND (m.minute BETWEEN %(first_minute)s AND %(before_hours)s"
               " OR m.minute BETWEEN %(after_hours)s AND %(last_minute)s)")
# stats_statements' counters row: legs, the KPI counts, billing, the quality
# counters; of every direction, or of %(direction)s's legs only.
_READ_COUNTERS = (
    "SELECT s.minute * 60 / %(interval)s AS bucket, {sums} FROM"
    " (SELECT h.hour * 60 AS minute, {hour_kpis} FROM stats_hours AS h WHERE {hours}"
    " UNION ALL SELECT m.minute, {minute_kpis} FROM stats_minutes AS m WHERE {minutes}) AS s GROUP BY 1"
)
_COUNTER_PARTS = {
    "sums": ", ".join("sum(s.%s)::%s" % (name, "float8" if name in ("billing_seconds", "mos_sum") else "bigint")
                      for name in _KPI_NAMES),
    "hour_kpis": ", ".join("h.%s" % name for name in _KPI_NAMES), "minute_kpis": _MINUTE_KPIS}
READ_COUNTERS = _READ_COUNTERS.format(hours=_HOURS_IN, minutes=_MINUTES_IN, **_COUNTER_PARTS)
READ_DIRECTION_COUNTERS = _READ_COUNTERS.format(
    hours=_HOURS_IN + " AND h.call_direction = %(direction)s",
    minutes=_MINUTES_IN + " AND m.call_direction = %(direction)s", **_COUNTER_PARTS)
READ_CAUSES = (
    "SELECT s.minute * 60 / %(interval)s AS bucket, CASE s.hangup_cause WHEN '' THEN '{unknown}'"
    " ELSE s.hangup_cause END AS cause, sum(s.seizures)::bigint FROM"
    " (SELECT h.hour * 60 AS minute, h.hangup_cause, h.seizures FROM stats_hour_causes AS h WHERE {hours}"
    " UNION ALL SELECT m.minute, m.hangup_cause, m.legs FROM stats_minutes AS m WHERE {minutes} AND {seizure}) AS s"
    " GROUP BY 1, 2"
).format(unknown=UNKNOWN_CAUSE, hours=_HOURS_IN, minutes=_MINUTES_IN, seizure=_SEIZURE_OF.format(**_OF_MINUTE))
# The PDD hours, each a histogram sorted by pdd_ms (compute()'s fourth kind,
# once its bucket is set): hour by hour, the primary key's order, so an index
# scan needs no sort.
READ_PDD = (
    "SELECT p.hour, array_agg(p.pdd_ms ORDER BY p.pdd_ms), array_agg(p.seizures ORDER BY p.pdd_ms)"
    " FROM stats_pdd_hours AS p"
    " WHERE p.account_id = %(account_id)s AND p.hour BETWEEN %(first_hour)s AND %(last_hour)s GROUP BY p.hour"
)


def direction_of(filters: Sequence[Filter]) -> str | None:
    """The direction when ``filters`` are one ``filter_call_direction`` (a value
    the cells can hold): the roll-ups answer it (the legs of that direction;
    every seizure outbound); else None."""
    if len(filters) != 1:
        return None
    only = filters[0]
    plain = only.op == "eq" and only.field.column == "call_direction" and only.field.json_path is None
    return only.value if plain and only.value and "\x00" not in only.value else None


def read_rollups(conn: psycopg.Connection, account_id: str, first_minute: int, last_minute: int,
                 interval: int, hours: tuple[int, int] | None = None,
                 direction: str | None = None) -> list[list[tuple[Any, ...]]]:
    """An account's roll-up rows for the Gregorian minutes [first_minute,
    last_minute] (the whole hours ``hours`` among them from the hour cells and
    pdd; none when None), in buckets of ``interval`` seconds (a multiple of 60;
    of 3600 when ``hours``), of the legs of ``direction`` (None: all),
    aggregated here to the bucket: [counters, causes, pdd, sorted pdd] as
    query/stats.py's compute() takes them, in one snapshot: a REPEATABLE READ
    transaction of its own (the caller's when one is open)."""
    first_hour, last_hour = hours if hours else (0, -1)
    args = {"account_id": account_id, "first_minute": first_minute, "last_minute": last_minute,
            "interval": interval, "first_hour": first_hour, "last_hour": last_hour,
            "before_hours": first_hour * 60 - 1 if hours else last_minute,
            "after_hours": (last_hour + 1) * 60 if hours else last_minute + 1, "direction": direction}
    seizures = direction in (None, SEIZURE_DIRECTION)
    began = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if began:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        pdd = conn.execute(READ_PDD, args, binary=True).fetchall() if hours and seizures else []
        counters = READ_COUNTERS if direction is None else READ_DIRECTION_COUNTERS
        return [conn.execute(counters, args, binary=True).fetchall(),
                conn.execute(READ_CAUSES, args, binary=True).fetchall() if seizures else [], [],
                [(hour * 3600 // interval, values, counts) for hour, values, counts in pdd]]
    finally:
        if began:
            conn.rollback()
