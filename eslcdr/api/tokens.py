"""API tokens: the tokens file, constant-time lookup, reload, ``token add``.

One token per line, ``TOKEN ACCOUNT_ID`` or ``sha256:HEX ACCOUNT_ID`` (``#``
starts a comment); the account ``*`` is the collector/admin scope (every
account and the feed).  The file format and its reload rules are in
docs/configuration.md; the rules themselves are ``TokenStore``'s docstring.
Invariants: only digests are kept in memory; a presented token is hashed
once and compared with *every* entry with ``hmac.compare_digest`` (no early
exit); a file caught mid-edit never locks everyone out (the previous set
stays until the change is complete and stable); nothing here logs or formats
a token (errors name the file and line number only).
"""

from __future__ import annotations

import errno
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

log = structlog.get_logger(__name__)

COLLECTOR = "*"
# How long a change that takes entries away must read the same before it
# applies (an editor truncating and rewriting the file took 1.5 s).
TOKENS_SETTLE_SECONDS = 5.0
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
    """A token's sha256: all that is kept of it (in memory, in the file)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def token_key(token: str) -> str:
    """The non-secret name of a token in the database and the logs: its
    sha256 in hex, as written in the tokens file (``sha256:HEX``)."""
    return digest(token).hex()


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


def read_tokens_text(path: str | os.PathLike) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TokenFileError("%s: not UTF-8 text" % path) from None
    except OSError as exc:
        raise TokenFileError("cannot read %s: %s" % (path, exc.strerror)) from None


def load_tokens(path: str | os.PathLike) -> tuple[TokenEntry, ...]:
    return parse_tokens(read_tokens_text(path), str(path))


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
    """The current token set of one file, reloaded when the file changes.

    ``TokenStore`` re-reads the file when its mtime or size changes (checked at
    most once per ``check_interval`` seconds, and at once for a token it does
    not know), so ``eslcdr token add`` takes effect without a restart, at the
    new token's first use.  A file caught in the middle of an edit must not
    lock everyone out (every login session ended, retention deleting what a
    collector has not pulled, as if no collector existed), so:

    - a file with a line that does not parse is refused whole: the previous set
      stays (reported once);
    - a complete file (every line ends with a newline) that only adds entries
      applies at once;
    - any other change -- an entry removed or moved to another account, an
      empty or missing file, a last line without its newline -- applies only
      once the file has read the same for ``settle`` seconds
      (TOKENS_SETTLE_SECONDS); until then the previous set stays;
    - ``reload()`` (SIGHUP, ``systemctl reload``) applies whatever parses, at
      once: the way to empty the file on purpose without waiting.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        check_interval: float = 1.0,
        settle: float = TOKENS_SETTLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._check_interval = check_interval
        self._settle = settle
        self._clock = clock
        self._stamp: tuple[int, int] | None = None
        self._next_check = 0.0
        self._entries: tuple[TokenEntry, ...] = ()
        self._digests: frozenset[bytes] = frozenset()
        self._reported_error: str | None = None
        # A change that takes entries away, waiting to read the same for
        # ``settle`` seconds: (file text or None when missing, its entries,
        # when it was first read).
        self._pending: tuple[str | None, tuple[TokenEntry, ...], float] | None = None
        # A broken file at start is a configuration error the operator must
        # see (raised); later breakage keeps the last good set (logged).
        self._refresh(strict=True)

    @property
    def count(self) -> int:
        return len(self._entries)

    @property
    def error(self) -> str | None:
        """Why the file as it is now was refused (the previous set applies),
        or None."""
        return self._reported_error

    def collector_keys(self) -> frozenset[str]:
        """sha256 (hex) of every ``*`` token of the set in force (the file
        is checked first, as by a lookup)."""
        self._check()
        return frozenset(entry.digest.hex() for entry in self._entries if entry.account_id == COLLECTOR)

    def lookup(self, token: str | None) -> str | None:
        """Account id (or COLLECTOR) for a presented token; None if unknown."""
        if not token:
            return None
        self._check()
        account = match(self._entries, token)
        if account is None:
            # Perhaps one ``token add`` wrote since the last check (at most a
            # second ago): look at the file now, a stat() when it is unchanged.
            self._refresh(strict=False)
            account = match(self._entries, token)
        return account

    def _check(self) -> None:
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._check_interval
            self._refresh(strict=False)

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
        self._check()
        return match_digest(self._entries, token_digest)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _refresh(self, strict: bool, force: bool = False) -> None:
        stamp = self._file_stamp()
        pending = self._pending
        now = self._clock()
        if stamp == self._stamp and not strict and not force:
            if pending is None or now - pending[2] < self._settle:
                return
        text: str | None = None
        entries: tuple[TokenEntry, ...] = ()
        if stamp is not None:
            try:
                text = read_tokens_text(self.path)
                entries = parse_tokens(text, str(self.path))
            except TokenFileError as exc:
                if strict:
                    raise
                if self._reported_error != str(exc):
                    log.error("tokens_file_invalid_keeping_previous", error=str(exc))
                    self._reported_error = str(exc)
                self._pending = None
                return
        self._reported_error = None
        if strict or force or self._settle <= 0 or self._only_adds(text, entries):
            self._apply(entries, stamp)
        elif pending is not None and pending[0] == text:
            if now - pending[2] >= self._settle:
                self._apply(entries, stamp)  # it read the same for the whole settle time
        else:
            self._pending = (text, entries, now)
            kept = {(e.digest, e.account_id) for e in entries}
            log.warning(
                "tokens_file_change_waiting", path=str(self.path), missing=text is None, entries=len(entries),
                removed=sum((e.digest, e.account_id) not in kept for e in self._entries),
                last_line_complete=not text or text.endswith("\n"), settle_seconds=self._settle,
            )

    def _only_adds(self, text: str | None, entries: tuple[TokenEntry, ...]) -> bool:
        """A complete file that keeps every entry in force (``token add``)."""
        if text and not text.endswith("\n"):
            return False  # a last line still being written
        have = {(e.digest, e.account_id) for e in entries}
        return all((e.digest, e.account_id) in have for e in self._entries)

    def _apply(self, entries: tuple[TokenEntry, ...], stamp: tuple[int, int] | None) -> None:
        self._pending = None
        self._entries, self._stamp = entries, stamp
        self._digests = frozenset(entry.digest for entry in entries)
        if stamp is None:
            log.warning("tokens_file_missing", path=str(self.path))
        else:
            log.info("tokens_loaded", path=str(self.path), count=len(entries))


def add_token(path: str | os.PathLike, account_id: str) -> str:
    """Create a token for ``account_id``, append its sha256 to the file, return it.

    The file is created with mode 0600; an existing file loses any access
    for others (even hashed entries say which accounts exist) but keeps its
    group read bit: ``make install`` makes it 0640 root:eslcdr so the
    service can read it while root adds tokens.  Only the hash is stored;
    the caller shows the returned token once.  A file that does not parse is
    left as it is (TokenFileError naming the line): the daemon would refuse it
    whole, so a token added to it would never apply.
    """
    if not valid_account_id(account_id):
        raise TokenFileError("invalid account id %r: no spaces or '#', 1-256 characters" % account_id)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    line = "%s%s %s\n" % (_HASH_PREFIX, token_key(token), account_id)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        existing = os.pread(fd, size, 0)
        try:
            parse_tokens(existing.decode("utf-8"), str(path))
        except UnicodeDecodeError:
            raise TokenFileError("%s: not UTF-8 text" % path) from None
        os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) & 0o640 | 0o600)
        # Keep one entry per line even if the file lost its final newline.
        if size and existing[-1:] != b"\n":
            line = "\n" + line
        data = line.encode("utf-8")
        try:
            written = 0
            while written < len(data):  # a short write (the disk filling): the rest, or its error
                step = os.write(fd, data[written:])
                if not step:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                written += step
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)  # no torn line: the file as it was
            raise
    finally:
        os.close(fd)
    return token
