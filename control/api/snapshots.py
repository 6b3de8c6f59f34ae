"""Camera snapshots: a JPEG of the camera's live picture, made by the data plane's Snapshotter."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from control.api.base import API_PREFIX, ApiError, RouteTable, not_found, path_camera_id
from control.rbac import Permission
from control.services import services
from control.store import Camera
from mediaserver.snapshot import SnapshotError

routes = RouteTable("cameras")
SNAPSHOT_PATH = "/cameras/{camera_id}/snapshot.jpg"


@routes.route(
    "GET",
    SNAPSHOT_PATH,
    permission=Permission.CAMERAS_READ,
    summary="A JPEG of the camera's live picture (its latest keyframe, scaled to snapshot.max_width, cached briefly)",
    errors=(404, 503),
    media_type="image/jpeg",
)
async def camera_snapshot(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    camera_id = path_camera_id(request)
    async with svc.store.reader() as session:
        camera = await session.get(Camera, camera_id)
    if camera is None:
        raise not_found("camera")
    stream = svc.hub.get(svc.config.api.publish_app, camera.id)
    if stream is None:
        raise ApiError(404, "stream_not_live", "the camera is not streaming")
    try:
        snapshot = await svc.snapshots.snapshot(stream)
    except SnapshotError as exc:
        # Nothing decodable yet (a stream that just started) or a keyframe FFmpeg refused: worth a retry.
        raise ApiError(503, exc.code, exc.message, headers={"Retry-After": "1"}) from exc
    return web.Response(
        body=snapshot.jpeg,
        content_type="image/jpeg",
        headers={"Cache-Control": f"private, max-age={snapshot.max_age()}"},
    )


def document(openapi: dict[str, Any]) -> dict[str, Any]:
    """The route's `media_type` documents the JPEG; add how long it may be cached."""
    operation = openapi.get("paths", {}).get(API_PREFIX + SNAPSHOT_PATH, {}).get("get")
    if operation is not None:
        answer = operation["responses"]["200"]
        answer["description"] = "The picture"
        answer["headers"] = {
            "Cache-Control": {"schema": {"type": "string"}, "description": "private, max-age=<seconds>"}
        }
    return openapi
