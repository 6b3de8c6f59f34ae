"""The browser pages: `/` (index), `/play/{app}/{name}` (LL-HLS player), `/webrtc/{app}/{name}` (WHEP
player) and the files under `web/` at `/static/`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

log = logging.getLogger("mediaserver.http.pages")

NO_CACHE = "no-cache"
# Vendored libraries are pinned, and pages ask for them with a ?v= query that changes with the version.
VENDOR_CACHE = "public, max-age=31536000, immutable"
STATIC_PREFIX = "/static"
# The pages run only our own scripts; hls.js starts its transmuxer worker from a blob: URL and feeds the
# video element through MediaSource (blob: media URLs). The dashboard shows snapshots and thumbnails, fetched
# with the bearer header, through object URLs (img-src blob:); its WebSocket is same-origin ('self').
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; worker-src 'self' blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
)


def default_web_dir() -> Path:
    """`web/` next to the packages (a source checkout), else the copy a wheel installed under
    `<prefix>/share/mediaserver/web`, else `web/` in the working directory."""
    beside = Path(__file__).resolve().parent.parent.parent / "web"
    installed = Path(sys.prefix) / "share" / "mediaserver" / "web"
    for candidate in (beside, installed):
        if (candidate / "index.html").is_file():
            return candidate
    return Path.cwd() / "web"


def _page(path: Path) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(
            path,
            headers={
                "Cache-Control": NO_CACHE,
                "Content-Security-Policy": PAGE_CSP,
                "X-Content-Type-Options": "nosniff",
            },
        )

    return handler


def web_routes(web_dir: Path) -> list[web.AbstractRouteDef]:
    """Routes for the pages; none when `web_dir` is missing (the API still works, the pages 404)."""
    if not web_dir.is_dir():
        log.warning("event=web_dir_missing path=%s", web_dir)
        return []
    return [
        web.get("/", _page(web_dir / "index.html")),
        web.get("/play/{app}/{name}", _page(web_dir / "play.html")),
        web.get("/webrtc/{app}/{name}", _page(web_dir / "webrtc.html")),
        # No directory listing, and no symlinks out of web_dir.
        web.static(STATIC_PREFIX, web_dir, show_index=False, follow_symlinks=False),
    ]


async def static_cache_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare` hook: Cache-Control for `/static/` (aiohttp's static route sets none)."""
    if not request.path.startswith(STATIC_PREFIX + "/") or "Cache-Control" in response.headers:
        return
    if response.status in (200, 206, 304):
        vendor = request.path.startswith(STATIC_PREFIX + "/vendor/")
        response.headers["Cache-Control"] = VENDOR_CACHE if vendor else NO_CACHE
        response.headers["X-Content-Type-Options"] = "nosniff"
