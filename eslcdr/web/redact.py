"""Keeping secrets out of log lines.

A token can reach the server in many spellings: ``?auth_token=T``,
``?auth%5Ftoken=T``, ``?auth_tok%65n=T``, double-encoded, ``+`` for spaces,
upper case, in a path segment, in any header.  Redaction therefore works on
*decoded* text, never on the raw request line: ``Redactor`` replaces the
values of secret parameters, any credential it recognises and any path
segment shaped like a generated token (``looks_generated``: a revoked token,
another server's), and ``scrub`` is the last line of defence, run by the log
configuration on every string of every event.

Nothing here logs; callers log what it returns.  Bad requests are never
logged with their raw bytes at all (see ``api.make_server``).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Callable, Iterable

REDACTED = "[redacted]"
DECODE_ROUNDS = 3
MIN_SECRET = 6  # shorter text is never treated as a presented credential
_SECRET_WORDS = ("token", "apikey", "password", "passwd", "secret", "credential", "authorization")
_NON_ALNUM = re.compile(r"[^a-z0-9]")
_CANDIDATE = re.compile(r"[A-Za-z0-9_\-.~]{%d,512}" % MIN_SECRET)
_SEPARATOR = re.compile(r"[_\-.~]")
GENERATED_TOKEN_LENGTH = 43  # secrets.token_urlsafe(32), what ``eslcdr token add`` makes
MAX_CUTS = 8
MAX_WINDOWED_RUN = 128  # glued tokens are looked for in runs up to this long
# A longer value is redacted whole rather than searched: bounds the work a
# client can cause per logged request (a few hundred hashes per value).
MAX_CHECKED_VALUE = 512
_SCRUB = re.compile(
    r"(?i)((?:auth[\W_]{0,3}tok\w{0,3}|api[\W_]?key|passw\w{0,4})[\"']?\s*[=:]\s*[\"']?|bearer\s+)"
    r"[^\s&;,\"'<>]+"
)
_SCRUB_HINT = re.compile(r"(?i)tok|bearer|key|passw|%")
_GENERATED_RUN = re.compile(r"[A-Za-z0-9_-]{%d,}" % GENERATED_TOKEN_LENGTH)


def decodings(text: str, rounds: int = DECODE_ROUNDS) -> list[str]:
    """``text`` and its successive percent/plus decodings (distinct, in order)."""
    out = [text]
    for _ in range(rounds):
        if "%" not in text and "+" not in text:
            break
        decoded = urllib.parse.unquote_plus(text, errors="replace")
        if decoded == text:
            break
        out.append(decoded)
        text = decoded
    return out


def candidates(text: str) -> set[str]:
    """Substrings of ``text`` that may be a whole token: each run of token
    characters, its pieces between separators (``filter_<token>``), and every
    window of a generated token's length (a token glued to other text)."""
    found: set[str] = set()
    for run in _CANDIDATE.findall(text):
        found.add(run)
        cuts = [m.start() for m in _SEPARATOR.finditer(run)][:MAX_CUTS]
        starts = [0] + [cut + 1 for cut in cuts]
        ends = cuts + [len(run)]
        for start in starts:
            for end in ends:
                if end - start >= MIN_SECRET:
                    found.add(run[start:end])
        if len(run) <= MAX_WINDOWED_RUN:
            for start in range(len(run) - GENERATED_TOKEN_LENGTH + 1):
                found.add(run[start:start + GENERATED_TOKEN_LENGTH])
    return found


def looks_generated(text: str) -> bool:
    """Whether text, at any decoding level, holds what looks like a token this
    software makes (``secrets.token_urlsafe(32)``: a run of GENERATED_TOKEN_LENGTH
    or more URL-safe characters with both upper- and lower-case letters), known
    or not: a revoked token, another server's.  The ids in the API's paths are
    hex, one case: account and user ids, a CDR id (``YYYYMM-`` and the call's
    UUID or id), Kazoo's interaction id (``<11 digits>-<hex>``)."""
    for form in decodings(text):
        for run in _GENERATED_RUN.findall(form):
            if not run.islower() and not run.isupper():
                return True
    return False


def secret_name(name: str) -> bool:
    """True for a parameter or header name that carries a credential."""
    for form in decodings(name):
        squashed = _NON_ALNUM.sub("", form.lower())
        if any(word in squashed for word in _SECRET_WORDS):
            return True
    return False


class Redactor:
    """Redacts one request's loggable text.

    ``is_token(text)`` says whether text is a known token (the API's token
    store); ``presented`` are the credentials this request carried.

    - a query parameter whose name, percent-decoded (repeatedly) and stripped
      of everything but letters and digits, names a secret (``authtoken``,
      ``apikey``, ``password``...) has its value replaced;
    - any path segment, parameter name or value that holds, at any decoding
      level, a credential presented with this request (``X-Auth-Token``,
      ``Authorization``, a secret parameter) or a token the tokens file knows
      (``is_token``) is replaced;
    - a path segment that looks like a generated token (``looks_generated``)
      is replaced, known or not.
    """

    def __init__(self, is_token: Callable[[str], bool] | None = None, presented: Iterable[str] = ()) -> None:
        self._is_token = is_token
        self._presented = [p for p in presented if p and len(p) >= MIN_SECRET]

    def leaks(self, text: str) -> bool:
        if not text:
            return False
        if len(text) > MAX_CHECKED_VALUE:
            return True
        for form in decodings(text):
            for secret in self._presented:
                if secret in form:
                    return True
            if self._is_token is not None:
                for candidate in candidates(form):
                    if self._is_token(candidate):
                        return True
        return False

    def value(self, text: str) -> str:
        return REDACTED if self.leaks(text) else text

    def query(self, query: str) -> str:
        parts = []
        for part in re.split(r"([&;])", query):
            if part in ("&", ";") or not part:
                parts.append(part)
                continue
            name, eq, value = part.partition("=")
            if self.leaks(name):
                parts.append(REDACTED + (eq and eq + REDACTED))
            elif eq and (secret_name(name) or self.leaks(value)):
                parts.append(name + "=" + REDACTED)
            elif not eq and secret_name(name):
                parts.append(REDACTED)
            else:
                parts.append(part)
        return "".join(parts)

    def segment(self, text: str) -> str:
        """A path segment: a value, also redacted when it looks like a
        generated token (query values are not: a paging cursor, a SIP Call-ID
        may look like one)."""
        return REDACTED if self.leaks(text) or looks_generated(text) else text

    def target(self, target: str) -> str:
        """A request target (path and query, as sent) fit for a log line."""
        path, mark, query = target.partition("?")
        path = "/".join(self.segment(segment) for segment in path.split("/"))
        return path + mark + (self.query(query) if mark else "")


def presented_in_query(query: str) -> list[str]:
    """Values of the secret-named parameters of a raw query string, decoded."""
    found = []
    for part in re.split(r"[&;]", query):
        name, eq, value = part.partition("=")
        if eq and secret_name(name):
            found.extend(decodings(value))
    return found


_CREDENTIAL_HEADERS = ("HTTP_X_AUTH_TOKEN", "HTTP_AUTHORIZATION")
_PRINTABLE_RUN = re.compile(r"[\x21-\x7e]{%d,}" % MIN_SECRET)


def presented_in_environ(environ: dict) -> list[str]:
    """The credentials a WSGI request carries: its token headers (whole, and
    their printable runs, so a token followed by a stray byte still counts)
    and its secret-named query parameters."""
    found: list[str] = []
    for key in _CREDENTIAL_HEADERS:
        value = environ.get(key)
        if value:
            found.append(value)
            found.extend(_PRINTABLE_RUN.findall(value))
    found.extend(presented_in_query(environ.get("QUERY_STRING", "")))
    return found


def scrub(text: str) -> str:
    """Remove what still looks like a credential from free text (any decoding).

    Text that still says ``auth_token=...``, ``X-Auth-Token: ...`` or
    ``Bearer ...`` after decoding loses the value.
    """
    if not _SCRUB_HINT.search(text):
        return text
    forms = decodings(text)
    # The most decoded form first: it spells every name plainly.
    for form in reversed(forms):
        if _SCRUB.search(form):
            scrubbed = _SCRUB.sub(lambda m: m.group(1) + REDACTED, form)
            # Already redacted upstream: keep the text as it was written.
            return text if scrubbed == form else scrubbed
    return text


def scrub_event(_logger: object, _name: str, event: dict) -> dict:
    """structlog processor: ``scrub`` every string value of an event."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = scrub(value)
    return event
