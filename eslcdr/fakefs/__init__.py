"""The FreeSWITCH stand-in: a gevent server that speaks mod_event_socket.

``eslcdr fakefs``, ``eslcdr demo``, the tests and the benchmarks use it in
place of a real FreeSWITCH.  It speaks the inbound Event Socket protocol as
FreeSWITCH 1.10 does, byte for byte (``auth/request``, ``auth``, ``event
plain|json ...``, ``filter``, ``nixevent``, ``noevents``, ``api status``,
``api show channels [as json|count]``, ``exit`` and the disconnect notice,
``-ERR command not found`` for the rest).

How it works
------------
*Templates.*  Every event is held as a template: its headers in wire order
(duplicates kept: FreeSWITCH sends ``Hangup-Cause`` twice) with the parts that
change from one use to the next cut out as *slots*: Unique-IDs and every
other UUID, times (``Event-Date-*``, ``*-Time``, ``*_epoch``, ``*_uepoch``,
``*_stamp``), ``Event-Sequence``, ``Core-UUID``, the host name, and for
generated calls the caller's number and name, the call durations and the
Kazoo variables added to them (``ecallmgr_Account-ID`` ...).  Each
template is encoded once per format with :func:`eslcdr.esl.events.encode_plain` /
``encode_json`` and split at the slots, so sending an event only joins bytes:
the stand-in must stay much faster than the daemon it feeds.

*Sources.*  :class:`ReplaySource` serves the events of raw captures in file
order (out-of-order ``Event-Sequence`` included); repetition *r* maps every
UUID to a fresh deterministic one and moves every time *r* capture-lengths
later, so one capture gives many distinct calls.  :class:`GeneratedSource`
builds calls from call templates cut out of the real captures (package data
in ``call_templates/``): per call a weighted scenario, new UUIDs, a new
caller (some names carry commas, quotes and non-ASCII), a later start and a
longer or shorter talk time, all drawn from one seeded RNG; and, as a Kazoo
platform's FreeSWITCH has them on every leg, the ``ecallmgr_*`` account,
owner, authorizing and (on some calls) interaction ids, from a second one.
:class:`StaticSource` sends decoded event dicts as given.

*Server.*  One pump greenlet plays the source, like FreeSWITCH's core: it
keeps the table that ``show channels`` reads and hands each event to every
connection whose subscription and filters accept it.  Each connection has its
own queue and writer greenlet, as mod_event_socket has a queue per listener.
Events emitted while no client is subscribed are lost, as with FreeSWITCH;
by default the stream only starts at the first subscription, and ``hold``
pauses it whenever nobody listens (useful for exact tests).

*Flow control.*  FreeSWITCH never waits for a client: a listener whose queue
overflows loses events and is dropped.  The stand-in does that with
``backpressure=False``; by default it rather waits for slow clients, so that
"as fast as possible" means as fast as the client reads.  ``prerender``
builds every frame before listening, for benchmarks that must not pay for
the stand-in.

*json_cdr files.*  With ``json_cdr_dir`` the stand-in writes each leg's
mod_json_cdr file at its hangup, as FreeSWITCH does, whether anybody
listens or not.

*Faults* are counted in events of the stream: close every connection after
event N (``drop_after``), stop sending anything for S seconds after event N
(``stall_after``), restart with a new ``Core-UUID`` after event N
(``restart_after``: the shutdown notice, connections closed, the channel
table emptied, the stream continuing where it was), a malformed frame
before every Nth event a connection receives (``malformed_every``), and
*away* (``away_after``: every connection closed and new ones refused while
the next ``away_events`` events play unheard).

Use: ``FakeFreeSWITCH(port=0, events=GeneratedSource(calls=50)).start()``,
then ``.port``, ``.wait_done(timeout)``, ``.live_channels()``, ``.stop()``;
``add_arguments`` / ``run`` are the ``eslcdr fakefs`` command.

Modules, in the direction the data flows (each one's header says how its
part works):

- ``capture``: raw captures into events as header pairs (wire order kept).
- ``slots``: where an event's varying parts are (the finders) and their kinds.
- ``templates``: events compiled into templates with slots; contexts and
  emissions that fill them.
- ``replay``: :class:`ReplaySource` (captures, repeated) and
  :class:`StaticSource` (decoded events as given).
- ``generated``: :class:`GeneratedSource`, calls cloned from the call
  templates in ``call_templates/``.
- ``channels``: the table behind ``show channels``.
- ``json_cdr``: the mod_json_cdr file of each leg, written at its hangup.
- ``subscription``: what one connection listens to (``event``, ``nixevent``,
  ``noevents``, ``filter``) and whether it wants an event.
- ``listener``: one client connection (commands, its subscription, its event
  queue and writer).
- ``server``: :class:`FakeFreeSWITCH`, the pump, flow control, faults, api.
- ``cli``: the ``eslcdr fakefs`` command.
"""

from __future__ import annotations

from .capture import Pairs, event_pairs, extract_calls, read_capture
from .channels import CHANNEL_COLUMNS
from .cli import add_arguments, main, run, source_from_args
from .generated import (
    CALLER_NAMES,
    DEFAULT_ACCOUNTS,
    INTERACTION_SHARE,
    CallTemplate,
    GeneratedSource,
    call_template,
    template_documents,
)
from .listener import AUTH_REQUEST, GOODBYE, MAX_MISSED, MAX_QUEUE_LEN, SHUTDOWN
from .replay import ReplaySource, StaticSource
from .server import (
    BACKPRESSURE_LEVEL,
    DEFAULT_HOST,
    DEFAULT_PASSWORD,
    DEFAULT_PORT,
    FS_VERSION_FULL,
    FS_VERSION_HUMAN,
    SHOW_SYNTAX,
    FakeFreeSWITCH,
    Source,
)
from .subscription import EVENT_NAMES

__all__ = [
    "AUTH_REQUEST",
    "BACKPRESSURE_LEVEL",
    "CALLER_NAMES",
    "CHANNEL_COLUMNS",
    "CallTemplate",
    "DEFAULT_ACCOUNTS",
    "DEFAULT_HOST",
    "DEFAULT_PASSWORD",
    "DEFAULT_PORT",
    "EVENT_NAMES",
    "FS_VERSION_FULL",
    "FS_VERSION_HUMAN",
    "FakeFreeSWITCH",
    "GOODBYE",
    "GeneratedSource",
    "INTERACTION_SHARE",
    "MAX_MISSED",
    "MAX_QUEUE_LEN",
    "Pairs",
    "ReplaySource",
    "SHOW_SYNTAX",
    "SHUTDOWN",
    "Source",
    "StaticSource",
    "add_arguments",
    "call_template",
    "event_pairs",
    "extract_calls",
    "main",
    "read_capture",
    "run",
    "source_from_args",
    "template_documents",
]
