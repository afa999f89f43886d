"""Leg tracker: decoded events in, finished legs out.  Pure: no I/O, no clock.

Every channel (``Unique-ID``) is a leg.  The tracker keeps, per live leg,
only the few facts that CHANNEL_HANGUP_COMPLETE may lack -- DTMF digits, the
spandsp fax result, the CHANNEL_BRIDGE partner, when it was last touched --
never whole events, so 10,000 live legs cost a few MB.  HANGUP_COMPLETE
carries every channel variable; it completes the leg and yields a
``FinishedLeg``.

Tolerance: a HANGUP_COMPLETE for a leg never seen still yields a complete
leg; a second HANGUP_COMPLETE (or any late event) for a finished leg is
ignored; legs not heard of for ``leg_ttl`` are expired by ``expire()``, which
also bounds what is kept of finished calls: the last ``max_remembered``
finished legs, the last ``max_interactions`` interactions (never one with a
live leg), so memory stays flat however many calls pass.

Interactions: every leg of one call shares one interaction id.  Legs are
linked through the headers FreeSWITCH uses to point at a partner (bridge,
originate, loopback pair, SIP call placed to itself, transfers).  The first
leg of a group to be seen fixes the id -- the configured interaction variable
when a leg carries one, otherwise one derived from that leg -- and every
linked leg, also one not seen yet, inherits it.  ``remember_interactions``
preloads ids written before a restart, so late legs keep the same id.

Each interaction also keeps the earliest creation time of the legs seen in
it (``interaction_created_us``: set when a leg is first seen, the minimum
with what the group had; a merge gives the winner the minimum of both).
Every finished leg carries it, so the rows of one call share a start that
does not move when the earliest leg (usually the A-leg, hanging up last) is
written after its partners: the interaction list pages on it.

Live view: each live leg also keeps the handful of strings an operator's
"channels" list shows (direction, call state, caller/callee, destination,
account/owner, partner), refreshed by CREATE / PROGRESS / ANSWER / BRIDGE.
``live_legs()`` copies them out as frozen ``LiveLeg`` values (a snapshot: the
API never holds the tracker while it writes a response).  After a reconnect
``seed()`` takes the rows of ``show channels as json``: legs created while
the socket was down are added, known ones catch up on their call state.
"""

from __future__ import annotations

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
FAX_EVENTS = ("spandsp::txfaxresult", "spandsp::rxfaxresult")
# digits_dialed keeps a leg's first this many DTMF digits (from its DTMF
# events or FreeSWITCH's digits_dialed variable): a caller flooding DTMF
# (72,000 events made a 72,000-character row) costs neither memory nor
# disk.  The number received is counted (FinishedLeg.dtmf_count) and the
# daemon logs it when digits were dropped.
MAX_DTMF_DIGITS = 256
# A SIP Call-ID links legs (``sip:<account> <Call-ID>``) only within one
# account and only for legs created this close together: the two ends of a
# call FreeSWITCH places to itself are created milliseconds apart, and the
# Call-ID is chosen by whoever sends the INVITE, so two accounts' callers
# (or one UA reusing its Call-IDs) must not join each other's calls.
SIP_KEY_PREFIX = "sip:"
SIP_LINK_WINDOW_US = 30_000_000
# Every header ``feed`` reads from an event other than HANGUP_COMPLETE and
# the fax results (which it takes whole): the fast decoder keeps only these
# of CREATE / PROGRESS / ANSWER / BRIDGE / DTMF.  Read a new one, list it here.
TRACKED_HEADERS = (
    "Event-Name",
    "Event-Subclass",
    "Unique-ID",
    "Caller-Channel-Created-Time",
    *LINK_HEADERS,
    "variable_originated_legs",
    "variable_sip_call_id",
    "DTMF-Digit",
    # the live view (_observe)
    "Caller-Channel-Answered-Time",
    "Call-Direction",
    "Channel-Name",
    "Caller-Destination-Number",
    "Caller-Caller-ID-Name",
    "Caller-Caller-ID-Number",
    "Caller-Callee-ID-Name",
    "Caller-Callee-ID-Number",
    "Channel-Presence-ID",
    "Channel-Call-State",
    "Answer-State",
)
_NO_NEW_LINKS = frozenset({"CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "DTMF", "CUSTOM",
                           "CHANNEL_HOLD", "CHANNEL_UNHOLD"})


@dataclass(frozen=True, slots=True)
class FinishedLeg:
    """A leg whose CHANNEL_HANGUP_COMPLETE arrived, with what it lacks."""

    hangup: Event
    digits: str  # DTMF digits received on the leg, in order (the first MAX_DTMF_DIGITS)
    fax: tuple[tuple[str, str], ...]  # fax-* headers of the spandsp result event
    bridge_partner: str  # Unique-ID of the CHANNEL_BRIDGE partner, or ""
    interaction_id: str
    links: tuple[str, ...]  # Unique-IDs (and "sip:<account> <Call-ID>") it is linked to
    finished_us: int = 0  # tracker clock when the hangup arrived
    # creation (µs) of the interaction's earliest leg seen so far; 0 unknown
    interaction_created_us: int = 0
    dtmf_count: int = 0  # DTMF events received (more than len(digits) when capped)


@dataclass(frozen=True, slots=True)
class LostLeg:
    """A leg FreeSWITCH no longer has, whose hangup we never received."""

    call_id: str
    created_us: int
    interaction_id: str
    interaction_created_us: int = 0  # as FinishedLeg's


@dataclass(frozen=True, slots=True)
class LiveLeg:
    """What the live channels list shows of one leg (a copy)."""

    call_id: str
    interaction_id: str
    direction: str
    state: str  # DOWN, RINGING, EARLY (early media), ACTIVE (answered), HELD
    answered: bool
    created_us: int
    answered_us: int  # 0 when not answered (or answered while we were away)
    channel_name: str
    destination: str
    caller_id_name: str
    caller_id_number: str
    callee_id_name: str
    callee_id_number: str
    presence_id: str
    account_id: str
    owner_id: str
    authorizing_id: str
    other_leg: str  # the bridged partner, else the leg it was originated from


# Call states in the order a leg passes them: a late PROGRESS must not undo
# an ANSWER (events can arrive out of order).
_STATE_RANK = {"DOWN": 0, "DIALING": 0, "RINGING": 1, "EARLY": 2, "ACTIVE": 3, "HELD": 3, "UNHELD": 3}
_STATE_AFTER = {
    "CHANNEL_PROGRESS": "RINGING",
    "CHANNEL_PROGRESS_MEDIA": "EARLY",
    "CHANNEL_ANSWER": "ACTIVE",
    "CHANNEL_BRIDGE": "ACTIVE",
    "CHANNEL_HOLD": "HELD",
    "CHANNEL_UNHOLD": "ACTIVE",
}
# CHANNEL_DATA is what ``uuid_dump`` answers: a live leg's every variable.
_LIVE_REFRESH = frozenset(("CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE", "CHANNEL_DATA"))


class _Leg:
    __slots__ = (
        "digits", "dtmf_count", "fax", "partner", "touched_us", "created_us",
        # live view (strings shared with the decoded events, not copies)
        "direction", "state", "answered_us", "answered", "name", "destination",
        "cid_name", "cid_num", "callee_name", "callee_num", "presence_id",
        "account_id", "owner_id", "authorizing_id", "other_leg",
    )

    def __init__(self, now_us: int, created_us: int) -> None:
        self.digits = ""  # at most MAX_DTMF_DIGITS characters
        self.dtmf_count = 0
        self.fax: tuple[tuple[str, str], ...] = ()
        self.partner = ""
        self.touched_us = now_us
        self.created_us = created_us
        self.direction = self.name = self.destination = ""
        self.cid_name = self.cid_num = self.callee_name = self.callee_num = ""
        self.presence_id = self.account_id = self.owner_id = self.authorizing_id = ""
        self.other_leg = ""
        self.state = "DOWN"
        self.answered = False
        self.answered_us = 0

    def advance(self, state: str) -> None:
        if _STATE_RANK.get(state, -1) >= _STATE_RANK.get(self.state, 0):
            self.state = state
        if _STATE_RANK.get(state, 0) >= 3:
            self.answered = True


def gregorian_seconds(unix_us: int) -> int:
    return unix_us // 1_000_000 + GREGORIAN_OFFSET


def derive_interaction_id(call_id: str, created_us: int) -> str:
    """Kazoo's shape: ``<gregorian seconds>-<8 hex>``, from the first leg."""
    hexpart = call_id.replace("-", "")[:8] or "00000000"
    return "%d-%s" % (gregorian_seconds(created_us), hexpart)


def parse_int(value: str | None) -> int:
    """An integer header value; 0 when absent or not a number."""
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        try:
            return int(float(value))
        except (ValueError, OverflowError):
            return 0


def sip_key(call_id: str, account_id: str) -> str:
    """The link key of a SIP Call-ID in one account.  A Call-ID holds no
    whitespace (RFC 3261 ``word``), nor does an account id the API serves:
    the space keeps every (account, Call-ID) pair apart."""
    return "%s%s %s" % (SIP_KEY_PREFIX, account_id, call_id)


def linked_legs(event: Event, account_headers: tuple[str, ...] = ()) -> list[str]:
    """Unique-IDs (and the SIP Call-ID, as ``sip_key`` in the leg's account:
    the first of ``account_headers``, else none) this event links to; the
    SIP key, if any, comes last."""
    get = event.get
    own = get("Unique-ID", "")
    found = [value for value in map(get, LINK_HEADERS) if value and value != own]
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
        account = next(filter(None, map(get, account_headers)), "")
        found.append(sip_key(sip_call_id, account))
    return found


class LegTracker:
    """Follows legs of one FreeSWITCH node.  All times are Unix µs."""

    def __init__(
        self,
        interaction_id_vars: tuple[str, ...] = (),
        leg_ttl_us: int = 86_400_000_000,
        max_remembered: int = 50_000,
        max_interactions: int = 20_000,
        account_id_vars: tuple[str, ...] = ("ecallmgr_Account-ID",),
        owner_id_vars: tuple[str, ...] = ("ecallmgr_Owner-ID",),
        authorizing_id_vars: tuple[str, ...] = ("ecallmgr_Authorizing-ID",),
    ) -> None:
        self._interaction_headers = tuple("variable_" + name for name in interaction_id_vars)
        self._account_headers = tuple("variable_" + name for name in account_id_vars)
        self._owner_headers = tuple("variable_" + name for name in owner_id_vars)
        self._authorizing_headers = tuple("variable_" + name for name in authorizing_id_vars)
        self._leg_ttl_us = leg_ttl_us
        # Finished legs remembered (a late duplicate hangup is recognised).
        self._max_remembered = max_remembered
        # Interactions remembered (id, keys, start: for legs that end or link
        # later); past this many the oldest with no live leg are forgotten.
        # 20,000 calls cost ~25 MB and cover more than the daemon preloads
        # from the database at start (bench/memory.py).
        self._max_interactions = max_interactions
        self._legs: dict[str, _Leg] = {}
        # call id (or sip_key) -> interaction id; kept after a leg
        # ends so that its partners, ending later, find the id.
        self._interaction: dict[str, str] = {}
        self._finished: dict[str, int] = {}  # call id -> when it finished (µs)
        self._members: dict[str, list[str]] = {}  # interaction id -> its keys
        # interaction id -> creation (µs) of its earliest leg seen
        self._started: dict[str, int] = {}
        self._explicit: dict[str, None] = {}  # ids that came from a variable
        # sip key -> creation (µs) of the leg that named it first (dropped
        # with its interaction): the SIP_LINK_WINDOW_US check
        self._sip_named: dict[str, int] = {}
        self._written: dict[str, None] = {}  # ids some CDR was built with
        # (old id, new id) pairs the writer must apply to rows already written
        self.merges: list[tuple[str, str]] = []
        self.merged = 0
        self._suspects: dict[str, int] = {}  # call id -> write-off deadline (µs)
        self.duplicates = 0
        self.expired = 0

    # -- queries -------------------------------------------------------
    @property
    def headers_read(self) -> tuple[str, ...]:
        """The headers ``feed`` reads from light events (see TRACKED_HEADERS)."""
        return (
            TRACKED_HEADERS
            + self._interaction_headers
            + self._account_headers
            + self._owner_headers
            + self._authorizing_headers
        )

    def __len__(self) -> int:
        return len(self._legs)

    def live_call_ids(self) -> list[str]:
        return list(self._legs)

    def live_legs(self, account_id: str | None = None, owner_id: str | None = None) -> list[LiveLeg]:
        """Copies of the live legs (of one account / owner when given)."""
        out = []
        interaction = self._interaction
        for call_id, leg in self._legs.items():
            if account_id is not None and leg.account_id != account_id:
                continue
            if owner_id is not None and leg.owner_id != owner_id:
                continue
            out.append(
                LiveLeg(
                    call_id=call_id,
                    interaction_id=interaction.get(call_id, ""),
                    direction=leg.direction,
                    state=leg.state,
                    answered=leg.answered,
                    created_us=leg.created_us,
                    answered_us=leg.answered_us,
                    channel_name=leg.name,
                    destination=leg.destination,
                    caller_id_name=leg.cid_name,
                    caller_id_number=leg.cid_num,
                    callee_id_name=leg.callee_name,
                    callee_id_number=leg.callee_num,
                    presence_id=leg.presence_id,
                    account_id=leg.account_id,
                    owner_id=leg.owner_id,
                    authorizing_id=leg.authorizing_id,
                    other_leg=leg.partner or leg.other_leg,
                )
            )
        return out

    def interaction_of(self, call_id: str) -> str | None:
        return self._interaction.get(call_id)

    def interaction_created_us(self, interaction_id: str) -> int:
        """Creation (µs) of the interaction's earliest leg seen; 0 unknown."""
        return self._started.get(interaction_id, 0)

    def links_of(self, event: Event) -> list[str]:
        """What ``event`` links its leg to (its SIP key in its account)."""
        return linked_legs(event, self._account_headers)

    def knows(self, call_id: str) -> bool:
        """The leg is live here, or finished (and remembered): its CDR is
        written or on its way, or will come from its own hangup."""
        return call_id in self._legs or call_id in self._finished

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

    # -- the event path ------------------------------------------------
    def feed(self, event: Event, now_us: int) -> FinishedLeg | None:
        """Take one event; return the finished leg when it completes one."""
        call_id = event.get("Unique-ID")
        if not call_id:
            return None
        if call_id in self._finished:
            if event.get("Event-Name") == "CHANNEL_HANGUP_COMPLETE":
                self.duplicates += 1
            return None
        name = event.get("Event-Name", "")
        leg = self._legs.get(call_id)
        if leg is None:
            created = parse_int(event.get("Caller-Channel-Created-Time")) or now_us
            leg = _Leg(now_us, created)
            self._legs[call_id] = leg
            links = self._links(event, created)
            interaction_id = self._link(call_id, links, event, created)
            if name != "CHANNEL_HANGUP_COMPLETE":
                self._observe(leg, event, now_us)
        else:
            leg.touched_us = now_us
            if name in _NO_NEW_LINKS:
                # Progress, DTMF and fax events repeat the links the leg
                # already showed; skipping them keeps the hot path short.
                interaction_id = ""
                links = ()
            else:
                links = self._links(event, leg.created_us)
                interaction_id = self._link(call_id, links, event, leg.created_us)
            if name in _LIVE_REFRESH:
                self._observe(leg, event, now_us)
        state = _STATE_AFTER.get(name)
        if state is not None:
            leg.advance(state)
            if state == "ACTIVE" and not leg.answered_us:
                leg.answered_us = parse_int(event.get("Caller-Channel-Answered-Time")) or now_us

        if name == "CHANNEL_HANGUP_COMPLETE":
            del self._legs[call_id]
            self._suspects.pop(call_id, None)
            self._finished[call_id] = now_us
            self._written[interaction_id] = None
            return FinishedLeg(
                hangup=event,
                digits=leg.digits,
                fax=leg.fax,
                bridge_partner=leg.partner,
                interaction_id=interaction_id,
                links=tuple(links),
                finished_us=now_us,
                interaction_created_us=self._started.get(interaction_id, 0),
                dtmf_count=leg.dtmf_count,
            )
        if name == "DTMF":
            digit = event.get("DTMF-Digit")
            if digit:
                leg.dtmf_count += 1
                if len(leg.digits) < MAX_DTMF_DIGITS:
                    # Characters are capped, not events: a DTMF-Digit is one
                    # character from FreeSWITCH, but nothing else bounds it.
                    leg.digits = (leg.digits + digit)[:MAX_DTMF_DIGITS]
        elif name == "CHANNEL_BRIDGE":
            a_leg = event.get("Bridge-A-Unique-ID", call_id)
            b_leg = event.get("Bridge-B-Unique-ID") or event.get("Other-Leg-Unique-ID", "")
            leg.partner = b_leg if a_leg == call_id else a_leg
            other = self._legs.get(leg.partner)
            if other is not None:
                other.partner = call_id
                other.advance("ACTIVE")
        elif name == "CUSTOM" and event.get("Event-Subclass") in FAX_EVENTS:
            leg.fax = tuple((k, v) for k, v in event.items() if k.startswith("fax-"))
        return None

    def _observe(self, leg: _Leg, event: Event, now_us: int) -> None:
        """Refresh the live view from a CREATE / ANSWER / BRIDGE event."""
        get = event.get
        leg.direction = get("Call-Direction") or leg.direction
        leg.name = get("Channel-Name") or leg.name
        leg.destination = get("Caller-Destination-Number") or leg.destination
        leg.cid_name = get("Caller-Caller-ID-Name") or leg.cid_name
        leg.cid_num = get("Caller-Caller-ID-Number") or leg.cid_num
        leg.callee_name = get("Caller-Callee-ID-Name") or leg.callee_name
        leg.callee_num = get("Caller-Callee-ID-Number") or leg.callee_num
        leg.presence_id = get("Channel-Presence-ID") or leg.presence_id
        leg.other_leg = get("Other-Leg-Unique-ID") or get("variable_originating_leg_uuid") or leg.other_leg
        for attr, headers in (
            ("account_id", self._account_headers),
            ("owner_id", self._owner_headers),
            ("authorizing_id", self._authorizing_headers),
        ):
            if not getattr(leg, attr):
                for header in headers:
                    value = get(header)
                    if value:
                        setattr(leg, attr, value)
                        break
        state = get("Channel-Call-State")
        if state:
            # An event's call state is the one before it (ANSWER says EARLY):
            # only ever a floor.
            leg.advance(state)
        if get("Answer-State") == "answered":
            leg.advance("ACTIVE")
            if not leg.answered_us:
                leg.answered_us = parse_int(get("Caller-Channel-Answered-Time")) or now_us

    def _links(self, event: Event, created_us: int) -> list[str]:
        links = linked_legs(event, self._account_headers)
        if links and links[-1].startswith(SIP_KEY_PREFIX):
            self._claim_sip_key(links[-1], created_us)
        return links

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
        owner = self._interaction.pop(key, None)
        if owner is not None:
            members = self._members.get(owner)
            if members is not None and key in members:
                members.remove(key)
        self._sip_named[key] = created_us

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
            explicit = event.get(header)
            if explicit:
                self._explicit[explicit] = None
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
        self._members.setdefault(winner, []).extend(moved)
        lost_start = self._started.pop(loser, None)
        if lost_start is not None:
            started = self._started.get(winner)
            if started is None or lost_start < started:
                self._started[winner] = lost_start
        if loser in self._written:
            self.merges.append((loser, winner))
        self.merged += 1

    # -- housekeeping --------------------------------------------------
    def expire(self, now_us: int) -> list[str]:
        """Forget legs silent for longer than the TTL; return their ids."""
        cutoff = now_us - self._leg_ttl_us
        stale = [call_id for call_id, leg in self._legs.items() if leg.touched_us < cutoff]
        for call_id in stale:
            del self._legs[call_id]
            self._suspects.pop(call_id, None)
        self.expired += len(stale)
        finished = self._finished
        for call_id in [c for c, when in finished.items() if when < cutoff]:
            del finished[call_id]
        self.trim()
        return stale

    def trim(self) -> None:
        """Forget the oldest finished calls past the caps (cheap when under
        them: the daemon calls it every second, so a burst of calls cannot
        pile up until the next ``expire``)."""
        self._trim(self._finished)
        self._forget_interactions()
        # Entries no remembered interaction owns: starts preloaded from the
        # database, an explicit id that lost a merge.
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

    def _forget_interactions(self) -> None:
        """Past ``max_interactions`` interactions, forget the oldest whole: the
        id, every key naming it, its start.  Trimming the maps one by one
        kept the keys of interactions already forgotten (and lost the id of
        a long call's legs while they were still live); an interaction with
        a live leg now stays, however old: its legs' hangups need the id."""
        members = self._members
        excess = len(members) - self._max_interactions
        if excess <= 0:
            return
        legs = self._legs
        done = []
        for interaction_id, keys in members.items():
            if not any(key in legs for key in keys):
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

    def resync(self, alive: set[str], now_us: int, grace_us: int = 10_000_000) -> int:
        """After a reconnect: mark legs FreeSWITCH no longer lists.

        They are not written off at once: FreeSWITCH answers ``show channels``
        while events raised before it may still wait in the socket's queue,
        so a leg missing from the list may have its HANGUP_COMPLETE on the
        way.  ``take_lost`` writes off those still silent after ``grace_us``.
        Returns how many legs were marked.
        """
        deadline = now_us + grace_us
        marked = 0
        for call_id in self._legs:
            if call_id not in alive:
                self._suspects[call_id] = deadline
                marked += 1
        return marked

    def seed(self, rows, now_us: int) -> list[str]:
        """Take ``show channels as json`` rows after a (re)connect.

        A leg created while no socket listened is added with what the row
        says (FreeSWITCH's core-db columns: uuid, direction, created_epoch,
        name, callstate, cid_*, callee_*, dest, presence_id -- no channel
        variables, so no account: ``uuid_dump`` fills that in); a leg already tracked only moves its call state on (it
        may have been answered while we were away).  Returns the ids of the
        legs added.
        """
        added = []
        for row in rows:
            call_id = row.get("uuid")
            if not call_id or call_id in self._finished:
                continue
            leg = self._legs.get(call_id)
            if leg is None:
                created = parse_int(row.get("created_epoch")) * 1_000_000 or now_us
                leg = _Leg(now_us, created)
                self._legs[call_id] = leg
                self._link(call_id, [], {}, created)
                leg.direction = row.get("direction") or ""
                leg.name = row.get("name") or ""
                leg.destination = row.get("dest") or ""
                leg.cid_name = row.get("cid_name") or ""
                leg.cid_num = row.get("cid_num") or ""
                leg.callee_name = row.get("callee_name") or ""
                leg.callee_num = row.get("callee_num") or ""
                leg.presence_id = row.get("presence_id") or ""
                added.append(call_id)
            else:
                leg.touched_us = now_us
            callstate = row.get("callstate")
            if callstate:
                leg.advance(callstate)
        return added

    def note_finished(self, call_id: str, now_us: int) -> None:
        """A leg's CDR was written from elsewhere (its json_cdr file): any
        later hangup for it is a duplicate."""
        self._legs.pop(call_id, None)
        self._suspects.pop(call_id, None)
        self._finished[call_id] = now_us

    def due_lost(self, now_us: int) -> list[str]:
        """Marked legs whose grace has passed: ``take_lost`` would write them
        off now, unless their hangup (or their CDR file) comes first."""
        return [
            call_id
            for call_id, deadline in self._suspects.items()
            if deadline <= now_us and call_id in self._legs
        ]

    def take_lost(self, now_us: int) -> list[LostLeg]:
        """Marked legs whose grace has passed without a hangup."""
        lost = []
        for call_id, deadline in list(self._suspects.items()):
            if deadline > now_us:
                continue
            del self._suspects[call_id]
            leg = self._legs.pop(call_id, None)
            if leg is None:  # it finished (or expired) meanwhile
                continue
            self._finished[call_id] = now_us
            interaction_id = self._interaction.get(call_id, "")
            self._written[interaction_id] = None
            lost.append(LostLeg(call_id, leg.created_us, interaction_id,
                                self._started.get(interaction_id, 0) or leg.created_us))
        return lost
