"""Interaction linking: which legs are one call, and the call's id.  Pure: no I/O.

Owns the keys (Unique-IDs, ``sip:<account> <Call-ID>``) -> interaction id map,
the members and start (earliest leg creation, µs) of each interaction, merges,
and the bounded memory of finished calls.  Invariants: every leg linked to
another, also one not seen yet, has the same id; the first id a group gets
sticks -- a configured variable (``interaction_id_vars``; a ``sip_h_`` one, the
caller's, only if it lists the call when it happened), else one derived
from its first leg -- and when two groups meet an explicit id beats a written
one beats the earlier derived one (rows already written are rewritten through
``merges``); a SIP Call-ID links only within one account and SIP_LINK_WINDOW_US;
preloaded ids (``remember_interactions``) keep their shape; past
``max_interactions`` the oldest interactions with no live leg are forgotten
whole, past MAX_KEYS an interaction's oldest keys of legs not live (a live call
a caller joins endless calls to).  ``LegTracker`` (ingest/legs.py) builds on it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Container
from dataclasses import dataclass

from ..esl.events import Event

GREGORIAN_OFFSET = 62167219200  # seconds from 0000-01-01 to 1970-01-01

# Headers/variables that name another leg of the same call.
LINK_HEADERS = (
    "Other-Leg-Unique-ID",
    "variable_originating_leg_uuid",
    "variable_bridge_uuid",
    "variable_signal_bond",
    "variable_other_loopback_leg_uuid",
    "variable_last_bridge_to",
    "Bridge-A-Unique-ID",
    "Bridge-B-Unique-ID",
)
# A SIP Call-ID links legs (``sip:<account> <Call-ID>``) only within one
# account and only for legs created this close together: the two ends of a
# call FreeSWITCH places to itself are created milliseconds apart, and the
# Call-ID is chosen by whoever sends the INVITE, so two accounts' callers
# (or one UA reusing its Call-IDs) must not join each other's calls.
SIP_KEY_PREFIX = "sip:"
SIP_LINK_WINDOW_US = 30_000_000


def gregorian_seconds(unix_us: int) -> int:
    return unix_us // 1_000_000 + GREGORIAN_OFFSET


# An explicit id from a variable FreeSWITCH filled from the INVITE's X-
# headers (``sip_h_*``) is the caller's choice: taken only if a listing still
# places the call when it happened (docs/configuration.md).  Kazoo's shape,
# ``<11 digits>-<hex>``, is listed at its time prefix (store/schema.py
# INTERACTION_START): within a day before the leg's creation (a call
# transferred here hours in) and HEADER_ID_SKEW_S after it (another node's
# clock).  Any other shape is listed at the leg's creation.
HEADER_ID_PREFIX = "variable_sip_h_"
MAX_HEADER_ID_LENGTH = 255
HEADER_ID_MAX_AGE_S = 86_400
HEADER_ID_SKEW_S = 300
_KAZOO_SHAPE = re.compile(r"[0-9]{11}-[0-9a-fA-F]")
MAX_REFUSED_IDS = 1024  # refusals a tracker holds until its owner takes them
# Keys one interaction keeps: past them the oldest of legs not live (finished,
# their CDRs built; SIP keys long past SIP_LINK_WINDOW_US) are forgotten when
# the tracker trims.  A call's own legs and keys are a few dozen.
MAX_KEYS = 1000


@dataclass(frozen=True, slots=True)
class RefusedId:
    """An interaction id a leg's INVITE carried and the tracker did not take."""

    call_id: str
    variable: str
    value: str  # its first 80 characters
    reason: str  # "length", "characters" or "time"


def header_id_refusal(value: str, created_us: int) -> str | None:
    """Why an id from an INVITE header cannot name a leg created at
    ``created_us``, or None when it can."""
    if len(value) > MAX_HEADER_ID_LENGTH:
        return "length"
    if not value.isprintable():
        return "characters"
    if _KAZOO_SHAPE.match(value) and created_us:
        created = gregorian_seconds(created_us)
        if not created - HEADER_ID_MAX_AGE_S <= int(value[:11]) <= created + HEADER_ID_SKEW_S:
            return "time"
    return None


# A derived id is Kazoo's shape, ``<gregorian seconds>-<hex>``, the hex a
# hash of the first leg's whole Unique-ID: time-ordered UUIDs (version 7) or
# client-chosen origination_uuids created in one second share their leading
# digits, so a prefix of the UUID (8 hex digits until 2026-12) merged
# unrelated calls.  64 bits: in a fleet taking n = 100,000 calls a second,
# two calls of one second share an id about n^2 / 2^65 = 2.7e-10 times a
# second, i.e. once in ~117 years (32 bits: about once a second).
# Ids written in the old shape stay as they are (``remember_interactions``).
DERIVED_ID_HEX_DIGITS = 16


def derive_interaction_id(call_id: str, created_us: int) -> str:
    """``<gregorian seconds of created_us>-<16 hex of blake2b(call_id)>``."""
    digest = hashlib.blake2b(call_id.encode("utf-8", "surrogatepass"), digest_size=DERIVED_ID_HEX_DIGITS // 2)
    return "%d-%s" % (gregorian_seconds(created_us), digest.hexdigest())


def sip_key(call_id: str, account_id: str) -> str:
    """The link key of a SIP Call-ID in one account.  A Call-ID holds no
    whitespace (RFC 3261 ``word``), nor does an account id the API serves:
    the space keeps every (account, Call-ID) pair apart."""
    return f"{SIP_KEY_PREFIX}{account_id} {call_id}"


def first_of(get: Callable[[str], str | None], headers: tuple[str, ...]) -> str:
    """The first non-empty value of ``headers`` (``get`` is the event's), else "".
    A loop of plain calls: in 3.11 cheaper than ``next(filter(None, map(...)))``."""
    for header in headers:
        value = get(header)
        if value:
            return value
    return ""


def linked_legs(event: Event, account_headers: tuple[str, ...] = ()) -> list[str]:
    """Unique-IDs (and the SIP Call-ID, as ``sip_key`` in the leg's account:
    the first of ``account_headers``, else none) this event links to; the
    SIP key, if any, comes last."""
    get = event.get
    own = get("Unique-ID", "")
    # A loop of plain calls: cheaper than filter/map here (3.11 specialises
    # the calls; this runs for most events).
    found = []
    for header in LINK_HEADERS:
        value = get(header)
        if value and value != own:
            found.append(value)
    originated = get("variable_originated_legs")
    if originated:
        # "uuid;name;number", pushed as ARRAY::a|:b when there are several.
        if originated.startswith("ARRAY::"):
            originated = originated[7:]
        for item in originated.split("|:"):
            uuid = item.split(";", 1)[0]
            if uuid and uuid != own:
                found.append(uuid)
    if len(found) > 1:
        found = list(dict.fromkeys(found))
    sip_call_id = get("variable_sip_call_id")
    if sip_call_id:
        # Both ends of a SIP call FreeSWITCH places to itself share it.
        found.append(sip_key(sip_call_id, first_of(get, account_headers)))
    return found


class Interactions:
    """The interactions of one node's legs.  All times are Unix µs."""

    def __init__(
        self,
        interaction_id_vars: tuple[str, ...] = (),
        account_id_vars: tuple[str, ...] = ("ecallmgr_Account-ID",),
        max_remembered: int = 50_000,
        max_interactions: int = 20_000,
    ) -> None:
        self._interaction_headers = tuple("variable_" + name for name in interaction_id_vars)
        self._caller_set = frozenset(h for h in self._interaction_headers if h.startswith(HEADER_ID_PREFIX))
        self._account_headers = tuple("variable_" + name for name in account_id_vars)
        # Entries remembered past their call (a late duplicate hangup is
        # recognised; ids and starts no interaction owns any more).
        self._max_remembered = max_remembered
        # Interactions remembered (id, keys, start: for legs that end or link
        # later); past this many the oldest with no live leg are forgotten.
        # 20,000 calls cost ~25 MB and cover more than the daemon preloads
        # from the database at start (bench/memory.py).
        self._max_interactions = max_interactions
        # call id (or sip_key) -> interaction id; kept after a leg
        # ends so that its partners, ending later, find the id.
        self._interaction: dict[str, str] = {}
        self._members: dict[str, list[str]] = {}  # interaction id -> its keys
        # interaction id -> creation (µs) of its earliest leg seen
        self._started: dict[str, int] = {}
        self._explicit: dict[str, None] = {}  # ids that came from a variable
        # sip key -> creation (µs) of the leg that named it first (dropped
        # with its interaction): the SIP_LINK_WINDOW_US check
        self._sip_named: dict[str, int] = {}
        self._written: dict[str, None] = {}  # ids some CDR was built with
        self._crowded: dict[str, None] = {}  # ids that got more than MAX_KEYS keys since the last trim
        # (old id, new id) pairs the writer must apply to rows already written
        self.merges: list[tuple[str, str]] = []
        self.merged = 0
        # Ids from an INVITE refused (one a leg, at most MAX_REFUSED_IDS
        # until the owner takes them), and the legs they were refused for.
        self.refused_ids: list[RefusedId] = []
        self._refused_legs: dict[str, None] = {}

    def _refused(self, call_id: str, header: str, value: str, created_us: int) -> bool:
        reason = header_id_refusal(value, created_us)
        if reason is None:
            return False
        if call_id not in self._refused_legs:
            if len(self._refused_legs) >= MAX_REFUSED_IDS:
                self._refused_legs.clear()
            self._refused_legs[call_id] = None
            if len(self.refused_ids) < MAX_REFUSED_IDS:
                self.refused_ids.append(RefusedId(call_id, header[len("variable_"):], value[:80], reason))
        return True

    # -- queries -------------------------------------------------------
    def interaction_of(self, call_id: str) -> str | None:
        return self._interaction.get(call_id)

    def interaction_created_us(self, interaction_id: str) -> int:
        """Creation (µs) of the interaction's earliest leg seen; 0 unknown."""
        return self._started.get(interaction_id, 0)

    def links_of(self, event: Event) -> list[str]:
        """What ``event`` links its leg to (its SIP key in its account)."""
        return linked_legs(event, self._account_headers)

    def remember_interactions(self, pairs) -> None:
        """Preload (call id, interaction id) pairs, e.g. from the database."""
        for call_id, interaction_id in pairs:
            if call_id not in self._interaction:
                self._interaction[call_id] = interaction_id
                self._members.setdefault(interaction_id, []).append(call_id)
                self._written[interaction_id] = None

    def remember_interaction_starts(self, pairs) -> None:
        """Preload (interaction id, earliest leg creation µs) pairs, e.g. from
        the database, so legs ending after a restart keep their call's start."""
        started = self._started
        for interaction_id, created_us in pairs:
            if created_us and (interaction_id not in started or created_us < started[interaction_id]):
                started[interaction_id] = created_us

    # -- linking -------------------------------------------------------
    def _written_start(self, interaction_id: str) -> int:
        """A CDR is built with ``interaction_id``: a later merge rewrites its
        rows.  Returns the interaction's start (0 unknown)."""
        self._written[interaction_id] = None
        return self._started.get(interaction_id, 0)

    def _claim_sip_key(self, key: str, created_us: int) -> None:
        """Let a leg created at ``created_us`` link through ``key`` only if
        the leg that named it first was created within SIP_LINK_WINDOW_US;
        otherwise the key is this leg's from now on (another call reusing the
        Call-ID joins nothing).  A key preloaded from the database
        (``remember_interactions``) has no naming time: its call's start
        stands in, and a call whose start is not known joins nothing."""
        named = self._sip_named.get(key)
        if named is None:
            owner = self._interaction.get(key)
            if owner is None:
                self._sip_named[key] = created_us
                return
            named = self._started.get(owner)
        if named is not None and abs(created_us - named) <= SIP_LINK_WINDOW_US:
            return
        self._forget_key(key)
        self._sip_named[key] = created_us

    def _forget_key(self, key: str) -> None:
        """``key`` names no interaction any more (its leg is gone, its id reused)."""
        owner = self._interaction.pop(key, None)
        if owner is not None:
            members = self._members.get(owner)
            if members is not None and key in members:
                members.remove(key)

    def _forget_written(self, key: str) -> None:
        """A new channel ``key`` that names a call already written (a finished
        leg's id, also one from before a restart, taken again by a caller): it
        names nothing."""
        if self._interaction.get(key) in self._written:
            self._forget_key(key)

    def _link(self, call_id: str, links: list[str], event: Event, created_us: int) -> str:
        """Give this leg, and every leg it names, one interaction id.

        When the event joins two groups that already have different ids (the
        two ends of a SIP call learn their shared Call-ID only after both
        exist), the groups merge: an explicit id wins, then one already
        written, then the id derived from the earlier leg.  If a CDR was already written with the losing
        id, the merge is queued in ``merges`` for the writer to apply.
        """
        interaction = self._interaction
        keys = [call_id]
        keys.extend(links)
        explicit = None
        for header in self._interaction_headers:
            value = event.get(header)
            if value:  # set but empty: as if not set (the next one, else derived)
                if header in self._caller_set and self._refused(call_id, header, value, created_us):
                    continue  # as if not set, too
                explicit = value
                self._explicit[value] = None
                break
        chosen = explicit
        # Most events name legs already in the leg's group: then there is
        # nothing to add or merge below.
        settled = True
        for key in keys:
            found = interaction.get(key)
            if found is None:
                settled = False
            elif found != chosen:
                if chosen is None:
                    chosen = found
                else:
                    chosen = self._winner(chosen, found)
                    settled = False
        if chosen is None:
            chosen = derive_interaction_id(call_id, created_us)
        started = self._started.get(chosen)
        if created_us and (started is None or created_us < started):
            self._started[chosen] = created_us
        if settled:
            return chosen
        members = self._members.get(chosen)
        if members is None:
            members = self._members[chosen] = []
        for key in keys:
            found = interaction.get(key)
            if found == chosen:
                continue
            if found is not None:
                self._merge(found, chosen)
            else:
                interaction[key] = chosen
                members.append(key)
        if len(members) > MAX_KEYS:
            self._crowded[chosen] = None
        return chosen

    def _winner(self, first_id: str, second_id: str) -> str:
        for preferred in (self._explicit, self._written):
            # An explicit id beats a derived one; an id rows already carry
            # beats one that would force rewriting them.
            first_in = first_id in preferred
            if first_in != (second_id in preferred):
                return first_id if first_in else second_id
        # Derived ids start with the first leg's Gregorian seconds: the
        # earlier call start wins, so the root leg names the interaction.
        return min(first_id, second_id, key=lambda i: (len(i), i))

    def _merge(self, loser: str, winner: str) -> None:
        interaction = self._interaction
        moved = self._members.pop(loser, [])
        for key in moved:
            interaction[key] = winner
        members = self._members.setdefault(winner, [])
        members.extend(moved)
        if len(members) > MAX_KEYS:
            self._crowded[winner] = None
        lost_start = self._started.pop(loser, None)
        if lost_start is not None:
            started = self._started.get(winner)
            if started is None or lost_start < started:
                self._started[winner] = lost_start
        if loser in self._written:
            self.merges.append((loser, winner))
        self.merged += 1

    # -- housekeeping --------------------------------------------------
    def _trim_interactions(self, live: Container[str]) -> None:
        """Forget the oldest interactions past the caps (none with a key in
        ``live``), then ids and starts no remembered interaction owns:
        starts preloaded from the database, an explicit id that lost a merge."""
        self._forget_interactions(live)
        self._thin_crowded(live)
        for remembered in (self._started, self._explicit, self._written):
            self._trim(remembered, keep=self._members)

    def _trim(self, remembered: dict, keep: dict | None = None) -> None:
        # Memory stays bounded however many calls pass: dicts keep insertion
        # order, so the oldest entries go first (never one ``keep`` has).
        excess = len(remembered) - self._max_remembered
        if excess > 0:
            oldest = list(remembered) if keep is None else [k for k in remembered if k not in keep]
            for key in oldest[:excess]:
                del remembered[key]

    def _thin_crowded(self, live: Container[str]) -> None:
        """Forget the oldest keys past MAX_KEYS of each interaction that got
        more, but no live leg's: those keep their call's id while it lasts."""
        interaction, sip_named = self._interaction, self._sip_named
        for interaction_id in self._crowded:
            keys = self._members.get(interaction_id)
            excess = len(keys) - MAX_KEYS if keys is not None else 0
            if excess <= 0:
                continue
            gone: set[str] = set()
            for key in keys:  # oldest first
                if key not in live:
                    gone.add(key)
                    if len(gone) == excess:
                        break
            keys[:] = [key for key in keys if key not in gone]
            for key in gone:
                if interaction.get(key) == interaction_id:
                    del interaction[key]
                sip_named.pop(key, None)
        self._crowded.clear()

    def _forget_interactions(self, live: Container[str]) -> None:
        """Past ``max_interactions`` interactions, forget the oldest whole: the
        id, every key naming it, its start.  Trimming the maps one by one
        kept the keys of interactions already forgotten (and lost the id of
        a long call's legs while they were still live); an interaction with
        a live leg now stays, however old: its legs' hangups need the id."""
        members = self._members
        excess = len(members) - self._max_interactions
        if excess <= 0:
            return
        done = []
        for interaction_id, keys in members.items():
            if not any(key in live for key in keys):
                done.append(interaction_id)
                if len(done) == excess:
                    break
        interaction = self._interaction
        sip_named = self._sip_named
        for interaction_id in done:
            for key in members.pop(interaction_id):
                if interaction.get(key) == interaction_id:
                    del interaction[key]
                    sip_named.pop(key, None)
            self._started.pop(interaction_id, None)
            self._explicit.pop(interaction_id, None)
            self._written.pop(interaction_id, None)
