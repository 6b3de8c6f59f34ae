"""Per-peer aiortc tracks that hand pre-encoded media to the RTP sender.

When `recv()` returns an `av.Packet`, aiortc's `RTCRtpSender` packetises it with the codec's `pack()` and sends
it without encoding: H.264 wants Annex-B with SPS/PPS before each IDR, Opus one packet per call. The RTP
timestamp is `pts` in `time_base`; the sender does not pace, the live source does.

Each peer has its own track objects (aiortc's sender consumes the track: sharing one between peers would split
the frames between them). The tracks share the converted frames (`VideoUnit`, `AudioUnit`), made once per stream.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

VIDEO_CLOCK = 90_000
AUDIO_CLOCK = 48_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_CLOCK)
# Cached-GOP frames are sent with timestamps this far apart, so the receiver shows the newest at once
# instead of playing the whole GOP at its original pace (which would add its age to the latency for good).
SQUEEZED_TICKS = VIDEO_CLOCK // 1000
# A timestamp jump larger than this (publisher restart, clock reset) continues one frame later instead.
MAX_GAP_TICKS = 5 * VIDEO_CLOCK
DEFAULT_TICKS = VIDEO_CLOCK // 30


@dataclass(slots=True, eq=False)
class VideoUnit:
    """One H.264 access unit in Annex-B, shared by every viewer of a stream."""

    data: bytes
    dts: int  # milliseconds, the publisher's clock
    keyframe: bool
    # Bumped when the stream restarts (a reconnecting publisher): timestamps start over.
    epoch: int
    # Wall-clock time (time.time()) the source message reached the server, for latency measurements.
    arrival: float = 0.0


@dataclass(slots=True, eq=False)
class AudioUnit:
    """One Opus packet (20 ms), shared by every viewer of a stream."""

    data: bytes
    pts: int  # samples at 48 kHz
    samples: int = 960


T = TypeVar("T")


class UnitQueue(Generic[T]):
    """A bounded queue for one track. On overflow it empties and, for video, waits for the next keyframe."""

    def __init__(self, max_items: int, on_drop: Callable[[int], None], is_key: Callable[[T], bool] | None = None):
        self._items: collections.deque[T] = collections.deque()
        self._max = max_items
        self._on_drop = on_drop
        self._is_key = is_key
        self._waiting_key = False
        self._event = asyncio.Event()
        self._closed = False

    def put(self, item: T) -> None:
        if self._closed:
            return
        if self._waiting_key:
            if self._is_key is None or not self._is_key(item):
                self._on_drop(1)
                return
            self._waiting_key = False
        if len(self._items) >= self._max:
            self._on_drop(len(self._items))
            self._items.clear()
            if self._is_key is not None and not self._is_key(item):
                self._waiting_key = True
                self._on_drop(1)
                return
        self._items.append(item)
        self._event.set()

    def wait_for_key(self) -> None:
        """Drop what comes next until a keyframe (what is queued already stays)."""
        self._waiting_key = self._is_key is not None

    def close(self) -> None:
        self._closed = True
        self._event.set()

    async def get(self) -> T:
        while not self._items:
            if self._closed:
                raise MediaStreamError
            self._event.clear()
            await self._event.wait()
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)


@dataclass(slots=True)
class TrackCounters:
    """Figures of one track, summed by the service's metrics collector."""

    frames: int = 0
    bytes: int = 0
    dropped: int = 0
    first_frame_at: float | None = None  # time.monotonic() of the first frame handed to the sender
    last_frame_at: float = 0.0
    # (arrival wall clock, handed-to-sender wall clock) of recent frames, for latency measurements.
    delays: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=300))

    def sent(self, size: int) -> bool:
        """Count one frame handed to the sender; True for the track's first."""
        self.frames += 1
        self.bytes += size
        self.last_frame_at = time.monotonic()
        if self.first_frame_at is None:
            self.first_frame_at = self.last_frame_at
            return True
        return False


class H264Track(MediaStreamTrack):
    """Pre-encoded H.264 for one peer.

    The track starts when the sender first asks for a frame (the peer is connected by then): it takes the
    stream's cached GOP at that moment, so the first picture comes at once, with squeezed timestamps, and
    live frames from then on.
    """

    kind = "video"

    def __init__(self, gop_snapshot: Callable[[], list[VideoUnit]], max_queue: int = 600) -> None:
        super().__init__()
        self.counters = TrackCounters()
        self._gop_snapshot = gop_snapshot
        self._queue: UnitQueue[tuple[VideoUnit, bool]] = UnitQueue(max_queue, self._dropped, lambda u: u[0].keyframe)
        self.armed = False
        self._pts = 0
        self._last_dts: int | None = None
        self._epoch: int | None = None
        self.on_first_frame: Callable[[], None] | None = None

    def _dropped(self, count: int) -> None:
        self.counters.dropped += count

    def push(self, unit: VideoUnit) -> None:
        """A live frame; ignored until the sender started."""
        if self.armed:
            self._queue.put((unit, False))

    def restart(self) -> None:
        """The stream restarted: carry on from its first keyframe."""
        if self.armed:
            self._queue.wait_for_key()

    def end(self) -> None:
        self._queue.close()

    def stop(self) -> None:
        self._queue.close()
        super().stop()

    def _arm(self) -> None:
        self.armed = True
        gop = self._gop_snapshot()
        if not gop:
            self._queue.wait_for_key()
        for unit in gop:
            self._queue.put((unit, True))

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        if not self.armed:
            self._arm()
        unit, squeezed = await self._queue.get()
        if self._epoch is not None and unit.epoch != self._epoch:
            self._last_dts = None
        self._epoch = unit.epoch
        if self._last_dts is None:
            step = 0 if self.counters.frames == 0 else DEFAULT_TICKS
        elif squeezed:
            step = SQUEEZED_TICKS
        else:
            step = (unit.dts - self._last_dts) * (VIDEO_CLOCK // 1000)
            if step <= 0 or step > MAX_GAP_TICKS:
                step = SQUEEZED_TICKS if step <= 0 else DEFAULT_TICKS
        self._pts += step
        self._last_dts = unit.dts
        packet = av.Packet(unit.data)
        packet.pts = self._pts
        packet.dts = self._pts
        packet.time_base = VIDEO_TIME_BASE
        packet.is_keyframe = unit.keyframe
        counters = self.counters
        if counters.sent(len(unit.data)) and self.on_first_frame is not None:
            self.on_first_frame()
        if not squeezed and unit.arrival:
            counters.delays.append(time.time() - unit.arrival)
        if squeezed:
            # A burst of cached frames: let the loop breathe between them.
            await asyncio.sleep(0)
        return packet


class OpusTrack(MediaStreamTrack):
    """Pre-encoded Opus for one peer, fed by the stream's shared transcoder."""

    kind = "audio"

    def __init__(self, max_queue: int = 100) -> None:
        super().__init__()
        self.counters = TrackCounters()
        self._queue: UnitQueue[AudioUnit] = UnitQueue(max_queue, self._dropped)
        self.started = False
        self._origin: int | None = None
        self._last_pts = -1

    def _dropped(self, count: int) -> None:
        self.counters.dropped += count

    def push(self, unit: AudioUnit) -> None:
        if self.started:
            self._queue.put(unit)

    def end(self) -> None:
        self._queue.close()

    def stop(self) -> None:
        self._queue.close()
        super().stop()

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        self.started = True
        unit = await self._queue.get()
        if self._origin is None:
            self._origin = unit.pts
        pts = unit.pts - self._origin
        if pts <= self._last_pts:
            pts = self._last_pts + unit.samples
        self._last_pts = pts
        packet = av.Packet(unit.data)
        packet.pts = pts
        packet.time_base = AUDIO_TIME_BASE
        self.counters.sent(len(unit.data))
        return packet
