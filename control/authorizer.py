"""Publish and play authorization from the database: stream key -> enabled camera.

Lookups are cached in memory; every camera change made through this process invalidates
the cache at once, and entries expire after `api.authorizer_cache_ttl` so changes made by
another node (or the CLI) apply within that time. Unknown keys are never cached.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from control.audit import Actor, Audit
from control.security import TokenError, TokenService
from control.store import Camera, Store
from mediaserver.auth import AuthResult, Denied, StreamGrant, redact
from mediaserver.http.access import RENEW, WANTS_CREDENTIAL
from mediaserver.transcode.ladder import split_rung_stream

log = logging.getLogger("control.authorizer")

MAX_CACHED = 100_000
# Denied publishes audited per client IP and minute; the rest are only logged and counted.
AUDIT_DENIALS_PER_MINUTE = 10


@dataclass(frozen=True, slots=True)
class CameraAuth:
    id: str
    stream_key: str
    enabled: bool
    private: bool


def peer_ip(peer: str) -> str:
    host, sep, port = peer.rpartition(":")
    if sep and port.isdigit():
        return host.strip("[]")
    return peer


class DatabaseAuthorizer:
    def __init__(
        self,
        store: Store,
        tokens: TokenService,
        audit: Audit,
        app: str = "live",
        cache_ttl: float = 30.0,
        rungs: tuple[str, ...] = (),
    ) -> None:
        # ABR rung names ([transcode] ladder): live/<camera>_720p plays with the camera's own rights.
        self._rungs = rungs
        self._store = store
        self._tokens = tokens
        self._audit = audit
        self.app = app
        self._ttl = cache_ttl
        self._by_key: dict[str, tuple[CameraAuth, float]] = {}
        self._by_id: dict[str, tuple[CameraAuth, float]] = {}
        self._denials: dict[str, tuple[int, int]] = {}
        self.lookups = 0
        # Cameras being looked up again for `play_now`, which answers from their expired entry meanwhile.
        self._refreshing: dict[str, asyncio.Task[None]] = {}

    def invalidate(self) -> None:
        self._by_key.clear()
        self._by_id.clear()

    def _remember(self, camera: CameraAuth) -> None:
        if len(self._by_key) >= MAX_CACHED:
            self.invalidate()
        expires = time.monotonic() + self._ttl
        self._by_key[camera.stream_key] = (camera, expires)
        self._by_id[camera.id] = (camera, expires)

    async def _load(self, by_key: str | None = None, by_id: str | None = None) -> CameraAuth | None:
        self.lookups += 1
        query = select(Camera.id, Camera.stream_key, Camera.enabled, Camera.private)
        query = query.where(Camera.stream_key == by_key) if by_key is not None else query.where(Camera.id == by_id)
        row = await self._store.read(lambda session: session.execute(query).first())
        if row is None:
            return None
        camera = CameraAuth(row.id, row.stream_key, row.enabled, row.private)
        self._remember(camera)
        return camera

    async def camera_for_key(self, key: str) -> CameraAuth | None:
        if not key or len(key) > 64:
            return None
        cached = self._by_key.get(key)
        if cached is not None and cached[1] > time.monotonic():
            camera: CameraAuth | None = cached[0]
        else:
            camera = await self._load(by_key=key)
        if camera is None or not hmac.compare_digest(camera.stream_key.encode(), key.encode()):
            return None
        return camera

    async def camera_by_id(self, camera_id: str) -> CameraAuth | None:
        if not camera_id or len(camera_id) > 64:
            return None
        cached = self._by_id.get(camera_id)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        return await self._load(by_id=camera_id)

    async def authorize_publish(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult:
        key = params.get("key") or name
        if app != self.app:
            return await self._deny(peer, "unknown_app", app, key)
        camera = await self.camera_for_key(key)
        if camera is None:
            return await self._deny(peer, "bad_stream_key", app, key)
        if not camera.enabled:
            return await self._deny(peer, "camera_disabled", app, key, camera.id)
        return StreamGrant(app, camera.id, camera_id=camera.id)

    async def authorize_play(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult:
        if app != self.app:
            return Denied("unknown_app")
        camera = await self.camera_by_id(self._camera_of(name))
        if camera is None:
            return Denied("unknown_camera")
        return self._play_grant(camera, app, name, params)

    def play_now(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult | None:
        """`authorize_play` from the cache alone: None when it would look the camera up."""
        if app != self.app:
            return None
        camera_id = self._camera_of(name)
        cached = self._by_id.get(camera_id)
        if cached is None:
            return None
        camera, expires = cached
        now = time.monotonic()
        if expires <= now:
            # Expired: looked up again in the background, the entry still answering for one more lifetime. Else
            # every viewer's next request after the expiry would leave the HTTP front for good (a connection it
            # hands to aiohttp stays there).
            if now - expires > self._ttl:
                return None
            self._refresh(camera_id)
        return self._play_grant(camera, app, name, params)

    def prepare_play(self, app: str, name: str) -> asyncio.Future[Any] | None:
        """The lookup `play_now` needs for a camera it does not hold (one for every request waiting on it)."""
        if app != self.app:
            return None
        camera_id = self._camera_of(name)
        if not camera_id or len(camera_id) > 64:
            return None
        cached = self._by_id.get(camera_id)
        if cached is not None and time.monotonic() - cached[1] <= self._ttl:
            return None  # held (fresh, or answering while it is read again)
        return self._refresh(camera_id)

    def _refresh(self, camera_id: str) -> asyncio.Task[None]:
        task = self._refreshing.get(camera_id)
        if task is None:
            task = self._refreshing[camera_id] = asyncio.get_running_loop().create_task(self._reload(camera_id))
        return task

    async def _reload(self, camera_id: str) -> None:
        try:
            if await self._load(by_id=camera_id) is None:  # gone: its entries go too
                stale = self._by_id.pop(camera_id, None)
                if stale is not None:
                    self._by_key.pop(stale[0].stream_key, None)
        except Exception as exc:  # the entry stays until its extra lifetime ends; aiohttp's check says why
            log.warning("event=authorizer_refresh_failed camera=%s error=%s", camera_id, type(exc).__name__)
        finally:
            del self._refreshing[camera_id]

    def _camera_of(self, name: str) -> str:
        """The camera a played name shows: a rung of its ladder is its picture, with the same rights."""
        rung = split_rung_stream(name, self._rungs)
        return rung[0] if rung is not None else name

    def _play_grant(self, camera: CameraAuth, app: str, name: str, params: dict[str, str]) -> AuthResult:
        """A public camera plays for anyone; a private one with its play token (checked tokens are remembered,
        so this is no I/O and, most of the time, no signature check either). The grant names the rung played,
        or the camera's own stream."""
        stream = name if split_rung_stream(name, self._rungs) is not None else camera.id
        if not camera.private:
            return StreamGrant(app, stream, camera_id=camera.id)
        token = params.get("token", "")
        if not token:
            return Denied("bad_play_token")
        try:
            claims = self._tokens.play_claims(token)
        except TokenError as exc:
            return Denied(str(exc))
        if claims.camera_id != camera.id:
            return Denied("bad_play_token")
        wants = params.get(WANTS_CREDENTIAL)
        ttl = self._tokens.play_ttl
        if wants is None or (wants == RENEW and claims.expires_at - time.time() > ttl / 2):
            return StreamGrant(app, stream, camera_id=camera.id)
        # A fresh token renews the HLS viewer's cookie: on its first playlist, then once the cookie is half spent.
        fresh, _ = self._tokens.issue_play(camera.id)
        return StreamGrant(app, stream, camera_id=camera.id, credential=fresh, credential_ttl=ttl)

    async def _deny(self, peer: str, reason: str, app: str, key: str, camera_id: str = "") -> Denied:
        ip = peer_ip(peer)
        minute = int(time.monotonic() // 60)
        seen_minute, count = self._denials.get(ip, (minute, 0))
        count = count + 1 if seen_minute == minute else 1
        if len(self._denials) > 10_000:
            self._denials.clear()
        self._denials[ip] = (minute, count)
        if count <= AUDIT_DENIALS_PER_MINUTE:
            await self._audit.record(
                "stream.publish_denied",
                Actor(None, "", ip),
                "camera" if camera_id else "stream",
                camera_id or f"{app}/{redact(key)}",
                success=False,
                details={"reason": reason, "app": app, "key": redact(key), "peer": peer},
            )
        else:
            log.warning("event=publish_denied_not_audited peer=%s reason=%s", peer, reason)
        return Denied(reason)
