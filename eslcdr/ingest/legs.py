"""Leg tracker: decoded events in, finished legs out.  Pure: no I/O, no clock.

Owns the live legs (``Unique-ID``): per leg only what CHANNEL_HANGUP_COMPLETE
may lack -- DTMF digits (the first MAX_DTMF_DIGITS), the spandsp fax result,
the CHANNEL_BRIDGE partner, when it was last touched -- and the few strings
the live channels list shows (``live_legs()``: frozen copies).  HANGUP_COMPLETE
carries every variable; it completes the leg and yields a ``FinishedLeg``.
Invariants: a hangup for a leg never seen still yields a complete leg; a
second hangup or any late event for a finished leg is ignored (CHANNEL_CREATE
under its id, a caller's Call-ID taken again, is a new leg); a late PROGRESS
never undoes an ANSWER; legs silent for ``leg_ttl`` are expired and only the
last ``max_remembered`` finished legs are kept, so memory stays flat.  After
a reconnect ``seed()`` / ``resync()`` / ``take_lost()`` reconcile with
``show channels``.  Which legs are one call, and its id and start, is the
business of the base class (ingest/interactions.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..esl.events import Event
from .interactions import (  # noqa: F401  (GREGORIAN_OFFSET, gregorian_seconds: re-exported)
    GREGORIAN_OFFSET,
    LINK_HEADERS,
    SIP_KEY_PREFIX,
    Interactions,
    first_of,
    gregorian_seconds,
    linked_legs,
)

FAX_EVENTS = ("spandsp::txfaxresult", "spandsp::rxfaxresult")
# digits_dialed keeps a leg's first this many DTMF digits (from its DTMF
# events or FreeSWITCH's digits_dialed variable): a caller flooding DTMF
# (72,000 events made a 72,000-character row) costs neither memory nor
# disk.  The number received is counted (FinishedLeg.dtmf_count) and the
# daemon logs it when digits were dropped.
MAX_DTMF_DIGITS = 256
# ``trim`` runs every this many finished legs (cheap below the caps): a burst
# piles up no more than this past them before the next ``expire``.
TRIM_EVERY = 1024
# Every header ``feed`` reads from an event other than HANGUP_COMPLETE and
# CUSTOM (which the decoder keeps whole: Event-Subclass, the fax results):
# the fast decoder keeps only these of CREATE / PROGRESS / ANSWER / BRIDGE /
# DTMF (each costs it ~1,500 instructions an event).  Read a new one, list it here.
TRACKED_HEADERS = (
    "Event-Name",
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
# Of a leg already followed (``knows``), ``feed`` reads only BRIEF_HEADERS
# from these events: they repeat the links and live view the leg showed, so
# the fast decoder keeps no more of them (esl/events.py EventDecoder).
BRIEF_EVENTS = frozenset({"CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "DTMF", "CHANNEL_HOLD", "CHANNEL_UNHOLD"})
BRIEF_HEADERS = ("Event-Name", "Unique-ID", "DTMF-Digit", "Caller-Channel-Answered-Time")
_NO_NEW_LINKS = BRIEF_EVENTS | {"CUSTOM"}


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
    sip_call_id: str = ""  # the SIP Call-ID an event of the leg showed, or ""
    seen: LiveLeg | None = None  # what its events showed: account, caller, state...


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
_ANSWERED_RANK = _STATE_RANK["ACTIVE"]  # a leg that reached it was answered
_STATE_AFTER = {
    "CHANNEL_PROGRESS": "RINGING",
    "CHANNEL_PROGRESS_MEDIA": "EARLY",
    "CHANNEL_ANSWER": "ACTIVE",
    "CHANNEL_BRIDGE": "ACTIVE",
    "CHANNEL_HOLD": "HELD",
    "CHANNEL_UNHOLD": "ACTIVE",
}
# (state, its rank) after each of those events: ``feed`` hands the rank to
# ``_Leg.advance`` (one lookup fewer; this runs per event).
_RANKED_AFTER = {name: (state, _STATE_RANK[state]) for name, state in _STATE_AFTER.items()}
# CHANNEL_DATA is what ``uuid_dump`` answers: a live leg's every variable.
_LIVE_REFRESH = frozenset(("CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE", "CHANNEL_DATA"))


class _Leg:
    __slots__ = (
        "digits", "dtmf_count", "fax", "partner", "touched_us", "created_us",
        # live view (strings shared with the decoded events, not copies)
        "direction", "state", "answered_us", "answered", "name", "destination",
        "cid_name", "cid_num", "callee_name", "callee_num", "presence_id",
        "account_id", "owner_id", "authorizing_id", "other_leg", "sip_call_id",
    )

    def __init__(self, now_us: int, created_us: int) -> None:
        self.digits = ""  # at most MAX_DTMF_DIGITS characters
        self.dtmf_count = 0
        self.fax: tuple[tuple[str, str], ...] = ()
        self.partner = ""
        self.touched_us = now_us
        self.created_us = created_us
        self.direction = self.name = self.destination = self.cid_name = self.cid_num = ""
        self.callee_name = self.callee_num = self.presence_id = self.account_id = self.owner_id = ""
        self.authorizing_id = self.other_leg = self.sip_call_id = ""
        self.state = "DOWN"
        self.answered = False
        self.answered_us = 0

    def advance(self, state: str, rank: int | None = None) -> None:
        """To ``state`` unless the leg is further along (``rank``: the
        state's, when the caller has it)."""
        if rank is None:
            rank = _STATE_RANK.get(state, -1)
        if rank >= _STATE_RANK.get(self.state, 0):
            self.state = state
        if rank >= _ANSWERED_RANK:
            self.answered = True


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


class LegTracker(Interactions):
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
        super().__init__(interaction_id_vars, account_id_vars, max_remembered, max_interactions)
        self._owner_headers = tuple("variable_" + name for name in owner_id_vars)
        self._authorizing_headers = tuple("variable_" + name for name in authorizing_id_vars)
        self._leg_ttl_us = leg_ttl_us
        self._legs: dict[str, _Leg] = {}
        self._finished: dict[str, tuple[int, int]] = {}  # call id -> (when it finished, its creation) µs
        self._suspects: dict[str, int] = {}  # call id -> write-off deadline (µs)
        self._until_trim = TRIM_EVERY
        self._known_before: set[str] | None = None  # live legs when the subscription began
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
        return [
            self._live(call_id, leg) for call_id, leg in self._legs.items()
            if (account_id is None or leg.account_id == account_id) and (owner_id is None or leg.owner_id == owner_id)
        ]

    def _live(self, call_id: str, leg: _Leg) -> LiveLeg:
        return LiveLeg(
            call_id=call_id, interaction_id=self._interaction.get(call_id, ""), direction=leg.direction,
            state=leg.state, answered=leg.answered, created_us=leg.created_us, answered_us=leg.answered_us,
            channel_name=leg.name, destination=leg.destination, caller_id_name=leg.cid_name,
            caller_id_number=leg.cid_num, callee_id_name=leg.callee_name, callee_id_number=leg.callee_num,
            presence_id=leg.presence_id, account_id=leg.account_id, owner_id=leg.owner_id,
            authorizing_id=leg.authorizing_id, other_leg=leg.partner or leg.other_leg,
        )

    @property
    def suspected(self) -> int:
        """Legs marked by ``resync`` still waiting to be written off."""
        return len(self._suspects)

    def knows(self, call_id: str) -> bool:
        """The leg is live here, or finished (and remembered): its CDR is
        written or on its way, or will come from its own hangup."""
        return call_id in self._legs or call_id in self._finished

    # -- the event path ------------------------------------------------
    def feed(self, event: Event, now_us: int) -> FinishedLeg | None:
        """Take one event; return the finished leg when it completes one."""
        get = event.get
        call_id = get("Unique-ID")
        if not call_id:
            return None
        name = get("Event-Name", "")
        finished = self._finished.get(call_id)
        if finished is not None:  # a CREATE of another creation: a new channel took its id (a caller's Call-ID again)
            if name != "CHANNEL_CREATE" or parse_int(get("Caller-Channel-Created-Time")) in (0, finished[1]):
                self.duplicates += name == "CHANNEL_HANGUP_COMPLETE"
                return None
            del self._finished[call_id]  # its interaction key is forgotten below: it is written
        legs = self._legs
        leg = legs.get(call_id)
        if leg is None:
            if name == "CHANNEL_CREATE":
                self._forget_written(call_id)
            created = parse_int(get("Caller-Channel-Created-Time")) or now_us
            leg = _Leg(now_us, created)
            legs[call_id] = leg
            relink = True
            observe = name != "CHANNEL_HANGUP_COMPLETE"
        else:
            leg.touched_us = now_us
            created = leg.created_us
            # Progress, DTMF and fax events repeat the links the leg
            # already showed; skipping them keeps the hot path short.
            relink = name not in _NO_NEW_LINKS
            observe = name in _LIVE_REFRESH
        if relink:
            links = linked_legs(event, self._account_headers)
            if links and links[-1].startswith(SIP_KEY_PREFIX):
                self._claim_sip_key(links[-1], created)
            interaction_id = self._link(call_id, links, event, created)
        else:
            interaction_id = ""
            links = ()
        if observe:
            self._observe(leg, event, now_us)
        after = _RANKED_AFTER.get(name)
        if after is not None:
            state, rank = after
            leg.advance(state, rank)
            if state == "ACTIVE" and not leg.answered_us:
                leg.answered_us = parse_int(get("Caller-Channel-Answered-Time")) or now_us

        if name == "CHANNEL_HANGUP_COMPLETE":
            del legs[call_id]
            self._suspects.pop(call_id, None)
            self._note_done(call_id, now_us, created)
            started = self._written_start(interaction_id)
            return FinishedLeg(
                hangup=event,
                digits=leg.digits,
                fax=leg.fax,
                bridge_partner=leg.partner,
                interaction_id=interaction_id,
                links=tuple(links),
                finished_us=now_us,
                interaction_created_us=started,
                dtmf_count=leg.dtmf_count,
            )
        if name == "DTMF":
            digit = get("DTMF-Digit")
            if digit:
                leg.dtmf_count += 1
                if len(leg.digits) < MAX_DTMF_DIGITS:
                    # Characters are capped, not events: a DTMF-Digit is one
                    # character from FreeSWITCH, but nothing else bounds it.
                    leg.digits = (leg.digits + digit)[:MAX_DTMF_DIGITS]
        elif name == "CHANNEL_BRIDGE":
            a_leg = get("Bridge-A-Unique-ID", call_id)
            b_leg = get("Bridge-B-Unique-ID") or get("Other-Leg-Unique-ID", "")
            leg.partner = b_leg if a_leg == call_id else a_leg
            other = legs.get(leg.partner)
            if other is not None:
                other.partner = call_id
                other.advance("ACTIVE")
        elif name == "CUSTOM" and get("Event-Subclass") in FAX_EVENTS:
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
        leg.sip_call_id = get("variable_sip_call_id") or leg.sip_call_id  # for a lost leg's record
        # The first non-empty of the configured variables, once found kept.
        if not leg.account_id:
            leg.account_id = first_of(get, self._account_headers)
        if not leg.owner_id:
            leg.owner_id = first_of(get, self._owner_headers)
        if not leg.authorizing_id:
            leg.authorizing_id = first_of(get, self._authorizing_headers)
        state = get("Channel-Call-State")
        if state:
            # An event's call state is the one before it (ANSWER says EARLY):
            # only ever a floor.
            leg.advance(state)
        if get("Answer-State") == "answered":
            leg.advance("ACTIVE")
            if not leg.answered_us:
                leg.answered_us = parse_int(get("Caller-Channel-Answered-Time")) or now_us

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
        for call_id in [c for c, (when, _) in finished.items() if when < cutoff]:
            del finished[call_id]
        self.trim()
        return stale

    def trim(self) -> None:
        """Forget the oldest finished calls past the caps (cheap below them)."""
        self._until_trim = TRIM_EVERY
        self._trim(self._finished)
        self._trim_interactions(self._legs)

    def _note_done(self, call_id: str, now_us: int, created_us: int) -> None:
        """A leg finished (hangup, CDR file or write-off): a later hangup is a duplicate."""
        self._finished[call_id] = (now_us, created_us)
        self._until_trim -= 1
        if not self._until_trim:
            self.trim()

    def resync(self, alive: set[str], now_us: int, grace_us: int = 10_000_000) -> int:
        """After a reconnect: mark legs FreeSWITCH no longer lists.

        They are not written off at once: FreeSWITCH answers ``show channels``
        while events raised before it may still wait in the socket's queue,
        so a leg missing from the list may have its HANGUP_COMPLETE on the
        way.  ``take_lost`` writes off those still silent after ``grace_us``.
        Only legs known before the subscription (``subscribing``) are judged:
        one first heard on this connection is live here (FreeSWITCH's core db,
        which ``show channels`` reads, may list a new channel after its
        events).  Returns how many legs were marked.
        """
        deadline = now_us + grace_us
        before, self._known_before = self._known_before, None
        marked = 0
        for call_id in self._legs:
            if call_id not in alive and (before is None or call_id in before):
                self._suspects[call_id] = deadline
                marked += 1
        return marked

    def subscribing(self) -> None:
        """A connection is about to subscribe: the legs known now are the ones
        the next ``resync`` judges."""
        self._known_before = set(self._legs)

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

    def note_finished(self, call_id: str, now_us: int, created_us: int = 0) -> None:
        """A leg's CDR was written from elsewhere (its json_cdr file): any
        later hangup for it is a duplicate."""
        self._legs.pop(call_id, None)
        self._suspects.pop(call_id, None)
        self._note_done(call_id, now_us, created_us)

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
            self._note_done(call_id, now_us, leg.created_us)
            interaction_id = self.interaction_of(call_id) or ""
            started = self._written_start(interaction_id)
            lost.append(LostLeg(call_id, leg.created_us, interaction_id, started or leg.created_us, leg.sip_call_id,
                                self._live(call_id, leg)))
        return lost
