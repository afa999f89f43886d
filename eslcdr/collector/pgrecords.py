"""A pulled feed line as the collector handles it: the checked record, its COPY row.

``FeedRecord`` is one line of a node's feed with the keys the collector uses (seq,
call_id, the partition key ``hangup_us``), ``Rejected`` a line that cannot become a row
(its reason one of ``REASONS``, stored in ``collector_rejects``).  ``staged_values`` turns
a record into the row ``pgstore`` COPYs into its staging table: the SQLite columns in
order (JSON columns as JSON text, a non-scalar where a scalar was expected as its JSON,
for PostgreSQL to accept or refuse), then the partition key.  No I/O here.
"""

from __future__ import annotations

import datetime as dt
import operator
from dataclasses import dataclass
from typing import Callable, Sequence

import orjson

from ..ingest.legs import GREGORIAN_OFFSET
from .pgschema import UTC, month_start, sqlite_columns

EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

# collector_rejects.reason: why a record is not a row.
REASON_BAD_RECORD = "bad_record"  # no usable call_id or hangup time
REASON_REFUSED = "refused_value"  # PostgreSQL refused a value
REASON_OTHER_NODE = "other_node"  # the call_id was stored from another node
REASON_OUT_OF_WINDOW = "hangup_out_of_window"  # hangup too old or in the future
REASON_PARTITION_LIMIT = "partition_limit"  # its month would pass the node's bound on new partitions
REASONS = (REASON_BAD_RECORD, REASON_REFUSED, REASON_OTHER_NODE, REASON_OUT_OF_WINDOW, REASON_PARTITION_LIMIT)


@dataclass(frozen=True, slots=True)
class FeedRecord:
    """One line of a node's feed, checked: its raw JSON and the keys used."""

    seq: int
    call_id: str
    hangup_us: int  # the partition key, µs since the epoch
    line: bytes  # the JSON document as received (UTF-8)
    doc: dict | None = None  # the parsed line (parsed again when absent)

    def fields(self) -> dict:
        return self.doc if self.doc is not None else orjson.loads(self.line)

    @property
    def hangup_at(self) -> dt.datetime:
        return EPOCH + dt.timedelta(microseconds=self.hangup_us)

    @property
    def month(self) -> dt.date:
        return month_start(EPOCH + dt.timedelta(days=self.hangup_us // DAY_US))


@dataclass(frozen=True, slots=True)
class Rejected:
    """A feed line with a good seq that cannot become a row."""

    seq: int
    call_id: str | None
    error: str
    line: str
    reason: str = REASON_BAD_RECORD


# Hangup times PostgreSQL and the partitions can hold: 1970 .. 9999.
MAX_HANGUP_US = 253_402_300_800_000_000
DAY_US = 86_400_000_000


def hangup_micros(hangup_us: object, timestamp: object) -> int | None:
    """The partition key of a record: its hangup time (µs), else its
    Gregorian-seconds ``timestamp``; None when neither is a usable number."""
    if type(hangup_us) is int and 0 < hangup_us < MAX_HANGUP_US:
        return hangup_us
    if type(timestamp) is int and GREGORIAN_OFFSET < timestamp < GREGORIAN_OFFSET + MAX_HANGUP_US // 1_000_000:
        return (timestamp - GREGORIAN_OFFSET) * 1_000_000
    return None


_SQLITE = sqlite_columns()
SQLITE_COLUMNS = [name for name, _ in _SQLITE]  # a COPY row's columns, by default
_JSON_COLUMNS = frozenset(name for name, kind in _SQLITE if kind == "jsonb")
_PLAIN_TYPES = frozenset((str, int, float, bool, type(None)))


@dataclass(frozen=True, slots=True)
class RowShape:
    """Where the JSON columns are among the staged columns, and a getter of
    the others' values (a tuple, in C)."""

    json_at: tuple[int, ...]
    scalars: Callable[[list], tuple]

    @classmethod
    def of(cls, columns: Sequence[str]) -> "RowShape":
        json_at = tuple(i for i, name in enumerate(columns) if name in _JSON_COLUMNS)
        others = [i for i in range(len(columns)) if i not in json_at]
        if len(others) >= 2:  # itemgetter of one index answers the value, not a tuple
            return cls(json_at, operator.itemgetter(*others))
        return cls(json_at, lambda values: tuple(values[i] for i in others))


def staged_values(record: FeedRecord, columns: Sequence[str], shape: RowShape | None = None) -> list:
    """The COPY row of a record: its columns, then the partition key.

    The JSON columns as JSON text; a value that is not a plain scalar where a
    scalar was expected as its JSON too, for PostgreSQL to accept or refuse.
    The scalars' types are checked in one pass in C: Python looks at each
    value only when a record holds such a value.
    """
    values = list(map(record.fields().get, columns))
    shape = shape or RowShape.of(columns)
    json_at: Sequence[int] = shape.json_at
    if not _PLAIN_TYPES.issuperset(map(type, shape.scalars(values))):
        json_at = [i for i, value in enumerate(values) if i in json_at or type(value) not in _PLAIN_TYPES]
    for index in json_at:
        value = values[index]
        if value is not None:
            values[index] = orjson.dumps(value).decode()
    values.append(record.hangup_us)
    return values
