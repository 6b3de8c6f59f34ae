"""The data plane's aiohttp application: health, metrics, live-stream stats and the player pages.

Protocol services (HLS, WHEP/WHIP) hand in their routes; the control plane, when it is on, adds its own
routes and middlewares to the same application.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mediaserver.http.errors import error_response, json_errors
from mediaserver.http.pages import default_web_dir, static_cache_headers, web_routes
from mediaserver.hub import Hub
from mediaserver.metrics import Metrics

HUB_KEY = web.AppKey("hub", Hub)
METRICS_KEY = web.AppKey("metrics", Metrics)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# The live-stream list stays public, as nginx-rtmp's stat page is: names are never keys (camera ids, or
# `key_alias` for a stream published under its own key), and no credential is in a snapshot.
async def list_streams(request: web.Request) -> web.StreamResponse:
    streams = [stream.snapshot() for stream in sorted(request.app[HUB_KEY].list(), key=lambda s: s.key)]
    return web.json_response({"streams": streams, "count": len(streams)})


async def get_stream(request: web.Request) -> web.StreamResponse:
    stream = request.app[HUB_KEY].get(request.match_info["app"], request.match_info["name"])
    if stream is None:
        return error_response(404, "stream_not_found", "no live stream with that name")
    return web.json_response(stream.snapshot())


def create_app(
    hub: Hub,
    metrics_: Metrics,
    extra_routes: list[web.RouteDef] | None = None,
) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=1024 * 1024)
    app[HUB_KEY] = hub
    app[METRICS_KEY] = metrics_
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/streams", list_streams)
    app.router.add_get("/api/v1/streams/{app}/{name}", get_stream)
    app.router.add_routes(extra_routes or [])
    app.router.add_routes(web_routes(default_web_dir()))
    app.on_response_prepare.append(static_cache_headers)
    return app
