"""The recorder: for each stream that is to be recorded, the segmenter's fragments into hourly fMP4 files.

It hears hub events (a stream started or stopped) and the segmenter's fragments (`FragmentListener`), asks a
`RecordPolicy` whether a stream is recorded (the control plane: the camera's `recording_enabled`; without it,
the config's stream patterns), and tells a `RecordingSink` (the index) about every file it opens, extends and
closes. A file starts on a keyframe and rolls over on the first keyframe past `file_duration`; a reconnect, a
timestamp jump or a codec change starts a new file. Nothing here blocks: writes go to `RecordingWriter`, and
thumbnails (a keyframe every `thumbnail_interval`) to the `Thumbnailer`'s worker thread.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mediaserver.events import StreamEvent, StreamEventKind
from mediaserver.fragments import CmafFragment, CmafInit
from mediaserver.recording import fileformat, layout, repair
from mediaserver.recording.thumbnails import Thumbnailer
from mediaserver.recording.writer import Append, Close, Open, RecordingWriter, WriteResult

log = logging.getLogger("mediaserver.recording")

# A file whose writes failed is retried after this long (a full disk, a folder that went read-only).
RETRY_AFTER = 5.0
# Rollover compares wall-clock stamps that carry float rounding: a segment this close to the limit counts.
ROLLOVER_SLACK = 0.05


@dataclass(slots=True)
class RecordingFile:
    """What the index needs to know of one file; `ended_at`/`duration` move forward as fragments land."""

    app: str
    name: str
    path: str  # relative to the recording root
    started_at: float
    ended_at: float
    duration: float = 0.0
    size: int = 0
    codecs: tuple[str, ...] = ()
    instance: str = ""
    checksum: str | None = None
    closed: bool = False
    error: str = ""


class RecordPolicy(Protocol):
    async def wants(self, app: str, name: str) -> bool:
        """Whether a stream that just started is recorded."""


class RecordingSink(Protocol):
    def opened(self, file: RecordingFile) -> None: ...

    def progressed(self, file: RecordingFile) -> None: ...

    def closed(self, file: RecordingFile) -> None: ...

    def alert(self, app: str, name: str, reason: str, detail: str) -> None:
        """Something the operators must hear of: a gap, a write failure."""


class PatternPolicy:
    """Record the streams whose `app/name` matches one of the patterns (`live/*`, `*/door-*`)."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = list(patterns)

    async def wants(self, app: str, name: str) -> bool:
        key = f"{app}/{name}"
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.patterns)


class LogSink:
    """The sink when no control plane keeps an index: the files and their `.idx` are the record."""

    def opened(self, file: RecordingFile) -> None:
        log.info("event=recording_opened stream=%s/%s path=%s", file.app, file.name, file.path)

    def progressed(self, file: RecordingFile) -> None:
        pass

    def closed(self, file: RecordingFile) -> None:
        log.info(
            "event=recording_closed stream=%s/%s path=%s seconds=%.1f bytes=%d error=%s",
            file.app,
            file.name,
            file.path,
            file.duration,
            file.size,
            file.error or "-",
        )

    def alert(self, app: str, name: str, reason: str, detail: str) -> None:
        log.warning("event=recording_alert stream=%s/%s reason=%s detail=%s", app, name, reason, detail)


@dataclass(slots=True)
class _OpenFile:
    file_id: int
    init_id: int
    info: RecordingFile
    # Media time of the file's first sample: durations and index stamps follow the media clock from the
    # wall-clock anchor in the header, so they do not depend on when the event loop got to each fragment.
    start_ms: int
    # The segment being written: [offset, size, start_ms, duration_ms, wallclock_ms], and the file's end offset.
    segment: list[int] = field(default_factory=list)
    end: int = 0
    last_progress: float = field(default_factory=time.monotonic)

    def wallclock_ms(self, media_ms: int) -> int:
        return round(self.info.started_at * 1000) + media_ms - self.start_ms

    def finish_segment(self) -> str:
        if not self.segment:
            return ""
        line = fileformat.IndexEntry(*self.segment).line()
        self.segment = []
        return line


@dataclass(slots=True)
class _StreamState:
    app: str
    name: str
    active: bool = False
    manual: bool = False
    instance: str = ""
    init: CmafInit | None = None
    file: _OpenFile | None = None
    retry_at: float = 0.0
    # (wall clock, media ms) of the timeline being recorded: a rollover's next file starts exactly where the
    # last one ended on the media clock, so consecutive files join without a gap or an overlap.
    anchor: tuple[float, int] | None = None
    last_start: float = 0.0
    # Wall clock (epoch ms) of the stream's last thumbnail handed to the worker.
    thumbnail_ms: int | None = None


class Recorder:
    def __init__(
        self,
        root: Path,
        policy: RecordPolicy,
        sink: RecordingSink,
        registry: CollectorRegistry,
        *,
        file_duration: float = 3600.0,
        max_buffer_bytes: int = 64 * 1024 * 1024,
        sync_interval: float = 1.0,
        progress_interval: float = 5.0,
        default_app: str = "live",
        thumbnail_interval: float = 0.0,
        thumbnail_width: int = 320,
    ) -> None:
        self.root = root
        self.policy = policy
        self.sink = sink
        self.file_duration = file_duration
        self.progress_interval = progress_interval
        self.default_app = default_app
        self.writer = RecordingWriter(max_buffer_bytes, sync_interval, self._written)
        self.streams: dict[str, _StreamState] = {}
        self._files: dict[int, _OpenFile] = {}
        self._next_file_id = 1
        self._tasks: set[asyncio.Task[None]] = set()
        self.bytes_written = Counter(
            "mediaserver_recording_written_bytes", "Bytes written to recordings", registry=registry
        )
        self.fragments_written = Counter(
            "mediaserver_recording_fragments", "Fragments handed to the recording writer", registry=registry
        )
        self.files_opened = Counter("mediaserver_recording_files_opened", "Recording files opened", registry=registry)
        self.gaps = Counter(
            "mediaserver_recording_gaps",
            "Gaps in recordings (fragments not written), by reason",
            ["reason"],
            registry=registry,
        )
        self.write_seconds = Histogram(
            "mediaserver_recording_write_seconds",
            "Time the writer thread took per fragment",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.thumbnails = Thumbnailer(root, registry, interval=thumbnail_interval, width=thumbnail_width)
        registry.register(_RecorderCollector(self))

    # ----- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.writer.start(self._on_write_result)

    async def stop(self) -> None:
        for state in list(self.streams.values()):
            self._close(state, "shutdown")
        for task in list(self._tasks):
            task.cancel()
        await self.writer.stop()
        await self.thumbnails.stop()

    # ----- what is recorded -------------------------------------------------------------------------------------

    def on_hub_event(self, event: StreamEvent) -> None:
        key = event.key
        if event.stream.derived:
            return  # an ABR rung: its source is what is recorded
        if event.kind is StreamEventKind.STARTED:
            state = self.streams.setdefault(key, _StreamState(event.stream.app, event.stream.name))
            state.instance = secrets.token_hex(8)
            state.anchor = None
            task = asyncio.get_running_loop().create_task(self._ask_policy(state))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif event.kind is StreamEventKind.STOPPED:
            stopped = self.streams.get(key)
            if stopped is not None:
                self._close(stopped, "stream_stopped")
                if not stopped.manual:
                    del self.streams[key]

    async def _ask_policy(self, state: _StreamState) -> None:
        try:
            wanted = await self.policy.wants(state.app, state.name)
        except Exception:
            log.exception("event=recording_policy_failed stream=%s/%s", state.app, state.name)
            return
        state.active = state.active or wanted
        if state.active:
            log.info("event=recording_armed stream=%s/%s", state.app, state.name)

    def set_recording(self, app: str, name: str, on: bool) -> bool:
        """Manual start or stop (an operator's request); True when it changed anything."""
        state = self.streams.setdefault(f"{app}/{name}", _StreamState(app, name))
        changed = state.active != on
        state.active = on
        state.manual = on
        if not on:
            self._close(state, "stopped_by_operator")
        log.info("event=recording_%s stream=%s/%s manual=true", "started" if on else "stopped", app, name)
        return changed

    def is_recording(self, app: str, name: str) -> bool:
        state = self.streams.get(f"{app}/{name}")
        return state is not None and state.active

    # ----- fragments (FragmentListener) -------------------------------------------------------------------------

    def on_init(self, app: str, name: str, init: CmafInit) -> None:
        state = self.streams.get(f"{app}/{name}")
        if state is None:
            return
        state.init = init
        if state.file is not None and state.file.init_id != init.init_id:
            self._close(state, "codec_changed")

    def on_timeline_end(self, app: str, name: str) -> None:
        state = self.streams.get(f"{app}/{name}")
        if state is not None:
            self._close(state, "publisher_left")

    def on_fragment(self, app: str, name: str, fragment: CmafFragment) -> None:
        state = self.streams.get(f"{app}/{name}")
        if state is None or not state.active:
            return
        file = state.file
        if file is not None:
            if fragment.discontinuity or fragment.init_id != file.init_id:
                self._close(state, "new_timeline")
                state.anchor = None
                file = None
            elif (
                fragment.segment_start
                and (fragment.start_ms - file.start_ms) / 1000 >= self.file_duration - ROLLOVER_SLACK
            ):
                self._close(state, "rollover")
                file = None
        if file is None:
            if not fragment.independent or not fragment.segment_start or time.monotonic() < state.retry_at:
                return
            file = self._open(state, fragment)
            if file is None:
                return
        index = ""
        if fragment.segment_start:
            index = file.finish_segment()
            file.segment = [file.end, 0, fragment.start_ms, 0, file.wallclock_ms(fragment.start_ms)]
        if not self.writer.submit(Append(file.file_id, fragment.data, index)):
            # The disk is behind: drop this fragment, end the file on what it has, and start again at a keyframe.
            self.gaps.labels("buffer_full").inc()
            self.sink.alert(app, name, "recorder_overflow", "the disk is not keeping up; a gap is recorded")
            if fragment.segment_start:
                file.segment = []
            self._close(state, "buffer_full")
            return
        self.fragments_written.inc()
        if fragment.segment_start and fragment.independent:
            self._offer_thumbnail(state, file, fragment)
        if file.segment:
            file.segment[1] += len(fragment.data)
            file.segment[3] = fragment.start_ms + round(fragment.duration * 1000) - file.segment[2]
        file.end += len(fragment.data)
        info = file.info
        info.duration = round((fragment.start_ms - file.start_ms) / 1000 + fragment.duration, 3)
        info.ended_at = info.started_at + info.duration
        info.size = file.end
        now = time.monotonic()
        if now - file.last_progress >= self.progress_interval:
            file.last_progress = now
            self.sink.progressed(info)

    def _offer_thumbnail(self, state: _StreamState, file: _OpenFile, fragment: CmafFragment) -> None:
        """A keyframe that starts a segment: the next thumbnail when the interval has passed (video only)."""
        init = state.init
        at_ms = file.wallclock_ms(fragment.start_ms)
        if init is None or not init.width or not self.thumbnails.due(state.thumbnail_ms, at_ms):
            return
        folder = layout.stream_folder(state.app, state.name, self.default_app)
        if self.thumbnails.submit(f"{state.app}/{state.name}", folder, init.data, fragment.data, at_ms):
            state.thumbnail_ms = at_ms

    # ----- files ------------------------------------------------------------------------------------------------

    def _open(self, state: _StreamState, fragment: CmafFragment) -> _OpenFile | None:
        init = state.init
        if init is None or init.init_id != fragment.init_id:
            return None
        if state.anchor is None or fragment.discontinuity:
            state.anchor = (fragment.wallclock, fragment.start_ms)
        started = round(state.anchor[0] + (fragment.start_ms - state.anchor[1]) / 1000, 3)
        # Two files of a stream never share a name, even when fragments come faster than real time.
        started = max(started, round(state.last_start + 0.001, 3))
        state.last_start = started
        folder = layout.stream_folder(state.app, state.name, self.default_app)
        relative = layout.relative_path(folder, started)
        facts = {
            "app": state.app,
            "name": state.name,
            "instance": state.instance,
            "start": started,
            "start_ms": fragment.start_ms,
            "codecs": list(init.codecs),
            "width": init.width,
            "height": init.height,
        }
        head = init.data + fileformat.header_box(facts)
        file_id = self._next_file_id
        self._next_file_id += 1
        if not self.writer.submit(Open(file_id, self.root / relative, head)):
            self.gaps.labels("buffer_full").inc()
            return None
        info = RecordingFile(
            state.app,
            state.name,
            relative,
            started,
            started,
            size=len(head),
            codecs=init.codecs,
            instance=state.instance,
        )
        file = _OpenFile(file_id, init.init_id, info, fragment.start_ms, end=len(head))
        state.file = file
        self._files[file_id] = file
        self.files_opened.inc()
        self.sink.opened(info)
        return file

    def _close(self, state: _StreamState, reason: str) -> None:
        file = state.file
        if file is None:
            return
        state.file = None
        # A close is queued whatever the buffer holds: it carries no data, and the file must end cleanly.
        self.writer.submit(Close(file.file_id, file.finish_segment()))
        log.debug(
            "event=recording_closing stream=%s/%s path=%s reason=%s", state.app, state.name, file.info.path, reason
        )

    def _written(self, size: int, seconds: float) -> None:
        """Writer thread: one fragment is on its way to the disk."""
        self.bytes_written.inc(size)
        self.write_seconds.observe(seconds)

    def _on_write_result(self, result: WriteResult) -> None:
        file = self._files.get(result.file_id)
        if file is None:
            return
        info = file.info
        del self._files[result.file_id]
        if result.kind == "closed":
            info.size = result.size
            info.checksum = result.checksum
            info.closed = True
            self.sink.closed(info)
            return
        # Failed: the stream goes on; this file ends where the disk stopped, and recording retries later.
        self.gaps.labels(result.reason).inc()
        info.closed = True
        info.error = result.reason
        info.size = result.size
        state = self.streams.get(f"{info.app}/{info.name}")
        if state is not None and state.file is file:
            state.file = None
            state.retry_at = time.monotonic() + RETRY_AFTER
        log.error(
            "event=recording_write_failed stream=%s/%s path=%s reason=%s detail=%s",
            info.app,
            info.name,
            info.path,
            result.reason,
            result.detail,
        )
        self.sink.alert(info.app, info.name, "recording_write_failed", result.reason)
        task = asyncio.get_running_loop().create_task(self._repair_failed(info))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _repair_failed(self, info: RecordingFile) -> None:
        """A failed write leaves a torn tail: cut it now so the file reads to its last whole fragment."""
        try:
            facts = await asyncio.to_thread(repair.repair_file, self.root, info.path)
        except (OSError, ValueError) as exc:
            log.error("event=recording_repair_failed path=%s error=%s", info.path, exc)
        else:
            info.size, info.ended_at, info.checksum = facts.size, facts.ended_at, facts.checksum
            info.duration = facts.duration
        self.sink.closed(info)


class _RecorderCollector(Collector):
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def collect(self) -> Iterator[GaugeMetricFamily]:
        recorder = self._recorder
        yield GaugeMetricFamily("mediaserver_recording_open_files", "Recording files open", value=len(recorder._files))
        yield GaugeMetricFamily(
            "mediaserver_recording_buffer_bytes",
            "Bytes queued for the recording writer",
            value=recorder.writer.buffered,
        )
        yield GaugeMetricFamily(
            "mediaserver_recording_streams",
            "Streams being recorded",
            value=sum(1 for s in recorder.streams.values() if s.active),
        )
