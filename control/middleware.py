"""HTTP middlewares of the control plane: security headers, CORS, and the HLS play gate."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from control.errors import error_response
from control.security import TokenService
from mediaserver.auth import Authorizer, Denied

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PLAY_COOKIE = "ms_play"

API_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def _apply_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/api/"):
        for name, value in API_HEADERS.items():
            response.headers.setdefault(name, value)
    else:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _apply_headers(request, exc)
        raise
    if not response.prepared:
        _apply_headers(request, response)
    return response


def cors(origins: list[str]) -> Middleware:
    allowed = set(origins)
    any_origin = "*" in allowed

    @web.middleware
    async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if not request.path.startswith("/api/") or origin is None or not (any_origin or origin in allowed):
            return await handler(request)
        headers = {
            "Access-Control-Allow-Origin": "*" if any_origin else origin,
            "Access-Control-Expose-Headers": "Retry-After",
            "Vary": "Origin",
        }
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            headers.update(
                {
                    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
                    "Access-Control-Allow-Headers": "Authorization, Content-Type",
                    "Access-Control-Max-Age": "600",
                }
            )
            return web.Response(status=204, headers=headers)
        response = await handler(request)
        if not response.prepared:
            response.headers.update(headers)
        return response

    return cors_middleware


def hls_gate(authorizer: Authorizer, tokens: TokenService) -> Middleware:
    """Ask the authorizer before serving /hls/<app>/<name>/...

    The play token may come as `?token=` (the URL the API hands out) or as a cookie the
    playlist response sets, so that segment and part requests, whose URIs carry no query,
    are allowed too. Every playlist reload renews the cookie, so a viewer keeps watching.
    """

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        parts = request.path.split("/")
        if len(parts) < 5 or parts[1] != "hls":
            return await handler(request)
        app, name = parts[2], parts[3]
        token = request.query.get("token") or request.cookies.get(PLAY_COOKIE, "")
        result = await authorizer.authorize_play(app, name, {"token": token}, request.remote or "")
        if isinstance(result, Denied):
            return error_response(403, "forbidden", f"playback refused: {result.reason}")
        response = await handler(request)
        if token and parts[-1].endswith(".m3u8") and not response.prepared:
            fresh, _ = tokens.issue_play(name)
            response.set_cookie(
                PLAY_COOKIE,
                fresh,
                path=f"/hls/{app}/{name}/",
                max_age=tokens.play_ttl,
                httponly=True,
                samesite="Lax",
                secure=request.secure,
            )
        return response

    return gate
