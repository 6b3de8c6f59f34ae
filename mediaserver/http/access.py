"""Who may use the data plane's HTTP routes.

Play: one path for every protocol. HLS (playlists, parts, segments) and WHEP ask `PlayAccess.check`, which
collects the credentials a request carries and asks the same `Authorizer.authorize_play` that RTMP play asks.
A grant may hand back a credential for the stream; HLS sets it as a path-scoped cookie, because segment and
part URIs carry no query string.

Stats that show peers and sessions (`/api/v1/webrtc/sessions`): a `StatsGate` decides. Without the control
plane anyone may read them; the control plane installs a gate that authenticates and checks its matrix.
"""

from __future__ import annotations

import asyncio
import logging
from http.cookies import Morsel
from typing import Any, Protocol, runtime_checkable

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry, Counter

from mediaserver.auth import AllowAll, Authorizer, AuthResult, Denied, StreamGrant

log = logging.getLogger("mediaserver.http.access")

PLAY_COOKIE = "ms_play"
# Set in the params of a play check whose answer will hand a credential back (an HLS playlist): only then
# does an authorizer need to mint one. Segment and part requests, many a second per viewer, do not ask.
WANTS_CREDENTIAL = "_credential"
# WANTS_CREDENTIAL's values: hand one back (the client holds none yet), or only when the one presented (the
# cookie handed back before) is past half its life.
MINT = "1"
RENEW = "renew"
# Grants of an open authorizer kept for reuse, at most (names come from requests: bounded).
_OPEN_GRANTS = 1024
# The permission name the gated stats routes need (the control plane's matrix knows it).
SYSTEM_READ = "system:read"


@runtime_checkable
class QuickPlay(Protocol):
    def play_now(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult | None:
        """`authorize_play`'s answer when it is known without I/O (from what the authorizer holds); None
        otherwise."""

    def prepare_play(self, app: str, name: str) -> asyncio.Future[Any] | None:
        """Start learning what `play_now` lacks for `app/name` (a lookup); what ends once it is learnt, or None
        when there is nothing to learn."""


class StatsGate(Protocol):
    async def check(self, request: web.Request, permission: str) -> web.StreamResponse | None:
        """None when the request may go on, else the error response to send."""


class OpenStats:
    """No control plane: the stats are readable by anyone who reaches the port (names are never keys)."""

    async def check(self, request: web.Request, permission: str) -> web.StreamResponse | None:
        return None


def bearer(request: web.Request) -> str:
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    return header[7:].strip() if header[:7].lower() == "bearer " else ""


def credentials(request: web.Request) -> dict[str, str]:
    """The stream credentials a request names itself: `?key=`, `?token=`, a bearer token.

    A bearer token fills whichever of `key`/`token` the query left empty: an authorizer reads the one it knows
    (static keys read `key`, the database authorizer reads `token`). The play cookie is apart (`play_cookie`):
    the server handed it back, and it stands in when these are missing or refused."""
    params: dict[str, str] = {}
    # Most requests (every part and segment) carry no query: parse none unless it is there.
    if request.query_string:
        query = request.query
        for name in ("key", "token"):
            value = query.get(name)
            if value is not None:
                params[name] = value
    if hdrs.AUTHORIZATION in request.headers:
        value = bearer(request)
        if value:
            params.setdefault("key", value)
            params.setdefault("token", value)
    return params


def play_cookie(request: web.Request) -> str:
    return request.cookies.get(PLAY_COOKIE, "") if hdrs.COOKIE in request.headers else ""


def play_attempts(given: dict[str, str], cookie: str, credential: bool) -> list[dict[str, str]]:
    """The credentials to try in turn: the play cookie, then the ones the request names.

    The cookie first: it is what the player's part and segment requests carry, and the server renews it, while
    a player keeps reloading the playlist URL it was given, whose `?token=` expires. With `credential` (a
    playlist), the cookie asks for a renewal only when it is getting old; the request's own credential, tried
    when there is no cookie or it is refused, asks for one to hand back."""
    attempts = []
    if cookie:
        attempts.append({"key": cookie, "token": cookie} | ({WANTS_CREDENTIAL: RENEW} if credential else {}))
    if not cookie or (given and cookie != given.get("token", given.get("key"))):
        attempts.append(given | ({WANTS_CREDENTIAL: MINT} if credential else {}))
    return attempts


class PlayAccess:
    """Play authorization for HTTP requests, shared by HLS and WHEP."""

    def __init__(self, authorizer: Authorizer, registry: CollectorRegistry) -> None:
        self.authorizer = authorizer
        self._open_grants: dict[tuple[str, str], StreamGrant] = {}
        # An authorizer that can answer a credential-less play from what it already knows (`QuickPlay`).
        quick = authorizer if isinstance(authorizer, QuickPlay) else None
        self._play_now = quick.play_now if quick is not None else None
        self._prepare_play = quick.prepare_play if quick is not None else None
        self.denied = Counter(
            "mediaserver_play_denied", "Play requests refused by the authorizer", ["protocol"], registry=registry
        )

    async def check(self, request: web.Request, protocol: str, credential: bool = False) -> StreamGrant | Denied:
        """The authorizer's answer; `credential` asks for a credential to hand back (see WANTS_CREDENTIAL)."""
        match_info = request.match_info
        app, name = match_info["app"], match_info["name"]
        if type(self.authorizer) is AllowAll:
            return self._open_grant(app, name)
        peer = request.remote or ""
        denied = Denied("no_credential")
        for params in play_attempts(credentials(request), play_cookie(request), credential):
            result = await self.authorizer.authorize_play(app, name, params, peer)
            if isinstance(result, StreamGrant):
                return result
            denied = result
        self.denied.labels(protocol).inc()
        log.info("event=play_denied protocol=%s app=%s peer=%s reason=%s", protocol, app, peer, denied.reason)
        return denied

    def _open_grant(self, app: str, name: str) -> StreamGrant:
        # AllowAll grants every play whatever the request carries: nothing to collect, nothing to ask (thousands
        # of HLS requests a second come this way), and the same grant again (grants are frozen).
        grant = self._open_grants.get((app, name))
        if grant is None:
            if len(self._open_grants) >= _OPEN_GRANTS:
                self._open_grants.clear()
            grant = self._open_grants[(app, name)] = StreamGrant(app, name)
        return grant

    def check_now(
        self, app: str, name: str, peer: str, token: str = "", cookie: str = "", credential: bool = False
    ) -> StreamGrant | None:
        """`check`'s grant when the authorizer knows it without waiting; None when it would have to look, or
        refuses: then `check` answers (and counts, and logs). `token` is the request's `?token=`, `cookie` its play
        cookie; `credential` as for `check`."""
        if type(self.authorizer) is AllowAll:
            return self._open_grant(app, name)
        if self._play_now is None:
            return None
        for params in play_attempts({"token": token} if token else {}, cookie, credential):
            result = self._play_now(app, name, params, peer)
            if isinstance(result, StreamGrant):
                return result
            if result is None:
                return None
        return None

    def prepare(self, app: str, name: str) -> asyncio.Future[Any] | None:
        """When `check_now` had no answer for want of a lookup: the lookup, to wait for before asking again (the
        HTTP front keeps the connection meanwhile, rather than leave it to aiohttp for good)."""
        return self._prepare_play(app, name) if self._prepare_play is not None else None


def set_play_cookie(request: web.Request, response: web.StreamResponse, grant: StreamGrant) -> None:
    """Hand the grant's credential back as a cookie scoped to the stream's HLS folder (renewed per playlist)."""
    if grant.credential is None or response.prepared:
        return
    response.set_cookie(
        PLAY_COOKIE,
        grant.credential,
        path=play_cookie_path(request.match_info["app"], request.match_info["name"]),
        max_age=grant.credential_ttl or None,
        httponly=True,
        samesite="Lax",
        secure=request.secure,
    )


def play_cookie_path(app: str, name: str) -> str:
    return f"/hls/{app}/{name}/"


def play_cookie_header(app: str, name: str, grant: StreamGrant) -> bytes:
    """`set_play_cookie`'s header line, for an answer made without aiohttp (plain HTTP: never `Secure`)."""
    morsel: Morsel[str] = Morsel()
    credential = grant.credential or ""
    morsel.set(PLAY_COOKIE, credential, credential)
    morsel["path"] = play_cookie_path(app, name)
    if grant.credential_ttl:
        morsel["max-age"] = str(grant.credential_ttl)
    morsel["httponly"] = True
    morsel["samesite"] = "Lax"
    return f"Set-Cookie: {morsel.OutputString()}\r\n".encode("latin-1")
