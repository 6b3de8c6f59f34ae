"""What a WHEP viewer receives, per viewer: its own RTP timestamps, the cached GOP at start, live frames after.

The frames themselves are shared by all viewers of a stream, packetised once (`VideoUnit`, `AudioUnit`).
A viewer's `VideoOut` / `AudioOut` numbers each frame for its own RTP stream (`rtpout.RtpOut`) and hands its
share to the `SendQueue`, which the feed fills with one batch per frame for all its viewers.

aiortc's sender gets a `SenderTrack`, which never yields a frame: the track only makes the SDP and the
sender's RTCP; our send path starts when aiortc starts the sender (the peer is connected by then).
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from mediaserver.webrtc.rtpout import RtpOut, Target
from mediaserver.webrtc.sendqueue import SendQueue

VIDEO_CLOCK = 90_000
AUDIO_CLOCK = 48_000
# Cached-GOP frames are sent with timestamps this far apart, so the receiver shows the newest at once
# instead of playing the whole GOP at its original pace (which would add its age to the latency for good).
SQUEEZED_TICKS = VIDEO_CLOCK // 1000
# A timestamp jump larger than this (publisher restart, clock reset) continues one frame later instead.
MAX_GAP_TICKS = 5 * VIDEO_CLOCK
DEFAULT_TICKS = VIDEO_CLOCK // 30
# The cached GOP goes out at about this pace: whole frames, at least one a tick, until this many packets a
# tick, one tick a millisecond (as fast as the squeezed timestamps say, and no burst a receiver's socket
# buffer cannot take).
CATCHUP_PACKETS = 16
CATCHUP_INTERVAL = 0.001
# Catching up waits while the send queue holds more than this (viewers joining together must not push the
# queue into overload, where live frames are dropped for everyone).
CATCHUP_QUEUE_LIMIT = 2000
# A keyframe request is answered with the cached GOP at most this often (and not right after a keyframe).
RESYNC_INTERVAL = 1.0
# Frames a viewer may have waiting behind its catch-up before it skips to the next keyframe.
MAX_BACKLOG_FRAMES = 600


@dataclass(slots=True, eq=False)
class VideoUnit:
    """One H.264 access unit as RTP payloads, shared by every viewer of a stream."""

    payloads: list[bytes]
    octets: int  # payload bytes, for the sender reports and the figures
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
    payloads: list[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.payloads = [self.data]


@dataclass(slots=True)
class TrackCounters:
    """Figures of one track, summed by the service's metrics collector."""

    frames: int = 0
    bytes: int = 0
    dropped: int = 0
    first_frame_at: float | None = None  # time.monotonic() of the first frame handed to the sender
    last_frame_at: float = 0.0
    # Server-side delays (s) of recent frames: from the source message's arrival to their numbering.
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


class SenderTrack(MediaStreamTrack):
    """The track aiortc's sender is given. It yields no frame (the media goes out through `RtpOut`): `recv`
    returns only by ending, when the viewer leaves or aiortc stops the sender."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._ended = asyncio.Event()

    def end(self) -> None:
        self._ended.set()

    def stop(self) -> None:
        self._ended.set()
        super().stop()

    async def recv(self) -> NoReturn:
        await self._ended.wait()
        raise MediaStreamError


class VideoOut:
    """A viewer's H.264: it starts on the cached GOP (squeezed timestamps, paced), then goes live."""

    def __init__(
        self, gop_snapshot: Callable[[], list[VideoUnit]], queue: SendQueue, max_backlog: int = MAX_BACKLOG_FRAMES
    ) -> None:
        self.track = SenderTrack("video")
        self.counters = TrackCounters()
        self.rtp: RtpOut | None = None
        self.on_first_frame: Callable[[], None] | None = None
        self.keyframe_sent_at = -math.inf
        self._gop_snapshot = gop_snapshot
        self._queue = queue
        self._max_backlog = max_backlog
        self._pts = 0
        self._last_dts: int | None = None
        self._epoch: int | None = None
        self._waiting_key = False
        # Frames to send at the catch-up pace (cached ones are squeezed), live ones queue up behind them.
        self._catchup: collections.deque[tuple[VideoUnit, bool]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def started(self) -> bool:
        return self.rtp is not None

    def start(self, rtp: RtpOut) -> None:
        """aiortc started the sender: the cached GOP first, so the first picture comes at once."""
        self.rtp = rtp
        self._catch_up(self._gop_snapshot())

    def resync(self) -> bool:
        """A keyframe request: send the cached GOP again (for an RTMP publisher's stream, the only keyframe to
        be had before the next one), unless this viewer got a keyframe within `RESYNC_INTERVAL`."""
        if self.rtp is None or time.monotonic() - self.keyframe_sent_at < RESYNC_INTERVAL:
            return False
        gop = self._gop_snapshot()
        if not gop:
            return False
        self._catch_up(gop)
        return True

    def restart(self) -> None:
        """The stream restarted: carry on from its first keyframe."""
        if self.rtp is not None:
            self._waiting_key = True

    def drop(self) -> None:
        """The send queue is overloaded: this frame is lost to the viewer, which waits for a keyframe."""
        if self.rtp is not None:
            self.counters.dropped += 1
            self._waiting_key = True

    def end(self) -> None:
        self._stop_catchup()
        if self.rtp is not None:
            self.rtp.close()
        self.track.end()

    def take(self, unit: VideoUnit, now: float) -> Target | None:
        """A live frame: this viewer's numbered share of it, or None when it does not go out now."""
        if self.rtp is None:
            return None
        if self._waiting_key:
            if not unit.keyframe:
                self.counters.dropped += 1
                return None
            self._waiting_key = False
        if self._catchup:
            if unit.keyframe:
                # Newer than anything left to catch up with: straight to it.
                self._stop_catchup()
            elif len(self._catchup) >= self._max_backlog:
                self.counters.dropped += len(self._catchup) + 1
                self._stop_catchup()
                self._waiting_key = True
                return None
            else:
                self._catchup.append((unit, False))
                return None
        return self._stamp(self.rtp, unit, False, now)

    def _catch_up(self, gop: list[VideoUnit]) -> None:
        self._stop_catchup()
        if not gop:
            self._waiting_key = True
            return
        self._waiting_key = False
        self._catchup.extend((unit, True) for unit in gop)
        self._pump()

    def _pump(self) -> None:
        self._timer = None
        rtp = self.rtp
        if rtp is None:
            return
        if self._queue.backlog <= CATCHUP_QUEUE_LIMIT:
            now = time.time()
            sent = 0
            while self._catchup and sent < CATCHUP_PACKETS:
                unit, squeezed = self._catchup.popleft()
                self._queue.submit(unit.payloads, [self._stamp(rtp, unit, squeezed, now)])
                sent += len(unit.payloads)
        if self._catchup:
            self._timer = asyncio.get_running_loop().call_later(CATCHUP_INTERVAL, self._pump)

    def _stop_catchup(self) -> None:
        self._catchup.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stamp(self, rtp: RtpOut, unit: VideoUnit, squeezed: bool, now: float) -> Target:
        """Give the frame this viewer's RTP timestamp and sequence numbers."""
        if self._epoch is not None and unit.epoch != self._epoch:
            self._last_dts = None
        self._epoch = unit.epoch
        counters = self.counters
        if self._last_dts is None:
            step = 0 if counters.frames == 0 else DEFAULT_TICKS
        elif squeezed:
            step = SQUEEZED_TICKS
        else:
            step = (unit.dts - self._last_dts) * (VIDEO_CLOCK // 1000)
            if step <= 0 or step > MAX_GAP_TICKS:
                step = SQUEEZED_TICKS if step <= 0 else DEFAULT_TICKS
        self._pts += step
        self._last_dts = unit.dts
        timestamp = (rtp.origin + self._pts) & 0xFFFFFFFF
        seq = rtp.allocate(unit.payloads, unit.octets, timestamp, True, now)
        if counters.sent(unit.octets) and self.on_first_frame is not None:
            self.on_first_frame()
        if unit.keyframe:
            self.keyframe_sent_at = counters.last_frame_at
        if not squeezed and unit.arrival:
            counters.delays.append(now - unit.arrival)
        return rtp, seq, timestamp, True


class AudioOut:
    """A viewer's Opus, fed by the stream's shared transcoder (or an Opus publisher) once it started."""

    def __init__(self) -> None:
        self.track = SenderTrack("audio")
        self.counters = TrackCounters()
        self.rtp: RtpOut | None = None
        self._origin: int | None = None
        self._last_pts = -1

    @property
    def started(self) -> bool:
        return self.rtp is not None

    def start(self, rtp: RtpOut) -> None:
        self.rtp = rtp

    def end(self) -> None:
        if self.rtp is not None:
            self.rtp.close()
        self.track.end()

    def take(self, unit: AudioUnit, now: float) -> Target | None:
        rtp = self.rtp
        if rtp is None:
            return None
        if self._origin is None:
            self._origin = unit.pts
        pts = unit.pts - self._origin
        if pts <= self._last_pts:
            pts = self._last_pts + unit.samples
        # The marker bit starts a talkspurt: the stream's first packet only (Opus without DTX).
        marker = self._last_pts < 0
        self._last_pts = pts
        timestamp = (rtp.origin + pts) & 0xFFFFFFFF
        seq = rtp.allocate(unit.payloads, len(unit.data), timestamp, marker, now)
        self.counters.sent(len(unit.data))
        return rtp, seq, timestamp, marker
