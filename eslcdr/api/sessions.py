"""Login sessions: ``PUT /v2/api_auth`` turns an API key into an auth token.

Kazoo clients log in first and send the returned ``auth_token`` on every
request; when it expires they get a 401 and log in again.  The API key is a
token of the tokens file; the auth token is 32 random bytes (urlsafe base64)
that live only in this process's memory (the tokens file stays the only
secret on disk).  Invariants: a session expires ``[api] session_ttl`` seconds
after its login and with the process; it ends at its next use once its key
leaves the tokens file or changes account; at most ``MAX_SESSIONS`` live,
``MAX_SESSIONS_PER_KEY`` per key (the oldest goes first); only sha256
digests are kept, compared with ``hmac.compare_digest``; nothing here logs or
formats a token.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from .tokens import digest

MAX_SESSIONS = 10_000
MAX_SESSIONS_PER_KEY = 100


@dataclass(frozen=True, slots=True)
class Session:
    token_digest: bytes
    key_digest: bytes  # sha256 of the API key it was made from
    account_id: str
    expires_at: float  # on the store's clock

    def __repr__(self) -> str:  # never show digests
        return "Session(account_id=%r)" % self.account_id


class SessionStore:
    def __init__(
        self,
        ttl: float,
        *,
        max_sessions: int = MAX_SESSIONS,
        max_per_key: int = MAX_SESSIONS_PER_KEY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self._max = max_sessions
        self._max_per_key = max_per_key
        self._clock = clock
        # token digest -> Session, oldest first (creation order = expiry order)
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()
        self._per_key: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def known(self, text: str) -> bool:
        """Whether text is a live session's token (for log redaction only)."""
        return digest(text) in self._sessions

    def create(self, key_digest: bytes, account_id: str) -> str:
        """A new auth token for the API key with digest ``key_digest``."""
        self._expire(self._clock())
        if self._per_key.get(key_digest, 0) >= self._max_per_key:
            oldest = next(d for d, s in self._sessions.items() if s.key_digest == key_digest)
            self._drop(oldest)
        while len(self._sessions) >= self._max:
            self._drop(next(iter(self._sessions)))
        token = secrets.token_urlsafe(32)
        token_digest = digest(token)
        self._sessions[token_digest] = Session(token_digest, key_digest, account_id, self._clock() + self.ttl)
        self._per_key[key_digest] = self._per_key.get(key_digest, 0) + 1
        return token

    def lookup(self, token: str, key_account: Callable[[bytes], str | None]) -> str | None:
        """The account of a live session token, or None.

        ``key_account(key_digest)`` says what the session's API key is worth
        now (the tokens file may have changed since the login).
        """
        presented = digest(token)
        session = self._sessions.get(presented)
        if session is None or not hmac.compare_digest(session.token_digest, presented):
            return None
        if self._clock() >= session.expires_at:
            self._drop(presented)
            return None
        if key_account(session.key_digest) != session.account_id:
            self._drop(presented)
            return None
        return session.account_id

    def key_of(self, token: str) -> bytes | None:
        """The sha256 of the API key behind a live session token, else None."""
        session = self._sessions.get(digest(token))
        if session is None or self._clock() >= session.expires_at:
            return None
        return session.key_digest

    def _expire(self, now: float) -> None:
        while self._sessions:
            token_digest, session = next(iter(self._sessions.items()))
            if session.expires_at > now:
                break
            self._drop(token_digest)

    def _drop(self, token_digest: bytes) -> None:
        session = self._sessions.pop(token_digest, None)
        if session is None:
            return
        left = self._per_key.get(session.key_digest, 1) - 1
        if left > 0:
            self._per_key[session.key_digest] = left
        else:
            self._per_key.pop(session.key_digest, None)
