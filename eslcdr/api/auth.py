"""Logging in (Kazoo's cb_api_auth, cb_user_auth) and ``GET /v2/auth/tokeninfo``.

``PUT /v2/api_auth {"data": {"api_key": KEY}}``: KEY is a token of the tokens
file; the answer (201) is a login session's token (``sessions``), as Kazoo's.
``PUT /v2/user_auth`` always answers 401: there are no users here.
``tokeninfo`` says which account the presented token reads (``*`` for the
collector scope); the operator's page starts there.  Invariants: a request
body is read from ``wsgi.input`` up to ``max_body_bytes`` (413 past it,
before a byte is read when Content-Length says so); a key is compared in
constant time (``tokens``) and never logged.
"""

from __future__ import annotations

import hashlib
from typing import Any

import bottle
import orjson

from .core import ApiError, Core, Route, dumps, invalid_credentials
from .tokens import digest


class Auth:
    def __init__(self, core: Core) -> None:
        self.core = core

    def routes(self) -> list[Route]:
        guard = self.core.guard
        return [
            ("/v2/auth/tokeninfo", "GET", guard(self.tokeninfo)),
            ("/v2/api_auth", "PUT", guard(self.api_auth)),
            ("/v2/user_auth", "PUT", guard(self.user_auth)),
        ]

    def login_body(self) -> Any:
        """The request body as JSON; 413 past ``max_body_bytes`` (refused on its
        Content-Length, before a byte is read; at most one byte more of a chunked
        body is read), Kazoo's 400 when it is not JSON or cannot be read (a broken
        chunked body).  ``wsgi.input`` itself, never Bottle's ``request.body``, which
        reads the whole Content-Length into a temporary file first."""
        limit = self.core.api.limits.max_body_bytes
        too_large = ApiError(413, "request entity too large",
                             {"message": "the request body is larger than %d bytes" % limit})
        if bottle.request.content_length > limit:
            raise too_large
        try:
            body = bottle.request.environ["wsgi.input"].read(limit + 1)
        except OSError:  # gevent's broken chunked body, a connection cut mid-body
            raise ApiError(400, "bad request", {"message": "the request body could not be read"}) from None
        if len(body) > limit:
            raise too_large
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ApiError(400, "validation error", {"json": {"invalid": {
                "message": "failed to parse request body as JSON", "target": "body"}}}) from None

    def api_auth(self) -> Any:
        """KEY of the tokens file in, a session token out (201), as Kazoo."""
        core = self.core
        payload = self.login_body()
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict):
            raise ApiError(400, "validation error", {"data": {"type": {
                "message": "the request envelope needs a data object", "target": "body"}}})
        api_key = data.get("api_key")
        account = core.tokens.lookup(api_key) if isinstance(api_key, str) and api_key else None
        if account is None:
            raise invalid_credentials()
        token = core.sessions.create(digest(api_key), account)
        bottle.request.environ["eslcdr.auth_token"] = token  # the envelope's auth_token
        data_json = dumps({"account_id": account})
        revision = hashlib.md5(data_json.encode("utf-8"), usedforsecurity=False).hexdigest()
        bottle.response.status = 201
        return core.envelope(data_json, {"revision": revision})

    def user_auth(self) -> Any:
        """Kazoo's user/password login: there are no users here."""
        raise invalid_credentials()

    def tokeninfo(self) -> Any:
        core = self.core
        core.params()
        return core.envelope(dumps({"account_id": core.scope()}), {})
