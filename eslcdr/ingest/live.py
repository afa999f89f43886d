"""Live channels in Kazoo's shape (``GET /v2/accounts/{ACCOUNT_ID}/channels``).

The daemon's leg trackers hold the live legs; ``LiveChannels`` takes a
snapshot of them (copies, built without yielding to other greenlets: the
API and the event readers share one gevent hub, so nothing can change a
tracker mid-copy and no lock is needed) and turns each into the document
Kazoo's crossbar ``cb_channels`` answers: ``uuid``, ``direction``,
``answered``, ``destination``, ``other_leg``, ``owner_id``,
``authorizing_id``, ``presence_id``, ``timestamp`` (creation, Gregorian
seconds), plus ``account_id``, caller/callee ids, ``state`` (DOWN, RINGING,
EARLY, ACTIVE, HELD), ``node``, ``channel_name``, ``elapsed_s`` and
``interaction_id``.  Empty fields are left out, as Kazoo leaves out nulls.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

from .legs import LegTracker, LiveLeg, gregorian_seconds

# account_id None: every account (the collector scope); owner_id: one user's.
ChannelsFn = Callable[[str | None, str | None], list[dict]]


def channel_document(leg: LiveLeg, node: str, now_us: int) -> dict:
    doc: dict = {
        "uuid": leg.call_id,
        "answered": leg.answered,
        "timestamp": gregorian_seconds(leg.created_us),
        "elapsed_s": max(0, (now_us - leg.created_us) // 1_000_000),
        "state": leg.state,
        "node": node,
    }
    for key, value in (
        ("account_id", leg.account_id),
        ("direction", leg.direction),
        ("destination", leg.destination),
        ("other_leg", leg.other_leg),
        ("owner_id", leg.owner_id),
        ("authorizing_id", leg.authorizing_id),
        ("presence_id", leg.presence_id),
        ("caller_id_name", leg.caller_id_name),
        ("caller_id_number", leg.caller_id_number),
        ("callee_id_name", leg.callee_id_name),
        ("callee_id_number", leg.callee_id_number),
        ("channel_name", leg.channel_name),
        ("interaction_id", leg.interaction_id),
    ):
        if value:
            doc[key] = value
    if leg.answered_us:
        doc["answered_timestamp"] = gregorian_seconds(leg.answered_us)
    return doc


class LiveChannels:
    """A read-only view of the trackers of every node, for the API."""

    def __init__(self, trackers: Callable[[], Mapping[str, LegTracker]],
                 clock: Callable[[], int] = lambda: time.time_ns() // 1000) -> None:
        self._trackers = trackers
        self._clock = clock

    def __call__(self, account_id: str | None = None, owner_id: str | None = None) -> list[dict]:
        now = self._clock()
        snapshot: list[tuple[str, LiveLeg]] = []
        for node, tracker in self._trackers().items():
            snapshot.extend((node, leg) for leg in tracker.live_legs(account_id, owner_id))
        # Longest-running first: the stuck call is what an operator looks for.
        snapshot.sort(key=lambda item: (item[1].created_us, item[1].call_id))
        return [channel_document(leg, node, now) for node, leg in snapshot]


def no_channels(account_id: str | None = None, owner_id: str | None = None) -> list[dict]:
    """For an API without a daemon (tests, a bare database): nothing live."""
    return []

