"""What the recordings routes share: time ranges from query strings, row and tier look-ups, byte-range serving
of a stored file, and the media token that lets a player (hls.js cannot send a bearer header) read one file."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from aiohttp import web
from sqlalchemy import or_, select

from control.api.authn import unauthorized
from control.api.base import ApiError, not_found
from control.api.recording_schemas import (
    RecordingOut,
)
from control.middleware import API_HEADERS
from control.rbac import Permission, permissions_for
from control.security import TokenError
from control.services import Principal, Services
from control.store import Camera, Recording, User
from mediaserver.recording import layout, timeline
from mediaserver.recording.storage import Tier, TierError

log = logging.getLogger("control.recordings")
READ = Permission.RECORDINGS_READ
DOWNLOAD = Permission.RECORDINGS_DOWNLOAD
MP4 = "video/mp4"
# Times before this are typing mistakes, not recordings; times more than a day ahead, likewise.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
FUTURE_SLACK = 86400.0
# Exports remux whole ranges: a few at a time per process.
MAX_EXPORTS = 2
# The recording a media token (`?token=`) was checked for.
MEDIA_GRANT = web.RequestKey("recording_media_grant", int)
_EPOCH = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,9})?$")
_RANGE = re.compile(r"^bytes=([0-9]{0,18})-([0-9]{0,18})$")


# ----- helpers -----------------------------------------------------------------------------------------------


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def parse_time(raw: str, name: str) -> float:
    """Epoch seconds from ISO-8601 (no offset: UTC) or epoch seconds; 400 for anything else or absurd."""
    text = raw.strip()
    try:
        if _EPOCH.match(text):
            value = float(text)
        else:
            parsed = datetime.fromisoformat(text)
            value = (parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError) as exc:
        raise ApiError(400, "invalid_time", f"{name} must be ISO-8601 or epoch seconds") from exc
    if not EARLIEST <= value <= time.time() + FUTURE_SLACK:
        raise ApiError(400, "time_out_of_range", f"{name} must lie between 2000-01-01 and one day from now")
    return value


def time_range(svc: Services, start: str | None, end: str | None) -> tuple[float, float]:
    """A bounded, ordered range no longer than recording.max_query_range."""
    if start is None or end is None:
        raise ApiError(400, "range_required", "both start and end are required")
    first, last = parse_time(start, "start"), parse_time(end, "end")
    if last <= first:
        raise ApiError(400, "range_reversed", "end must come after start")
    limit = svc.config.recording.max_query_range
    if last - first > limit:
        raise ApiError(400, "range_too_long", f"a range may span at most {limit:g} s (recording.max_query_range)")
    return first, last


def unavailable(message: str = "the recording cannot be read right now") -> ApiError:
    return ApiError(503, "recording_unavailable", message, headers={"Retry-After": "5"})


def recording_view(row: Recording) -> RecordingOut:
    return RecordingOut(
        id=row.id,
        camera_id=row.camera_id,
        started_at=row.started_at,
        ended_at=row.ended_at,
        duration_seconds=row.duration_seconds,
        size_bytes=row.size_bytes,
        tier=row.tier,
        codecs=[c for c in row.codecs.split(",") if c],
        checksum=row.checksum,
        complete=row.checksum is not None,
    )


def tier_of(svc: Services, row: Recording) -> Tier:
    tier = svc.recordings.tiers.get(row.tier)
    if tier is None:
        raise unavailable(f"the {row.tier} tier is not configured on this server")
    return tier


async def get_row(svc: Services, recording_id: int) -> Recording:
    async with svc.store.reader() as session:
        row = await session.get(Recording, recording_id)
    if row is None:
        raise not_found("recording")
    return row


async def require_camera(svc: Services, camera_id: str) -> None:
    async with svc.store.reader() as session:
        if await session.scalar(select(Camera.id).where(Camera.id == camera_id)) is None:
            raise not_found("camera")


async def rows_in_range(svc: Services, camera_id: str, start: float, end: float) -> list[Recording]:
    async with svc.store.reader() as session:
        rows = await session.scalars(
            select(Recording)
            .where(
                Recording.camera_id == camera_id,
                Recording.started_at < _utc(end),
                # An open file's ended_at lags the disk by up to progress_interval: its index says more.
                or_(Recording.ended_at.is_(None), Recording.checksum.is_(None), Recording.ended_at > _utc(start)),
            )
            .order_by(Recording.started_at, Recording.id)
        )
        return list(rows)


async def indexed(svc: Services, rows: Sequence[Recording]) -> list[timeline.IndexedFile]:
    """The segment indexes of the rows; a file whose index cannot be read is left out (it shows as a gap)."""
    files: list[timeline.IndexedFile] = []
    for row in rows:
        try:
            files.append(
                await svc.recordings.indexes.load(row.id, tier_of(svc, row), row.path, closed=row.checksum is not None)
            )
        except (ApiError, TierError, layout.LayoutError) as exc:
            log.warning("event=recording_index_unreadable id=%d tier=%s error=%s", row.id, row.tier, exc)
    return files


async def selections_for(
    svc: Services, camera_id: str, start: float, end: float
) -> tuple[list[timeline.Selection], dict[int, Recording]]:
    rows = await rows_in_range(svc, camera_id, start, end)
    files = await indexed(svc, rows)
    # A day of segments is tens of thousands of entries: looked through off the event loop.
    chosen = await asyncio.to_thread(timeline.select, files, start, end)
    return chosen, {row.id: row for row in rows}


class RangeNotSatisfiable(Exception):
    pass


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """[first, end) of a single `Range: bytes=` range; None when it is to be ignored (malformed, several
    ranges: RFC 9110 lets a server answer those with the whole file)."""
    match = _RANGE.match(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(size - length, 0), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    return start, min(int(last) + 1, size) if last else size


async def serve_recording(
    request: web.Request, svc: Services, row: Recording, filename: str | None
) -> web.StreamResponse:
    """The recording's bytes, whole or the one range asked for, streamed from its tier."""
    tier = tier_of(svc, row)
    try:
        size = await tier.size(row.path)
    except layout.LayoutError as exc:
        log.warning("event=recording_path_refused id=%d", row.id)
        raise not_found("recording") from exc
    except TierError as exc:
        raise unavailable() from exc
    # A closed file never changes: its checksum names this version (If-Range).
    etag = f'"{row.checksum}"' if row.checksum else None
    part = None
    wanted = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if wanted is not None and (if_range is None or (etag is not None and if_range == etag)):
        try:
            part = byte_range(wanted, size)
        except RangeNotSatisfiable as exc:
            raise ApiError(
                416, "range_not_satisfiable", f"the file has {size} bytes", headers={"Content-Range": f"bytes */{size}"}
            ) from exc
    start, end = part if part is not None else (0, size)
    # Streamed answers are prepared here, before the security-headers middleware sees them: set them now.
    response = web.StreamResponse(status=206 if part is not None else 200, headers=API_HEADERS)
    response.headers["Content-Type"] = MP4
    response.headers["Accept-Ranges"] = "bytes"
    if etag is not None:
        response.headers["ETag"] = etag
    if part is not None:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    if filename is not None:
        response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.content_length = end - start
    sent = 0
    # Players drop requests when they seek: a client gone mid-answer is routine, not an error.
    try:
        await response.prepare(request)
        async for chunk in tier.read(row.path, start, end):
            await response.write(chunk)
            sent += len(chunk)
        if sent == end - start:
            await response.write_eof()
            return response
    except (ConnectionError, TierError) as exc:
        log.info("event=recording_read_cut id=%d sent=%d error=%s", row.id, sent, type(exc).__name__)
    response.force_close()  # the body came up short: the connection cannot carry another answer
    return response


async def media_token(request: web.Request, svc: Services) -> Principal:
    """The caller of a media URL with `?token=`: the user it was issued to, allowed to read one recording."""
    raw = request.query.get("token", "")
    if not raw or len(raw) > 4096:
        raise unauthorized("invalid_token", "the token is not valid")
    try:
        grant = svc.tokens.media_grant(raw)
    except TokenError as exc:
        code = str(exc)
        message = "the media token has expired: load the playlist again" if code == "token_expired" else None
        raise unauthorized(code, message or "the token is not valid") from exc
    async with svc.store.reader() as session:
        user = (
            await session.execute(
                select(User.id, User.username, User.role, User.disabled).where(User.id == grant.user_id)
            )
        ).first()
    # As with access tokens, the user as it is now decides: a disabled or demoted user's links stop working.
    if user is None or user.disabled:
        raise unauthorized("invalid_token", "the token is not valid")
    request[MEDIA_GRANT] = grant.recording_id
    return Principal(user.id, user.username, user.role, permissions_for(user.role) & {READ})


# ----- the index ---------------------------------------------------------------------------------------------
