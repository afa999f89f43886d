"""The ``cdrs`` table: columns, indexes and versioned migrations.

The column list is the contract of docs/database.md: one row per call leg, columns
named as the CDR fields.  ``MIGRATIONS`` is an ordered list; ``migrate()``
applies the ones a database has not seen yet (``PRAGMA user_version`` holds
the count applied), each in its own transaction, so an old file is upgraded
in place and a new one is built by the same steps.  The steps are public: a
test builds a file as an older eslcdr left it (tests/harness.py database_before).
The KPI rules its roll-ups count by (``counted_sql``, ``seizure_sql``, ``LOW_MOS``)
are defined here once; query/stats.py and the collector's statements read them.
"""

from __future__ import annotations

import sqlite3
import uuid
from typing import Sequence

import sqlite_utils

from ..ingest.cdr import LOOPBACK_PREFIX
from ..ingest.interactions import GREGORIAN_OFFSET

# (name, SQL type, description) -- the description is the column's
# documentation; docs/database.md lists the same text (a test checks they agree).
# The columns of the first schema version; later migrations add the rest.
BASE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("seq", "INTEGER PRIMARY KEY AUTOINCREMENT", "insertion counter, strictly increasing: the collector's cursor"),
    ("id", "TEXT NOT NULL UNIQUE", "CDR id, `YYYYMM-<call_id>` (month of the hangup, UTC)"),
    ("call_id", "TEXT NOT NULL UNIQUE", "the leg's FreeSWITCH `Unique-ID`; `<Unique-ID>~<created_us>` for a leg"
     " under the id of a stored one (a caller's Call-ID taken again)"),
    ("interaction_id", "TEXT", "shared by every leg of one call (Kazoo's `Call-Interaction-ID`, or derived)"),
    ("account_id", "TEXT", "owning account (first of `[cdr] account_id_vars`)"),
    ("owner_id", "TEXT", "owning user (first of `[cdr] owner_id_vars`)"),
    ("authorizing_id", "TEXT", "the device/user that authorised the call (`ecallmgr_Authorizing-ID`)"),
    ("app_name", "TEXT", "always `eslcdr`"),
    ("app_version", "TEXT", "eslcdr version that wrote the row"),
    ("node", "TEXT", "configured name of the FreeSWITCH node that delivered the leg"),
    ("media_server", "TEXT", "`FreeSWITCH-Hostname`"),
    ("channel_name", "TEXT", "`Channel-Name`, e.g. `sofia/internal/1000@example.com`"),
    ("call_direction", "TEXT", "`inbound` (the leg came into FreeSWITCH) or `outbound`"),
    ("caller_id_name", "TEXT", "caller name"),
    ("caller_id_number", "TEXT", "caller number"),
    ("callee_id_name", "TEXT", "callee name"),
    ("callee_id_number", "TEXT", "callee number"),
    ("request", "TEXT", "SIP request URI (`sip_req_uri`), else the destination number"),
    ("from", "TEXT", "SIP From (`sip_from_uri`), else the presence id"),
    ("from_uri", "TEXT", "SIP From URI"),
    ("to", "TEXT", "SIP To (`sip_to_uri`), else the request URI"),
    ("to_uri", "TEXT", "SIP To URI"),
    ("presence_id", "TEXT", "`Channel-Presence-ID`"),
    ("user_agent", "TEXT", "remote SIP User-Agent"),
    ("created_us", "INTEGER", "leg created, UTC microseconds since the Unix epoch"),
    ("answered_us", "INTEGER", "leg answered, UTC µs; 0 when never answered"),
    ("hangup_us", "INTEGER", "leg hung up, UTC µs"),
    ("timestamp", "INTEGER", "hangup time in Gregorian seconds (Unix + 62167219200)"),
    ("duration_seconds", "INTEGER", "created to hangup, seconds"),
    ("billing_seconds", "INTEGER", "answered to hangup, seconds rounded up; 0 when never answered"),
    ("ringing_seconds", "INTEGER", "first ring to answer (or to hangup when unanswered), seconds"),
    ("hangup_cause", "TEXT", "Q.850 cause name, e.g. `NORMAL_CLEARING`, `USER_BUSY`"),
    ("hangup_code", "TEXT", "protocol cause, e.g. `sip:486`"),
    ("disposition", "TEXT", "who ended the call: `recv_bye`, `send_bye`, `recv_cancel`, ..."),
    ("digits_dialed", "TEXT",
     "DTMF digits received on the leg, in order: the first 256 (a longer run is logged, "
     "`dtmf_digits_truncated` with the number received)"),
    ("other_leg_call_id", "TEXT", "`Unique-ID` of the bridged/partner leg"),
    ("other_leg_caller_id_name", "TEXT", "the other leg's caller name"),
    ("other_leg_caller_id_number", "TEXT", "the other leg's caller number"),
    ("other_leg_destination_number", "TEXT", "the other leg's destination number"),
    ("other_leg_direction", "TEXT", "the other leg's direction"),
    ("fax_success", "INTEGER", "1 fax succeeded, 0 failed, NULL no fax on this leg"),
    ("fax_result_code", "INTEGER", "spandsp result code (0 = OK)"),
    ("fax_result_text", "TEXT", "spandsp result text"),
    ("fax_ecm_used", "INTEGER", "1 when error correction mode was used"),
    ("fax_total_pages", "INTEGER", "pages in the document"),
    ("fax_transferred_pages", "INTEGER", "pages transferred"),
    ("fax_transfer_rate", "INTEGER", "bits per second"),
    ("fax_bad_rows", "INTEGER", "bad rows received"),
    ("custom_channel_vars", "TEXT", "JSON object: configured channel variables (prefix removed, keys lower-case)"),
    ("custom_sip_headers", "TEXT", "JSON object: X- SIP headers (keys lower-case, `-` as `_`)"),
    ("local_sdp", "TEXT", "SDP FreeSWITCH sent"),
    ("remote_sdp", "TEXT", "SDP FreeSWITCH received"),
)

# Call quality (docs/api.md), added by add_quality_columns.  NULL when
# FreeSWITCH did not report the variable (loopback legs, legs without SDP);
# rows written before the migration keep NULL.
QUALITY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("audio_in_mos", "REAL",
     "FreeSWITCH's MOS of the received audio (`rtp_audio_in_mos`, 1-4.5, from the share of flawed packets, "
     "not an E-model score); NULL when no media packet was received"),
    ("audio_in_quality_percentage", "REAL", "`rtp_audio_in_quality_percentage`: 100 minus the flaw penalty"),
    ("audio_in_flaw_total", "INTEGER", "`rtp_audio_in_flaw_total`: lost or late packets seen by the jitter logic"),
    ("audio_in_packets", "INTEGER", "`rtp_audio_in_packet_count`: RTP packets received (audio, DTMF, CNG)"),
    ("audio_in_media_packets", "INTEGER", "`rtp_audio_in_media_packet_count`: audio packets received"),
    ("audio_in_skip_packets", "INTEGER", "`rtp_audio_in_skip_packet_count`: packet slots with nothing to read"),
    ("audio_in_jitter_max_variance", "REAL", "`rtp_audio_in_jitter_max_variance`: largest jitter variance, ms"),
    ("audio_in_mean_interval", "REAL", "`rtp_audio_in_mean_interval`: mean time between received packets, ms"),
    ("audio_out_media_packets", "INTEGER", "`rtp_audio_out_media_packet_count`: audio packets sent"),
    ("codec", "TEXT", "negotiated audio codec (`rtp_use_codec_name`), e.g. `PCMA`"),
    ("codec_rate", "INTEGER", "codec sample rate, Hz (`rtp_use_codec_rate`)"),
    ("codec_ptime", "INTEGER", "packetisation time, ms (`rtp_use_codec_ptime`)"),
    ("remote_media_ip", "TEXT",
     "where the far end's RTP came from (`remote_audio_ip`, after NAT adjustment), else its SDP address "
     "(`remote_media_ip`)"),
    ("remote_media_port", "INTEGER", "the far end's RTP port (`remote_audio_port`, else `remote_media_port`)"),
    ("local_media_ip", "TEXT", "FreeSWITCH's RTP address (`local_media_ip`)"),
    ("pdd_ms", "INTEGER",
     "post-dial delay: created to the first of progress (180), early media (183) or answer, ms; "
     "NULL when none was reached"),
    ("no_rtp_in", "INTEGER",
     "1: answered with an audio RTP session but no audio packet received; 0: answered and audio received; "
     "NULL otherwise"),
)

# Added by add_interaction_created: where the interaction list places a call
# whose id is not Kazoo-shaped (INTERACTION_START).
START_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("interaction_created_us", "INTEGER",
     "creation time of the interaction's earliest leg known when the row was written, UTC µs "
     "(every leg of a call normally carries the same value)"),
)

# Added by add_sip_call_id: the SIP Call-ID, so the legs of one SIP hop can
# be matched across media servers (until then it was kept only inside the
# ``sip:`` keys of interaction_links).
SIP_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("sip_call_id", "TEXT",
     "the leg's SIP Call-ID (`sip_call_id`): the two ends of one SIP hop share it, also on two media "
     "servers; NULL on legs without SIP (loopback) and on rows written before the column was added"),
)

COLUMNS: tuple[tuple[str, str, str], ...] = BASE_COLUMNS + QUALITY_COLUMNS + START_COLUMNS + SIP_COLUMNS

COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _, _ in COLUMNS)
# Columns a CDR record supplies (seq is assigned by SQLite).
RECORD_COLUMNS: tuple[str, ...] = COLUMN_NAMES[1:]
JSON_COLUMNS = frozenset({"custom_channel_vars", "custom_sip_headers"})
INTEGER_COLUMNS = frozenset(name for name, sqltype, _ in COLUMNS if sqltype.startswith("INTEGER"))

# The indexes of the first schema version (later migrations add and drop
# some: idx_cdrs_account_interaction went in version 10).
INDEXES: tuple[tuple[str, str], ...] = (
    # list and user list, keyset-paged on (timestamp, seq)
    ("idx_cdrs_account_ts", "account_id, timestamp, seq"),
    ("idx_cdrs_owner_ts", "account_id, owner_id, timestamp, seq"),
    # retention (oldest first), the backfill's newest row and recent legs
    ("idx_cdrs_ts", "timestamp, seq"),
    # interaction lists (paged on interaction_id), legs, merges
    ("idx_cdrs_interaction", "interaction_id"),
    ("idx_cdrs_account_interaction", "account_id, interaction_id"),
    ("idx_cdrs_owner_interaction", "account_id, owner_id, interaction_id"),
)


def _quote(name: str) -> str:
    return '"%s"' % name.replace('"', '""')


def create_cdrs(conn: sqlite3.Connection) -> None:
    # The table by hand: sqlite-utils cannot declare AUTOINCREMENT, and seq
    # must never be reused (the collector's cursor), even after deletions.
    cols = ",\n  ".join("%s %s" % (_quote(name), sqltype) for name, sqltype, _ in BASE_COLUMNS)
    conn.execute("CREATE TABLE cdrs (\n  %s\n)" % cols)
    table = sqlite_utils.Database(conn)["cdrs"]
    for name, cols_sql in INDEXES:
        table.create_index([c.strip() for c in cols_sql.split(",")], index_name=name)


def create_links(conn: sqlite3.Connection) -> None:
    # Which leg belongs to which interaction, also for legs whose CDR is not
    # written yet: lets a restarted daemon give late legs the same id.
    links = sqlite_utils.Database(conn)["interaction_links"]
    links.create({"call_id": str, "interaction_id": str}, pk="call_id", not_null=["interaction_id"])
    links.create_index(["interaction_id"], index_name="idx_links_interaction")


def create_meta_and_acks(conn: sqlite3.Connection) -> None:
    # meta: facts about the file itself.  db_id is minted once, when the
    # file is created (or first upgraded): a collector that sees another
    # db_id knows the media server's database was replaced and starts over.
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta (key, value) VALUES ('db_id', ?)", (uuid.uuid4().hex,))
    # collector_acks: per collector token (its sha256, never the token),
    # every seq <= acked_seq is stored at that collector; retention keeps
    # rows a registered collector has not acknowledged yet.
    conn.execute(
        "CREATE TABLE collector_acks (\n"
        "  token_sha256 TEXT PRIMARY KEY,\n"
        "  acked_seq INTEGER NOT NULL,\n"
        "  first_pull_us INTEGER NOT NULL,\n"
        "  last_pull_us INTEGER NOT NULL\n"
        ")"
    )


def add_quality_columns(conn: sqlite3.Connection) -> None:
    # Existing rows get NULL: their quality was never recorded.
    for name, sqltype, _ in QUALITY_COLUMNS:
        conn.execute("ALTER TABLE cdrs ADD COLUMN %s %s" % (_quote(name), sqltype))
    conn.execute("CREATE INDEX %s ON cdrs (%s) WHERE %s" % (STATS_INDEX, ", ".join(
        _quote(c) for c in STATS_INDEX_COLUMNS), STATS_INDEX_WHERE))


# The KPI rules, read from here by the roll-ups below, query/stats.py and the
# collector's statements (each in its dialect, over its own expressions): loopback
# legs count nowhere; a seizure is an outbound leg not hung up with one of
# NOT_SEIZURES (it seized nothing); a leg whose audio_in_mos is below LOW_MOS is a
# low-MOS leg.
SEIZURE_DIRECTION = "outbound"
NOT_SEIZURES = ("LOSE_RACE", "PICKED_OFF")
LOW_MOS = 3.6


def sql_list(names: Sequence[str]) -> str:
    """``names`` as a list of SQL string literals: for eslcdr's own constants
    (a fixed whitelist), never a client's text."""
    return ", ".join("'%s'" % name for name in names)


def counted_sql(channel_name: str) -> str:
    """The legs the KPIs count, over an SQL expression of the channel name ('' for none)."""
    return "%s NOT LIKE '%s%%'" % (channel_name, LOOPBACK_PREFIX)


def seizure_sql(direction: str, cause: str) -> str:
    """A seizure, over SQL expressions of the direction and the cause ('' for none)."""
    return "(%s = '%s' AND %s NOT IN (%s))" % (direction, SEIZURE_DIRECTION, cause, sql_list(NOT_SEIZURES))


# The KPI route (stats.stats_statements) reads only these columns of an account's
# time range: a covering index makes it a scan of a few dozen bytes per leg
# instead of a visit to every (multi-kilobyte) row.  Partial: loopback legs
# count nowhere, so they are not indexed; the query repeats the same WHERE
# term, which is how SQLite knows it may use the index.
STATS_INDEX = "idx_cdrs_stats"
STATS_INDEX_COLUMNS = (
    "account_id", "timestamp", "call_direction", "hangup_cause", "answered_us", "billing_seconds",
    "pdd_ms", "audio_in_mos", "no_rtp_in",
)
STATS_INDEX_WHERE = counted_sql("ifnull(channel_name, '')")

# When an interaction started, in Gregorian seconds, from one of its rows:
# the time prefix of a Kazoo-shaped id (``<11 digits>-<hex>``, Kazoo's
# interaction_time), else the creation of the interaction's earliest leg as
# the tracker knew it when the row was written (``interaction_created_us``;
# the leg's own creation on a row without it).  Every leg of a call carries
# the same value, so the position of an interaction in the list does not
# move when its earliest leg (the A-leg, usually hanging up last) is written
# after its partners.  Indexed as an expression; queries spell it exactly
# the same way (``interaction_start``).
_KAZOO_SHAPED = "{a}interaction_id GLOB '[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]-[0-9a-fA-F]*'"
INTERACTION_START = (
    "CASE WHEN " + _KAZOO_SHAPED +
    " THEN CAST(substr({a}interaction_id, 1, 11) AS INTEGER)"
    " ELSE ifnull(ifnull({a}interaction_created_us, {a}created_us), 0) / 1000000 + %d END" % GREGORIAN_OFFSET
)
# The expression of schema version 5 (the leg's own creation), kept so that
# migration 5 builds the same indexes on a new file as it did then; migration
# 7 replaces them.
_INTERACTION_START_V5 = (
    "CASE WHEN " + _KAZOO_SHAPED +
    " THEN CAST(substr({a}interaction_id, 1, 11) AS INTEGER)"
    " ELSE ifnull({a}created_us, 0) / 1000000 + %d END" % GREGORIAN_OFFSET
)


def interaction_start(alias: str = "") -> str:
    return INTERACTION_START.format(a=alias + "." if alias else "")


def _create_interaction_start_indexes(conn: sqlite3.Connection, start: str) -> None:
    conn.execute("CREATE INDEX idx_cdrs_account_istart ON cdrs (account_id, %s, interaction_id)" % start)
    conn.execute("CREATE INDEX idx_cdrs_owner_istart ON cdrs (account_id, owner_id, %s, interaction_id)" % start)


def add_interaction_start_indexes(conn: sqlite3.Connection) -> None:
    # Interaction lists page on (start, interaction_id) per account and per
    # user; the owner index on interaction_id alone served the old listing.
    conn.execute("DROP INDEX IF EXISTS idx_cdrs_owner_interaction")
    _create_interaction_start_indexes(conn, _INTERACTION_START_V5.format(a=""))


def add_interaction_created(conn: sqlite3.Connection) -> None:
    # Rows already written get the earliest creation of their interaction's
    # written legs: that is where the list placed those interactions before
    # (it showed the earliest leg, at its own creation), so no listing moves,
    # and every leg of an old call now carries one value.  Filling them (rather
    # than leaving NULL and falling back to the leg's own creation) is what
    # makes the position the same from every row.  An UPDATE, not a rewrite:
    # the rows keep their seq (a collector that took them already keeps NULL
    # there, which reads as the leg's creation).  Legs without an interaction
    # id or creation time stay NULL.
    for name, sqltype, _ in START_COLUMNS:
        conn.execute("ALTER TABLE cdrs ADD COLUMN %s %s" % (_quote(name), sqltype))
    conn.execute(
        "UPDATE cdrs SET interaction_created_us = (SELECT min(o.created_us) FROM cdrs AS o"
        " WHERE o.interaction_id = cdrs.interaction_id) WHERE interaction_id IS NOT NULL"
    )
    conn.execute("DROP INDEX idx_cdrs_account_istart")
    conn.execute("DROP INDEX idx_cdrs_owner_istart")
    _create_interaction_start_indexes(conn, interaction_start())


# Roll-ups for the KPIs of busy accounts (query/stats.py), kept exact through
# every way a row comes and goes: eslcdr's inserts and REPLACE rewrites add
# their new rows once per batch (store/db.py, rollup_insert_statements; until
# schema version 8 an insert trigger did it per row), and triggers take out
# the rows that go -- REPLACE's implicit delete (the writer connection
# enables recursive_triggers so it fires), retention's deletes, a person's
# UPDATE or DELETE in sqlite3.  Loopback legs and legs without an account are left
# out, as the KPIs leave them out.
#   stats_minutes: per account, minute (timestamp / 60), direction, cause and
#     answered-or-not: additive counters;
#   stats_pdd_hours: per account and hour, how many seizures had each pdd_ms
#     (an exact histogram: percentiles need every value).
ROLLUP_TABLES = ("stats_minutes", "stats_pdd_hours")
_ROLLUP_COUNTERS = (
    # (column, expression over a cdrs row R, with the sign d)
    ("legs", "{d}"),
    ("billing_seconds", "{d} * ifnull({R}.billing_seconds, 0)"),
    ("mos_legs", "{d} * ({R}.audio_in_mos IS NOT NULL)"),
    ("mos_sum", "{d} * ifnull({R}.audio_in_mos, 0.0)"),
    ("low_mos", "{d} * ifnull({R}.audio_in_mos < %r, 0)" % LOW_MOS),
    ("rtp_legs", "{d} * ({R}.no_rtp_in IS NOT NULL)"),
    ("no_rtp", "{d} * ifnull({R}.no_rtp_in = 1, 0)"),
)
_ROLLUP_KEY = (
    ("account_id", "{R}.account_id"),
    ("minute", "ifnull({R}.\"timestamp\", 0) / 60"),
    ("call_direction", "ifnull({R}.call_direction, '')"),
    ("hangup_cause", "ifnull({R}.hangup_cause, '')"),
    ("answered", "ifnull({R}.answered_us, 0) > 0"),
)
_ROLLUP_WHEN = "{R}.account_id IS NOT NULL AND " + counted_sql("ifnull({R}.channel_name, '')")
_PDD_WHEN = (_ROLLUP_WHEN + " AND " + seizure_sql("{R}.call_direction", "ifnull({R}.hangup_cause, '')")
             + " AND {R}.pdd_ms IS NOT NULL")
# The columns whose change moves a row in the roll-ups (an interaction merge
# changes none of them).
ROLLUP_SOURCE_COLUMNS = ("account_id", "timestamp", "channel_name", "call_direction", "hangup_cause",
                         "answered_us", "billing_seconds", "audio_in_mos", "no_rtp_in", "pdd_ms")


def _rollup_statements(row: str, sign: int) -> str:
    """Trigger statements adding (sign 1) or removing (-1) cdrs row ``row``."""
    fmt = {"R": row, "d": sign}
    key_cols = ", ".join(name for name, _ in _ROLLUP_KEY)
    key_vals = ", ".join(expr.format(**fmt) for _, expr in _ROLLUP_KEY)
    cols = ", ".join(name for name, _ in _ROLLUP_COUNTERS)
    vals = ", ".join(expr.format(**fmt) for _, expr in _ROLLUP_COUNTERS)
    sets = ", ".join("%s = %s + excluded.%s" % (name, name, name) for name, _ in _ROLLUP_COUNTERS)
    when = _ROLLUP_WHEN.format(**fmt)
    out = [
        "INSERT INTO stats_minutes (%s, %s) SELECT %s, %s WHERE %s ON CONFLICT DO UPDATE SET %s;"
        % (key_cols, cols, key_vals, vals, when, sets),
        "INSERT INTO stats_pdd_hours (account_id, hour, pdd_ms, seizures)"
        " SELECT {R}.account_id, ifnull({R}.\"timestamp\", 0) / 3600, {R}.pdd_ms, {d} WHERE {w}"
        " ON CONFLICT DO UPDATE SET seizures = seizures + excluded.seizures;".format(
            w=_PDD_WHEN.format(**fmt), **fmt),
    ]
    if sign < 0:  # an emptied cell goes away
        match = " AND ".join("%s = %s" % (name, expr.format(**fmt)) for name, expr in _ROLLUP_KEY)
        out.append("DELETE FROM stats_minutes WHERE %s AND legs = 0;" % match)
        out.append("DELETE FROM stats_pdd_hours WHERE account_id = {R}.account_id"
                   " AND hour = ifnull({R}.\"timestamp\", 0) / 3600 AND pdd_ms = {R}.pdd_ms"
                   " AND seizures = 0;".format(**fmt))
    return "\n  ".join(out)


def add_stats_rollups(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE stats_minutes (account_id TEXT NOT NULL, minute INTEGER NOT NULL,"
        " call_direction TEXT NOT NULL, hangup_cause TEXT NOT NULL, answered INTEGER NOT NULL,"
        " legs INTEGER NOT NULL, billing_seconds INTEGER NOT NULL, mos_legs INTEGER NOT NULL,"
        " mos_sum REAL NOT NULL, low_mos INTEGER NOT NULL, rtp_legs INTEGER NOT NULL, no_rtp INTEGER NOT NULL,"
        " PRIMARY KEY (account_id, minute, call_direction, hangup_cause, answered)) WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TABLE stats_pdd_hours (account_id TEXT NOT NULL, hour INTEGER NOT NULL, pdd_ms INTEGER NOT NULL,"
        " seizures INTEGER NOT NULL, PRIMARY KEY (account_id, hour, pdd_ms)) WITHOUT ROWID"
    )
    conn.execute("CREATE TRIGGER cdrs_stats_insert AFTER INSERT ON cdrs BEGIN\n  %s\nEND"
                 % _rollup_statements("NEW", 1))
    conn.execute("CREATE TRIGGER cdrs_stats_delete AFTER DELETE ON cdrs BEGIN\n  %s\nEND"
                 % _rollup_statements("OLD", -1))
    conn.execute("CREATE TRIGGER cdrs_stats_update AFTER UPDATE OF %s ON cdrs BEGIN\n  %s\n  %s\nEND" % (
        ", ".join(_quote(c) for c in ROLLUP_SOURCE_COLUMNS), _rollup_statements("OLD", -1),
        _rollup_statements("NEW", 1)))
    # The rows already there.
    key = ", ".join(expr.format(R="c") for _, expr in _ROLLUP_KEY)
    conn.execute("INSERT INTO stats_minutes SELECT %s, %s FROM cdrs AS c WHERE %s GROUP BY %s" % (
        key, ", ".join("total(%s)" % expr.format(R="c", d=1) if name == "mos_sum" else "sum(%s)" % expr.format(
            R="c", d=1) for name, expr in _ROLLUP_COUNTERS), _ROLLUP_WHEN.format(R="c"),
        ", ".join(str(i + 1) for i in range(len(_ROLLUP_KEY)))))
    conn.execute("INSERT INTO stats_pdd_hours SELECT c.account_id, ifnull(c.\"timestamp\", 0) / 3600, c.pdd_ms,"
                 " count(*) FROM cdrs AS c WHERE %s GROUP BY 1, 2, 3" % _PDD_WHEN.format(R="c"))


def rollup_insert_statements() -> tuple[str, str]:
    """Statements adding the rows with ``seq > ?`` to the roll-ups (what the
    insert trigger did a row at a time): the writer runs them once per batch
    (store/db.py), a grouped upsert of a few dozen cells instead of two upserts
    per row."""
    key_cols = ", ".join(name for name, _ in _ROLLUP_KEY)
    key_vals = ", ".join(expr.format(R="c") for _, expr in _ROLLUP_KEY)
    cols = ", ".join(name for name, _ in _ROLLUP_COUNTERS)
    vals = ", ".join("total(%s)" % expr.format(R="c", d=1) if name == "mos_sum" else "sum(%s)" % expr.format(
        R="c", d=1) for name, expr in _ROLLUP_COUNTERS)
    sets = ", ".join("%s = %s + excluded.%s" % (name, name, name) for name, _ in _ROLLUP_COUNTERS)
    group = ", ".join(str(i + 1) for i in range(len(_ROLLUP_KEY)))
    # NOT INDEXED: the rows after ``seq`` by the primary key.  Left to
    # itself the planner scans idx_cdrs_stats for "account_id IS NOT NULL",
    # i.e. every row of the table for every batch.
    minutes = ("INSERT INTO stats_minutes (%s, %s) SELECT %s, %s FROM cdrs AS c NOT INDEXED WHERE c.seq > ? AND %s"
               " GROUP BY %s ON CONFLICT DO UPDATE SET %s" % (key_cols, cols, key_vals, vals,
                                                            _ROLLUP_WHEN.format(R="c"), group, sets))
    pdd = ("INSERT INTO stats_pdd_hours (account_id, hour, pdd_ms, seizures) SELECT c.account_id,"
           " ifnull(c.\"timestamp\", 0) / 3600, c.pdd_ms, count(*) FROM cdrs AS c NOT INDEXED WHERE c.seq > ? AND %s"
           " GROUP BY 1, 2, 3 ON CONFLICT DO UPDATE SET seizures = seizures + excluded.seizures"
           % _PDD_WHEN.format(R="c"))
    return minutes, pdd


def rollups_per_batch(conn: sqlite3.Connection) -> None:
    # The insert trigger cost two upserts per row (a third of the writer's
    # time); eslcdr's own inserts now add their rows to the roll-ups once
    # per batch (store/db.py).  Deletes and updates keep their triggers: a
    # REPLACE's implicit delete, retention, and a person's UPDATE or DELETE
    # in sqlite3 stay exact.  Rows a person INSERTs by hand are not counted.
    conn.execute("DROP TRIGGER IF EXISTS cdrs_stats_insert")


def add_sip_call_id(conn: sqlite3.Connection) -> None:
    # Rows already written keep NULL: which leg of an interaction carried
    # which Call-ID is not in interaction_links (its ``sip:`` keys name the
    # interaction, not the leg).  No index: nothing on a node looks a leg up
    # by Call-ID; the central store matches on it.
    conn.execute("ALTER TABLE cdrs ADD COLUMN sip_call_id TEXT")


def drop_account_interaction_index(conn: sqlite3.Connection) -> None:
    # An interaction id names ~3 legs, so idx_cdrs_interaction finds an
    # interaction's legs as well as (account_id, interaction_id) did; the
    # queries that named the account as well (the interaction listing's
    # earliest-leg test, the legs route) look the id up in it and check the
    # account on the row (query/sql.py).  One random b-tree page less for
    # every row written: 0.66 of the 8.4 WAL frames a leg cost in batches of
    # 14 on a 10,000-row file, -6 % CPU (bench/README.md, #18).
    # (Its pages go back to the file system after the migrations: migrate.)
    conn.execute("DROP INDEX IF EXISTS idx_cdrs_account_interaction")


class SchemaTooNew(Exception):
    """The database was migrated by a newer eslcdr: this one refuses to touch it."""

    def __init__(self, what: str, found: int, supported: int) -> None:
        super().__init__("%s schema version %d is newer than this eslcdr (%d): upgrade eslcdr"
                         % (what, found, supported))
        self.found, self.supported = found, supported


MIGRATIONS = (create_cdrs, create_links, create_meta_and_acks, add_quality_columns,
              add_interaction_start_indexes, add_stats_rollups, add_interaction_created,
              rollups_per_batch, add_sip_call_id, drop_account_interaction_index)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """The file's schema version: the migrations applied (0: a new file)."""
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database up to SCHEMA_VERSION; return the version found."""
    found = schema_version(conn)
    if found > SCHEMA_VERSION:
        raise SchemaTooNew("database", found, SCHEMA_VERSION)
    for version in range(found, SCHEMA_VERSION):
        # The connection is in autocommit mode (isolation_level=None): the
        # explicit transaction makes each migration all-or-nothing.
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](conn)
            conn.execute("PRAGMA user_version = %d" % (version + 1))
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    if found < SCHEMA_VERSION:
        # The pages the steps freed (a dropped index: ~7 MB per 200,000 rows,
        # 0.07 s) go back to the file system now (auto_vacuum = INCREMENTAL),
        # not at retention's next batch, which would move them all while CDRs
        # wait; a new file starts without free pages.  (executescript:
        # execute() steps the pragma once, which frees a single page.)
        conn.executescript("PRAGMA incremental_vacuum;")
    return found
