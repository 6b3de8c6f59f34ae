"""Still pictures of live streams: the keyframe at the head of the hub's GOP cache, decoded, scaled and encoded
as JPEG, made only when someone asks.

Decoding, scaling and encoding run in a small thread pool of their own (PyAV releases the GIL while FFmpeg
works), never on the event loop. A picture is cached per stream for `cache_seconds`, and kept longer while
the stream's keyframe is the same one (it would decode to the same picture). Requests for a stream whose
picture is being made wait for that one instead of starting another decode.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import av
from av.video.codeccontext import VideoCodecContext
from av.video.frame import VideoFrame
from av.video.reformatter import ColorRange, Colorspace, Interpolation
from prometheus_client import CollectorRegistry, Counter, Histogram

from mediaserver.config import ConfigError, SnapshotConfig
from mediaserver.events import StreamEvent, StreamEventKind
from mediaserver.hub import HubView, Stream
from mediaserver.media import Codec, Packet

log = logging.getLogger("mediaserver.snapshot")

# FFmpeg decoders by codec. FFmpeg's own "av1" decodes only with a hardware accelerator: prefer dav1d.
_DECODERS = {
    Codec.H264: "h264",
    Codec.H265: "hevc",
    Codec.AV1: "libdav1d" if "libdav1d" in av.codecs_available else "av1",
    Codec.VP9: "vp9",
}
# Codecs whose RTMP sequence header (avcC, hvcC, av1C) is what FFmpeg wants as extradata; with it the
# decoder reads the length-prefixed NAL units RTMP carries.
_EXTRADATA = frozenset((Codec.H264, Codec.H265, Codec.AV1))


class SnapshotError(Exception):
    """No picture could be made; `code` is the API's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Snapshot:
    jpeg: bytes
    width: int
    height: int
    # time.monotonic() after which the picture is no longer served from the cache.
    expires: float

    def max_age(self, now: float | None = None) -> int:
        """Seconds a client may keep it (for Cache-Control)."""
        left = self.expires - (time.monotonic() if now is None else now)
        return max(0, math.ceil(left))


def output_size(width: int, height: int, max_width: int, sar: fractions.Fraction | None = None) -> tuple[int, int]:
    """The picture's size in square pixels, at most `max_width` wide (0: no limit), both sides even."""
    display = width * sar if sar is not None and sar > 0 else fractions.Fraction(width)
    scale = min(fractions.Fraction(1), fractions.Fraction(max_width) / display) if max_width > 0 else 1
    # Even sides: 4:2:0 chroma covers 2x2 pixels.
    out_w = max(2, round(display * scale) // 2 * 2)
    out_h = max(2, round(height * scale) // 2 * 2)
    return out_w, out_h


def render_jpeg(
    codec: Codec, config: bytes, payload: bytes | memoryview, max_width: int, quality: int
) -> tuple[bytes, int, int]:
    """Decode one keyframe (codec payload as RTMP carries it) and return (JPEG, width, height).

    Blocking (tens of milliseconds for a large picture): call it from a worker thread.
    """
    name = _DECODERS.get(codec)
    if name is None:
        raise SnapshotError("unsupported_codec", f"cannot decode {codec.value} video")
    decoder = av.CodecContext.create(name, "r")
    assert isinstance(decoder, VideoCodecContext)
    if codec in _EXTRADATA and config:
        decoder.extradata = config
    # One picture: frame threading would only delay it, and the pool already spreads streams over cores.
    decoder.thread_count = 1
    # The copy happens here, in the worker, not on the event loop.
    frames = decoder.decode(av.Packet(bytes(payload))) + decoder.decode(None)
    if not frames:
        raise SnapshotError("snapshot_failed", "the keyframe decoded to no picture")
    return frame_to_jpeg(frames[0], max_width, quality, decoder.sample_aspect_ratio)


def frame_to_jpeg(
    frame: VideoFrame, max_width: int, quality: int, sar: fractions.Fraction | None = None
) -> tuple[bytes, int, int]:
    """A decoded picture scaled to at most `max_width` square pixels (even sides) and encoded as JPEG:
    (JPEG, width, height). Blocking: call it from a worker thread."""
    width, height = output_size(frame.width, frame.height, max_width, sar)
    # Through RGB: scaled and read with the source's own matrix and range, then written as full-range BT.601
    # YUV, which is what JPEG decoders assume (a 10-bit or 4:2:2 source lands on 8-bit 4:2:0 the same way).
    rgb = frame.reformat(width, height, "rgb24", interpolation=Interpolation.AREA)
    yuv = rgb.reformat(format="yuv420p", dst_colorspace=Colorspace.ITU601, dst_color_range=ColorRange.JPEG)
    return encode_jpeg(yuv, quality), width, height


def encode_jpeg(frame: VideoFrame, quality: int) -> bytes:
    encoder = av.CodecContext.create("mjpeg", "w")
    assert isinstance(encoder, VideoCodecContext)
    encoder.width, encoder.height = frame.width, frame.height
    encoder.pix_fmt = "yuv420p"
    encoder.color_range = ColorRange.JPEG
    encoder.time_base = fractions.Fraction(1, 1)
    # A fixed quantiser (ffmpeg's -q:v): rate control means nothing for a single picture.
    encoder.qmin = encoder.qmax = quality
    frame.pts = 0
    packets = encoder.encode(frame) + encoder.encode(None)
    jpeg = b"".join(bytes(p) for p in packets)
    if not jpeg:
        raise SnapshotError("snapshot_failed", "the JPEG encoder produced nothing")
    return jpeg


@dataclass(slots=True)
class _Entry:
    stream: Stream
    keyframe: Packet
    snapshot: Snapshot


class Snapshotter:
    def __init__(
        self,
        hub: HubView | None = None,
        *,
        max_width: int = 640,
        cache_seconds: float = 5.0,
        quality: int = 5,
        workers: int = 2,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if max_width < 0 or cache_seconds < 0 or not 2 <= quality <= 31 or not 1 <= workers <= 64:
            raise ConfigError(
                "snapshot.max_width and cache_seconds must be >= 0, quality within 2..31, workers within 1..64"
            )
        self.max_width = max_width
        self.cache_seconds = cache_seconds
        self.quality = quality
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="snapshot")
        self._cache: dict[str, _Entry] = {}
        self._making: dict[str, tuple[Stream, asyncio.Task[Snapshot]]] = {}
        self._registered: list[CollectorRegistry] = []
        self.made = Counter("mediaserver_snapshots_made", "Snapshots decoded and encoded", registry=None)
        self.cache_hits = Counter("mediaserver_snapshot_cache_hits", "Snapshots served from the cache", registry=None)
        self.shared = Counter(
            "mediaserver_snapshot_shared",
            "Snapshot requests that waited for the picture another request was making",
            registry=None,
        )
        self.failures = Counter(
            "mediaserver_snapshot_failures", "Snapshots that could not be made", ["reason"], registry=None
        )
        self.decode_seconds = Histogram(
            "mediaserver_snapshot_decode_seconds",
            "Time to decode, scale and encode one snapshot",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=None,
        )
        if registry is not None:
            self.register_metrics(registry)
        if hub is not None:
            hub.listen(self._on_hub_event)

    @classmethod
    def from_config(
        cls, config: SnapshotConfig, hub: HubView | None = None, registry: CollectorRegistry | None = None
    ) -> Snapshotter:
        return cls(
            hub,
            max_width=config.max_width,
            cache_seconds=config.cache_seconds,
            quality=config.quality,
            workers=config.workers,
            registry=registry,
        )

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Export the metrics on `registry` (once per registry)."""
        if any(r is registry for r in self._registered):
            return
        for metric in (self.made, self.cache_hits, self.shared, self.failures, self.decode_seconds):
            registry.register(metric)
        self._registered.append(registry)

    def _on_hub_event(self, event: StreamEvent) -> None:
        # An ended stream's picture (and the keyframe it holds) goes at once.
        if event.kind is StreamEventKind.STOPPED:
            entry = self._cache.get(event.key)
            if entry is not None and entry.stream is event.stream:
                del self._cache[event.key]

    def cached(self, stream: Stream) -> Snapshot | None:
        entry = self._cache.get(stream.key)
        if entry is None or entry.stream is not stream or stream.ended or self.cache_seconds <= 0:
            return None
        now = time.monotonic()
        if now < entry.snapshot.expires:
            return entry.snapshot
        gop = stream.gop
        if gop and gop[0] is entry.keyframe:
            # Still the same keyframe: the same picture, fresh again.
            entry.snapshot = replace(entry.snapshot, expires=now + self.cache_seconds)
            return entry.snapshot
        return None

    async def snapshot(self, stream: Stream) -> Snapshot:
        """The stream's current picture; raises SnapshotError when there is none to make."""
        snapshot = self.cached(stream)
        if snapshot is not None:
            self.cache_hits.inc()
            return snapshot
        making = self._making.get(stream.key)
        if making is not None and making[0] is stream:
            self.shared.inc()
            task = making[1]
        else:
            task = asyncio.get_running_loop().create_task(self._make(stream))
            # Retrieve the outcome even when every waiter has gone.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._making[stream.key] = (stream, task)
        # Shielded: a client that hangs up must not cancel the picture the others wait for.
        return await asyncio.shield(task)

    async def _make(self, stream: Stream) -> Snapshot:
        try:
            gop = stream.gop
            keyframe = gop[0] if gop else None
            if keyframe is None or (not stream.video.config and stream.video.codec in _EXTRADATA):
                raise SnapshotError("snapshot_unavailable", "no keyframe of the stream is at hand yet")
            codec, config = stream.video.codec, stream.video.config
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            try:
                jpeg, width, height = await loop.run_in_executor(
                    self._executor, render_jpeg, codec, config, keyframe.data, self.max_width, self.quality
                )
            except SnapshotError:
                raise
            except Exception as exc:  # FFmpeg's errors, a closed pool: a 503 for the caller, never a 500
                log.warning("event=snapshot_failed stream=%s codec=%s error=%r", stream.key, codec.value, exc)
                raise SnapshotError("snapshot_failed", "the stream's keyframe could not be decoded") from exc
            self.decode_seconds.observe(time.perf_counter() - started)
            self.made.inc()
            snapshot = Snapshot(jpeg, width, height, time.monotonic() + self.cache_seconds)
            if self.cache_seconds > 0 and not stream.ended:
                self._cache[stream.key] = _Entry(stream, keyframe, snapshot)
            return snapshot
        except SnapshotError as exc:
            self.failures.labels(exc.code).inc()
            raise
        finally:
            making = self._making.get(stream.key)
            if making is not None and making[1] is asyncio.current_task():
                del self._making[stream.key]

    def close(self) -> None:
        """Stop the worker threads (pictures being made are abandoned)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._cache.clear()
        for _, task in self._making.values():
            task.cancel()
