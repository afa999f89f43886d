"""Streamed answers: a JSON envelope, CSV or NDJSON written batch by batch.

Each body owns the read side's ``Batches`` and closes it however the response
ends (sent, client gone, failure).  Memory stays constant whatever the row
count: a batch is rendered and sent before the next is read.  Once the
headers are out a failing batch cannot become an error answer: it is logged
and re-raised, the server drops the connection, and the client sees a
truncated body rather than a complete-looking one.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import bottle
import structlog

from ..query import kazoo
from ..query.reader import DatastoreError, StatementTimeout
from .core import Core, dumps
from .readside import Batches

log = structlog.get_logger(__name__)


class StreamBody:
    """A streamed response body that owns its Batches (closed either way)."""

    def __init__(self, chunks: Iterator[bytes], stream: Batches) -> None:
        self._chunks = chunks
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._chunks
        except (StatementTimeout, DatastoreError) as exc:
            log.error("api_stream_aborted", error=str(exc))
            exc.eslcdr_logged = True  # the server drops the connection without a second line
            raise

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        self._stream.close()


def records_json(rows: list[Sequence[Any]]) -> list[str]:
    """The JSON texts of rows whose first value is a record (``readside.ReadSide``)."""
    return [kazoo.record_text(row[0]) for row in rows]


def records_csv(rows: list[Sequence[Any]]) -> bytes:
    """The CSV records of rows whose first value is a record rendered as CSV."""
    return "".join([row[0] + "\r\n" for row in rows]).encode("utf-8")


def csv_body(core: Core, stream: Batches, render: Callable[[list[Any]], bytes], columns: Sequence[str],
             file_name: str) -> StreamBody:
    """Header record, then ``render(batch)`` (UTF-8 CSV records) for each batch of rows."""
    core.csv_headers(file_name)
    counter = core.rows_counter("csv")

    def chunks() -> Iterator[bytes]:
        yield kazoo.csv_records([kazoo.csv_header(columns)]).encode("utf-8")
        for batch in stream:
            counter.inc(len(batch))
            yield render(batch)

    return StreamBody(chunks(), stream)


def json_body(core: Core, stream: Batches, render: Callable[[list[Any]], list[str]],
              paged: bool = True) -> StreamBody:
    """``{"data": [...], "page_size": n, "status": "success", ...}``, streamed;
    ``render(batch)`` gives the rows' JSON texts.  ``paged=False`` (``paginate=false``):
    no ``page_size``, as Kazoo's api_util:encode_start_keys/2 drops the paging keys."""
    bottle.response.content_type = "application/json"
    meta = core.meta()
    counter = core.rows_counter("json")

    def chunks() -> Iterator[bytes]:
        yield b'{"data":['
        sent = 0
        for batch in stream:
            text = ",".join(render(batch))
            yield ((",%s" if sent else "%s") % text).encode("utf-8")
            sent += len(batch)
            counter.inc(len(batch))
        paging = {"page_size": sent} if paged else {}
        yield ("]," + dumps({**paging, "status": "success", **meta})[1:]).encode("utf-8")

    return StreamBody(chunks(), stream)


def ndjson_body(core: Core, stream: Batches) -> StreamBody:
    """One record's JSON per line (the collector feed's streamed pull)."""
    bottle.response.content_type = "application/x-ndjson"
    counter = core.rows_counter("ndjson")

    def chunks() -> Iterator[bytes]:
        for batch in stream:
            counter.inc(len(batch))
            yield "".join([kazoo.record_text(row[0]) + "\n" for row in batch]).encode("utf-8")

    return StreamBody(chunks(), stream)
