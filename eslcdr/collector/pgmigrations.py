"""The collector's PostgreSQL migrations: every schema version, and ``migrate``.

``MIGRATIONS`` is append-only (functions of a cursor or literal SQL, kept as they were
released: a migration never changes once shipped); ``SCHEMA_VERSION`` is their count.
``migrate`` runs each missing one in its own transaction under an advisory lock (two
collectors starting together migrate once), counted in ``eslcdr_schema``; each transaction
sends Citus' shard commands one connection at a time (``CITUS_SEQUENTIAL``) and a literal
migration one statement at a time; then ``follow_sqlite_columns`` adds any column SQLite
gained since.  The tables, columns and partitions themselves: pgschema.py;
docs/collector.md ("The PostgreSQL schema", "Distributing on Citus").
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from ..store.schema import SchemaTooNew
from .pgschema import EXTRA_COLUMNS, INDEXED_SIP_CALL_ID, sqlite_columns

# Advisory lock key (arbitrary, fixed) of the migrations.
LOCK_MIGRATE = 0x65736C01



def _m1_tables(cur: psycopg.Cursor) -> None:
    cols = [sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in sqlite_columns()]
    cols += [sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t, _ in EXTRA_COLUMNS]
    cols.append(sql.SQL("PRIMARY KEY (call_id, hangup_at)"))
    cur.execute(
        sql.SQL("CREATE TABLE cdrs ({}) PARTITION BY RANGE (hangup_at)").format(sql.SQL(", ").join(cols))
    )
    # Kazoo's queries: an account's calls by time, a user's, one interaction;
    # and per media server by time (collector views, psql).
    for name, columns in (
        ("cdrs_account_time", "account_id, hangup_at"),
        ("cdrs_owner_time", "account_id, owner_id, hangup_at"),
        ("cdrs_interaction", "interaction_id"),
        ("cdrs_source_time", "source, hangup_at"),
        ("cdrs_time", "hangup_at"),
    ):
        cur.execute("CREATE INDEX %s ON cdrs (%s)" % (name, columns))
    cur.execute(
        "CREATE TABLE cdr_keys (call_id text PRIMARY KEY, hangup_at timestamptz NOT NULL)"
    )
    cur.execute("CREATE INDEX cdr_keys_time ON cdr_keys (hangup_at)")
    cur.execute(
        """CREATE TABLE collector_nodes (
            node text PRIMARY KEY,
            url text NOT NULL,
            db_id text,
            after bigint NOT NULL DEFAULT 0,
            last_pull_at timestamptz,
            last_error text,
            rows bigint NOT NULL DEFAULT 0,
            restarts integer NOT NULL DEFAULT 0
        )"""
    )
    # Records the collector could not store (a value PostgreSQL refuses):
    # kept whole, with the reason, so nothing is lost silently.
    cur.execute(
        """CREATE TABLE collector_rejects (
            id bigserial PRIMARY KEY,
            node text NOT NULL,
            db_id text,
            seq bigint,
            call_id text,
            error text NOT NULL,
            record text NOT NULL,
            rejected_at timestamptz NOT NULL DEFAULT now()
        )"""
    )


def _m2_lighter_time_indexes(cur: psycopg.Cursor) -> None:
    # Measured (bench/collect.py): every B-tree costs each inserted row.
    # Rows arrive in about hangup order, so a BRIN index serves time ranges
    # across accounts at a fraction of the cost; cdr_keys is only ever
    # looked up by call_id (dropping old months scans it, rarely).
    cur.execute("DROP INDEX IF EXISTS cdrs_time")
    cur.execute("DROP INDEX IF EXISTS cdr_keys_time")
    cur.execute("CREATE INDEX cdrs_time_brin ON cdrs USING brin (hangup_at)")


def _m3_owners_and_bounds(cur: psycopg.Cursor) -> None:
    # Which node stored each call: only it may replace the row.  Keys whose
    # row is gone (its month dropped) are let go.
    cur.execute("ALTER TABLE cdr_keys ADD COLUMN source text")
    cur.execute(
        "UPDATE cdr_keys AS k SET source = c.source FROM cdrs AS c"
        " WHERE c.call_id = k.call_id AND c.hangup_at = k.hangup_at"
    )
    cur.execute("DELETE FROM cdr_keys WHERE source IS NULL")
    cur.execute("ALTER TABLE cdr_keys ALTER COLUMN source SET NOT NULL")
    # Why a record was refused, as a word to group by (see pgrecords.REASONS).
    cur.execute("ALTER TABLE collector_rejects ADD COLUMN reason text NOT NULL DEFAULT 'refused_value'")
    cur.execute("UPDATE collector_rejects SET reason = 'bad_record' WHERE error LIKE 'record has no usable %'")
    cur.execute("ALTER TABLE collector_rejects ALTER COLUMN reason DROP DEFAULT")
    # Every partition the collector created, and the node it was created
    # for (NULL: ahead of need): the per-node bound counts these.
    cur.execute(
        """CREATE TABLE collector_partitions (
            name text PRIMARY KEY,
            node text,
            created_at timestamptz NOT NULL DEFAULT now()
        )"""
    )


# Citus-ready keys and the KPI roll-ups (docs/collector.md, "Distributing on
# Citus").  Every unique key of cdrs and of the tables co-located with it holds
# account_id, the distribution column: a key column is never NULL, so a leg
# without an account is stored with account_id '' (NO_ACCOUNT).  cdr_keys
# learns each call's account, to find its row by the whole key (it stays keyed
# by call_id alone: distributed by call_id, it is not co-located with cdrs).
# The roll-ups (pgrollups.py) start from the rows already stored.  Literal
# SQL: what version 4 did stays what it does.
_M4_CITUS_KEYS_AND_ROLLUPS = """
UPDATE cdrs SET account_id = '' WHERE account_id IS NULL;
ALTER TABLE cdr_keys ADD COLUMN account_id text;
UPDATE cdr_keys AS k SET account_id = c.account_id FROM cdrs AS c
  WHERE c.call_id = k.call_id AND c.hangup_at = k.hangup_at;
DELETE FROM cdr_keys WHERE account_id IS NULL;
ALTER TABLE cdr_keys ALTER COLUMN account_id SET NOT NULL;
ALTER TABLE cdrs ALTER COLUMN account_id SET NOT NULL;
ALTER TABLE cdrs DROP CONSTRAINT cdrs_pkey;
ALTER TABLE cdrs ADD CONSTRAINT cdrs_pkey PRIMARY KEY (account_id, call_id, hangup_at);
CREATE TABLE stats_minutes (
  account_id text NOT NULL,
  minute bigint NOT NULL,
  call_direction text NOT NULL,
  hangup_cause text NOT NULL,
  answered boolean NOT NULL,
  legs bigint NOT NULL,
  billing_seconds bigint NOT NULL,
  mos_legs bigint NOT NULL,
  mos_sum numeric NOT NULL,
  low_mos bigint NOT NULL,
  rtp_legs bigint NOT NULL,
  no_rtp bigint NOT NULL,
  PRIMARY KEY (account_id, minute, call_direction, hangup_cause, answered)
);
CREATE TABLE stats_pdd_hours (
  account_id text NOT NULL,
  hour bigint NOT NULL,
  pdd_ms bigint NOT NULL,
  seizures bigint NOT NULL,
  PRIMARY KEY (account_id, hour, pdd_ms)
);
INSERT INTO stats_minutes
  SELECT account_id, coalesce("timestamp", 0) / 60, coalesce(call_direction, ''), coalesce(hangup_cause, ''),
         coalesce(answered_us, 0) > 0, count(*), sum(coalesce(billing_seconds, 0)), count(audio_in_mos),
         sum(coalesce(audio_in_mos, 0)::numeric), count(*) FILTER (WHERE audio_in_mos < 3.6), count(no_rtp_in),
         count(*) FILTER (WHERE no_rtp_in = 1)
  FROM cdrs WHERE account_id <> '' AND coalesce(channel_name, '') NOT LIKE 'loopback/%'
  GROUP BY 1, 2, 3, 4, 5;
INSERT INTO stats_pdd_hours
  SELECT account_id, coalesce("timestamp", 0) / 3600, pdd_ms, count(*)
  FROM cdrs WHERE account_id <> '' AND coalesce(channel_name, '') NOT LIKE 'loopback/%'
    AND call_direction = 'outbound' AND coalesce(hangup_cause, '') NOT IN ('LOSE_RACE', 'PICKED_OFF')
    AND pdd_ms IS NOT NULL
  GROUP BY 1, 2, 3;
"""

# The read side's indexes (pgquery.py; docs/collector.md, "Indexes"): each
# listing's first page reads its index in the listing's order and stops after
# a page -- no sort of the account's rows.  The CDR listings' order is
# ("timestamp", seq, source in byte order) (the hangup_at indexes of version 1
# served none of them); the interaction listing's is (the interaction start,
# interaction_id in byte order), the start spelled exactly as pgquery.START
# (an expression index serves only the same expression), and a user's (legs
# with an owner only); the first-leg check
# and the legs route look an interaction up in its account, a detail a CDR id.
# Every index leads with account_id (Citus: each shard's index serves it).
# On the partitioned table each one is created on every partition, existing
# and future; building them locks writes to cdrs while it runs.
_M5_READ_INDEXES = """
DROP INDEX IF EXISTS cdrs_account_time;
DROP INDEX IF EXISTS cdrs_owner_time;
DROP INDEX IF EXISTS cdrs_interaction;
CREATE INDEX cdrs_account_list ON cdrs (account_id, "timestamp", seq, source COLLATE "C");
CREATE INDEX cdrs_owner_list ON cdrs (account_id, owner_id, "timestamp", seq, source COLLATE "C");
CREATE INDEX cdrs_account_interactions ON cdrs (account_id,
  (CASE WHEN interaction_id ~ '^[0-9]{11}-[0-9a-fA-F]' THEN substr(interaction_id, 1, 11)::bigint
   ELSE COALESCE(interaction_created_us, created_us, 0) / 1000000 + 62167219200 END),
  interaction_id COLLATE "C") WHERE interaction_id IS NOT NULL;
CREATE INDEX cdrs_owner_interactions ON cdrs (account_id, owner_id,
  (CASE WHEN interaction_id ~ '^[0-9]{11}-[0-9a-fA-F]' THEN substr(interaction_id, 1, 11)::bigint
   ELSE COALESCE(interaction_created_us, created_us, 0) / 1000000 + 62167219200 END),
  interaction_id COLLATE "C") WHERE interaction_id IS NOT NULL AND owner_id IS NOT NULL;
CREATE INDEX cdrs_account_interaction ON cdrs (account_id, interaction_id);
CREATE INDEX cdrs_account_cdr_id ON cdrs (account_id, id);
"""

# A call that crossed media servers as one central interaction
# (pginteractions.py): each joined node id -> the group's central id, keyed
# with account_id (Citus-ready); the legs of an account by SIP Call-ID (only
# the legs that have one).  sip_call_id is added first: a database older than
# that column meets this migration before follow_sqlite_columns.
_M6_CENTRAL_INTERACTIONS = """
ALTER TABLE cdrs ADD COLUMN IF NOT EXISTS sip_call_id text;
CREATE TABLE interaction_aliases (
  account_id text NOT NULL,
  interaction_id text NOT NULL,
  central_id text NOT NULL,
  PRIMARY KEY (account_id, interaction_id)
);
CREATE INDEX interaction_aliases_central ON interaction_aliases (account_id, central_id);
CREATE INDEX cdrs_sip_call_id ON cdrs (account_id, sip_call_id) WHERE sip_call_id IS NOT NULL;
"""

# The central interaction id stored in each row (pginteractions.py keeps it:
# set at insert, updated -- a non-key column -- when groups join), so the
# interaction listings read an index again (a per-row look-up in
# interaction_aliases can be indexed by nothing).  The rows stored before are
# filled here; their legs across nodes are joined afterwards by the
# collector's one-off step (pginteractions.join_existing), from the position
# in eslcdr_schema.join_after ('{}': from the start, NULL: done).  Version 5's
# interaction indexes spelled the start over interaction_id: replaced by the
# same over central_id; the first-leg check and the legs route look a central
# id up.
_M7_STORED_CENTRAL_ID = """
ALTER TABLE cdrs ADD COLUMN central_id text;
UPDATE cdrs SET central_id = interaction_id WHERE interaction_id IS NOT NULL;
UPDATE cdrs AS c SET central_id = a.central_id FROM interaction_aliases AS a
  WHERE a.account_id = c.account_id AND a.interaction_id = c.interaction_id;
DROP INDEX IF EXISTS cdrs_account_interactions;
DROP INDEX IF EXISTS cdrs_owner_interactions;
DROP INDEX IF EXISTS cdrs_account_interaction;
CREATE INDEX cdrs_account_interactions ON cdrs (account_id,
  (CASE WHEN central_id ~ '^[0-9]{11}-[0-9a-fA-F]' THEN substr(central_id, 1, 11)::bigint
   ELSE COALESCE(interaction_created_us, created_us, 0) / 1000000 + 62167219200 END),
  central_id COLLATE "C") WHERE central_id IS NOT NULL;
CREATE INDEX cdrs_owner_interactions ON cdrs (account_id, owner_id,
  (CASE WHEN central_id ~ '^[0-9]{11}-[0-9a-fA-F]' THEN substr(central_id, 1, 11)::bigint
   ELSE COALESCE(interaction_created_us, created_us, 0) / 1000000 + 62167219200 END),
  central_id COLLATE "C") WHERE central_id IS NOT NULL AND owner_id IS NOT NULL;
CREATE INDEX cdrs_account_central ON cdrs (account_id, central_id);
ALTER TABLE eslcdr_schema ADD COLUMN join_after text[];
UPDATE eslcdr_schema SET join_after = '{}';
"""

# The KPI cells per hour (pgrollups.py, ``stats_hours``): an hourly month of
# an account reads a quarter of the minute cells' rows.  stats_minutes' columns
# and primary key, ``hour`` for ``minute``; counted from the minute cells
# already stored (the same cells, summed per hour).  Literal SQL.
_M8_HOUR_ROLLUPS = """
CREATE TABLE stats_hours (LIKE stats_minutes INCLUDING ALL);
ALTER TABLE stats_hours RENAME COLUMN minute TO hour;
INSERT INTO stats_hours
  SELECT account_id, minute / 60, call_direction, hangup_cause, answered, sum(legs), sum(billing_seconds),
         sum(mos_legs), sum(mos_sum), sum(low_mos), sum(rtp_legs), sum(no_rtp)
  FROM stats_minutes GROUP BY 1, 2, 3, 4, 5;
"""

# Fewer index entries a stored row (bench/README.md, the storing rate): no
# statement used version 1's (source, hangup_at); a CDR id (YYYYMM-<call_id>)
# is found by the primary key (pgquery.call_ids); a user's listing names an
# owner (as cdrs_owner_interactions).  Literal SQL.
_M9_FEWER_INDEX_ENTRIES = """
DROP INDEX IF EXISTS cdrs_source_time;
DROP INDEX IF EXISTS cdrs_account_cdr_id;
DROP INDEX IF EXISTS cdrs_owner_list;
CREATE INDEX cdrs_owner_list ON cdrs (account_id, owner_id, "timestamp", seq, source COLLATE "C") WHERE owner_id IS NOT NULL;
"""

# Hour cells: one row per account, hour and direction of KPI counters (pgrollups.HOUR_COUNTERS),
# the seizures per cause beside (an hourly month: ~1,440 rows to sum, no FILTER per figure),
# refilled from version 8's cells (per direction, cause, answered-or-not).
_M10_HOUR_KPIS = """
ALTER TABLE stats_hours RENAME TO stats_hour_cells;
ALTER INDEX stats_hours_pkey RENAME TO stats_hour_cells_pkey;
CREATE TABLE stats_hours (account_id text NOT NULL, hour bigint NOT NULL, call_direction text NOT NULL, legs bigint NOT NULL,
  attempts bigint NOT NULL, answered_attempts bigint NOT NULL, seizures bigint NOT NULL, answered bigint NOT NULL,
  user_outcomes bigint NOT NULL, billing_seconds bigint NOT NULL, mos_legs bigint NOT NULL, mos_sum numeric NOT NULL,
  low_mos bigint NOT NULL, rtp_legs bigint NOT NULL, no_rtp bigint NOT NULL, PRIMARY KEY (account_id, hour, call_direction));
CREATE TABLE stats_hour_causes (account_id text NOT NULL, hour bigint NOT NULL, hangup_cause text NOT NULL,
  seizures bigint NOT NULL, PRIMARY KEY (account_id, hour, hangup_cause));
INSERT INTO stats_hours SELECT account_id, hour, call_direction, sum(legs), sum(inb * legs), sum(inb * ans * legs), sum(seiz * legs),
  sum(seiz * ans * legs), sum(seiz * (1 - ans) * usr * legs), sum(seiz * ans * billing_seconds), sum(mos_legs),
  sum(mos_sum), sum(low_mos), sum(rtp_legs), sum(no_rtp)
  FROM (SELECT c.*, (call_direction = 'inbound')::int AS inb, answered::int AS ans,
    (call_direction = 'outbound' AND hangup_cause NOT IN ('LOSE_RACE', 'PICKED_OFF'))::int AS seiz,
    (hangup_cause IN ('USER_BUSY', 'NO_USER_RESPONSE', 'NO_ANSWER', 'SUBSCRIBER_ABSENT', 'CALL_REJECTED',
                      'ORIGINATOR_CANCEL'))::int AS usr FROM stats_hour_cells AS c) AS c GROUP BY 1, 2, 3;
INSERT INTO stats_hour_causes SELECT account_id, hour, hangup_cause, sum(legs) FROM stats_hour_cells
  WHERE call_direction = 'outbound' AND hangup_cause NOT IN ('LOSE_RACE', 'PICKED_OFF') GROUP BY 1, 2, 3;
DROP TABLE stats_hour_cells;
"""

# A caller's SIP Call-ID of a few KB could not go into version 6's index: the row was
# refused (collector_rejects).  The index holds the ones it can (pgschema).
_M11_INDEXABLE_SIP_CALL_IDS = """
DROP INDEX IF EXISTS cdrs_sip_call_id;
CREATE INDEX cdrs_sip_call_id ON cdrs (account_id, sip_call_id) WHERE %s;
""" % (INDEXED_SIP_CALL_ID % "")

# A migration is a function of a cursor or literal SQL.
MIGRATIONS = (_m1_tables, _m2_lighter_time_indexes, _m3_owners_and_bounds, _M4_CITUS_KEYS_AND_ROLLUPS,
              _M5_READ_INDEXES, _M6_CENTRAL_INTERACTIONS, _M7_STORED_CENTRAL_ID, _M8_HOUR_ROLLUPS,
              _M9_FEWER_INDEX_ENTRIES, _M10_HOUR_KPIS, _M11_INDEXABLE_SIP_CALL_IDS)
SCHEMA_VERSION = len(MIGRATIONS)


def follow_sqlite_columns(cur: psycopg.Cursor) -> list[str]:
    """Add SQLite columns that ``cdrs`` lacks; return their names."""
    cur.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'cdrs'"
    )
    have = {row[0] for row in cur.fetchall()}
    added = []
    for name, kind in sqlite_columns():
        if name not in have:
            kind = kind.replace(" NOT NULL", "")  # old rows have no value
            cur.execute(sql.SQL("ALTER TABLE cdrs ADD COLUMN IF NOT EXISTS {} {}").format(sql.Identifier(name), sql.SQL(kind)))
            added.append(name)
    return added


def statements(script: str) -> list[str]:
    """A literal migration's statements (each ends with ``;`` at a line's end)."""
    return [part.strip() for part in script.split(";\n") if part.strip()]


CITUS_SEQUENTIAL = "SET LOCAL citus.multi_shard_modify_mode = 'sequential'"


def migrate(conn: psycopg.Connection) -> int:
    """Bring the database up to SCHEMA_VERSION; return the version found.

    Each migration runs in its own transaction holding an advisory lock, so
    two collectors starting together migrate once.  After them,
    ``follow_sqlite_columns`` adds any column the SQLite schema gained since (a
    newer eslcdr's migration) with ``ADD COLUMN IF NOT EXISTS``: the collector
    stores every column its media servers send, without a hand-written PG
    migration per SQLite one.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_MIGRATE,))
        conn.execute("CREATE TABLE IF NOT EXISTS eslcdr_schema (version integer NOT NULL)")
        row = conn.execute("SELECT version FROM eslcdr_schema").fetchone()
        if row is None:
            conn.execute("INSERT INTO eslcdr_schema (version) VALUES (0)")
        found = row[0] if row else 0
    if found > SCHEMA_VERSION:
        raise SchemaTooNew("PostgreSQL", found, SCHEMA_VERSION)
    for version in range(found, SCHEMA_VERSION):
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_MIGRATE,))
            current = cur.execute("SELECT version FROM eslcdr_schema").fetchone()[0]
            if current > version:  # another collector did it meanwhile
                continue
            # Citus sends a distributed table's DDL to its shards; after a parallel
            # statement in the same transaction it refuses some (schema 9's CREATE
            # INDEX: "could lead to deadlocks"): one connection at a time.  On plain
            # PostgreSQL the setting is an inert placeholder.
            cur.execute(CITUS_SEQUENTIAL)
            migration = MIGRATIONS[version]
            if isinstance(migration, str):
                # One statement at a time: Citus refuses several in one
                # command once the tables are distributed.
                for statement in statements(migration):
                    cur.execute(statement)
            else:
                migration(cur)
            cur.execute("UPDATE eslcdr_schema SET version = %s", (version + 1,))
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_MIGRATE,))
        follow_sqlite_columns(cur)
    return found
