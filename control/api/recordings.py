"""Recordings: the index (list, get, delete), downloads with Range, playback by time (coverage, an HLS VOD
playlist over the files' byte ranges, export as one MP4) and manual start/stop of a camera's recording.

Files are read through their tier (`svc.recordings.tiers[row.tier]`), never opened here, so hot, warm and cold
recordings play the same way. The timeline, playlist and remux logic lives in `mediaserver.recording`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import tempfile
from pathlib import Path

from aiohttp import web
from sqlalchemy import delete, or_, select

from control.api.base import ApiError, RouteTable, path_camera_id, path_int, send
from control.api.paging import read_page
from control.api.recording_schemas import (
    CoverageOut,
    RangeQuery,
    RecordingAction,
    RecordingList,
    RecordingOut,
    RecordingQuery,
    RecordingStateOut,
    TimeSpan,
)
from control.api.recording_support import (
    DOWNLOAD,
    MAX_EXPORTS,
    MEDIA_GRANT,
    MP4,
    READ,
    _utc,
    get_row,
    media_token,
    parse_time,
    recording_view,
    require_camera,
    selections_for,
    serve_recording,
    tier_of,
    time_range,
    unavailable,
)
from control.api.validated import body, query
from control.audit import Actor
from control.middleware import API_HEADERS
from control.rbac import Permission
from control.services import Services, actor, principal, services
from control.store import Recording
from mediaserver.recording import layout, playlist, timeline
from mediaserver.recording.export import ExportError, Source, plan_export
from mediaserver.recording.storage import TierError
from mediaserver.recording.thumbnails import delete_recording_thumbnails

log = logging.getLogger("control.recordings")

routes = RouteTable("recordings")
# Exports running now in this process (each holds a worker thread and a temp file).
_exports = 0


@routes.route(
    "GET",
    "/recordings",
    permission=READ,
    summary="List recordings, oldest first (filters: camera_id, start/end overlap, tier; paged with limit/offset)",
    query=RecordingQuery,
    response=RecordingList,
    errors=(400,),
)
async def list_recordings(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    q = query(request, RecordingQuery)
    conditions = []
    if q.camera_id is not None:
        conditions.append(Recording.camera_id == q.camera_id)
    if q.tier is not None:
        conditions.append(Recording.tier == q.tier)
    start = parse_time(q.start, "start") if q.start is not None else None
    end = parse_time(q.end, "end") if q.end is not None else None
    if start is not None and end is not None and end <= start:
        raise ApiError(400, "range_reversed", "end must come after start")
    if start is not None:
        conditions.append(
            or_(Recording.ended_at.is_(None), Recording.checksum.is_(None), Recording.ended_at > _utc(start))
        )
    if end is not None:
        conditions.append(Recording.started_at < _utc(end))
    statement = select(Recording).order_by(Recording.started_at, Recording.id)
    rows, total = await svc.store.read(
        lambda session: read_page(session, statement, Recording.__table__, conditions, q.limit, q.offset)
    )
    items = [recording_view(row[0]) for row in rows]
    return send(RecordingList(items=items, total=total, limit=q.limit, offset=q.offset))


@routes.route(
    "GET",
    "/recordings/{recording_id}",
    permission=READ,
    summary="Get a recording",
    response=RecordingOut,
    errors=(404,),
)
async def get_recording(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    row = await get_row(svc, path_int(request, "recording_id", "recording"))
    return send(recording_view(row))


@routes.route(
    "DELETE",
    "/recordings/{recording_id}",
    permission=Permission.RECORDINGS_DELETE,
    summary="Delete a recording (its file and index, then its row); refused while the file is being written",
    status=204,
    errors=(404, 409, 503),
)
async def delete_recording(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    recording_id = path_int(request, "recording_id", "recording")
    row = await get_row(svc, recording_id)
    recorder = svc.recordings.recorder
    if (
        row.checksum is None
        and recorder is not None
        and recorder.is_recording(svc.config.api.publish_app, row.camera_id)
    ):
        raise ApiError(409, "recording_in_progress", "the file is still being written: stop recording or wait for it")
    tier = tier_of(svc, row)
    who = actor(request)
    details: dict[str, object] = {
        "camera_id": row.camera_id,
        "started_at": row.started_at.isoformat(),
        "tier": row.tier,
        "size_bytes": row.size_bytes,
    }
    try:
        await tier.delete(row.path)
    except layout.LayoutError:
        # A row naming a path outside the root owns no file of ours: drop the row, touch nothing on disk.
        log.warning("event=recording_path_refused id=%d", row.id)
        details["file"] = "path refused"
    except TierError as exc:
        await svc.audit.record(
            "recording.delete", who, "recording", str(row.id), success=False, details={**details, "error": str(exc)}
        )
        raise unavailable("the recording's storage cannot delete it right now") from exc
    async with svc.store.sessions.begin() as session:
        await session.execute(delete(Recording).where(Recording.id == row.id))
        svc.audit.add(session, "recording.delete", who, "recording", str(row.id), details=details)
    await delete_recording_thumbnails(Path(svc.config.recording_root()), row.camera_id, row.started_at, row.ended_at)
    return web.Response(status=204)


@routes.route(
    "GET",
    "/recordings/{recording_id}/download",
    permission=DOWNLOAD,
    summary="The recording's file (fragmented MP4) as an attachment; Range requests are answered (206)",
    errors=(404, 503),
    media_type=MP4,
    ranges=True,
)
async def download_recording(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    row = await get_row(svc, path_int(request, "recording_id", "recording"))
    filename = f"{row.camera_id}-{layout.start_stamp(row.started_at.timestamp())}.mp4"
    return await serve_recording(request, svc, row, filename)


@routes.route(
    "GET",
    "/recordings/{recording_id}/media",
    permission=READ,
    summary="The recording's bytes for players (Range requests); takes the playlist's ?token= instead of a bearer",
    errors=(404, 503),
    media_type=MP4,
    ranges=True,
    query_token=media_token,
)
async def recording_media(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    recording_id = path_int(request, "recording_id", "recording")
    granted = request.get(MEDIA_GRANT)
    if granted is not None and granted != recording_id:
        raise ApiError(403, "token_not_for_this_recording", "this media token is for another recording")
    return await serve_recording(request, svc, await get_row(svc, recording_id), None)


# ----- playback by time --------------------------------------------------------------------------------------


@routes.route(
    "GET",
    "/cameras/{camera_id}/recordings/coverage",
    permission=READ,
    summary="Where the camera's recordings cover a time range (spans) and where they do not (gaps)",
    query=RangeQuery,
    response=CoverageOut,
    errors=(400, 404),
)
async def recording_coverage(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    camera_id = path_camera_id(request)
    q = query(request, RangeQuery)
    start, end = time_range(svc, q.start, q.end)
    await require_camera(svc, camera_id)
    chosen, _ = await selections_for(svc, camera_id, start, end)
    spans, gaps = await asyncio.to_thread(timeline.coverage, chosen, start, end)
    return send(
        CoverageOut(
            camera_id=camera_id,
            start=_utc(start),
            end=_utc(end),
            spans=[TimeSpan(start=_utc(s.start), end=_utc(s.end)) for s in spans],
            gaps=[TimeSpan(start=_utc(g.start), end=_utc(g.end)) for g in gaps],
        )
    )


@routes.route(
    "GET",
    "/cameras/{camera_id}/playback.m3u8",
    permission=READ,
    summary="An HLS VOD playlist of a time range, across files and gaps; its media URLs carry short-lived tokens",
    query=RangeQuery,
    errors=(400, 404),
    media_type=playlist.CONTENT_TYPE,
)
async def recording_playlist(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    camera_id = path_camera_id(request)
    q = query(request, RangeQuery)
    start, end = time_range(svc, q.start, q.end)
    await require_camera(svc, camera_id)
    chosen, _ = await selections_for(svc, camera_id, start, end)
    if not chosen:
        raise ApiError(404, "no_recordings", "nothing was recorded in this range")
    # Good for as long as someone watching in real time needs, plus the play-token lifetime to start.
    ttl = svc.tokens.play_ttl + math.ceil(timeline.total_duration(chosen))
    user_id = principal(request).user_id
    tokens = {s.ref: svc.tokens.issue_media(s.ref, user_id, ttl)[0] for s in chosen}
    # Relative URIs: they resolve against wherever the playlist was fetched from (a proxy's prefix included).
    text = await asyncio.to_thread(
        playlist.render_vod, chosen, lambda ref: f"../../recordings/{ref}/media?token={tokens[ref]}"
    )
    response = web.Response(text=text, content_type=playlist.CONTENT_TYPE)
    # A day's playlist is megabytes of near-identical lines: compressed (in a worker thread, by aiohttp).
    response.enable_compression()
    return response


def _export_dir(svc: Services) -> Path:
    """Scratch space beside the data, not /tmp: exports can be as large as a day of video."""
    folder = Path(svc.config.server.data_dir) / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="export-", dir=folder))


@routes.route(
    "GET",
    "/cameras/{camera_id}/export.mp4",
    permission=DOWNLOAD,
    summary="A time range as one MP4 (moov first), cut at keyframes, without re-encoding; an attachment",
    query=RangeQuery,
    errors=(400, 404, 409, 503),
    media_type=MP4,
)
async def export_recording(request: web.Request) -> web.StreamResponse:
    global _exports
    svc = services(request)
    camera_id = path_camera_id(request)
    q = query(request, RangeQuery)
    start, end = time_range(svc, q.start, q.end)
    await require_camera(svc, camera_id)
    chosen, rows = await selections_for(svc, camera_id, start, end)
    if not chosen:
        raise ApiError(404, "no_recordings", "nothing was recorded in this range")
    sources = [Source(tier_of(svc, rows[s.ref]), rows[s.ref].path, s) for s in chosen]
    if _exports >= MAX_EXPORTS:
        raise ApiError(503, "export_busy", "other exports are running: try again shortly", headers={"Retry-After": "5"})
    _exports += 1
    workdir: Path | None = None
    try:
        workdir = await asyncio.to_thread(_export_dir, svc)
        try:
            plan = await plan_export(sources, workdir)
        except ExportError as exc:
            status = 409 if exc.code == "codec_changed" else 503
            raise ApiError(status, exc.code, exc.message) from exc
        except (TierError, layout.LayoutError) as exc:
            raise unavailable("a recording in the range cannot be read right now") from exc
        name = f"{camera_id}-{layout.start_stamp(chosen[0].start)}.mp4"
        response = web.StreamResponse(headers=API_HEADERS)
        response.headers["Content-Type"] = MP4
        response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
        response.content_length = plan.size
        try:
            await response.prepare(request)
            await response.write(plan.header)
            async for data in plan.body():
                await response.write(data)
            await response.write_eof()
        except ConnectionError:
            log.info("event=recording_export_cut camera=%s seconds=%.1f", camera_id, plan.duration)
            response.force_close()
        except ExportError as exc:
            # The answer has begun: all that is left is to cut it short, so the client sees it incomplete.
            log.warning("event=recording_export_failed camera=%s code=%s detail=%s", camera_id, exc.code, exc.message)
            response.force_close()
        finally:
            plan.close()
        return response
    finally:
        _exports -= 1
        if workdir is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(shutil.rmtree, workdir, True)


# ----- manual recording --------------------------------------------------------------------------------------


@routes.route(
    "POST",
    "/cameras/{camera_id}/recording",
    permission=Permission.CAMERAS_WRITE,
    summary="Start or stop recording a camera by hand (whatever its recording_enabled says)",
    body=RecordingAction,
    response=RecordingStateOut,
    errors=(404, 409),
)
async def set_recording(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    camera_id = path_camera_id(request)
    req = await body(request, RecordingAction)
    recording = await switch_recording(svc, camera_id, req.action == "start", actor(request))
    return send(RecordingStateOut(camera_id=camera_id, recording=recording))


async def switch_recording(svc: Services, camera_id: str, on: bool, who: Actor) -> bool:
    """Start or stop recording a camera by hand (audited); whether it records now."""
    await require_camera(svc, camera_id)
    recorder = svc.recordings.recorder
    if recorder is None:
        raise ApiError(409, "recorder_unavailable", "this server does not record (recording.enabled is off)")
    app = svc.config.api.publish_app
    changed = recorder.set_recording(app, camera_id, on)
    action = "start" if on else "stop"
    await svc.audit.record(
        f"recording.{action}", who, "camera", camera_id, details={"manual": True, "changed": changed}
    )
    return recorder.is_recording(app, camera_id)
