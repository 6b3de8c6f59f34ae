"""HTTP middlewares of the control plane: security headers and CORS."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

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
