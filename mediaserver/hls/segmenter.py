"""Live CMAF segmenter: hub packets in, LL-HLS parts and segments (in memory) out.

One `HlsStream` per `app/name`; it outlives a publisher for a grace period so that a
reconnecting camera continues the same playlist after an `EXT-X-DISCONTINUITY`.

Parts are cut on video frames once the next frame would overrun the part target, and
segments on the first keyframe at or past the segment target, so every segment starts
with an independent part. Each part is a complete `moof`+`mdat`, built the moment it
closes as its boxes followed by the packets' own payload buffers: the media bytes of the
open segment are the ones the hub's GOP cache holds, never a second copy. A segment is the
concatenation of its parts and is served as their buffers one after the other. Only the
newest `memory_segments` complete segments stay in memory (none by default); older ones are
written out (`spill`) and read back for viewers, so per stream the process holds the open
segment (its boxes; the media is the GOP cache's) and the segments viewers are fetching.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from mediaserver.codecs.strings import codec_string
from mediaserver.formats import fmp4
from mediaserver.fragments import CmafFragment, CmafInit, FragmentListener
from mediaserver.hls.spill import SpilledRange, SpillWriter, StreamSpill
from mediaserver.hls.waiters import ChangeWaiters
from mediaserver.media import Codec, Packet, TrackInfo, TrackKind

log = logging.getLogger("mediaserver.hls")

_HLS_AUDIO = (Codec.AAC, Codec.OPUS)
_HLS_VIDEO = (Codec.H264, Codec.H265, Codec.AV1)
# A timestamp step larger than this (or any step backwards) starts a new timeline.
_MAX_JUMP_MS = 10_000
# Written-out segments kept in memory once read back for viewers (see `HlsStream.read`).
_READ_BACK = 2


@dataclass(slots=True)
class Part:
    index: int
    duration: float
    independent: bool
    # The part's moof+mdat while it is held in memory, as buffers to send one after the other (the boxes, then
    # the samples' payloads: views of the packets); None once its segment lives in `Segment.spilled`.
    chunks: list[bytes | memoryview] | None
    # Where it starts inside its segment, and its length.
    offset: int
    size: int


@dataclass(slots=True)
class Segment:
    msn: int
    init_id: int
    program_date_time: float
    discontinuity: bool
    parts: list[Part] = field(default_factory=list)
    duration: float = 0.0
    complete: bool = False
    # Bytes so far: the sum of the parts' sizes.
    size: int = 0
    # Where the segment was written out to; its parts' bytes are then no longer in memory.
    spilled: SpilledRange | None = None
    # A write of this segment is in flight.
    spilling: bool = False

    @property
    def held(self) -> int:
        """Bytes of this segment held in memory (each byte once: a segment is its parts)."""
        return 0 if self.spilled is not None else self.size

    def chunks(self, start: int = 0, end: int | None = None) -> list[bytes | memoryview]:
        """The in-memory bytes of [start, end) as the parts' own buffers or views of them (no copy).

        Only for a segment still in memory (`spilled` is None)."""
        stop = self.size if end is None else min(end, self.size)
        out: list[bytes | memoryview] = []
        for part in self.parts:
            if part.offset >= stop or part.offset + part.size <= start:
                continue
            assert part.chunks is not None
            out += slice_chunks(part.chunks, start - part.offset, stop - part.offset)
        return out


def slice_chunks(chunks: list[bytes | memoryview], start: int, end: int) -> list[bytes | memoryview]:
    """Bytes [start, end) of the buffers `chunks` laid end to end, as those buffers or views of them (no copy)."""
    out: list[bytes | memoryview] = []
    at = 0
    for chunk in chunks:
        size = len(chunk)
        first, last = max(start - at, 0), min(end - at, size)
        at += size
        if first >= last:
            if at >= end:
                break
            continue
        out.append(chunk if first == 0 and last == size else memoryview(chunk)[first:last])
    return out


@dataclass(slots=True)
class HlsSettings:
    segment_duration: float = 2.0
    part_duration: float = 0.333
    window: int = 6
    # Complete segments kept in memory (the newest ones); older ones are written to temporary files when the
    # service gives the stream a spill writer. Viewers' reads bring the ones they fetch back (`HlsStream.read`).
    memory_segments: int = 0
    # Write older segments out of memory (to anonymous files in `spill_dir`, the system's temporary folder when
    # None); False keeps the whole window in memory.
    spill: bool = True
    spill_dir: str | None = None


@dataclass(slots=True)
class SegmenterStats:
    segments: int = 0
    parts: int = 0
    fragment_seconds: float = 0.0
    fragment_max_seconds: float = 0.0
    errors: int = 0


class HlsStream:
    """Segments, parts and init segments of one live stream, and the muxing state."""

    # As a hub subscriber: one per stream, whatever the number of HLS viewers.
    protocol = "hls_segmenter"

    def __init__(
        self,
        app: str,
        name: str,
        settings: HlsSettings,
        stats: SegmenterStats,
        listeners: list[FragmentListener] | None = None,
        spill_writer: SpillWriter | None = None,
    ) -> None:
        self.app = app
        self.name = name
        self.key = f"{app}/{name}"
        self.settings = settings
        self.stats = stats
        # Sequence numbers start from the wall clock, so URIs never repeat across restarts
        # and caches may treat segments as immutable.
        self._next_msn = int(time.time() * 10)
        # (wall clock, media time in ms) that PROGRAM-DATE-TIME is derived from.
        self._pdt_anchor: tuple[float, int] | None = None
        # Bumped on every change, so readers can cache what they render from this stream.
        self.version = 0
        self.segments: deque[Segment] = deque()
        self.current: Segment | None = None
        self.inits: dict[int, bytes] = {}
        self.init_id = 0
        self.ended = False
        self.live = False
        self.max_segment_duration = settings.segment_duration
        self.discontinuity_sequence = 0
        self.ended_at = 0.0
        # Requests waiting for the next change (blocking reloads, the preload-hinted part).
        self._waiters = ChangeWaiters()
        self._tracks: list[TrackInfo] = []
        self._track_versions: tuple[int, int] = (-1, -1)
        # (kind, codec) -> index into _tracks, for the per-packet lookup.
        self._track_of: dict[tuple[TrackKind, Codec], int] = {}
        self._source: tuple[TrackInfo, TrackInfo] | None = None
        self._pending: list[list[Packet]] = []
        self._part_start = 0
        self._segment_start = 0
        self._last_dts = -1
        self._last_video_delta = 40
        self._offset = 0
        self._timeline_end = 0
        self._next_discontinuity = False
        self._fragment_sequence = 1
        self._has_video = False
        self._waiting_keyframe = True
        # Others that take the same fragments (the recorder): shared list, owned by the service.
        self._listeners = listeners if listeners is not None else []
        self._spill = StreamSpill(spill_writer, settings.window) if spill_writer is not None else None
        self._closed = False
        # Written-out segments read back for viewers, most recently read last: msn -> the read.
        self._read_back: OrderedDict[int, asyncio.Future[bytes]] = OrderedDict()

    # ----- lifecycle --------------------------------------------------------------------

    def attach(self, video: TrackInfo, audio: TrackInfo) -> None:
        """A publisher (re)starts: keep the playlist, start a new timeline after a discontinuity."""
        if self.segments or self.current is not None:
            self._close_segment(self._last_dts)
            self._next_discontinuity = True
        self._source = (video, audio)
        self._tracks = []
        self._track_versions = (-1, -1)
        self._track_of = {}
        self._last_dts = -1
        self._waiting_keyframe = True
        self.ended = False
        self.live = True

    def detach(self) -> None:
        """The publisher left: finish the open segment; `end()` ends the playlist once no publisher came back.

        Until then the playlist stays live (no EXT-X-ENDLIST, the preload hint names the next segment's first
        part), so players wait across a camera's reconnect: a playlist that has carried EXT-X-ENDLIST must not
        change again (RFC 8216 6.2.1), and hls.js stops reloading it for good.
        """
        self._close_segment(self._last_dts)
        self.live = False
        self.ended_at = time.monotonic()
        self._notify()
        for listener in self._listeners:
            listener.on_timeline_end(self.app, self.name)

    def end(self) -> None:
        """No publisher since `detach()`: end the playlist (EXT-X-ENDLIST) and wake blocked readers."""
        if not self.live and not self.ended:
            self.ended = True
            self._notify()

    # ----- hub subscriber ---------------------------------------------------------------

    def on_packet(self, packet: Packet) -> None:
        try:
            self._on_packet(packet)
        except fmp4.Fmp4Error as exc:
            # Bad media must not take the stream down: drop the open part and resynchronise.
            self.stats.errors += 1
            log.warning("event=hls_fragment_error stream=%s/%s error=%s", self.app, self.name, exc)
            self._pending = [[] for _ in self._tracks]
            self._waiting_keyframe = True

    def on_stream_end(self) -> None:
        self.detach()

    def _on_packet(self, packet: Packet) -> None:
        if packet.is_config or packet.kind is TrackKind.DATA or self._source is None:
            return
        video, audio = self._source
        if self._track_versions != (video.version, audio.version):
            self._reconfigure()
        track_index = self._track_of.get((packet.kind, packet.codec), -1)
        if track_index < 0:
            return
        dts = packet.dts + self._offset
        if self._last_dts >= 0 and (dts < self._last_dts - 1000 or dts > self._last_dts + _MAX_JUMP_MS):
            # A timestamp jump or rollback: cut here and carry the timeline on from where it was.
            log.info("event=hls_timestamp_jump stream=%s/%s from=%d to=%d", self.app, self.name, self._last_dts, dts)
            self._close_segment(self._last_dts)
            self._offset += self._last_dts + self._last_video_delta - dts
            dts = packet.dts + self._offset
            self._next_discontinuity = True
            self._waiting_keyframe = True
        elif self._last_dts < 0 and self._timeline_end:
            # First packet of a new publisher: continue the timeline after the previous one.
            self._offset = self._timeline_end - packet.dts
            dts = packet.dts + self._offset
        is_video = packet.kind is TrackKind.VIDEO
        if self._waiting_keyframe:
            if self._has_video and not (is_video and packet.keyframe):
                return
            self._waiting_keyframe = False
            if self.current is not None:
                self._close_segment(dts)
            self._start_segment(dts)
        elif is_video or not self._has_video:
            self._maybe_cut(dts, (is_video and packet.keyframe) or not self._has_video)
        if is_video and self._last_dts >= 0 and dts > self._last_dts:
            self._last_video_delta = dts - self._last_dts
        if self._offset:
            packet = dataclasses.replace(packet, dts=dts, pts=packet.pts + self._offset, wire=None)
        self._pending[track_index].append(packet)
        if is_video or not self._has_video:
            self._last_dts = max(self._last_dts, dts)
        elif self._last_dts < 0:
            self._last_dts = dts

    def _reconfigure(self) -> None:
        """New or changed codec configuration: a new init segment and a discontinuity."""
        assert self._source is not None
        video, audio = self._source
        tracks: list[TrackInfo] = []
        if video.codec in _HLS_VIDEO and video.config:
            tracks.append(dataclasses.replace(video))
        if audio.codec in _HLS_AUDIO and audio.config:
            tracks.append(dataclasses.replace(audio))
        self._track_versions = (video.version, audio.version)
        if not tracks:
            return
        if self.current is not None:
            self._close_segment(self._last_dts)
            self._next_discontinuity = True
        self._tracks = tracks
        self._track_of = {(track.kind, track.codec): index for index, track in enumerate(tracks)}
        self._has_video = tracks[0].kind is TrackKind.VIDEO
        self._pending = [[] for _ in tracks]
        self.init_id += 1
        self.inits[self.init_id] = fmp4.init_segment(tracks)
        self._waiting_keyframe = True
        if self._listeners:
            width, height = self.resolution
            init = CmafInit(self.init_id, self.inits[self.init_id], tuple(self.codecs()), width, height)
            for listener in self._listeners:
                listener.on_init(self.app, self.name, init)
        log.info(
            "event=hls_init stream=%s/%s init=%d codecs=%s",
            self.app,
            self.name,
            self.init_id,
            ",".join(self.codecs()),
        )

    def codecs(self) -> list[str]:
        return [codec_string(t) for t in self._tracks]

    @property
    def resolution(self) -> tuple[int, int]:
        for track in self._tracks:
            if track.kind is TrackKind.VIDEO:
                return track.width, track.height
        return 0, 0

    # ----- cutting ----------------------------------------------------------------------

    def _maybe_cut(self, dts: int, keyframe: bool) -> None:
        segment = self.current
        if segment is None:
            self._start_segment(dts)
            return
        target_ms = self.settings.segment_duration * 1000
        if keyframe and dts - self._segment_start >= target_ms * 0.9:
            self._close_segment(dts)
            self._start_segment(dts)
            return
        step = self._last_video_delta if self._has_video else 0
        # Parts must not exceed PART-TARGET: close before a frame that would overrun it.
        if dts + step - self._part_start > self.settings.part_duration * 1000 - 1:
            self._close_part(dts)

    def _start_segment(self, dts: int) -> None:
        # PROGRAM-DATE-TIME follows the media timeline from an anchor taken from the wall clock
        # at the first segment of each timeline, so stamps stay consistent with the durations
        # even when the event loop runs late.
        now = time.time()
        if self._pdt_anchor is None or self._next_discontinuity:
            self._pdt_anchor = (now, dts)
        pdt = self._pdt_anchor[0] + (dts - self._pdt_anchor[1]) / 1000
        # Never stamp a time that has not happened yet (the anchor frame arrived late), and
        # follow a publisher whose clock drifts away from ours by more than a second.
        if pdt > now or now - pdt > 1.0:
            self._pdt_anchor = (now, dts)
            pdt = now
        segment = Segment(self._next_msn, self.init_id, pdt, self._next_discontinuity)
        self._next_msn += 1
        self._next_discontinuity = False
        self.current = segment
        self._segment_start = dts
        self._part_start = dts

    def _close_part(self, end_dts: int) -> None:
        segment = self.current
        if segment is None:
            return
        if not any(self._pending):
            return
        started = time.perf_counter()
        fragments: list[tuple[int, int, list[fmp4.Sample]]] = []
        for index, packets in enumerate(self._pending):
            if not packets:
                continue
            track = self._tracks[index]
            timescale = fmp4.track_timescale(track)
            last = packets[-1]
            last_duration: int | None = None
            if track.kind is TrackKind.VIDEO and end_dts > last.dts:
                last_duration = fmp4.ms_to_timescale(end_dts, timescale) - fmp4.ms_to_timescale(last.dts, timescale)
            elif track.codec is Codec.AAC and timescale == track.sample_rate:
                # An AAC frame is 1024 samples, and the audio timescale is the sample rate.
                last_duration = 1024
            if len(packets) == 1 and last_duration is None:
                last_duration = fmp4.ms_to_timescale(max(end_dts - last.dts, 1), timescale)
            base, samples = fmp4.packets_to_samples(packets, timescale, last_duration)
            fragments.append((index + 1, base, samples))
        chunks = fmp4.media_segment_chunks(self._fragment_sequence, fragments)
        size = sum(map(len, chunks))
        self._fragment_sequence += 1
        independent = bool(self._pending[0]) and self._pending[0][0].keyframe
        duration = max(end_dts - self._part_start, 0) / 1000
        if self._listeners:
            # Listeners (the recorder) keep fragments beyond the GOP cache's life: they get one buffer of their own.
            fragment = CmafFragment(
                segment.init_id,
                b"".join(chunks),
                self._part_start,
                duration,
                segment.program_date_time + segment.duration,
                independent,
                not segment.parts,
                segment.discontinuity and not segment.parts,
            )
            for listener in self._listeners:
                listener.on_fragment(self.app, self.name, fragment)
        segment.parts.append(Part(len(segment.parts), duration, independent, chunks, segment.size, size))
        segment.size += size
        segment.duration += duration
        self._pending = [[] for _ in self._tracks]
        self._part_start = end_dts
        elapsed = time.perf_counter() - started
        self.stats.parts += 1
        self.stats.fragment_seconds += elapsed
        self.stats.fragment_max_seconds = max(self.stats.fragment_max_seconds, elapsed)
        self._notify()

    def _close_segment(self, end_dts: int) -> None:
        segment = self.current
        if segment is None:
            return
        if end_dts <= self._part_start and any(self._pending):
            # The last part's length is unknown (stream end): give it one frame.
            end_dts = self._part_start + self._last_video_delta
        self._close_part(end_dts)
        self.current = None
        if not segment.parts:
            return
        segment.complete = True
        self.segments.append(segment)
        self._timeline_end = end_dts
        self.max_segment_duration = max(self.max_segment_duration, segment.duration)
        keep = max(self.settings.memory_segments, 0)
        if self._spill is not None and len(self.segments) > keep:
            self._spill_segment(self.segments[-1 - keep])
        while len(self.segments) > self.settings.window:
            dropped = self.segments.popleft()
            self._read_back.pop(dropped.msn, None)
            if dropped.spilled is not None and self._spill is not None:
                self._spill.release(dropped.spilled)
                dropped.spilled = None
            if dropped.discontinuity:
                self.discontinuity_sequence += 1
            if dropped.init_id not in {s.init_id for s in self.segments} and (
                self.current is None or self.current.init_id != dropped.init_id
            ):
                self.inits.pop(dropped.init_id, None)
        self.stats.segments += 1
        self._notify()

    def _spill_segment(self, segment: Segment) -> None:
        """Write a complete segment out; its parts' bytes are let go once the write is done."""
        spill = self._spill
        if spill is None or segment.spilled is not None or segment.spilling:
            return
        segment.spilling = True
        chunks = [chunk for p in segment.parts if p.chunks is not None for chunk in p.chunks]

        def done(spilled: SpilledRange | None) -> None:
            segment.spilling = False
            if spilled is None:
                return
            if self.find_segment(segment.msn) is not segment or self._closed:
                # It left the window (or the stream is gone) while being written.
                spill.release(spilled)
                return
            segment.spilled = spilled
            for part in segment.parts:
                part.chunks = None

        spill.store(chunks, segment.size, done)

    async def read(self, segment: Segment, start: int, end: int) -> list[bytes | memoryview]:
        """Bytes [start, end) of a segment, from memory (views, no copy) or from where it was written out.

        A written-out segment is read back whole, once for every viewer that asks for it meanwhile, and kept
        for the next ones while it is among the `_READ_BACK` segments read most recently: plain players all
        fetch the newest segment, so a stream with such viewers holds about one segment, one without none."""
        read = self._read_back_of(segment)
        if read is None:
            return segment.chunks(start, end)
        try:
            # Shielded: a viewer that goes away must not cancel the read the others wait for.
            data = await asyncio.shield(read)
        except OSError:
            if self._read_back.get(segment.msn) is read:
                del self._read_back[segment.msn]
            raise
        return [data if (start, end) == (0, len(data)) else memoryview(data)[start:end]]

    def read_now(
        self, segment: Segment, start: int, end: int
    ) -> list[bytes | memoryview] | asyncio.Future[bytes] | None:
        """As `read`, without waiting: the bytes, or the read-back to wait for first, or None when it failed."""
        read = self._read_back_of(segment)
        if read is None:
            return segment.chunks(start, end)
        if not read.done():
            return read
        if read.cancelled() or read.exception() is not None:
            if self._read_back.get(segment.msn) is read:
                del self._read_back[segment.msn]
            return None
        data = read.result()
        return [data if (start, end) == (0, len(data)) else memoryview(data)[start:end]]

    def _read_back_of(self, segment: Segment) -> asyncio.Future[bytes] | None:
        """The shared read-back of a written-out segment (started now if it is not under way); None in memory."""
        spilled = segment.spilled
        spill = self._spill
        if spilled is None or spill is None:
            return None
        read = self._read_back.get(segment.msn)
        if read is None:
            read = asyncio.ensure_future(spill.read(spilled, 0, spilled.length))
            self._read_back[segment.msn] = read
            while len(self._read_back) > _READ_BACK:
                self._read_back.popitem(last=False)
        else:
            self._read_back.move_to_end(segment.msn)
        return read

    def close(self) -> None:
        """The stream's playlist is gone for good: let its written-out segments go."""
        self._closed = True
        self._read_back.clear()
        if self._spill is not None:
            for segment in self.segments:
                if segment.spilled is not None:
                    self._spill.release(segment.spilled)
                    segment.spilled = None
            self._spill.close()

    # ----- readers ----------------------------------------------------------------------

    def _notify(self) -> None:
        self.version += 1
        self._waiters.wake()

    async def wait_change(self, timeout: float) -> bool:
        """Whether the stream changed within `timeout` seconds (all the waiters wake on the same change)."""
        return await self._waiters.wait(timeout)

    def change_future(self, timeout: float) -> asyncio.Future[bool]:
        """`wait_change`'s future, for a caller that does not await (the HTTP front)."""
        return self._waiters.future(timeout)

    @property
    def last_msn(self) -> int:
        """The sequence number of the newest segment, complete or in progress (-1 if none)."""
        if self.current is not None:
            return self.current.msn
        if self.segments:
            return self.segments[-1].msn
        return -1

    def find_segment(self, msn: int) -> Segment | None:
        if self.current is not None and self.current.msn == msn:
            return self.current
        if not self.segments:
            return None
        index = msn - self.segments[0].msn
        if 0 <= index < len(self.segments):
            return self.segments[index]
        return None

    def is_next_part(self, msn: int, index: int) -> bool:
        """Whether part `index` of segment `msn` is the one the preload hint announces (the next to come)."""
        current = self.current
        return (current is not None and current.msn == msn and index == len(current.parts)) or (
            msn == self.last_msn + 1 and index == 0
        )

    def has_reload(self, msn: int, part: int | None) -> bool:
        """Whether a blocking reload for segment `msn` (or its part `part`) can be answered."""
        return self.has_segment(msn) if part is None else self.has_part(msn, part)

    def has_part(self, msn: int, part: int) -> bool:
        segment = self.find_segment(msn)
        if segment is None:
            # Past the newest segment: not there yet; before the window: gone.
            return bool(self.segments) and msn < self.segments[0].msn
        return part < len(segment.parts) or segment.complete

    def has_segment(self, msn: int) -> bool:
        segment = self.find_segment(msn)
        if segment is None:
            return bool(self.segments) and msn < self.segments[0].msn
        return segment.complete

    def memory_bytes(self) -> int:
        """Bytes this stream's HLS holds in memory: init segments, the parts not written out (each once) and the
        written-out segments read back for viewers.

        Packets waiting for the open part are not counted: they are the hub's, held by its GOP cache anyway."""
        total = sum(len(init) for init in self.inits.values())
        total += sum(s.held for s in self.segments)
        if self.current is not None:
            total += self.current.size
        for read in self._read_back.values():
            if read.done() and not read.cancelled() and read.exception() is None:
                total += len(read.result())
        return total

    def spilled_bytes(self) -> int:
        """Bytes of this stream's window held in temporary files instead of memory."""
        return sum(s.spilled.length for s in self.segments if s.spilled is not None)
