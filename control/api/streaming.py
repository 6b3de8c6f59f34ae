"""Playback URLs with signed play tokens, and the nginx-rtmp on_publish/on_play callback."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from aiohttp import web
from sqlalchemy import select

from control.api.base import ApiError, RouteTable, not_found, path_camera_id, send
from control.api.schemas import PlaybackOut, StreamingAuthForm, StreamingAuthOut
from control.api.validated import form_body
from control.rbac import Permission
from control.services import Services, client_ip, services
from control.store import Camera
from mediaserver.auth import Denied, split_stream_name

routes = RouteTable("streaming")


def base_url(svc: Services, request: web.Request) -> str:
    if svc.config.api.public_url:
        return svc.config.api.public_url.rstrip("/")
    return f"{request.scheme}://{request.host}"


async def _playback(request: web.Request, protocol: Literal["hls", "webrtc"]) -> web.StreamResponse:
    svc = services(request)
    camera_id = path_camera_id(request)
    async with svc.store.reader() as session:
        found = await session.scalar(select(Camera.id).where(Camera.id == camera_id))
    if found is None:
        raise not_found("camera")
    app = svc.config.api.publish_app
    token, expires = svc.tokens.issue_play(camera_id)
    base = base_url(svc, request)
    if protocol == "hls":
        url = f"{base}/hls/{app}/{camera_id}/index.m3u8?token={token}"
    else:
        url = f"{base}/whep/{app}/{camera_id}?token={token}"
    return send(
        PlaybackOut(
            camera_id=camera_id,
            protocol=protocol,
            url=url,
            token=token,
            expires_at=datetime.fromtimestamp(expires, UTC),
            live=svc.hub.live(app, camera_id) is not None,
        )
    )


@routes.route(
    "GET",
    "/streaming/hls/{camera_id}",
    permission=Permission.STREAMS_READ,
    summary="HLS playback URL of a camera, with a short-lived play token",
    response=PlaybackOut,
    errors=(404,),
)
async def hls_url(request: web.Request) -> web.StreamResponse:
    return await _playback(request, "hls")


@routes.route(
    "GET",
    "/streaming/webrtc/{camera_id}",
    permission=Permission.STREAMS_READ,
    summary="WebRTC (WHEP) playback URL of a camera, with a short-lived play token",
    response=PlaybackOut,
    errors=(404,),
)
async def webrtc_url(request: web.Request) -> web.StreamResponse:
    return await _playback(request, "webrtc")


@routes.route(
    "POST",
    "/streaming/auth",
    permission=None,
    authenticated=False,
    summary="nginx-rtmp on_publish/on_play callback (form fields call, app, name, addr, ...): 2xx allows, 403 refuses",
    body=StreamingAuthForm,
    form=True,
    response=StreamingAuthOut,
    errors=(403,),
)
async def streaming_auth(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    # Unauthenticated by design (nginx-rtmp calls it), so bounded per caller like a login.
    api = svc.config.api
    decision = await svc.limiter.hit(f"streaming_auth:{client_ip(request)}", api.rate_per_token, api.rate_window)
    if not decision.allowed:
        retry = str(max(1, int(decision.retry_after + 0.999)))
        raise ApiError(429, "rate_limited", "too many requests", headers={"Retry-After": retry})
    form = await form_body(request, StreamingAuthForm)
    name, params = split_stream_name(form.name)
    for key, value in (form.model_extra or {}).items():
        if isinstance(value, str) and key not in params:
            params[key] = value
    peer = form.addr or client_ip(request)
    if form.call == "publish":
        result = await svc.authorizer.authorize_publish(form.app, name, params, peer)
    elif form.call == "play":
        result = await svc.authorizer.authorize_play(form.app, name, params, peer)
    else:  # done, update_publish, record_done ...: nothing to decide
        return send(StreamingAuthOut(ok=True))
    if isinstance(result, Denied):
        raise ApiError(403, "forbidden", f"{form.call} refused: {result.reason}")
    return send(StreamingAuthOut(ok=True, camera_id=result.camera_id))
