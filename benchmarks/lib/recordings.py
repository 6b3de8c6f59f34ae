"""Recordings for the recording benchmarks (`tier_move`, `recording_index`), made with the project's own code.

- `record_clip`: one real recording, made the way the server makes it: the clip's packets (looped, timestamps
  carried forward) pushed through a hub into the LL-HLS segmenter and the recorder (`Recorder` and its
  `RecordingWriter` thread), so the file (init segment, header box, `moof`+`mdat` fragments), its `.idx` and its
  SHA-256 are the recorder's own. It runs faster than real time, throttled on the writer's queue so that no
  fragment is dropped; an alert from the recorder (a gap, a write failure) fails the build.
- `SampleRecording`: a short real recording's init segment, header facts and segment sizes and lengths: the
  pattern of the seeded files.
- `plan_hourly_files`, `write_files`, `recording_rows`: a camera's days of hourly files as the recorder leaves them
  (one file per hour, 2 s segments, the next file starting where the last one ended, a reconnect gap now and
  then): real `.idx` files, media files with the real head (init segment + header box) and sparse after it (the
  routes that read only the index never touch those bytes), and the index rows for them.
- `new_store`, `add_camera`, `add_admin`, `insert_rows`: the control plane's database through its own store and
  migrations.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import os
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import insert

from benchmarks.lib.clip import Clip
from benchmarks.lib.flvfile import TAG_SCRIPT, TAG_VIDEO
from control.security import PasswordHasher, new_stream_key
from control.store import Camera, Recording, Store, User
from mediaserver.config import HlsConfig, RecordingConfig
from mediaserver.formats.flv import parse_audio, parse_video
from mediaserver.hls.segmenter import HlsSettings
from mediaserver.hls.service import HlsService
from mediaserver.hub import Hub
from mediaserver.media import Packet, TrackKind
from mediaserver.recording import fileformat, layout
from mediaserver.recording.fileformat import IndexEntry
from mediaserver.recording.recorder import PatternPolicy, Recorder, RecordingFile, RecordingSink

APP = "live"
# Bytes queued for the writer thread above which `record_clip` waits before pushing the next loop of the clip.
_QUEUE_HIGH = 16 * 1024 * 1024
# A file that never rolls over while one recording is built, however long.
ONE_FILE = 1e9


class RecordingBuildError(RuntimeError):
    """The recorder did not produce one clean, closed file."""


@dataclass(frozen=True, slots=True)
class ClipPackets:
    """The clip's tags as the hub packets a publisher pushes: configuration (sequence headers) once, then media."""

    config: list[Packet]
    media: list[Packet]
    duration_ms: int  # one loop: later loops are shifted by this
    media_bytes: int  # codec payload bytes of one loop

    @classmethod
    def of(cls, clip: Clip) -> ClipPackets:
        config: list[Packet] = []
        media: list[Packet] = []
        for message in clip.messages:
            if message.type_id == TAG_SCRIPT:
                continue
            parse = parse_video if message.type_id == TAG_VIDEO else parse_audio
            packet = parse(message.payload, message.timestamp)
            if packet is not None:
                (config if packet.is_config else media).append(packet)
        size = sum(len(p.flv) - p.offset for p in media)
        return cls(config, media, clip.duration_ms, size)

    @property
    def bitrate_bps(self) -> float:
        return self.media_bytes * 8 / (self.duration_ms / 1000)


class _BenchPublisher:
    protocol = "bench"
    peer = "127.0.0.1:0"

    def stop(self, reason: str) -> None:
        pass


class _Relay:
    """The recorder's sink: remembers closed files and alerts, and passes everything on to `inner`."""

    def __init__(self, inner: RecordingSink | None) -> None:
        self.inner = inner
        self.closed_files: list[RecordingFile] = []
        self.alerts: list[str] = []
        self.changed = asyncio.Event()

    def opened(self, file: RecordingFile) -> None:
        if self.inner is not None:
            self.inner.opened(file)

    def progressed(self, file: RecordingFile) -> None:
        if self.inner is not None:
            self.inner.progressed(file)

    def closed(self, file: RecordingFile) -> None:
        self.closed_files.append(file)
        self.changed.set()
        if self.inner is not None:
            self.inner.closed(file)

    def alert(self, app: str, name: str, reason: str, detail: str) -> None:
        self.alerts.append(f"{app}/{name}: {reason}: {detail}")
        if self.inner is not None:
            self.inner.alert(app, name, reason, detail)


async def record_clip(
    root: Path,
    name: str,
    clip: ClipPackets,
    target_bytes: int,
    sink: RecordingSink | None = None,
    app: str = APP,
    on_progress: Callable[[int], None] | None = None,
) -> RecordingFile:
    """One closed recording of `app/name` under `root`, of about `target_bytes` of media (it ends on the first keyframe
    past that), made by the recorder from `clip` looped; `sink` (the control plane's `RecordingIndex`, say) hears of
    the file as the server's index would. `on_progress(bytes_pushed)` is called after each loop of the clip."""
    loop = asyncio.get_running_loop()
    hub = Hub()
    registry = CollectorRegistry()
    hls_config, recording = HlsConfig(), RecordingConfig()
    settings = HlsSettings(hls_config.segment_duration, hls_config.part_duration, hls_config.window)
    hls = HlsService(hub, settings, registry, hls_config.grace_seconds)
    relay = _Relay(sink)
    recorder = Recorder(
        root,
        PatternPolicy([f"{app}/{name}"]),
        relay,
        registry,
        file_duration=ONE_FILE,
        max_buffer_bytes=recording.max_buffer_bytes,
        sync_interval=recording.sync_interval,
        progress_interval=recording.progress_interval,
        default_app=app,
    )
    hls.fragment_listeners.append(recorder)
    hub.listen(recorder.on_hub_event)
    recorder.start()
    try:
        stream = hub.publish(app, name, _BenchPublisher())
        deadline = loop.time() + 10
        while not recorder.is_recording(app, name):
            if loop.time() > deadline:
                raise RecordingBuildError("the recorder did not arm for the stream")
            await asyncio.sleep(0.001)
        for packet in clip.config:
            stream.push(packet)
        pushed = 0
        for index in itertools.count():
            shift = index * clip.duration_ms
            for packet in clip.media:
                if pushed >= target_bytes and packet.kind is TrackKind.VIDEO and packet.keyframe:
                    break
                stream.push(dataclasses.replace(packet, dts=packet.dts + shift, pts=packet.pts + shift))
                pushed += len(packet.flv) - packet.offset
            else:
                if on_progress is not None:
                    on_progress(pushed)
                await asyncio.sleep(0)
                while recorder.writer.buffered > _QUEUE_HIGH:
                    await asyncio.sleep(0.002)
                continue
            break
        hub.unpublish(stream)
        deadline = loop.time() + 120
        while not relay.closed_files and not relay.alerts:
            relay.changed.clear()
            try:
                await asyncio.wait_for(relay.changed.wait(), max(0.1, deadline - loop.time()))
            except TimeoutError as exc:
                raise RecordingBuildError("the recording was not closed in time") from exc
    finally:
        await recorder.stop()
    if relay.alerts:
        raise RecordingBuildError("; ".join(relay.alerts))
    if len(relay.closed_files) != 1 or relay.closed_files[0].checksum is None:
        raise RecordingBuildError(f"expected one closed file, got {relay.closed_files}")
    return relay.closed_files[0]


def check_recording(path: Path, checksum: str | None = None) -> list[IndexEntry]:
    """The index of a recording file after checking its structure: our header box, an index whose last segment ends
    where the file does, and (when given, at the cost of reading the file) its SHA-256. Blocking."""
    fileformat.read_header(path)
    entries = fileformat.read_index(layout.index_path(path))
    size = path.stat().st_size
    if not entries or entries[-1].offset + entries[-1].size != size:
        raise RecordingBuildError(f"{path.name}: the index does not cover the file ({size} bytes)")
    if checksum is not None:
        with path.open("rb") as stream:
            if hashlib.file_digest(stream, "sha256").hexdigest() != checksum:
                raise RecordingBuildError(f"{path.name}: the checksum does not match")
    return entries


# ----- the pattern of seeded files ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SampleRecording:
    """What the seeded files copy from a real recording: its init segment (`ftyp`+`moov`), its header facts (codecs,
    size) and its complete segments' sizes and lengths (the last one, cut by the end of the recording, left out)."""

    init: bytes
    facts: dict[str, Any]
    segments: list[tuple[int, int]]  # (bytes, duration ms)

    @classmethod
    async def make(cls, root: Path, clip: ClipPackets, seconds: float = 60.0) -> SampleRecording:
        target = int(clip.media_bytes * seconds * 1000 / clip.duration_ms)
        file = await record_clip(root, "sample", clip, target)
        return await asyncio.to_thread(cls.read, root / file.path)

    @classmethod
    def read(cls, path: Path) -> SampleRecording:
        entries = check_recording(path)
        facts = fileformat.read_header(path)
        with path.open("rb") as stream:
            header_at = next(
                (offset for offset, _, kind in fileformat.boxes(stream, entries[0].offset) if kind == b"uuid"), None
            )
            if header_at is None:
                raise RecordingBuildError("no header box before the first segment")
            stream.seek(0)
            init = stream.read(header_at)
        segments = [(e.size, e.duration_ms) for e in entries[:-1]] or [(entries[0].size, entries[0].duration_ms)]
        return cls(init, facts, segments)


@dataclass(frozen=True, slots=True)
class SeededFile:
    camera_id: str
    relative: str
    started_at: float
    head: bytes  # init segment + header box
    entries: tuple[IndexEntry, ...]
    instance: str
    codecs: tuple[str, ...]

    @property
    def size(self) -> int:
        return self.entries[-1].offset + self.entries[-1].size

    @property
    def ended_at(self) -> float:
        return self.entries[-1].end_wallclock

    @property
    def index_text(self) -> str:
        return "".join(entry.line() for entry in self.entries)


def plan_hourly_files(
    sample: SampleRecording,
    camera_id: str,
    first_start: float,
    count: int,
    *,
    file_seconds: float = 3600.0,
    gap_every: int = 24,
    gap_seconds: float = 300.0,
    app: str = APP,
) -> list[SeededFile]:
    """`count` consecutive files of one camera from `first_start` (epoch seconds), one every `file_seconds`, each of the
    sample's segments cycled until it lasts `file_seconds` (as the recorder rolls over on the first keyframe past
    it). Every `gap_every`-th file (0: none) ends `gap_seconds` early: the camera dropped, and came back as a new
    publisher for the next hour's file. The media clock runs on across files, as the segmenter's timeline does."""
    codecs = tuple(str(c) for c in sample.facts.get("codecs", []))
    folder = layout.stream_folder(app, camera_id, app)
    pattern = itertools.cycle(sample.segments)
    media_ms = 0
    instance = secrets.token_hex(8)
    files: list[SeededFile] = []
    for number in range(count):
        started = round(first_start + number * file_seconds, 3)
        short = gap_every > 0 and number % gap_every == gap_every - 1
        length_ms = round((file_seconds - (gap_seconds if short else 0.0)) * 1000)
        facts = {
            "app": app,
            "name": camera_id,
            "instance": instance,
            "start": started,
            "start_ms": media_ms,
            "codecs": list(codecs),
            "width": sample.facts.get("width", 0),
            "height": sample.facts.get("height", 0),
        }
        head = sample.init + fileformat.header_box(facts)
        wall_ms = round(started * 1000)
        offset, covered = len(head), 0
        entries: list[IndexEntry] = []
        while covered < length_ms:
            size, duration = next(pattern)
            entries.append(IndexEntry(offset, size, media_ms + covered, duration, wall_ms + covered))
            offset += size
            covered += duration
        relative = layout.relative_path(folder, started)
        files.append(SeededFile(camera_id, relative, started, head, tuple(entries), instance, codecs))
        media_ms += covered
        if short:
            instance = secrets.token_hex(8)
    return files


def write_files(root: Path, files: Iterable[SeededFile]) -> int:
    """Each file's head, then a hole up to its size (sparse: no media bytes on the disk), and its `.idx`; the bytes
    of `.idx` written. Blocking."""
    index_bytes = 0
    for file in files:
        path = layout.resolve(root, file.relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as stream:
            stream.write(file.head)
            stream.truncate(file.size)
        text = file.index_text
        layout.index_path(path).write_text(text)
        index_bytes += len(text)
    return index_bytes


def stand_in_checksum(file: SeededFile) -> str:
    """The checksum column of a seeded row: a closed recording has one. Its media is a hole, so this is not its
    SHA-256; nothing these benchmarks run (coverage, playlists; no tier move, no retention) reads or checks it."""
    return hashlib.sha256(f"seeded {file.relative} {file.size}".encode()).hexdigest()


def recording_rows(files: Iterable[SeededFile]) -> list[dict[str, Any]]:
    """The `recordings` rows the index holds for closed hot files, as `RecordingIndex` writes them."""
    return [
        {
            "camera_id": file.camera_id,
            "started_at": datetime.fromtimestamp(file.started_at, UTC),
            "ended_at": datetime.fromtimestamp(file.ended_at, UTC),
            "path": file.relative,
            "size_bytes": file.size,
            "duration_seconds": round(file.ended_at - file.started_at, 3),
            "tier": "hot",
            "codecs": ",".join(file.codecs),
            "checksum": stand_in_checksum(file),
            "instance": file.instance,
        }
        for file in files
    ]


# ----- the database ---------------------------------------------------------------------------------------------


async def new_store(url: str) -> Store:
    """The store at `url`, migrated to the head revision by the control plane's own migrations."""
    store = Store(url)
    try:
        await store.migrate()
    except BaseException:
        await store.close()
        raise
    return store


async def add_camera(store: Store, camera_id: str, name: str) -> None:
    async with store.sessions.begin() as session:
        session.add(Camera(id=camera_id, name=name, stream_key=new_stream_key(), recording_enabled=True))


async def add_admin(store: Store, username: str, password: str) -> None:
    """An admin user with the production password hashing (argon2id)."""
    now = datetime.now(UTC)
    password_hash = await PasswordHasher().hash(password)
    async with store.sessions.begin() as session:
        session.add(User(username=username, password_hash=password_hash, role="admin", created_at=now, updated_at=now))


async def insert_rows(store: Store, rows: Sequence[dict[str, Any]], batch: int = 2000) -> None:
    for start in range(0, len(rows), batch):
        async with store.sessions.begin() as session:
            await session.execute(insert(Recording), list(rows[start : start + batch]))


def drop_cached(path: Path) -> None:
    """Ask the kernel to forget the file's pages (clean ones go; a recording closed with fdatasync has only clean
    pages), so that the next read comes from the disk, as it would for a recording written days ago."""
    with path.open("rb") as stream:
        os.fsync(stream.fileno())
        os.posix_fadvise(stream.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
