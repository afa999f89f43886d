"""The read side the API's resources reach the CDRs through: one narrow protocol.

``ReadSide`` is every read a route makes (listings, a record, the legs of an
interaction, stats, worst legs, the collector feed); ``sqlite.SqliteReadSide``
implements it over a node's SQLite file. Queries come in parsed and scoped
(``query.*`` dataclasses, ``account_id`` inside); rows go out in the shapes the
routes render (below), so a backend answers exactly what SQLite answers.
Invariants: every read is scoped to its query's account (the feed to none);
a long read comes as ``Batches``, short statements with no snapshot held
between batches; failures are ``StatementTimeout`` / ``DatastoreError``.
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager, Iterator, Protocol, Sequence

from ..query.params import FeedQuery, ListQuery
from ..query.stats import StatsQuery, WorstQuery

# acknowledge(token_sha256, after, at_us): a collector has stored every seq <= after.
AckFn = Callable[[str, int, int], None]


class Batches(Protocol):
    """Rows in batches, read as iterated; ``close()`` ends the read either way."""

    @property
    def empty(self) -> bool:
        """True when there is no row at all (known before the first batch)."""

    def __iter__(self) -> Iterator[list[Any]]: ...

    def close(self) -> None: ...


class ReadSide(Protocol):
    """A listing row is the ``kazoo.SOURCE_COLUMNS`` values, then -- centrally, not
    in ``list_export`` -- the node it came from (``source``), then its keyset
    position (timestamp, seq; for interactions start, interaction id; a central
    CDR export's row ends with seq, source instead: its timestamp is a value). A
    record is ``kazoo.record_sql``'s text: JSON (``kazoo.record_text`` drops
    what nulls remain) or one CSV record."""

    def list_page(self, query: ListQuery) -> list[Sequence[Any]]:
        """At most ``query.page_size + 1`` listing rows from ``query.cursor`` on."""

    def list_rows(self, query: ListQuery) -> Batches:
        """Every listing row of an unpaginated query."""

    def list_export(self, query: ListQuery) -> Batches:
        """Every listing row of an unpaginated query, for a CSV export (big batches, read ahead)."""

    def detail(self, account_id: str, cdr_id: str, fmt: str) -> str | None:
        """One record (``fmt`` "json" or "csv") by CDR id, else by call id; None when none."""

    def legs(self, account_id: str, leg_id: str, fmt: str) -> Batches:
        """The records of every leg of the interaction named by an interaction, CDR or call id
        (row[0]), in creation order."""

    def stats(self, query: StatsQuery) -> dict[str, Any]:
        """``{"totals": {...}, "buckets": [...]}``, as ``query.stats.compute`` builds it."""

    def worst(self, query: WorstQuery) -> list[Sequence[Any]]:
        """The worst legs, ``stats.WORST_COLUMNS`` values per row."""

    def feed_page(self, query: FeedQuery) -> list[Sequence[Any]]:
        """(JSON record, seq) rows after ``query.after`` in seq order, at most ``query.limit``."""

    def feed_rows(self, query: FeedQuery) -> Batches:
        """The same rows as batches (a streamed pull)."""

    def db_id(self) -> str:
        """The store's id: a collector's seqs are only valid with it."""

    def last_seq(self) -> int:
        """The highest seq ever given (0 when none)."""

    def heavy_slot(self) -> ContextManager[None]:
        """A slot of the heavy lane: few heavy requests at once, the others wait."""

    def pacer(self) -> Callable[[], None]:
        """A ``breathe()`` pacing a heavy request's own Python work (call it every few items)."""

    def close(self) -> None:
        """Give back what the reads hold (connections)."""
