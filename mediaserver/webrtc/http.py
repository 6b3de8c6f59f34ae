"""The WHEP/WHIP HTTP endpoints: routes, CORS, offer validation, `Rejected` as JSON errors, hang-ups and the
sessions listing.

No trickle ICE: the client POSTs its complete offer, we answer 201 with the complete answer (all our
candidates gathered) and a `Location` for the session, which the client DELETEs to hang up. PATCH (trickle
ICE, ICE restart) is answered 405: aiortc cannot add candidates to a running session.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiortc import sdp as aiortc_sdp

from mediaserver.auth import redact
from mediaserver.http.access import SYSTEM_READ, StatsGate
from mediaserver.http.errors import error_response
from mediaserver.webrtc.errors import Rejected
from mediaserver.webrtc.metrics import WebrtcMetrics
from mediaserver.webrtc.sessions import Session, SessionRegistry

log = logging.getLogger("mediaserver.webrtc")

SDP_TYPE = "application/sdp"
MAX_SDP_BYTES = 64 * 1024
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Location, ETag, Accept-Post, Accept-Patch, Link",
}
CORS_PREFLIGHT = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, PATCH, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Accept-Post, Accept-Patch, Link",
    "Access-Control-Max-Age": "86400",
    "Accept-Post": SDP_TYPE,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Turns a validated offer (its text and its parsed form) into a set-up, registered session.
OfferHandler = Callable[[web.Request, str, aiortc_sdp.SessionDescription], Awaitable[Session]]


async def read_offer(request: web.Request) -> tuple[str, aiortc_sdp.SessionDescription]:
    """The request's SDP offer, size-limited and checked for what a non-trickle session needs."""
    if request.content_type != SDP_TYPE:
        raise Rejected(415, "unsupported_media_type", f"the offer must be sent as {SDP_TYPE}")
    if request.content_length is not None and request.content_length > MAX_SDP_BYTES:
        raise Rejected(413, "offer_too_large", f"an SDP offer is at most {MAX_SDP_BYTES} bytes")
    body = await request.content.read(MAX_SDP_BYTES + 1)
    if len(body) > MAX_SDP_BYTES:
        raise Rejected(413, "offer_too_large", f"an SDP offer is at most {MAX_SDP_BYTES} bytes")
    try:
        text = body.decode("utf-8")
        parsed = aiortc_sdp.SessionDescription.parse(text)
    except Exception as exc:
        raise Rejected(400, "bad_sdp", f"the offer is not valid SDP: {exc}") from exc
    if not text.startswith("v=0") or not parsed.media:
        raise Rejected(400, "bad_sdp", "the offer is not valid SDP (no v=0 line or no media section)")
    for media in parsed.media:
        ice = media.ice
        if media.kind in ("audio", "video") and (ice is None or ice.usernameFragment is None or not media.dtls):
            raise Rejected(400, "bad_sdp", "the offer has no ICE credentials or DTLS fingerprint")
    return text, parsed


def created(session: Session) -> web.Response:
    """201 with the complete answer and where to hang up."""
    description = session.pc.localDescription
    assert description is not None
    headers = dict(CORS)
    headers["Location"] = session.location
    headers["ETag"] = f'"{session.id}"'
    return web.Response(status=201, text=description.sdp, content_type=SDP_TYPE, headers=headers)


def shown_agent(request: web.Request) -> str:
    """The client's User-Agent for logs: one token of printable ASCII, at most 80 characters."""
    agent = request.headers.get("User-Agent", "")
    return "".join(c if "!" <= c <= "~" and c not in '"\\=' else "_" for c in agent)[:80]


def shown_path(request: web.Request) -> str:
    """The request's stream as logs may show it (the name in the path may be a stream key)."""
    return f"{request.match_info.get('app', '')}/{redact(request.match_info.get('name', ''))}"


class WebrtcHttp:
    def __init__(
        self,
        sessions: SessionRegistry,
        metrics: WebrtcMetrics,
        stats_gate: StatsGate,
        whep: OfferHandler,
        whip: OfferHandler,
    ) -> None:
        self.sessions = sessions
        self.rejected = metrics.rejected
        self.stats_gate = stats_gate
        self._whep = whep
        self._whip = whip

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/whep/{app}/{name}", self._guard("whep", self._offer(self._whep))),
            web.options("/whep/{app}/{name}", self.handle_options),
            web.delete("/whep/{app}/{name}/{session}", self._guard("whep", self.handle_delete)),
            web.patch("/whep/{app}/{name}/{session}", self.handle_patch),
            web.options("/whep/{app}/{name}/{session}", self.handle_options),
            web.post("/whip/{app}/{name}", self._guard("whip", self._offer(self._whip))),
            web.options("/whip/{app}/{name}", self.handle_options),
            web.delete("/whip/{app}/{name}/{session}", self._guard("whip", self.handle_delete)),
            web.patch("/whip/{app}/{name}/{session}", self.handle_patch),
            web.options("/whip/{app}/{name}/{session}", self.handle_options),
            web.get("/api/v1/webrtc/sessions", self.handle_list),
        ]

    @staticmethod
    def _offer(start: OfferHandler) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            text, offer = await read_offer(request)
            session = await start(request, text, offer)
            session.agent = shown_agent(request)
            return created(session)

        return handle

    def _guard(self, endpoint: str, handler: Handler) -> Handler:
        """Turn `Rejected` and unexpected errors into JSON error bodies with CORS headers."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except Rejected as exc:
                self.rejected.labels(endpoint, exc.code).inc()
                response = error_response(exc.status, exc.code, exc.message)
                response.headers.update(CORS)
                response.headers.update(exc.headers)
                return response
            except Exception:
                log.exception(
                    "event=webrtc_request_failed endpoint=%s method=%s stream=%s",
                    endpoint,
                    request.method,
                    shown_path(request),
                )
                self.rejected.labels(endpoint, "internal_error").inc()
                response = error_response(500, "internal_error", "the session could not be set up")
                response.headers.update(CORS)
                return response

        return guarded

    async def handle_options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=CORS_PREFLIGHT)

    async def handle_patch(self, request: web.Request) -> web.Response:
        endpoint = request.path.split("/")[1]
        self.rejected.labels(endpoint, "trickle_not_supported").inc()
        response = error_response(
            405,
            "trickle_not_supported",
            "trickle ICE and ICE restarts are not supported: send a complete offer (non-trickle)",
        )
        response.headers.update(CORS)
        response.headers["Allow"] = "DELETE, OPTIONS"
        return response

    async def handle_delete(self, request: web.Request) -> web.Response:
        session = self.sessions.sessions.get(request.match_info["session"])
        kind = request.path.split("/")[1]
        if (
            session is None
            or session.kind != kind
            or session.app != request.match_info["app"]
            or session.name != request.match_info["name"]
        ):
            raise Rejected(404, "session_not_found", "no such session")
        self.sessions.close(session, "deleted")
        return web.Response(status=200, headers=CORS)

    async def handle_list(self, request: web.Request) -> web.StreamResponse:
        refused = await self.stats_gate.check(request, SYSTEM_READ)
        if refused is not None:
            return refused
        live = list(self.sessions.sessions.values())
        by_state: dict[str, int] = defaultdict(int)
        for session in live:
            by_state[session.state] += 1
        return web.json_response(
            {
                "sessions": [session.snapshot() for session in live],
                "count": len(live),
                "by_state": by_state,
                "closing": self.sessions.closing_count,
                "feeds": len(self.sessions.feeds),
            }
        )
