"""API tokens: the tokens file, constant-time lookup, reload, ``token add``.

The file (``[api] tokens_file``) holds one token per line::

    # comment
    s3cr3t-plain-token          4b0c...account-id
    sha256:9f86d08...64 hex...   4b0c...account-id
    sha256:...                   *

A line is ``TOKEN ACCOUNT_ID`` or ``sha256:HEX ACCOUNT_ID``; ``#`` starts a
comment (whole line or after the fields).  The account ``*`` is the
collector/admin scope: it may read every account and the collector feed.

Only digests are kept in memory: a plain token is hashed when the file is
read.  A presented token is hashed once and compared with *every* entry with
``hmac.compare_digest`` (no early exit), so response time does not reveal how
much of a token matched or where in the file it sits.

``TokenStore`` re-reads the file when its mtime or size changes (checked at
most once per ``check_interval`` seconds), so ``eslcdr token add`` takes
effect without a restart; a broken edit keeps the previous set and is
reported once.  Nothing here ever logs or formats a token: errors name the
file and line number only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import structlog

COLLECTOR = "*"
_HASH_PREFIX = "sha256:"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
# Account ids are used as SQL parameters only, but a token line must stay
# two whitespace-separated fields, and '#' would start a comment.
_ACCOUNT_ID = re.compile(r"[^\s#]{1,256}")


class TokenFileError(ValueError):
    """The tokens file is malformed or unreadable (message names the line)."""


@dataclass(frozen=True, slots=True)
class TokenEntry:
    digest: bytes  # sha256 of the token
    account_id: str  # an account id, or COLLECTOR
    line: int

    def __repr__(self) -> str:  # never show even the digest in logs
        return "TokenEntry(account_id=%r, line=%d)" % (self.account_id, self.line)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def valid_account_id(account_id: str) -> bool:
    return bool(_ACCOUNT_ID.fullmatch(account_id))


def parse_tokens(text: str, source: str = "<tokens>") -> tuple[TokenEntry, ...]:
    """Parse the tokens file text; raise TokenFileError naming the line."""
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2:
            raise TokenFileError(
                "%s line %d: expected 'TOKEN ACCOUNT_ID' or 'sha256:HEX ACCOUNT_ID' (found %d fields)"
                % (source, number, len(fields))
            )
        token, account_id = fields
        if not valid_account_id(account_id):
            raise TokenFileError("%s line %d: invalid account id" % (source, number))
        if token.lower().startswith(_HASH_PREFIX):
            hexdigest = token[len(_HASH_PREFIX):]
            if not _HEX64.fullmatch(hexdigest):
                raise TokenFileError(
                    "%s line %d: a sha256: entry needs exactly 64 hex digits" % (source, number)
                )
            entries.append(TokenEntry(bytes.fromhex(hexdigest), account_id, number))
        else:
            entries.append(TokenEntry(digest(token), account_id, number))
    return tuple(entries)


def load_tokens(path: str | os.PathLike) -> tuple[TokenEntry, ...]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TokenFileError("%s: not UTF-8 text" % path) from None
    except OSError as exc:
        raise TokenFileError("cannot read %s: %s" % (path, exc.strerror)) from None
    return parse_tokens(text, str(path))


def match(entries: tuple[TokenEntry, ...], token: str) -> str | None:
    """The account id of ``token``, or None; constant time in the token."""
    return match_digest(entries, digest(token))


def match_digest(entries: tuple[TokenEntry, ...], presented: bytes) -> str | None:
    """The account id of the token whose sha256 is ``presented``, or None."""
    found = None
    for entry in entries:
        # No break: every entry is compared, whatever matches.
        if hmac.compare_digest(entry.digest, presented) and found is None:
            found = entry.account_id
    return found


class TokenStore:
    """The current token set of one file, reloaded when the file changes."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._check_interval = check_interval
        self._clock = clock
        self._log = structlog.get_logger("eslcdr.tokens")
        self._stamp: tuple[int, int] | None = None
        self._next_check = 0.0
        self._entries: tuple[TokenEntry, ...] = ()
        self._digests: frozenset[bytes] = frozenset()
        self._reported_error: str | None = None
        # A broken file at start is a configuration error the operator must
        # see (raised); later breakage keeps the last good set (logged).
        self._refresh(strict=True)

    @property
    def count(self) -> int:
        return len(self._entries)

    def lookup(self, token: str | None) -> str | None:
        """Account id (or COLLECTOR) for a presented token; None if unknown."""
        if not token:
            return None
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._check_interval
            self._refresh(strict=False)
        return match(self._entries, token)

    def known(self, text: str) -> bool:
        """Whether text is one of the tokens (for log redaction, not for
        authentication: a set lookup, not constant time)."""
        return digest(text) in self._digests

    def reload(self) -> None:
        """Re-read the file now, even if its mtime and size look unchanged
        (SIGHUP); a broken file keeps the previous set, as on any reload."""
        self._next_check = self._clock() + self._check_interval
        self._refresh(strict=False, force=True)
    def lookup_digest(self, token_digest: bytes) -> str | None:
        """Account id (or COLLECTOR) of the token with this sha256, if still in the file."""
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._check_interval
            self._refresh(strict=False)
        return match_digest(self._entries, token_digest)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _refresh(self, strict: bool, force: bool = False) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp and self._stamp is not None and not force:
            return
        if stamp is None:
            if self._stamp is not None or strict:
                self._log.warning("tokens_file_missing", path=str(self.path))
            self._entries, self._stamp = (), None
            self._digests = frozenset()
            return
        try:
            entries = load_tokens(self.path)
        except TokenFileError as exc:
            if strict:
                raise
            if self._reported_error != str(exc):
                self._log.error("tokens_file_invalid_keeping_previous", error=str(exc))
                self._reported_error = str(exc)
            return
        self._entries, self._stamp, self._reported_error = entries, stamp, None
        self._digests = frozenset(entry.digest for entry in entries)
        self._log.info("tokens_loaded", path=str(self.path), count=len(entries))


def add_token(path: str | os.PathLike, account_id: str) -> str:
    """Create a token for ``account_id``, append its sha256 to the file, return it.

    The file is created with mode 0600; an existing file loses any access
    for others (even hashed entries say which accounts exist) but keeps its
    group read bit: ``make install`` makes it 0640 root:eslcdr so the
    service can read it while root adds tokens.  Only the hash is stored;
    the caller shows the returned token once.
    """
    if not valid_account_id(account_id):
        raise TokenFileError("invalid account id %r: no spaces or '#', 1-256 characters" % account_id)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    line = "%s%s %s\n" % (_HASH_PREFIX, hashlib.sha256(token.encode("utf-8")).hexdigest(), account_id)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) & 0o640 | 0o600)
        size = os.fstat(fd).st_size
        # Keep one entry per line even if the file lost its final newline.
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return token
