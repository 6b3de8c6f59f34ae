"""Thumbnails along recordings, for timeline scrubbing: one JPEG every `recording.thumbnail_interval` seconds of a
recorded stream, made from a keyframe the recorder is writing anyway.

The recorder offers the first segment-start fragment (it begins with a keyframe) at or after the interval since the
stream's last thumbnail. The init segment and that fragment are decoded with PyAV, scaled and encoded by the
snapshot helpers, and written atomically (a hidden temporary file, then a rename), all in one worker thread of our
own: nothing here runs on the event loop but the decision. When a thumbnail of the stream is still being made, or
the worker is busy, the offer is skipped (and counted): the next keyframe is offered again, nothing queues up.

On disk, always on the hot root whatever tier the recordings are on (they are small, and timelines of cold
recordings need them): `<root>/thumbnails/<camera>/<yyyy>/<mm>/<dd>/<epoch_ms>.jpg`, in UTC, named by the wall clock
of the keyframe (the clock of the recordings' index). Recordings begin with a 4-digit year folder at the top of the
root, so `thumbnails` is never taken for one (a camera named "thumbnails" lives under a day folder), and the walks
of start-up repair and reconcile (`repair.recordings_under`) never enter it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import av
from prometheus_client import CollectorRegistry, Counter, Histogram

from mediaserver.recording import layout
from mediaserver.snapshot import frame_to_jpeg

log = logging.getLogger("mediaserver.recording")

FOLDER = "thumbnails"
# JPEG quantiser (ffmpeg's -q:v, 2 best .. 31 smallest).
QUALITY = 5
# Thumbnails waiting for or in the worker thread, over all streams; an offer beyond is skipped.
MAX_PENDING = 2
_NAME = re.compile(r"^([0-9]{1,15})\.jpg$")


class ThumbnailError(Exception):
    """A fragment that yields no picture."""


# ----- where they are -----------------------------------------------------------------------------------------


def _checked_folder(folder: str) -> str:
    if not layout.SAFE_COMPONENT.match(folder) or ".." in folder:
        raise layout.LayoutError("not a camera folder")
    return folder


def relative_path(folder: str, at_ms: int) -> str:
    """`thumbnails/<camera>/<yyyy>/<mm>/<dd>/<epoch_ms>.jpg`, relative to the recording root."""
    if at_ms < 0:
        raise layout.LayoutError("a thumbnail time is a positive number")
    day = time.strftime("%Y/%m/%d", time.gmtime(at_ms // 1000))
    return f"{FOLDER}/{_checked_folder(folder)}/{day}/{at_ms}.jpg"


def path_of(root: Path, folder: str, at_ms: int) -> Path:
    """The absolute path of a thumbnail; refuses anything that would leave the root."""
    return layout.resolve(root, relative_path(folder, at_ms))


def _camera_base(root: Path, folder: str) -> Path:
    return layout.resolve(root, f"{FOLDER}/{_checked_folder(folder)}")


def _date_of(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, UTC).date()


def _numbered(folder: Path, digits: int) -> list[tuple[int, Path]]:
    found = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(folder):
            if len(entry.name) == digits and entry.name.isdigit() and entry.is_dir(follow_symlinks=False):
                found.append((int(entry.name), Path(entry.path)))
    return sorted(found)


def _day_folders(base: Path, first: date, last: date) -> Iterator[tuple[date, Path]]:
    """The day folders that exist under a camera's folder from `first` to `last` (inclusive), in order; only the
    folders that are there are looked at, however long the range."""
    for year, year_path in _numbered(base, 4):
        if not first.year <= year <= last.year:
            continue
        for month, month_path in _numbered(year_path, 2):
            for day, day_path in _numbered(month_path, 2):
                try:
                    when = date(year, month, day)
                except ValueError:
                    continue
                if first <= when <= last:
                    yield when, day_path


def _files(day: Path) -> Iterator[tuple[int, Path]]:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(day):
            match = _NAME.match(entry.name)
            if match is not None and entry.is_file(follow_symlinks=False):
                yield int(match.group(1)), Path(entry.path)


def thinned(times: list[int], limit: int) -> list[int]:
    """At most `limit` of `times`, evenly spread (every k-th, the first kept)."""
    if limit < 1 or len(times) <= limit:
        return times
    return times[:: math.ceil(len(times) / limit)]


def list_between(root: Path, folder: str, start_ms: int, end_ms: int) -> list[int]:
    """Times (epoch ms) of a camera's thumbnails within [start_ms, end_ms], in order. Blocking (a thread)."""
    base = _camera_base(root, folder)
    if end_ms < start_ms or not base.is_dir():
        return []
    found: list[int] = []
    for _, day in _day_folders(base, _date_of(max(start_ms, 0)), _date_of(max(end_ms, 0))):
        found.extend(ms for ms, _ in _files(day) if start_ms <= ms <= end_ms)
    return sorted(found)


def delete_between(root: Path, folder: str, start_ms: int, end_ms: int) -> int:
    """Remove a camera's thumbnails within [start_ms, end_ms) and the folders that leaves empty (except today's
    and yesterday's, which the recorder may be about to write to); returns how many went. Blocking (a thread)."""
    base = _camera_base(root, folder)
    if end_ms <= start_ms or not base.is_dir():
        return 0
    removed = 0
    keep_from = (datetime.now(UTC) - timedelta(days=1)).date()
    for when, day in list(_day_folders(base, _date_of(max(start_ms, 0)), _date_of(max(end_ms - 1, 0)))):
        for ms, path in list(_files(day)):
            if start_ms <= ms < end_ms:
                path.unlink(missing_ok=True)
                removed += 1
        if when < keep_from:
            folder_path = day
            while folder_path != base:
                try:
                    folder_path.rmdir()
                except OSError:
                    break
                folder_path = folder_path.parent
    return removed


async def delete_recording_thumbnails(
    root: Path, camera_id: str, started_at: datetime, ended_at: datetime | None
) -> int:
    """Remove the thumbnails of one recording: the camera's, from its start up to (not including) its end, where
    the next file of the same timeline begins. The one place every deletion of a recording (the API's, retention's,
    the watermark's) goes through; a failure is logged, never raised: the recording is gone either way."""
    start_ms = round(started_at.timestamp() * 1000)
    end_ms = round(ended_at.timestamp() * 1000) if ended_at is not None else start_ms + 1
    try:
        removed = await asyncio.to_thread(delete_between, root, camera_id, start_ms, max(end_ms, start_ms + 1))
    except (OSError, layout.LayoutError) as exc:
        log.warning("event=thumbnails_delete_failed camera=%s error=%s", camera_id, exc)
        return 0
    if removed:
        log.debug("event=thumbnails_deleted camera=%s count=%d", camera_id, removed)
    return removed


# ----- making them --------------------------------------------------------------------------------------------


def render_thumbnail(init: bytes, fragment: bytes, width: int, quality: int = QUALITY) -> tuple[bytes, int, int]:
    """The first picture of a CMAF fragment that starts with a keyframe, as (JPEG, width, height). Blocking."""
    with av.open(io.BytesIO(init + fragment), "r", format="mp4") as container:
        if not container.streams.video:
            raise ThumbnailError("the fragment has no video track")
        stream = container.streams.video[0]
        # One picture: frame threading would only delay it.
        stream.codec_context.thread_count = 1
        for packet in container.demux(stream):
            frames = stream.decode(packet)
            if frames:
                return frame_to_jpeg(frames[0], width, quality, stream.codec_context.sample_aspect_ratio)
    raise ThumbnailError("the keyframe decoded to no picture")


def write_atomic(path: Path, data: bytes) -> None:
    """Write beside as a hidden temporary file, sync, rename: a reader sees the whole picture or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with temporary.open("wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


class Thumbnailer:
    """Makes the recorder's thumbnails in one worker thread; its metrics are the recorder's."""

    def __init__(
        self,
        root: Path,
        registry: CollectorRegistry,
        *,
        interval: float,
        width: int,
        quality: int = QUALITY,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.root = root
        self.interval_ms = round(interval * 1000)
        self.width = width
        self.quality = quality
        self.max_pending = max_pending
        # The thread starts with the first thumbnail (none at all when they are off).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thumbnails")
        self._making: dict[str, asyncio.Future[None]] = {}
        self._closed = False
        self.made = Counter(
            "mediaserver_recording_thumbnails_made", "Recording thumbnails decoded and written", registry=registry
        )
        self.skipped = Counter(
            "mediaserver_recording_thumbnails_skipped",
            "Thumbnails skipped because one of the stream's was still being made or the worker was busy, by reason",
            ["reason"],
            registry=registry,
        )
        self.failed = Counter(
            "mediaserver_recording_thumbnails_failed",
            "Thumbnails that could not be made, by stage (decode, write)",
            ["stage"],
            registry=registry,
        )
        self.seconds = Histogram(
            "mediaserver_recording_thumbnail_seconds",
            "Time to decode, scale, encode and write one thumbnail",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )

    @property
    def enabled(self) -> bool:
        return self.interval_ms > 0 and not self._closed

    def due(self, last_ms: int | None, at_ms: int) -> bool:
        """Whether a keyframe at `at_ms` is to become a thumbnail, the stream's last one being at `last_ms`."""
        if not self.enabled:
            return False
        # A wall clock set back makes one at once rather than none for as long as it went back.
        return last_ms is None or at_ms < last_ms or at_ms - last_ms >= self.interval_ms

    def submit(self, key: str, folder: str, init: bytes, fragment: bytes, at_ms: int) -> bool:
        """Event loop: hand a keyframe to the worker; False when skipped (busy, stopped)."""
        if self._closed:
            return False
        if key in self._making:
            self.skipped.labels("stream_busy").inc()
            return False
        if len(self._making) >= self.max_pending:
            self.skipped.labels("pool_busy").inc()
            return False
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, self._make, folder, init, fragment, at_ms)
        except RuntimeError:  # the pool was shut down
            return False
        self._making[key] = future
        future.add_done_callback(lambda done: self._done(key, done))
        return True

    def _done(self, key: str, future: asyncio.Future[None]) -> None:
        if self._making.get(key) is future:
            del self._making[key]
        if not future.cancelled() and future.exception() is not None:
            log.error("event=thumbnail_failed stage=worker error=%r", future.exception())

    def _make(self, folder: str, init: bytes, fragment: bytes, at_ms: int) -> None:
        """Worker thread: decode, scale, encode, write; metrics and the failure log line from here."""
        started = time.perf_counter()
        try:
            path = path_of(self.root, folder, at_ms)
            jpeg, _, _ = render_thumbnail(init, fragment, self.width, self.quality)
        except Exception as exc:  # FFmpeg's errors, a refused path: this thumbnail is lost, the next one is not
            self.failed.labels("decode").inc()
            log.warning("event=thumbnail_failed stage=decode camera=%s at_ms=%d error=%r", folder, at_ms, exc)
            return
        try:
            write_atomic(path, jpeg)
        except OSError as exc:
            self.failed.labels("write").inc()
            log.warning(
                "event=thumbnail_failed stage=write camera=%s at_ms=%d error=%s", folder, at_ms, exc.strerror or exc
            )
            return
        self.made.inc()
        self.seconds.observe(time.perf_counter() - started)

    async def idle(self) -> None:
        """Wait until the thumbnails handed over are made (tests, shutdown)."""
        while self._making:
            await asyncio.wait(list(self._making.values()))

    async def stop(self) -> None:
        self._closed = True
        await self.idle()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
