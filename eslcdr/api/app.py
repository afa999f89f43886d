"""The HTTP API assembled: ``create_app`` puts the resources on one Bottle app.

Each resource is its own module (as Kazoo's crossbar has a ``cb_*`` per
resource): ``cdrs``, ``stats``, ``channels``, ``feed``, ``auth``, ``health``,
``ui``; what they share (envelopes, errors, token check, negotiation) is
``core``, streamed bodies ``streams``, request ids, CORS and metrics ``wsgi``.
They read CDRs only through a ``readside.ReadSide``: a node's is
``sqlite.SqliteReadSide`` over ``[store] path``; ``assemble`` takes any (the
collector's over PostgreSQL, without the feed).  Every route but the page's
answers ``OPTIONS`` with a 204 preflight.  ``make_server`` serves the app
with gevent's WSGIServer (``web.server``).  No module state.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import bottle
from prometheus_client import CollectorRegistry

from ..config import ApiConfig, Config
from ..ingest.live import no_channels
from ..query.reader import GeventRunner, InlineRunner
from . import ui
from .auth import Auth
from .cdrs import Cdrs
from .channels import Channels, ChannelsSource
from .core import Core
from .feed import Feed
from .health import NO_CORS_PATHS, Health, HealthFn
from .readside import AckFn, ReadSide
from .sessions import SessionStore
from .sqlite import SqliteReadSide, direct_ack
from .stats import Stats
from .tokens import TokenStore
from .wsgi import CdrApi, Metrics, preflight

if TYPE_CHECKING:
    from gevent.pywsgi import WSGIServer


def create_app(
    config: Config,
    *,
    health: HealthFn | None = None,
    registry: CollectorRegistry | None = None,
    tokens: TokenStore | None = None,
    clock: Callable[[], float] = time.time,
    runner: InlineRunner | GeventRunner | None = None,
    acknowledge: AckFn | None = None,
    channels: ChannelsSource | None = None,
    sessions: SessionStore | None = None,
    read: ReadSide | None = None,
) -> CdrApi:
    """Build the API for ``config`` (database ``[store] path``, ``[api]`` settings).

    ``health`` returns the daemon's state for ``/health`` (a ``status`` other
    than ``"ok"`` answers 503); ``registry`` receives the API's metrics and is
    what ``/metrics`` exports; ``tokens`` defaults to ``[api] tokens_file``;
    ``read`` is where the CDRs are read (default: the SQLite file, its
    statements run by ``runner``, default gevent's thread pool);
    ``acknowledge(token_sha256, after, at_us)`` stores a collector's
    acknowledgement (the daemon passes its writer's; default: a short write
    of its own, waiting at most 200 ms for the lock).
    ``channels(account_id, owner_id)`` lists live legs (the daemon's trackers).
    ``sessions`` holds login sessions (default: ``[api] session_ttl``).
    """
    if read is None:
        read = SqliteReadSide(config.store.path, config.api.statement_timeout, runner=runner,
                              heavy_slots=config.api.heavy_queries)
    return assemble(config.api, config.cdr.node_name, read, health=health, registry=registry, tokens=tokens,
                    clock=clock, acknowledge=acknowledge or direct_ack(config.store.path), channels=channels,
                    sessions=sessions)


def assemble(
    api: ApiConfig,
    node: str,
    read: ReadSide,
    *,
    health: HealthFn | None = None,
    registry: CollectorRegistry | None = None,
    tokens: TokenStore | None = None,
    clock: Callable[[], float] = time.time,
    acknowledge: AckFn | None = None,
    channels: ChannelsSource | None = None,
    sessions: SessionStore | None = None,
) -> CdrApi:
    """The API of ``api``'s settings over ``read``, answering as ``node``:
    ``create_app``'s for a node, ``eslcdr collect``'s over PostgreSQL.
    Without ``acknowledge`` there is no collector feed (``/v2/feed/cdrs``: 404)."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = Metrics.create(registry)
    core = Core(
        api,
        node,
        tokens if tokens is not None else TokenStore(api.tokens_file),
        sessions if sessions is not None else SessionStore(api.session_ttl),
        clock,
        metrics.rows,
    )
    resources = [
        # Before Cdrs: Bottle tries dynamic routes in definition order, and
        # cdrs/<cdr_id> would take cdrs/stats and cdrs/worst.
        Stats(core, read),
        Cdrs(core, read),
        Channels(core, channels or no_channels),
        Auth(core),
        Health(core, health or (lambda: {"status": "ok"}), registry),
    ]
    if acknowledge is not None:
        resources.append(Feed(core, read, acknowledge))
    app = bottle.Bottle(catchall=True)
    app.default_error_handler = core.bottle_error
    for resource in resources:
        for rule, method, handler in resource.routes():
            app.route(rule, method, handler)
            # Browsers preflight cross-origin requests; Bottle's 405 would block them.
            app.route(rule, "OPTIONS", preflight(method))
    ui.add_routes(app)
    return CdrApi(app, read, core, metrics, api.cors_origins, NO_CORS_PATHS)


def make_server(app: Callable, host: str, port: int, **kwargs: Any) -> "WSGIServer":
    """``server.make_server``: the app on gevent.pywsgi, bounded and redacting."""
    from ..web.server import make_server as make  # imports gevent.pywsgi: only when serving

    return make(app, host, port, **kwargs)
