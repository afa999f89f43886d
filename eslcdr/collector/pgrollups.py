"""The KPI roll-ups in PostgreSQL: ``stats_minutes``, ``stats_hours``, ``stats_pdd_hours``.

The cells and counters of a node's (store/schema.py; which legs count:
query/stats.py): per account, Gregorian minute, direction, cause ('' when
none) and answered-or-not, additive counters (``mos_sum`` ``numeric``: exact
under subtraction); the same cells per hour (central only: an hourly month
reads a quarter of the rows); per account, hour and ``pdd_ms``, the
seizures.  Loopback legs and legs without an account ('') count nowhere.
Kept by pgstore.store_batch in the transaction that stores the rows, from
what it did: each row inserted (``_staged`` once the insert is done) counts
+1, each row deleted (``_gone``, from the DELETE's RETURNING) -1.  One grouped
upsert per table and batch, cells in key order (no deadlock between workers);
cells left unchanged are not written, cells emptied are deleted.  So the
roll-ups equal ``recount_sql()`` over ``cdrs`` after every commit.
"""

from __future__ import annotations

from typing import Any, Sequence

import psycopg

from ..query.stats import LOW_MOS, NOT_SEIZURES, UNKNOWN_CAUSE, USER_OUTCOMES

MINUTES = "stats_minutes"
HOURS = "stats_hours"
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
HOUR_KEY = tuple(("hour", 'coalesce(r."timestamp", 0) / 3600') if name == "minute" else (name, expr)
                 for name, expr in KEY)
COUNTERS = (
    ("legs", "r.d"),
    ("billing_seconds", "r.d * coalesce(r.billing_seconds, 0)"),
    ("mos_legs", "r.d * (r.audio_in_mos IS NOT NULL)::int"),
    ("mos_sum", "r.d * coalesce(r.audio_in_mos, 0)::numeric"),
    ("low_mos", "r.d * coalesce((r.audio_in_mos < %r)::int, 0)" % LOW_MOS),
    ("rtp_legs", "r.d * (r.no_rtp_in IS NOT NULL)::int"),
    ("no_rtp", "r.d * coalesce((r.no_rtp_in = 1)::int, 0)"),
)
COUNTS = "r.account_id <> '' AND coalesce(r.channel_name, '') NOT LIKE 'loopback/%'"
_NOT_SEIZURES = ", ".join("'%s'" % cause for cause in NOT_SEIZURES)
PDD_COUNTS = (COUNTS + " AND r.call_direction = 'outbound' AND coalesce(r.hangup_cause, '') NOT IN (%s)"
              " AND r.pdd_ms IS NOT NULL" % _NOT_SEIZURES)
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
UPSERT_HOURS = _upsert(HOURS, HOUR_KEY, COUNTERS, COUNTS)
UPSERT_PDD = _upsert(PDD_HOURS, PDD_KEY, (("seizures", "r.d"),), PDD_COUNTS)
# A cell whose legs (seizures) fell to 0 holds nothing: every counter
# counts some of its legs.  Only cells a deleted row counted in can empty.
DELETE_EMPTY = (_empties(MINUTES, KEY, "legs", COUNTS), _empties(HOURS, HOUR_KEY, "legs", COUNTS),
                _empties(PDD_HOURS, PDD_KEY, "seizures", PDD_COUNTS))


def apply_batch(cur: psycopg.Cursor, deleted: bool) -> None:
    """Count the batch's stored rows in, its deleted ones (``deleted``:
    ``_gone`` holds some) out."""
    cur.execute(UPSERT_MINUTES)
    cur.execute(UPSERT_HOURS)
    cur.execute(UPSERT_PDD)
    if deleted:
        for statement in DELETE_EMPTY:
            cur.execute(statement)


def recount_sql() -> tuple[str, str, str]:
    """The roll-ups counted from the legs (GROUP BY over ``cdrs``): minutes,
    pdd hours, hours; rows in the tables' column order, key order: to check
    them or rebuild them."""
    rows = "WITH r AS (SELECT 1 AS d, %s FROM cdrs AS c) " % ", ".join('c."%s"' % n for n in SOURCE_NAMES)
    group = ", ".join(str(i + 1) for i in range(len(KEY)))
    sums = ", ".join("sum(%s)::%s" % (expr, "numeric" if name == "mos_sum" else "bigint") for name, expr in COUNTERS)
    minutes, hours = (rows + "SELECT %s, %s FROM r WHERE %s GROUP BY %s ORDER BY %s" % (
        ", ".join(expr for _, expr in key), sums, COUNTS, group, group) for key in (KEY, HOUR_KEY))
    pdd = rows + "SELECT %s, count(*) FROM r WHERE %s GROUP BY 1, 2, 3 ORDER BY 1, 2, 3" % (
        ", ".join(expr for _, expr in PDD_KEY), PDD_COUNTS)
    return minutes, pdd, hours


# ------------------------------------------------------------------ reading
# Rows shaped as query/stats.py's (its compute() adds them up): counters,
# seizures per cause, seizures per pdd_ms, per bucket of ``interval`` s.
_SEIZURE = "(s.call_direction = 'outbound' AND s.hangup_cause NOT IN (%s))" % _NOT_SEIZURES
_USER = ", ".join("'%s'" % cause for cause in USER_OUTCOMES)
# The cells of [first_minute, last_minute]: the hour cells of the whole hours
# [first_hour, last_hour] (as their first minute), the minute cells of the rest.
_CELL_COLUMNS = ("call_direction, hangup_cause, answered, legs, billing_seconds, mos_legs, mos_sum, low_mos,"
                 " rtp_legs, no_rtp")
_CELLS = (
    "(SELECT h.hour * 60 AS minute, {cols} FROM stats_hours AS h WHERE h.account_id = %(account_id)s"
    " AND h.hour BETWEEN %(first_hour)s AND %(last_hour)s"
    " UNION ALL SELECT m.minute, {cols} FROM stats_minutes AS m WHERE m.account_id = %(account_id)s"
    " AND (m.minute BETWEEN %(first_minute)s AND %(before_hours)s"
    " OR m.minute BETWEEN %(after_hours)s AND %(last_minute)s)) AS s"
).format(cols=_CELL_COLUMNS)
READ_COUNTERS = (
    "SELECT s.minute * 60 / %(interval)s AS bucket, sum(s.legs)::bigint,"
    " coalesce(sum(s.legs) FILTER (WHERE s.call_direction = 'inbound'), 0)::bigint,"
    " coalesce(sum(s.legs) FILTER (WHERE s.call_direction = 'inbound' AND s.answered), 0)::bigint,"
    " coalesce(sum(s.legs) FILTER (WHERE {seiz}), 0)::bigint,"
    " coalesce(sum(s.legs) FILTER (WHERE {seiz} AND s.answered), 0)::bigint,"
    " coalesce(sum(s.legs) FILTER (WHERE {seiz} AND NOT s.answered AND s.hangup_cause IN ({user})), 0)::bigint,"
    " coalesce(sum(s.billing_seconds) FILTER (WHERE {seiz} AND s.answered), 0)::float8,"
    " sum(s.mos_legs)::bigint, sum(s.mos_sum)::float8, sum(s.low_mos)::bigint, sum(s.rtp_legs)::bigint,"
    " sum(s.no_rtp)::bigint FROM {cells} GROUP BY 1 ORDER BY 1"
).format(seiz=_SEIZURE, user=_USER, cells=_CELLS)
READ_CAUSES = (
    "SELECT s.minute * 60 / %(interval)s AS bucket, CASE s.hangup_cause WHEN '' THEN '{unknown}'"
    " ELSE s.hangup_cause END AS cause, sum(s.legs)::bigint FROM {cells}"
    " WHERE {seiz} GROUP BY 1, 2 ORDER BY 1, 2"
).format(unknown=UNKNOWN_CAUSE, seiz=_SEIZURE, cells=_CELLS)
READ_PDD = (
    "SELECT p.hour * 3600 / %(interval)s, p.pdd_ms, p.seizures FROM stats_pdd_hours AS p"
    " WHERE p.account_id = %(account_id)s AND p.hour BETWEEN %(first_hour)s AND %(last_hour)s"
)


def read_rollups(conn: psycopg.Connection, account_id: str, first_minute: int, last_minute: int,
                 interval: int, hours: tuple[int, int] | None = None) -> list[list[tuple[Any, ...]]]:
    """An account's roll-up rows for the Gregorian minutes [first_minute,
    last_minute] (the whole hours ``hours`` among them from the hour cells and
    pdd; none when None), in buckets of ``interval`` seconds (a multiple of 60;
    of 3600 when ``hours``), aggregated here to the bucket: [counters, causes,
    pdd] as query/stats.py's compute() takes them, in one snapshot: a
    REPEATABLE READ transaction of its own (the caller's when one is open)."""
    first_hour, last_hour = hours if hours else (0, -1)
    args = {"account_id": account_id, "first_minute": first_minute, "last_minute": last_minute,
            "interval": interval, "first_hour": first_hour, "last_hour": last_hour,
            "before_hours": first_hour * 60 - 1 if hours else last_minute,
            "after_hours": (last_hour + 1) * 60 if hours else last_minute + 1}
    began = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if began:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        out = [conn.execute(READ_COUNTERS, args).fetchall(), conn.execute(READ_CAUSES, args).fetchall()]
        out.append(conn.execute(READ_PDD, args).fetchall() if hours else [])
        return out
    finally:
        if began:
            conn.rollback()
