"""The operator's page: ``GET /ui`` and its files, shipped in the package.

One HTML page, one script, one style sheet and the vendored chart library
(uPlot, MIT, its licence beside it) under ``eslcdr/static/``: no build
step, nothing fetched from elsewhere.  The files need no token (they hold
no data); the page asks the API for everything with the token the operator
typed or passed in the URL fragment (``/ui#token=...&account=...``: a
fragment never reaches the server).  Answers carry a Content-Security-Policy
that allows the page to talk to this server only.
"""

from __future__ import annotations

from pathlib import Path

import bottle

STATIC = Path(__file__).resolve().parents[1] / "static"
# The page may load and call only this origin; no framing, no inline script.
SECURITY_HEADERS = (
    ("Content-Security-Policy",
     "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
     "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
)
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", "": "text/plain"}


def _serve(name: str) -> bottle.HTTPResponse:
    path = (STATIC / name).resolve()
    if STATIC not in path.parents or not path.is_file():
        raise bottle.HTTPError(404)
    response = bottle.static_file(str(path.relative_to(STATIC)), root=str(STATIC),
                                  mimetype=_TYPES.get(path.suffix, "text/plain") + "; charset=utf-8")
    for name_, value in SECURITY_HEADERS:
        response.set_header(name_, value)
    return response


def page() -> bottle.HTTPResponse:
    return _serve("index.html")


def asset(name: str) -> bottle.HTTPResponse:
    return _serve(name)


def add_routes(app: bottle.Bottle) -> None:
    """The page's routes: no token, no OPTIONS route."""
    app.route("/ui", "GET", page)
    app.route("/ui/<name:path>", "GET", asset)
