"""Generated calls: clones of real calls, deterministic for a seed.

The call templates (package data in ``call_templates/``, each one whole call
cut unchanged out of a real capture) are compiled by :func:`call_template`
with extra finders for the caller, the call durations and the Kazoo
variables.  :class:`GeneratedSource` then draws, from one seeded RNG, per call
a weighted scenario, new UUIDs, a new caller (some names carry commas, quotes
and non-ASCII), a later start (a Poisson stream) and a longer or shorter talk
time; and, as a Kazoo platform's FreeSWITCH has them on every leg, the
``ecallmgr_*`` account, owner, authorizing and (on some calls) interaction
ids from a second RNG, and the answered SIP legs' RTP quality (codec,
packet counts, jitter, MOS, remote media address; some lossy, some with no
RTP at all) from a third (quality.py).  The calls' events are merged by time through a heap,
each call keeping its captured order, so many calls overlap as on a real
switch.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import random
import time
from dataclasses import dataclass
from importlib import resources
from typing import Iterable, Iterator

from ..ingest.legs import gregorian_seconds
from .capture import Pairs
from .quality import draw_quality, rtp_finder, rtp_legs
from .slots import (
    KAZOO_VARS,
    SLOT_ACCOUNT,
    SLOT_AUTHORIZING,
    SLOT_INTERACTION,
    SLOT_OWNER,
    caller_finder,
    duration_finder,
    event_ts,
    find_ids,
    find_kazoo,
    find_times,
)
from .templates import Context, Emission, Template, compile_template, derive_uuid

@dataclass(frozen=True, slots=True)
class CallTemplate:
    """A whole call cut out of a capture, to clone into generated calls."""

    name: str
    weight: float
    events: tuple[Template, ...]  # with the Kazoo variables, but no Call-Interaction-ID
    # The same with a Call-Interaction-ID too (Kazoo sets one on some calls only).
    interaction_events: tuple[Template, ...]
    t0: int  # first Event-Date-Timestamp, µs
    pivot: int | None  # last answer/bridge/progress: later times stretch
    first_ring: int | None  # first progress time (µs); None: the call never rings
    answered: bool
    # legs with RTP statistics (original Unique-ID -> leg number, billsec)
    rtp_legs: dict[str, int]
    rtp_billsec: dict[str, int]


# Events whose last occurrence marks where a call's talk (or ring) time is.
_PIVOT_EVENTS = frozenset(
    ("CHANNEL_ANSWER", "CHANNEL_BRIDGE", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA")
)


def _caller_side(events: list[dict]) -> frozenset[str]:
    """The Unique-IDs of the caller's side (Kazoo's A leg): the leg the call
    starts from and its loopback twin.  The legs the call goes on to (bridged
    to, or the far end of a SIP call) are the callee's side."""
    first = events[0].get("Unique-ID", "")
    twins = {
        e.get("variable_other_loopback_leg_uuid", "") for e in events if e.get("Unique-ID") == first
    }
    return frozenset({first} | twins) - {""}


def _with_kazoo_vars(pairs: Pairs, caller_side: bool, interaction: bool) -> Pairs:
    """An event with the Kazoo variables after its channel variables.

    Their values are left empty: slots fill them per call.  Events without
    channel variables (DTMF) stay as they are: FreeSWITCH puts none there.
    """
    last = max((i for i, (name, _) in enumerate(pairs) if name.startswith("variable_")), default=-1)
    if last < 0:
        return pairs
    added = tuple(
        (name, "")
        for name, kind in KAZOO_VARS.items()
        if (kind != SLOT_AUTHORIZING or caller_side) and (kind != SLOT_INTERACTION or interaction)
    )
    return pairs[: last + 1] + added + pairs[last + 1 :]


def call_template(data: dict) -> CallTemplate:
    """Compile one ``call_templates/*.json`` document."""
    raw = [
        (tuple((n, v) for n, v in event["headers"]), event.get("body")) for event in data["events"]
    ]
    events = [dict(pairs) for pairs, _ in raw]
    caller_side = _caller_side(events)
    times = [event_ts(event) for event in events]
    marks = [ts for event, ts in zip(events, times) if event.get("Event-Name") in _PIVOT_EVENTS]
    pivot = max(marks) if marks else None
    rings = [
        int(v)
        for event in events
        for v in (event.get("Caller-Channel-Progress-Time"), event.get("Caller-Channel-Progress-Media-Time"))
        if v and v.isdigit() and v != "0"
    ]
    first_ring = min(rings) if rings else None
    with_rtp = rtp_legs(events)
    finders = (
        rtp_finder(with_rtp),
        find_ids,
        find_times,
        caller_finder(data.get("caller_number"), data.get("caller_name")),
        duration_finder(pivot),
        find_kazoo,
    )

    def compile_events(interaction: bool) -> tuple[Template, ...]:
        return tuple(
            compile_template(
                _with_kazoo_vars(pairs, event.get("Unique-ID") in caller_side, interaction),
                body,
                finders,
            )
            for (pairs, body), event in zip(raw, events)
        )

    return CallTemplate(
        name=data["name"],
        weight=float(data.get("weight", 1)),
        events=compile_events(interaction=False),
        interaction_events=compile_events(interaction=True),
        t0=min(ts for ts in times if ts),
        pivot=pivot,
        first_ring=first_ring,
        answered=any(event.get("Event-Name") == "CHANNEL_ANSWER" for event in events),
        rtp_legs=with_rtp,
        rtp_billsec={
            e["Unique-ID"]: int(e.get("variable_billsec") or 0)
            for e in events
            if e.get("Event-Name") == "CHANNEL_HANGUP_COMPLETE" and e.get("Unique-ID") in with_rtp
        },
    )


def template_documents() -> list[dict]:
    """The call templates shipped in ``eslcdr/fakefs/call_templates/``."""
    folder = resources.files(__package__).joinpath("call_templates")
    docs = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            docs.append(json.loads(entry.read_text(encoding="utf-8")))
    if not docs:
        raise ValueError("no call templates in %s" % folder)
    return docs


# Caller names exercise quoting downstream: commas, quotes, non-ASCII.
CALLER_NAMES = (
    "Alicia Martín",
    "Bob O'Neil",
    "Müller, Jürgen",
    'Zoë "Z" Ng',
    "José Álvarez",
    "李小龙",
    "Smith, John",
    "Renée Dubois",
    "Ørjan Ås",
    'Ali "Boss" Khan',
    "Nguyễn Văn An",
    "Σωκράτης Π.",
    "Иван Петров",
    "Dr. Amara Okafor",
    "ACME Corp, Sales",
    "François-Xavier d'Aubigné",
)


def _caller_number(rng: random.Random) -> str:
    draw = rng.random()
    if draw < 0.4:
        return "1%03d" % rng.randrange(1000)  # an extension
    if draw < 0.8:
        return "+1%d%02d%d%02d%04d" % (
            rng.randint(2, 9),
            rng.randrange(100),
            rng.randint(2, 9),
            rng.randrange(100),
            rng.randrange(10_000),
        )
    if draw < 0.95:
        return "+44%d" % rng.randrange(10**9, 10**10)
    return "0%d" % rng.randrange(10**8, 10**9)  # national format


# Kazoo account ids are 32 hex digits; "demo-account" comes first so that the
# demo's curl commands (GET /v2/accounts/demo-account/cdrs) find calls.
DEFAULT_ACCOUNTS = (
    "demo-account",
    "434d23e00e7f65e1ca9281d75dc8cade",
    "7d55e8c9e89f7a344864ee58ae76cb7b",
)
# Share of generated calls that carry a Call-Interaction-ID; the daemon
# derives one for the others.
INTERACTION_SHARE = 0.5


def _post_dial_delay_us(rng: random.Random) -> int:
    """Extra time before the first ring: most carriers ring at once, some
    take seconds, a few are slow enough for a NOC to chase.  Whole seconds,
    as every shift: epoch seconds, µs times and durations stay in step."""
    draw = rng.random()
    if draw < 0.45:
        seconds = 0
    elif draw < 0.7:
        seconds = 1
    elif draw < 0.85:
        seconds = 2
    elif draw < 0.95:
        seconds = rng.randint(3, 5)
    else:
        seconds = rng.randint(6, 12)
    return seconds * 1_000_000


def kazoo_id(kind: str, key: str) -> str:
    """A Kazoo-style id (32 hex digits, as CouchDB's) that ``key`` always gets."""
    return hashlib.sha1(("%s:%s" % (kind, key)).encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class _CallPlan:
    template: CallTemplate
    events: tuple[Template, ...]  # the template's, with or without an interaction id
    ctx: Context
    start_us: int

    def event_time(self, index: int) -> int:
        event = self.events[index]
        # A CHANNEL_CREATE is dated by its leg's creation, which a post-dial delay leaves.
        return event.ts + self.ctx.shift(event.ts, ring=event.event_id != "CHANNEL_CREATE")


class GeneratedSource:
    """Calls cloned from the call templates, deterministic for a seed.

    ``calls`` calls (None: no end) start as a Poisson stream of ``cps`` calls
    per second from ``start_time``.  With ``cps`` > 0 events are sent in real
    time and ``start_time`` defaults to now; with 0 they are sent as fast as
    the clients read, their times spaced as at 10 calls per second and ending
    (by default) before now.  Each call picks a scenario by weight (about 3 in
    4 answered), a caller, and a talk (or ring) time.

    ``history_calls`` calls come first, spread over the ``history_seconds``
    before the start and sent at once (their times in the past).  With
    ``post_dial_delay`` each call waits 0 to 12 whole seconds before its
    first ring, so PDD varies as on a real switch.

    Every leg carries the Kazoo variables of its call: ``ecallmgr_Account-ID``
    (one of ``accounts``), ``ecallmgr_Owner-ID`` (the caller's user),
    ``ecallmgr_Authorizing-ID`` (the caller's device, on the caller's legs)
    and, on about half the calls, ``ecallmgr_Call-Interaction-ID``.
    """

    SIMULATED_CPS = 10.0
    # The longest talk time of a generated call (s), unless max_talk says less.
    MAX_TALK = 1800

    def __init__(
        self,
        calls: int | None = 100,
        cps: float = 0.0,
        seed: int = 0,
        start_time: float | None = None,
        templates: Iterable[dict] | None = None,
        accounts: Iterable[str] = DEFAULT_ACCOUNTS,
        history_calls: int = 0,
        history_seconds: float = 86400.0,
        post_dial_delay: bool = False,
        max_talk: int = MAX_TALK,
    ):
        if calls is not None and calls < 0:
            raise ValueError("calls must not be negative")
        if history_calls < 0 or history_seconds <= 0:
            raise ValueError("history_calls must not be negative, history_seconds must be positive")
        # Calls of the past, sent first as fast as read: a dashboard (the
        # demo's /ui page) then has a day to show, not just the last minutes.
        self.history_calls = history_calls
        self.history_seconds = history_seconds
        # Seconds of silence before the first ring (a carrier's post-dial
        # delay), drawn per call; off by default: it changes calls' timing.
        self.post_dial_delay = post_dial_delay
        if cps < 0:
            raise ValueError("cps must not be negative")
        if max_talk < 0:
            raise ValueError("max_talk must not be negative")
        # Talk times are drawn as ever, then capped: a short cap (a paced
        # benchmark) ends the calls sooner and changes nothing else.
        self.max_talk = max_talk
        self.accounts = tuple(accounts)
        if not self.accounts or not all(self.accounts):
            raise ValueError("accounts must be one or more non-empty ids")
        self.calls = calls
        self.cps = cps
        self.seed = seed
        self.start_time = start_time
        self.templates = [
            call_template(doc)
            for doc in (templates if templates is not None else template_documents())
        ]
        self._weights = [t.weight for t in self.templates]
        first = self.templates[0].events[0]
        self.core_uuid = derive_uuid("core:%s" % seed, first.original("Core-UUID") or "")
        self.hostname = first.original("FreeSWITCH-Hostname")

    def __iter__(self) -> Iterator[Emission]:
        rng = random.Random(self.seed)
        start = self.start_time if self.start_time is not None else self._default_start()
        # Whole seconds: the calls' order then does not depend on the start.
        start_us = int(start) * 1_000_000
        plans = self._plans(rng, start_us)
        heap: list = []
        order = itertools.count()
        seq = itertools.count(1)
        pending = next(plans, None)
        while heap or pending is not None:
            # A call joins the merge once the stream reaches its start.
            if pending is not None and (not heap or pending.start_us <= heap[0][0]):
                heapq.heappush(heap, (pending.event_time(0), next(order), pending, 0))
                pending = next(plans, None)
                continue
            when, _, plan, index = heapq.heappop(heap)
            due = (when - start_us) / 1_000_000 if self.cps > 0 else None
            yield Emission(plan.events[index], plan.ctx, next(seq), due)
            if index + 1 < len(plan.events):
                # Within a call the capture's order is kept, whatever the times say.
                later = max(when, plan.event_time(index + 1))
                heapq.heappush(heap, (later, next(order), plan, index + 1))

    def _default_start(self) -> float:
        now = time.time()
        if self.cps or self.calls is None:
            return now  # real time: the calls happen now
        # As fast as read: the calls are the recent past, all over by now
        # (a daemon's "last month" queries then find them).
        return now - self.calls / self.SIMULATED_CPS - 2 * 3600

    def _plans(self, rng: random.Random, start_us: int) -> Iterator[_CallPlan]:
        rate = self.cps or self.SIMULATED_CPS
        when = start_us
        # The Kazoo variables draw from their own RNG: the calls themselves
        # (scenarios, callers, times) stay what they were before they existed.
        kazoo_rng = random.Random("kazoo:%s" % self.seed)
        rtp_rng = random.Random("rtp:%s" % self.seed)  # likewise for RTP quality
        pdd_rng = random.Random("pdd:%s" % self.seed)  # and post-dial delay
        history = self.history_calls
        span_us = int(self.history_seconds * 1_000_000)
        # Uniform over the span, sorted: a Poisson walk could overshoot "now".
        past = sorted(start_us - 1 - int(rng.random() * span_us) for _ in range(history))
        numbers = itertools.count() if self.calls is None else range(history + self.calls)
        for index in numbers:
            if index < history:
                when = past[index]
            elif index == history:
                when = start_us  # the past is over: live calls from the start
            template = rng.choices(self.templates, self._weights)[0]
            extra = self._extra_seconds(rng, template, self.max_talk)
            number = _caller_number(rng)
            name = rng.choice(CALLER_NAMES) if rng.random() < 0.8 else number
            # Whole seconds keep epoch seconds, µs and date strings in step;
            # rounded up so that no call starts before start_time.
            shift = -((template.t0 - when) // 1_000_000) * 1_000_000
            # One random() per call whatever the number of accounts (choice()
            # would not), so the accounts given change nothing else.
            account = self.accounts[int(kazoo_rng.random() * len(self.accounts))]
            kazoo = {
                SLOT_ACCOUNT: account,
                SLOT_OWNER: kazoo_id("user", number),
                SLOT_AUTHORIZING: kazoo_id("device", number),
            }
            events = template.events
            if kazoo_rng.random() < INTERACTION_SHARE:
                # Kazoo's shape: <gregorian seconds of the call start>-<8 hex>.
                kazoo[SLOT_INTERACTION] = "%d-%08x" % (
                    gregorian_seconds(template.t0 + shift),
                    kazoo_rng.getrandbits(32),
                )
                events = template.interaction_events
            ctx = Context(
                key="call:%s:%d" % (self.seed, index),
                shift_us=shift,
                pivot_us=template.pivot,
                delta_us=extra * 1_000_000,
                cnum=number,
                cname=name,
                kazoo=kazoo,
                rtp=draw_quality(rtp_rng, template.rtp_legs, {
                    call_id: billsec + extra if billsec else 0
                    for call_id, billsec in template.rtp_billsec.items()
                }) if template.rtp_legs else None,
                ring_from_us=template.t0 if template.first_ring else None,
                ring_us=_post_dial_delay_us(pdd_rng) if template.first_ring and self.post_dial_delay else 0,
            )
            yield _CallPlan(template, events, ctx, template.t0 + shift)
            when += int(rng.expovariate(rate) * 1_000_000)

    @staticmethod
    def _extra_seconds(rng: random.Random, template: CallTemplate, max_talk: int = MAX_TALK) -> int:
        if template.pivot is None:
            return 0
        if template.answered:
            return min(int(rng.expovariate(1 / 30)), max_talk)  # talk time
        return rng.randint(0, 10)  # ring time
