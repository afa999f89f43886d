"""The CDR resource (Kazoo's cb_cdrs): listings, a CDR, the legs of an interaction.

``/v2/accounts/{A}[/users/{U}]/cdrs[/interaction]`` lists CDRs or interactions
of a time range (JSON pages with keyset ``start_key`` cursors, or every row:
``paginate=false`` JSON and CSV are streamed); ``cdrs/{ID}`` is one full
record (JSON with its revision as ETag, or CSV); ``cdrs/legs/{ID}`` every leg
of an interaction (both also under ``users/{U}/``, by id alone, as in Kazoo);
``/v2/cdrs...`` is the token's own account.  Centrally a JSON listing row ends
with its node, ``source`` (when the read side gives it).  Invariants: every
read is scoped to the path's account (another account's ids do not exist:
404 / no rows); a JSON page holds at most ``max_page_size`` rows.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Callable, Sequence

import bottle
import orjson

from ..query import kazoo
from ..query.list_csv import INCEPTION_ACCOUNT, INCEPTION_USER, list_csv
from ..query.params import KIND_CDRS, KIND_INTERACTIONS, cursor_for, encode_cursor, first, parse_list_query
from .core import ACCOUNT, ApiError, Core, Route
from .readside import ReadSide
from .streams import csv_body, json_body, records_csv, records_json
from .tokens import COLLECTOR

_N_SOURCE = len(kazoo.SOURCE_COLUMNS)
_N_SOURCED = _N_SOURCE + 3  # a central listing row: values, its node (source), key, tie
LIST_CSV_NAME = "result.csv"  # a CSV listing's download name: api_util's ?DEFAULT_CSV_FILE_NAME
# The id shapes cb_cdrs tells apart when nothing is found: a CDR id (?MATCH_MODB_PREFIX,
# YYYYMM-...) and a Kazoo interaction id (<11 digits>-..., its Gregorian start).
_CDR_ID = re.compile(r"[0-9]{6}-")
_KAZOO_INTERACTION_ID = re.compile(r"[0-9]{11}-")


class Cdrs:
    def __init__(self, core: Core, read: ReadSide) -> None:
        self.core = core
        self.read = read

    def routes(self) -> list[Route]:
        guard, own = self.core.guard, self.own_account
        return [
            (ACCOUNT + "/cdrs", "GET", guard(self.list_cdrs)),
            (ACCOUNT + "/cdrs/interaction", "GET", guard(self.list_interactions)),
            (ACCOUNT + "/cdrs/legs/<leg_id>", "GET", guard(self.legs)),
            (ACCOUNT + "/cdrs/<cdr_id>", "GET", guard(self.cdr_detail)),
            (ACCOUNT + "/users/<user_id>/cdrs", "GET", guard(self.list_cdrs)),
            (ACCOUNT + "/users/<user_id>/cdrs/interaction", "GET", guard(self.list_interactions)),
            # Kazoo's cb_cdrs serves a CDR and legs under a user's path too, by id alone.
            (ACCOUNT + "/users/<user_id>/cdrs/legs/<leg_id>", "GET", guard(any_user(self.legs))),
            (ACCOUNT + "/users/<user_id>/cdrs/<cdr_id>", "GET", guard(any_user(self.cdr_detail))),
            ("/v2/cdrs", "GET", guard(own(self.list_cdrs))),
            ("/v2/cdrs/interaction", "GET", guard(own(self.list_interactions))),
            ("/v2/cdrs/legs/<leg_id>", "GET", guard(own(self.legs))),
            ("/v2/cdrs/<cdr_id>", "GET", guard(own(self.cdr_detail))),
        ]

    def own_account(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """``/v2/cdrs...`` without an account: the token's own account (PyKazoo's
        ``cdrs.get_cdrs()`` asks there).  A ``*`` token has none: 404, as an
        account-less CDR path is in Kazoo."""

        def with_account(**kwargs: Any) -> Any:
            self.core.params()
            account = self.core.scope()
            if account == COLLECTOR:
                raise ApiError(404, "faulty_request", {"message": "a '*' token has no account of its own: "
                                                       "name one, /v2/accounts/{ACCOUNT_ID}/cdrs"})
            return handler(account_id=account, **kwargs)

        return with_account

    def list_cdrs(self, account_id: str, user_id: str | None = None) -> Any:
        return self._listing(KIND_CDRS, account_id, user_id)

    def list_interactions(self, account_id: str, user_id: str | None = None) -> Any:
        return self._listing(KIND_INTERACTIONS, account_id, user_id)

    def _listing(self, kind: str, account_id: str, user_id: str | None) -> Any:
        core = self.core
        params = core.account_params(account_id)
        as_csv = core.wants_csv(params)
        query = parse_list_query(
            params, kind=kind, account_id=account_id, owner_id=user_id,
            api=core.api, now=core.clock(), unpaginated=as_csv,
        )
        offset, interactions, by_user = query.utc_offset, kind == KIND_INTERACTIONS, user_id is not None
        columns = kazoo.INTERACTION_COLUMNS if interactions else kazoo.LIST_COLUMNS
        if interactions:
            def values_of(row: Sequence[Any]) -> list[Any]:
                return kazoo.interaction_values(row[:_N_SOURCE], offset, by_user)
        else:
            def values_of(row: Sequence[Any]) -> list[Any]:
                return kazoo.list_values(row[:_N_SOURCE], offset)

        def as_json(rows: list[Sequence[Any]]) -> list[str]:
            texts = []
            for row in rows:
                doc = dict(zip(columns, values_of(row)))
                if len(row) == _N_SOURCED:  # central: then the node it came from
                    doc["source"] = row[_N_SOURCE]
                texts.append(orjson.dumps(doc).decode("utf-8"))
            return texts

        inception = None if not interactions else INCEPTION_USER if by_user else INCEPTION_ACCOUNT

        def as_csv_records(rows: list[Any]) -> bytes:
            return list_csv(rows, offset, inception)

        if query.page_size is None:  # every row: in keyset chunks, no long snapshot
            if as_csv:
                return csv_body(core, self.read.list_export(query), as_csv_records, columns,
                                core.file_name(params, LIST_CSV_NAME))
            return json_body(core, self.read.list_rows(query), as_json, paged=False)
        rows = self.read.list_page(query)
        page, rest = rows[: query.page_size], rows[query.page_size:]
        fields: dict[str, Any] = {"page_size": len(page)}
        if page:
            fields["start_key"] = encode_cursor(cursor_for(query, page[0]))
        elif query.cursor is not None:
            fields["start_key"] = first(params, "start_key")
        if rest:
            fields["next_start_key"] = encode_cursor(cursor_for(query, rest[0]))
        core.count_rows("json", len(page))
        return core.envelope("[%s]" % ",".join(as_json(page)), fields)

    def cdr_detail(self, account_id: str, cdr_id: str) -> Any:
        core = self.core
        params = core.account_params(account_id)
        as_csv = core.wants_csv(params)
        found = self.read.detail(account_id, cdr_id, "csv" if as_csv else "json")
        if found is None:
            raise _no_cdr(cdr_id)
        core.count_rows("csv" if as_csv else "json", 1)
        if as_csv:
            core.csv_headers(core.file_name(params, "cdr-%s.csv" % cdr_id))
            return (kazoo.csv_records([kazoo.csv_header(kazoo.RECORD_CSV_FIELDS)]) + found + "\r\n").encode("utf-8")
        # Kazoo's revision (and ETag) of a document: changes whenever the record does.
        record = kazoo.record_text(found)
        revision = hashlib.md5(record.encode("utf-8"), usedforsecurity=False).hexdigest()
        bottle.response.set_header("ETag", '"%s"' % revision)
        return core.envelope(record, {"revision": revision})

    def legs(self, account_id: str, leg_id: str) -> Any:
        core = self.core
        params = core.account_params(account_id)
        as_csv = core.wants_csv(params)
        stream = self.read.legs(account_id, leg_id, "csv" if as_csv else "json")
        if stream.empty:
            problem = _no_legs(leg_id)
            if problem is not None:
                stream.close()
                raise problem
        if as_csv:
            return csv_body(core, stream, records_csv, kazoo.RECORD_CSV_FIELDS, core.file_name(params, "legs.csv"))
        return json_body(core, stream, records_json)


def any_user(handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler`` under ``users/{USER_ID}/``: the user named plays no part (cb_cdrs:validate/2,3
    load a CDR or legs by id in the path's account, whoever owns them)."""

    def without_user(user_id: str, **kwargs: Any) -> Any:
        return handler(**kwargs)

    return without_user


def _no_cdr(cdr_id: str) -> ApiError:
    """Kazoo's 404 for a CDR not found (cb_cdrs:load_cdr/2): a CDR id's is crossbar_doc's
    not_found (handle_datamgr_errors/3: bad_identifier, the id as cause), any other id's
    cb_cdrs' own message."""
    if _CDR_ID.match(cdr_id):
        return ApiError(404, "bad_identifier", {"cause": cdr_id, "message": "bad identifier"})
    return ApiError(404, "could not find cdr with supplied id", {})


def _no_legs(leg_id: str) -> ApiError | None:
    """Kazoo's answer for an id with no legs (cb_cdrs:load_legs/2): a CDR id's 404, a Kazoo
    interaction id's empty list (None: no error), any other id's 404 bad identifier."""
    if _CDR_ID.match(leg_id):
        return ApiError(404, "could not find legs for supplied id", {})
    if _KAZOO_INTERACTION_ID.match(leg_id):
        return None
    return ApiError(404, "bad identifier", [leg_id])
