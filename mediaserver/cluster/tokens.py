"""How an edge node proves to an origin that it may pull a stream: a short-lived HMAC of the stream key,
signed with the cluster secret that every node shares, passed as the `cluster` parameter of the RTMP play."""

from __future__ import annotations

import hashlib
import hmac
import time

from mediaserver.auth import Authorizer, AuthResult, StreamGrant

PARAM = "cluster"
LIFETIME = 120


def _mac(secret: str, key: str, expiry: int) -> str:
    return hmac.new(secret.encode(), f"{key}|{expiry}".encode(), hashlib.sha256).hexdigest()[:40]


def sign(secret: str, key: str, now: float | None = None) -> str:
    expiry = int(now if now is not None else time.time()) + LIFETIME
    return f"{expiry}.{_mac(secret, key, expiry)}"


def verify(secret: str, key: str, token: str, now: float | None = None) -> bool:
    expiry_text, _, mac = token.partition(".")
    if not secret or not expiry_text.isdigit() or len(expiry_text) > 12:
        return False
    expiry = int(expiry_text)
    if expiry < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(mac, _mac(secret, key, expiry))


class ClusterAuthorizer:
    """Another node's signed pull plays at once; everything else is the inner authorizer's to decide."""

    def __init__(self, inner: Authorizer, secret: str) -> None:
        self._inner = inner
        self._secret = secret

    async def authorize_publish(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult:
        return await self._inner.authorize_publish(app, name, params, peer)

    async def authorize_play(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult:
        token = params.get(PARAM)
        if token is not None and verify(self._secret, f"{app}/{name}", token):
            return StreamGrant(app, name)
        return await self._inner.authorize_play(app, name, params, peer)
