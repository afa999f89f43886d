"""Kazoo's row shapes written out, so the tests check eslcdr against Kazoo and
not against eslcdr's own constants (eslcdr.query.kazoo.LIST_COLUMNS, ...).

Source: Kazoo 4.3's crossbar, applications/crossbar/src/modules/cb_cdrs.erl
and applications/crossbar/src/crossbar.hrl (also DESIGN section 3.4).
"""

from __future__ import annotations

from eslcdr.store.schema import COLUMN_NAMES

# cb_cdrs.erl ?COLUMNS: a row of GET /cdrs (and /users/{id}/cdrs), in this
# order (DESIGN 3.4 "List rows (in this order)").
LIST_COLUMNS = [
    "id", "call_id", "caller_id_number", "caller_id_name", "callee_id_number",
    "callee_id_name", "duration_seconds", "billing_seconds", "timestamp",
    "hangup_cause", "disposition", "other_leg_call_id", "owner_id", "to", "from",
    "direction", "request", "authorizing_id", "cost", "dialed_number",
    "calling_from", "datetime", "unix_timestamp", "rfc_1036", "iso_8601",
    "iso_8601_combined", "call_type", "rate", "rate_name", "bridge_id",
    "recording_url", "media_recordings", "media_server", "call_priority",
    "interaction_id",
]
# cb_cdrs.erl ?INTERACTION_COLUMNS = ?COLUMNS ++ ?CONTEXT_COLUMNS, the latter
# [inception_direction]: a row of GET /cdrs/interaction.
INTERACTION_COLUMNS = LIST_COLUMNS + ["inception_direction"]
# crossbar.hrl ?CSV_HEADER_MAP, the entries naming fields a CDR has: how
# Kazoo's CSV writer titles them ("ID" first in every Kazoo CSV).
CSV_HEADER_MAP = {"id": "ID", "account_id": "Account ID"}

# A full record (GET /cdrs/{id}, /cdrs/legs/{id}, the feed): every stored
# column (the schema, documented column by column in docs/database.md) then
# Kazoo's channel_created_time (µs); as CSV the id comes first.
RECORD_FIELDS = list(COLUMN_NAMES) + ["channel_created_time"]
RECORD_CSV_FIELDS = ["id"] + [name for name in RECORD_FIELDS if name != "id"]


def csv_header(fields: list[str]) -> list[str]:
    """The header row Kazoo's CSV writer gives ``fields``."""
    return [CSV_HEADER_MAP.get(name, name) for name in fields]
