"""Thumbnails along a camera's recordings, for timeline scrubbing: the list in a time range, and the picture at a
time. The recorder makes them (`mediaserver.recording.thumbnails`) on the hot root, so they are served from there
whatever tier the recordings are on. Paths are made from the camera's row and a number, never from the request."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, Field, RootModel

from control.api.base import ApiError, RouteTable, not_found, path_camera_id, send
from control.api.recording_schemas import RangeQuery
from control.api.recording_support import READ, parse_time, time_range
from control.api.schemas import Query
from control.api.validated import query
from control.services import Services, services
from control.store import Camera
from mediaserver.recording import layout, thumbnails

routes = RouteTable("recordings")
JPEG = "image/jpeg"
# Without a configured interval (thumbnails turned off), pictures made before are still found this far back.
FALLBACK_INTERVAL = 60.0
# A picture named by its own time never changes; one found for a time after it may be followed by a newer one.
EXACT_MAX_AGE = 86400
NEAREST_MAX_AGE = 10
# A list longer than this is thinned evenly (every k-th picture): a timeline needs no more, and a day at a short
# thumbnail_interval would otherwise be a list of tens of thousands.
MAX_LISTED = 2000


class ThumbnailOut(BaseModel):
    # Wall clock of the keyframe, epoch seconds (ms precision).
    time: float
    # The picture, relative to this list's URL (`thumbnail.jpg?at=<time>`).
    url: str


class ThumbnailList(RootModel[list[ThumbnailOut]]):
    pass


class ThumbnailAt(Query):
    at: Annotated[
        str | None, Field(max_length=40, description="Required. ISO-8601 (UTC if no offset) or epoch seconds")
    ] = None


async def _camera_folder(svc: Services, camera_id: str) -> str:
    """The camera's thumbnail folder, named after its row (the id the recorder's folder is named after too)."""
    async with svc.store.reader() as session:
        camera = await session.get(Camera, camera_id)
    if camera is None:
        raise not_found("camera")
    app = svc.config.api.publish_app
    return layout.stream_folder(app, camera.id, app)


def _root(svc: Services) -> Path:
    return Path(svc.config.recording_root())


def _stamp(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


@routes.route(
    "GET",
    "/cameras/{camera_id}/thumbnails",
    permission=READ,
    summary="The camera's recording thumbnails in a time range, oldest first (at most 2000, evenly thinned)",
    query=RangeQuery,
    response=ThumbnailList,
    errors=(400, 404),
)
async def list_thumbnails(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    camera_id = path_camera_id(request)
    q = query(request, RangeQuery)
    start, end = time_range(svc, q.start, q.end)
    folder = await _camera_folder(svc, camera_id)
    try:
        found = await asyncio.to_thread(
            thumbnails.list_between, _root(svc), folder, round(start * 1000), round(end * 1000)
        )
    except layout.LayoutError as exc:
        raise not_found("camera") from exc
    found = thumbnails.thinned(found, MAX_LISTED)
    items = [ThumbnailOut(time=ms / 1000, url=f"thumbnail.jpg?at={_stamp(ms)}") for ms in found]
    return send(ThumbnailList(items))


@routes.route(
    "GET",
    "/cameras/{camera_id}/thumbnail.jpg",
    permission=READ,
    summary="The camera's recording thumbnail at a time: the latest at or before ?at=, within two thumbnail intervals",
    query=ThumbnailAt,
    errors=(400, 404),
    media_type=JPEG,
)
async def thumbnail_at(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    camera_id = path_camera_id(request)
    q = query(request, ThumbnailAt)
    if q.at is None:
        raise ApiError(400, "time_required", "at is required")
    at_ms = round(parse_time(q.at, "at") * 1000)
    folder = await _camera_folder(svc, camera_id)
    window_ms = round(2 * (svc.config.recording.thumbnail_interval or FALLBACK_INTERVAL) * 1000)
    root = _root(svc)
    missing = ApiError(404, "thumbnail_not_found", "no thumbnail was made near this time")
    try:
        found = await asyncio.to_thread(thumbnails.list_between, root, folder, at_ms - window_ms, at_ms)
        if not found:
            raise missing
        ms = found[-1]
        jpeg = await asyncio.to_thread(thumbnails.path_of(root, folder, ms).read_bytes)
    except (FileNotFoundError, layout.LayoutError) as exc:  # deleted meanwhile, or a link leaving the root
        raise missing from exc
    max_age = EXACT_MAX_AGE if ms == at_ms else NEAREST_MAX_AGE
    return web.Response(body=jpeg, content_type=JPEG, headers={"Cache-Control": f"private, max-age={max_age}"})
