"""The status page served at `/` on the operator's listener: one static HTML file with a small
inline script that polls `/status` every 2 s (no build step, no external resource).

The page is package data (`gateway/web/index.html`), read once with importlib.resources. It is
sent with a Content-Security-Policy that allows its own inline script and style and requests to
the same origin only, so even a hostile carrier name (rendered with textContent anyway) could not
load or send anything elsewhere.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from gateway.http import Response

__all__ = ["CSP", "index", "index_html"]

CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
_HEADERS = (("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"))


@lru_cache(maxsize=1)
def index_html() -> bytes:
    return resources.files(__package__).joinpath("index.html").read_bytes()


async def index() -> Response:
    """GET `/`: the status page."""
    return Response(200, index_html(), "text/html; charset=utf-8", _HEADERS)
