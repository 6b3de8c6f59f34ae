"""Who may use the data plane's HTTP routes.

Play: one path for every protocol. HLS (playlists, parts, segments) and WHEP ask `PlayAccess.check`, which
collects the credentials a request carries and asks the same `Authorizer.authorize_play` that RTMP play asks.
A grant may hand back a credential for the stream; HLS sets it as a path-scoped cookie, because segment and
part URIs carry no query string.

Stats that show peers and sessions (`/api/v1/webrtc/sessions`): a `StatsGate` decides. Without the control
plane anyone may read them; the control plane installs a gate that authenticates and checks its matrix.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry, Counter

from mediaserver.auth import AllowAll, Authorizer, AuthResult, Denied, StreamGrant

log = logging.getLogger("mediaserver.http.access")

PLAY_COOKIE = "ms_play"
# Set in the params of a play check whose answer will hand a credential back (an HLS playlist): only then
# does an authorizer need to mint one. Segment and part requests, many a second per viewer, do not ask.
WANTS_CREDENTIAL = "_credential"
# Grants of an open authorizer kept for reuse, at most (names come from requests: bounded).
_OPEN_GRANTS = 1024
# The permission name the gated stats routes need (the control plane's matrix knows it).
SYSTEM_READ = "system:read"


@runtime_checkable
class QuickPlay(Protocol):
    def play_now(self, app: str, name: str, peer: str) -> AuthResult | None:
        """The answer to a play that carries no credential, when it is known without I/O; None otherwise."""


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
    """The stream credentials a request carries: `?key=`, `?token=`, a bearer token, the play cookie.

    A bearer token or cookie fills whichever of `key`/`token` the query left empty: an authorizer reads
    the one it knows (static keys read `key`, the database authorizer reads `token`)."""
    params: dict[str, str] = {}
    # Most requests (every part and segment) carry no query and no cookie: parse neither unless it is there.
    if request.query_string:
        query = request.query
        for name in ("key", "token"):
            value = query.get(name)
            if value is not None:
                params[name] = value
    headers = request.headers
    if hdrs.AUTHORIZATION in headers:
        _present(params, bearer(request))
    if hdrs.COOKIE in headers:
        _present(params, request.cookies.get(PLAY_COOKIE, ""))
    return params


def _present(params: dict[str, str], value: str) -> None:
    if value:
        params.setdefault("key", value)
        params.setdefault("token", value)


class PlayAccess:
    """Play authorization for HTTP requests, shared by HLS and WHEP."""

    def __init__(self, authorizer: Authorizer, registry: CollectorRegistry) -> None:
        self.authorizer = authorizer
        self._open_grants: dict[tuple[str, str], StreamGrant] = {}
        # An authorizer that can answer a credential-less play from what it already knows (`QuickPlay`).
        self._play_now = authorizer.play_now if isinstance(authorizer, QuickPlay) else None
        self.denied = Counter(
            "mediaserver_play_denied", "Play requests refused by the authorizer", ["protocol"], registry=registry
        )

    async def check(self, request: web.Request, protocol: str, credential: bool = False) -> StreamGrant | Denied:
        """The authorizer's answer; `credential` asks for a credential to hand back (see WANTS_CREDENTIAL)."""
        match_info = request.match_info
        app, name = match_info["app"], match_info["name"]
        if type(self.authorizer) is AllowAll:
            return self._open_grant(app, name)
        params = credentials(request)
        if credential:
            params[WANTS_CREDENTIAL] = "1"
        result = await self.authorizer.authorize_play(app, name, params, request.remote or "")
        if isinstance(result, Denied):
            self.denied.labels(protocol).inc()
            log.info(
                "event=play_denied protocol=%s app=%s peer=%s reason=%s", protocol, app, request.remote, result.reason
            )
        return result

    def _open_grant(self, app: str, name: str) -> StreamGrant:
        # AllowAll grants every play whatever the request carries: nothing to collect, nothing to ask (thousands
        # of HLS requests a second come this way), and the same grant again (grants are frozen).
        grant = self._open_grants.get((app, name))
        if grant is None:
            if len(self._open_grants) >= _OPEN_GRANTS:
                self._open_grants.clear()
            grant = self._open_grants[(app, name)] = StreamGrant(app, name)
        return grant

    def check_now(self, app: str, name: str, peer: str) -> StreamGrant | None:
        """The grant of a play that carries no credential, when the authorizer knows it without waiting; None
        when it would have to look (or refuses, or hands a credential back): then `check` answers."""
        if type(self.authorizer) is AllowAll:
            return self._open_grant(app, name)
        if self._play_now is None:
            return None
        result = self._play_now(app, name, peer)
        return result if isinstance(result, StreamGrant) and result.credential is None else None


def set_play_cookie(request: web.Request, response: web.StreamResponse, grant: StreamGrant) -> None:
    """Hand the grant's credential back as a cookie scoped to the stream's HLS folder (renewed per playlist)."""
    if grant.credential is None or response.prepared:
        return
    response.set_cookie(
        PLAY_COOKIE,
        grant.credential,
        path=f"/hls/{request.match_info['app']}/{request.match_info['name']}/",
        max_age=grant.credential_ttl or None,
        httponly=True,
        samesite="Lax",
        secure=request.secure,
    )
