"""Leg tracker: decoded events in, finished legs out.  Pure: no I/O, no clock.

Every channel (``Unique-ID``) is a leg.  The tracker keeps, per live leg,
only the few facts that CHANNEL_HANGUP_COMPLETE may lack -- DTMF digits, the
spandsp fax result, the CHANNEL_BRIDGE partner, when it was last touched --
never whole events, so 10,000 live legs cost a few MB.  HANGUP_COMPLETE
carries every channel variable; it completes the leg and yields a
``FinishedLeg``.

Tolerance: a HANGUP_COMPLETE for a leg never seen still yields a complete
leg; a second HANGUP_COMPLETE (or any late event) for a finished leg is
ignored; legs not heard of for ``leg_ttl`` are expired by ``expire()``.

Interactions: every leg of one call shares one interaction id.  Legs are
linked through the headers FreeSWITCH uses to point at a partner (bridge,
originate, loopback pair, SIP call placed to itself, transfers).  The first
leg of a group to be seen fixes the id -- the configured interaction variable
when a leg carries one, otherwise one derived from that leg -- and every
linked leg, also one not seen yet, inherits it.  ``remember_interactions``
preloads ids written before a restart, so late legs keep the same id.
"""

from __future__ import annotations

from dataclasses import dataclass

from .events import Event

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
_NO_NEW_LINKS = frozenset({"CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "DTMF", "CUSTOM"})


@dataclass(frozen=True, slots=True)
class FinishedLeg:
    """A leg whose CHANNEL_HANGUP_COMPLETE arrived, with what it lacks."""

    hangup: Event
    digits: str  # DTMF digits received on the leg, in order
    fax: tuple[tuple[str, str], ...]  # fax-* headers of the spandsp result event
    bridge_partner: str  # Unique-ID of the CHANNEL_BRIDGE partner, or ""
    interaction_id: str
    links: tuple[str, ...]  # Unique-IDs (and "sip:<Call-ID>") it is linked to
    finished_us: int = 0  # tracker clock when the hangup arrived


@dataclass(frozen=True, slots=True)
class LostLeg:
    """A leg FreeSWITCH no longer has, whose hangup we never received."""

    call_id: str
    created_us: int
    interaction_id: str


class _Leg:
    __slots__ = ("digits", "fax", "partner", "touched_us", "created_us")

    def __init__(self, now_us: int, created_us: int) -> None:
        self.digits: list[str] = []
        self.fax: tuple[tuple[str, str], ...] = ()
        self.partner = ""
        self.touched_us = now_us
        self.created_us = created_us


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


def linked_legs(event: Event) -> list[str]:
    """Unique-IDs (and SIP call ids, as ``sip:<id>``) this event links to."""
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
    sip_call_id = get("variable_sip_call_id")
    if sip_call_id:
        # Both ends of a SIP call FreeSWITCH places to itself share it.
        found.append("sip:" + sip_call_id)
    if len(found) > 1:
        found = list(dict.fromkeys(found))
    return found


class LegTracker:
    """Follows legs of one FreeSWITCH node.  All times are Unix µs."""

    def __init__(
        self,
        interaction_id_vars: tuple[str, ...] = (),
        leg_ttl_us: int = 86_400_000_000,
        max_remembered: int = 50_000,
    ) -> None:
        self._interaction_headers = tuple("variable_" + name for name in interaction_id_vars)
        self._leg_ttl_us = leg_ttl_us
        self._max_remembered = max_remembered
        self._legs: dict[str, _Leg] = {}
        # call id (or "sip:<call-id>") -> interaction id; kept after a leg
        # ends so that its partners, ending later, find the id.
        self._interaction: dict[str, str] = {}
        self._finished: dict[str, int] = {}  # call id -> when it finished (µs)
        self._members: dict[str, list[str]] = {}  # interaction id -> its keys
        self._explicit: dict[str, None] = {}  # ids that came from a variable
        self._written: dict[str, None] = {}  # ids some CDR was built with
        # (old id, new id) pairs the writer must apply to rows already written
        self.merges: list[tuple[str, str]] = []
        self.merged = 0
        self._suspects: dict[str, int] = {}  # call id -> write-off deadline (µs)
        self.duplicates = 0
        self.expired = 0

    # -- queries -------------------------------------------------------
    def __len__(self) -> int:
        return len(self._legs)

    def live_call_ids(self) -> list[str]:
        return list(self._legs)

    def interaction_of(self, call_id: str) -> str | None:
        return self._interaction.get(call_id)

    def remember_interactions(self, pairs) -> None:
        """Preload (call id, interaction id) pairs, e.g. from the database."""
        for call_id, interaction_id in pairs:
            if call_id not in self._interaction:
                self._interaction[call_id] = interaction_id
                self._members.setdefault(interaction_id, []).append(call_id)
                self._written[interaction_id] = None

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
            interaction_id = self._link(call_id, event, created)
        else:
            leg.touched_us = now_us
            if name in _NO_NEW_LINKS:
                # Progress, DTMF and fax events repeat the links the leg
                # already showed; skipping them keeps the hot path short.
                interaction_id = ""
            else:
                interaction_id = self._link(call_id, event, leg.created_us)

        if name == "CHANNEL_HANGUP_COMPLETE":
            del self._legs[call_id]
            self._suspects.pop(call_id, None)
            self._finished[call_id] = now_us
            self._written[interaction_id] = None
            return FinishedLeg(
                hangup=event,
                digits="".join(leg.digits),
                fax=leg.fax,
                bridge_partner=leg.partner,
                interaction_id=interaction_id,
                links=tuple(linked_legs(event)),
                finished_us=now_us,
            )
        if name == "DTMF":
            digit = event.get("DTMF-Digit")
            if digit:
                leg.digits.append(digit)
        elif name == "CHANNEL_BRIDGE":
            a_leg = event.get("Bridge-A-Unique-ID", call_id)
            b_leg = event.get("Bridge-B-Unique-ID") or event.get("Other-Leg-Unique-ID", "")
            leg.partner = b_leg if a_leg == call_id else a_leg
            other = self._legs.get(leg.partner)
            if other is not None:
                other.partner = call_id
        elif name == "CUSTOM" and event.get("Event-Subclass") in FAX_EVENTS:
            leg.fax = tuple((k, v) for k, v in event.items() if k.startswith("fax-"))
        return None

    def _link(self, call_id: str, event: Event, created_us: int) -> str:
        """Give this leg, and every leg it names, one interaction id.

        When the event joins two groups that already have different ids (the
        two ends of a SIP call learn their shared Call-ID only after both
        exist), the groups merge: an explicit id wins, then one already
        written, then the id derived from the earlier leg.  If a CDR was already written with the losing
        id, the merge is queued in ``merges`` for the writer to apply.
        """
        interaction = self._interaction
        keys = [call_id]
        keys.extend(linked_legs(event))
        explicit = None
        for header in self._interaction_headers:
            explicit = event.get(header)
            if explicit:
                self._explicit[explicit] = None
                break
        chosen = explicit
        for key in keys:
            found = interaction.get(key)
            if found is not None and found != chosen:
                chosen = found if chosen is None else self._winner(chosen, found)
        if chosen is None:
            chosen = derive_interaction_id(call_id, created_us)
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
        self._trim(finished)
        self._trim(self._interaction)
        self._trim(self._members)
        self._trim(self._explicit)
        self._trim(self._written)
        return stale

    def _trim(self, remembered: dict) -> None:
        # Memory stays bounded however many calls pass: dicts keep insertion
        # order, so the oldest entries go first.
        excess = len(remembered) - self._max_remembered
        if excess > 0:
            for key in list(remembered)[:excess]:
                del remembered[key]

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
            lost.append(LostLeg(call_id, leg.created_us, interaction_id))
        return lost
