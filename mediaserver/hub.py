"""The stream hub: live streams by `app/name`, one publisher each, any number of subscribers.

Fan-out is a synchronous call per subscriber (`on_packet`), so a packet costs the hub one
loop over its subscribers and no task switch. Each subscriber bounds its own backlog and
skips to the next keyframe when it overflows (see `PacketQueue` and the RTMP player).
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from mediaserver.background import BackgroundTask
from mediaserver.codecs import CodecError, aac, h264, opus
from mediaserver.events import StreamEvent, StreamEventKind
from mediaserver.media import Codec, Packet, TrackInfo, TrackKind

log = logging.getLogger("mediaserver.hub")


class Subscriber(Protocol):
    protocol: str

    def on_packet(self, packet: Packet) -> None:
        """Called for every packet; must not block. Config and metadata packets come too."""

    def on_stream_end(self) -> None:
        """The publisher left; no more packets will come."""


class Publisher(Protocol):
    peer: str
    protocol: str

    def stop(self, reason: str) -> None:
        """Disconnect the publisher (idle timeout, kicked by an operator)."""


@dataclass(slots=True)
class DropCounter:
    """Packets dropped, by reason; read by the metrics collector."""

    by_reason: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))

    def add(self, reason: str, count: int = 1) -> None:
        self.by_reason[reason] += count


class Stream:
    def __init__(
        self,
        app: str,
        name: str,
        publisher: Publisher,
        max_gop_bytes: int,
        drops: DropCounter,
        on_config: Callable[[Stream, TrackInfo], None] | None = None,
        join_min_video_frames: int = 0,
    ) -> None:
        self.app = app
        self.name = name
        self.publisher = publisher
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self.last_media = time.monotonic()
        self.metadata: Packet | None = None
        self.video_config: Packet | None = None
        self.audio_config: Packet | None = None
        self.video = TrackInfo(TrackKind.VIDEO, Codec.UNKNOWN)
        self.audio = TrackInfo(TrackKind.AUDIO, Codec.UNKNOWN)
        self.meta_fps = 0.0
        self.subscribers: list[Subscriber] = []
        self.ended = False
        self._gop: list[Packet] = []
        self._gop_bytes = 0
        self._gop_video = 0  # video frames in the current GOP
        # The fewest whole GOPs before the current one that bring a join burst to `_join_min_video` video
        # frames, as (packets, video frames), oldest first; empty once the current GOP has enough by itself.
        self._previous_gops: deque[tuple[list[Packet], int]] = deque()
        self._previous_video = 0
        # The current GOP's video count at which the oldest kept GOP is no longer needed.
        self._trim_at = 0
        self._join_min_video = join_min_video_frames
        self._max_gop_bytes = max_gop_bytes
        self._drops = drops
        self._on_config = on_config
        self.bytes_in = 0
        self.video_frames = 0
        self.audio_frames = 0
        # (monotonic time, bytes_in, video_frames) at the last rate sample, for bitrate/fps.
        self._rate_mark = (self.started_monotonic, 0, 0)
        self.bitrate = 0.0
        self.fps = 0.0

    @property
    def derived(self) -> bool:
        """Made by the server from another stream (an ABR rung): not recorded or relayed of its own."""
        return self.publisher.protocol in DERIVED_PROTOCOLS

    @property
    def is_copy(self) -> bool:
        """An edge copy of a stream another worker or node holds: the holder records, relays and registers it."""
        return self.publisher.protocol == EDGE_PROTOCOL

    @property
    def watched(self) -> bool:
        """Someone reads it: a subscriber other than the server's own segmenter."""
        return any(s.protocol not in INTERNAL_SUBSCRIBERS for s in self.subscribers)

    @property
    def key(self) -> str:
        return f"{self.app}/{self.name}"

    @property
    def gop(self) -> list[Packet]:
        """The current keyframe group: from the newest keyframe on."""
        return self._gop

    def join_burst(self) -> list[Packet]:
        """What a new RTMP player gets before live packets: the current GOP, preceded by the previous one
        while the current holds fewer than `join_min_video_frames` video frames."""
        if not self._previous_gops or not self._gop:
            return list(self._gop)
        burst: list[Packet] = []
        for packets, _ in self._previous_gops:
            burst += packets
        return burst + self._gop

    def _keep_for_join(self) -> None:
        """At a keyframe, before the new GOP starts: keep the one that just ended for join bursts."""
        if self._join_min_video and self._gop:
            self._previous_gops.append((self._gop, self._gop_video))
            self._previous_video += self._gop_video

    def _trim_previous(self) -> None:
        """Drop the oldest kept GOPs while the rest and the current GOP still reach the minimum."""
        gops = self._previous_gops
        while gops and self._previous_video - gops[0][1] + self._gop_video >= self._join_min_video:
            self._previous_video -= gops.popleft()[1]
        self._trim_at = self._join_min_video - (self._previous_video - gops[0][1]) if gops else 0

    def _forget_previous(self) -> None:
        self._previous_gops.clear()
        self._previous_video = 0

    def push(self, packet: Packet) -> None:
        """Ingest one packet from the publisher and fan it out."""
        self.bytes_in += len(packet.flv)
        if packet.is_config:
            self._set_config(packet)
        elif packet.kind is TrackKind.VIDEO:
            self.video_frames += 1
            self.last_media = time.monotonic()
            if packet.keyframe:
                self._keep_for_join()
                self._gop = [packet]
                self._gop_bytes = len(packet.flv)
                self._gop_video = 1
                if self._previous_gops:
                    self._trim_previous()
            elif self._gop:
                self._gop_video += 1
                self._append_gop(packet)
                if self._previous_gops and self._gop_video >= self._trim_at:
                    self._trim_previous()
        elif packet.kind is TrackKind.AUDIO:
            self.audio_frames += 1
            self.last_media = time.monotonic()
            if self._gop:
                self._append_gop(packet)
        for subscriber in self.subscribers:
            subscriber.on_packet(packet)

    def set_metadata(self, packet: Packet, width: int, height: int, fps: float) -> None:
        self.metadata = packet
        if width and height and not self.video.width:
            self.video.width, self.video.height = width, height
        self.meta_fps = fps
        for subscriber in self.subscribers:
            subscriber.on_packet(packet)

    def _append_gop(self, packet: Packet) -> None:
        self._gop_bytes += len(packet.flv)
        if self._gop_bytes > self._max_gop_bytes:
            # An endless GOP (a camera with keyframes minutes apart) would grow without
            # bound; give up caching until the next keyframe.
            self._drops.add("gop_cache_overflow", len(self._gop))
            self._gop = []
            self._gop_bytes = 0
            self._forget_previous()
        else:
            self._gop.append(packet)

    def _set_config(self, packet: Packet) -> None:
        video = packet.kind is TrackKind.VIDEO
        current = self.video_config if video else self.audio_config
        if current is not None and current.flv == packet.flv:
            return
        track = self.video if video else self.audio
        track.codec = packet.codec
        track.config = bytes(packet.data)
        track.version += 1
        try:
            if packet.codec is Codec.H264:
                track.width, track.height = h264.resolution(track.config)
            elif packet.codec is Codec.AAC:
                track.sample_rate, track.channels = aac.audio_config(track.config)
            elif packet.codec is Codec.OPUS:
                track.sample_rate, track.channels = opus.head_config(track.config)
        except (CodecError, IndexError) as exc:
            log.warning("event=bad_codec_config stream=%s track=%s error=%s", self.key, track.kind.value, exc)
        if video:
            self.video_config = packet
            # A new configuration makes the cached GOP undecodable.
            self._gop = []
            self._gop_bytes = 0
            self._forget_previous()
        else:
            self.audio_config = packet
        if self._on_config is not None:
            self._on_config(self, track)

    def sample_rates(self, now: float) -> None:
        then, bytes_then, frames_then = self._rate_mark
        elapsed = now - then
        if elapsed >= 1.0:
            self.bitrate = (self.bytes_in - bytes_then) * 8 / elapsed
            self.fps = (self.video_frames - frames_then) / elapsed
            self._rate_mark = (now, self.bytes_in, self.video_frames)

    def subscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with contextlib.suppress(ValueError):
            self.subscribers.remove(subscriber)

    def subscriber_counts(self) -> dict[str, int]:
        counts: dict[str, int] = collections.defaultdict(int)
        for subscriber in self.subscribers:
            counts[subscriber.protocol] += 1
        return dict(counts)

    def snapshot(self) -> dict[str, object]:
        """The JSON view of a live stream for the stats API."""
        return {
            "app": self.app,
            "name": self.name,
            "publisher": {"protocol": self.publisher.protocol, "peer": self.publisher.peer},
            "started_at": self.started_at,
            "uptime_seconds": round(time.monotonic() - self.started_monotonic, 3),
            "video": (
                {
                    "codec": self.video.codec.value,
                    "width": self.video.width,
                    "height": self.video.height,
                    "fps": round(self.fps or self.meta_fps, 2),
                }
                if self.video.codec is not Codec.UNKNOWN
                else None
            ),
            "audio": (
                {
                    "codec": self.audio.codec.value,
                    "sample_rate": self.audio.sample_rate,
                    "channels": self.audio.channels,
                }
                if self.audio.codec is not Codec.UNKNOWN
                else None
            ),
            "bitrate_bps": round(self.bitrate),
            "bytes_in": self.bytes_in,
            "subscribers": self.subscriber_counts(),
        }


StreamListener = Callable[[StreamEvent], None]
# The publisher of an edge copy (mediaserver.cluster.edge).
EDGE_PROTOCOL = "edge"
# Publishers that are the server's own, making a stream out of another one (mediaserver.transcode's rungs, edge
# copies).
DERIVED_PROTOCOLS = frozenset({"transcode", EDGE_PROTOCOL})
# Subscribers that every stream has, whether anyone watches it or not.
INTERNAL_SUBSCRIBERS = frozenset({"hls_segmenter"})
# (app, name) -> whether the stream is live now, having been started for the asking player; or ELSEWHERE.
DemandHandler = Callable[[str, str], Awaitable[bool | str]]
# A demand handler's answer when another worker has just taken it upon itself to bring the stream: the handlers
# are asked once more from the first (the edge copy, which can now pull it from there).
ELSEWHERE = "elsewhere"


class StreamTaken(Exception):
    pass


class PublisherView(Protocol):
    @property
    def protocol(self) -> str: ...

    @property
    def peer(self) -> str: ...


class StreamView(Protocol):
    """The figures of a live stream that the control plane reads: a `Stream` of this process, or the summary
    of one that another worker of the machine holds (mediaserver.cluster.machinehub)."""

    @property
    def app(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def key(self) -> str: ...

    @property
    def bitrate(self) -> float: ...

    @property
    def fps(self) -> float: ...

    @property
    def meta_fps(self) -> float: ...

    @property
    def publisher(self) -> PublisherView: ...

    def subscriber_counts(self) -> dict[str, int]: ...

    def snapshot(self) -> dict[str, object]: ...


class HubView(Protocol):
    """What the control plane may use of the hub. `get`/`list` are this process's streams (edge copies
    included); `live`/`live_streams` are the streams published to this machine, wherever they are held."""

    def get(self, app: str, name: str) -> Stream | None: ...

    async def find(self, app: str, name: str) -> Stream | None: ...

    def list(self) -> list[Stream]: ...

    def live(self, app: str, name: str) -> StreamView | None: ...

    def live_streams(self) -> builtins.list[StreamView]: ...

    def listen(self, listener: StreamListener) -> None: ...

    def kick(self, app: str, name: str, reason: str) -> bool: ...


class Hub:
    def __init__(
        self, max_gop_bytes: int = 32 * 1024 * 1024, idle_timeout: float = 10.0, join_min_video_frames: int = 0
    ) -> None:
        self.streams: dict[str, Stream] = {}
        self.max_gop_bytes = max_gop_bytes
        self.join_min_video_frames = join_min_video_frames
        self.idle_timeout = idle_timeout
        self.drops = DropCounter()
        self._listeners: list[StreamListener] = []
        # Tried in order when a player asks for a stream that is not live (pull on-demand sources, ABR rungs).
        self._demand: list[DemandHandler] = []
        # Stream key -> monotonic time a player last asked for it (HLS requests, RTMP and WHEP plays).
        self.wanted: dict[str, float] = {}
        self._housekeeping = BackgroundTask.every(1.0, self._housekeep, "hub_housekeeping")

    def listen(self, listener: StreamListener) -> None:
        """`listener(event)` for every `StreamEvent`, called synchronously: it must not block."""
        self._listeners.append(listener)

    def _emit(self, event: StreamEvent) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event=listener_failed hub_event=%s stream=%s", event.kind.value, event.key)

    def _config_changed(self, stream: Stream, track: TrackInfo) -> None:
        kind = StreamEventKind.CODEC_CHANGED
        self._emit(StreamEvent(kind, stream, track=track.kind.value, codec=track.codec.value, version=track.version))

    def get(self, app: str, name: str) -> Stream | None:
        return self.streams.get(f"{app}/{name}")

    def add_demand(self, handler: DemandHandler, first: bool = False) -> None:
        """One more who may start a stream that is not live when a player asks for it (the pull service's
        on-demand sources, the transcoder's ABR rungs, edge copies of streams held elsewhere: `first`, so that a
        stream live on another worker or node is not started here a second time); asked in order until one
        brings it."""
        if first:
            self._demand.insert(0, handler)
        else:
            self._demand.append(handler)

    def want(self, app: str, name: str) -> None:
        """A player asked for this stream now (on-demand sources stop after some time without any)."""
        self.wanted[f"{app}/{name}"] = time.monotonic()

    async def find(self, app: str, name: str) -> Stream | None:
        """The live stream for a player: as `get`, but a stream that an on-demand source can bring is started
        and waited for (up to the source's wait time)."""
        self.want(app, name)
        stream = self.get(app, name)
        for _ in range(2):
            retry = False
            for handler in self._demand:
                if stream is not None:
                    break
                answer = await handler(app, name)
                if answer == ELSEWHERE:
                    retry = True
                    break
                if answer:
                    stream = self.get(app, name)
            if stream is not None or not retry:
                break
        return stream

    def list(self) -> list[Stream]:
        return list(self.streams.values())

    def live(self, app: str, name: str) -> Stream | None:
        """A stream published here (an edge copy is the holder's to tell of)."""
        stream = self.streams.get(f"{app}/{name}")
        return stream if stream is not None and not stream.is_copy else None

    def live_streams(self) -> builtins.list[StreamView]:
        return [stream for stream in self.streams.values() if not stream.is_copy]

    def kick(self, app: str, name: str, reason: str) -> bool:
        """Disconnect a stream's publisher (camera disabled, key rotated, operator's request)."""
        stream = self.get(app, name)
        if stream is None:
            return False
        log.info("event=publisher_kicked stream=%s peer=%s reason=%s", stream.key, stream.publisher.peer, reason)
        stream.publisher.stop(reason)
        return True

    def publish(self, app: str, name: str, publisher: Publisher) -> Stream:
        key = f"{app}/{name}"
        if key in self.streams:
            raise StreamTaken(key)
        stream = Stream(
            app, name, publisher, self.max_gop_bytes, self.drops, self._config_changed, self.join_min_video_frames
        )
        self.streams[key] = stream
        self._emit(StreamEvent(StreamEventKind.STARTED, stream))
        return stream

    def unpublish(self, stream: Stream) -> None:
        if self.streams.get(stream.key) is not stream:
            return
        del self.streams[stream.key]
        stream.ended = True
        for subscriber in list(stream.subscribers):
            try:
                subscriber.on_stream_end()
            except Exception:
                log.exception("event=subscriber_end_failed stream=%s", stream.key)
        stream.subscribers.clear()
        self._emit(StreamEvent(StreamEventKind.STOPPED, stream))

    def start(self) -> None:
        self._housekeeping.start()

    async def stop(self) -> None:
        await self._housekeeping.stop()
        for stream in list(self.streams.values()):
            stream.publisher.stop("shutdown")
            self.unpublish(stream)

    def _housekeep(self) -> None:
        now = time.monotonic()
        for stream in list(self.streams.values()):
            stream.sample_rates(now)
            if self.idle_timeout > 0 and now - stream.last_media > self.idle_timeout:
                log.warning(
                    "event=publisher_idle stream=%s peer=%s idle_seconds=%.1f",
                    stream.key,
                    stream.publisher.peer,
                    now - stream.last_media,
                )
                stream.publisher.stop("idle_timeout")
                self.unpublish(stream)


class PacketQueue:
    """A bounded per-subscriber queue for consumers that run as tasks (HLS, WebRTC, recorder).

    On overflow it empties itself and waits for the next video keyframe, so the consumer
    resumes with a decodable picture instead of a smear, and the drop is counted.
    """

    def __init__(self, max_packets: int, drops: DropCounter, reason: str = "slow_consumer") -> None:
        self._items: collections.deque[Packet | None] = collections.deque()
        self._max = max_packets
        self._drops = drops
        self._reason = reason
        self._waiting_keyframe = False
        self._event = asyncio.Event()

    def put(self, packet: Packet) -> None:
        if self._waiting_keyframe:
            if not (packet.kind is TrackKind.VIDEO and packet.keyframe) and not packet.is_config:
                self._drops.add(self._reason)
                return
            self._waiting_keyframe = False
        if len(self._items) >= self._max:
            self._drops.add(self._reason, len(self._items) + 1)
            self._items.clear()
            self._waiting_keyframe = not (packet.kind is TrackKind.VIDEO and packet.keyframe)
            if self._waiting_keyframe:
                return
        self._items.append(packet)
        self._event.set()

    def close(self) -> None:
        self._items.append(None)
        self._event.set()

    async def get(self) -> Packet | None:
        """The next packet, or None once the stream has ended."""
        while not self._items:
            self._event.clear()
            await self._event.wait()
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)
