"""What all WHEP viewers of one stream share: Annex-B frames (converted once, not per viewer), a mirror of the
stream's GOP cache in that form, and the AAC -> Opus transcoder.

Each viewer is a hub subscriber of its own (so the hub counts and bounds it like any player); the first viewer
whose `on_packet` sees a packet converts it and the others reuse the result (the hub hands every subscriber
the same `Packet` object, one after the other, on the loop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mediaserver.codecs.annexb import AnnexBError, avcc_to_annexb
from mediaserver.codecs.h264 import AvcConfig, parse_avcc
from mediaserver.hub import Stream
from mediaserver.media import Codec, Packet, TrackKind
from mediaserver.webrtc.tracks import AUDIO_CLOCK, AudioUnit, H264Track, OpusTrack, VideoUnit
from mediaserver.webrtc.transcode import AacToOpus, TranscodeStats

log = logging.getLogger("mediaserver.webrtc")

# How fast the audio pacer forgets a late burst: 0.2 ms per packet, 10 ms per second.
AUDIO_OFFSET_DECAY = 0.0002


class Viewer:
    """One WHEP peer as a hub subscriber: feeds its own tracks from the shared feed."""

    protocol = "webrtc"

    def __init__(self, feed: StreamFeed, video: H264Track, audio: OpusTrack | None) -> None:
        self.feed = feed
        self.video = video
        self.audio = audio
        self.stream: Stream | None = None

    def on_packet(self, packet: Packet) -> None:
        if packet.is_config:
            return
        if packet.kind is TrackKind.VIDEO:
            unit = self.feed.video_unit(packet)
            if unit is not None:
                self.video.push(unit)
        elif packet.kind is TrackKind.AUDIO and self.audio is not None:
            self.feed.audio_in(packet)

    def on_stream_end(self) -> None:
        stream = self.stream
        self.stream = None
        if stream is not None:
            self.feed.stream_ended(stream)


class StreamFeed:
    def __init__(
        self,
        key: str,
        stream: Stream,
        transcode_stats: TranscodeStats,
        opus_bitrate: int,
        on_error: Callable[[str], None],
    ) -> None:
        self.key = key
        self.stream: Stream | None = stream
        self.ended_at: float | None = None
        self.epoch = 0
        self.viewers: set[Viewer] = set()
        self._on_error = on_error
        self._config: AvcConfig | None = None
        self._config_version = -1
        self._parameter_sets = b""
        self._last_video: Packet | None = None
        self._last_unit: VideoUnit | None = None
        self._last_audio: Packet | None = None
        # The GOP in Annex-B, mirroring stream.gop; None until a viewer needs it or a keyframe passes.
        self._gop: list[VideoUnit] | None = None
        self._transcode_stats = transcode_stats
        self._opus_bitrate = opus_bitrate
        self._transcoder: AacToOpus | None = None
        self._audio_offset: float | None = None

    # ----- viewers ----------------------------------------------------------------------

    def add(self, viewer: Viewer) -> None:
        self.viewers.add(viewer)
        if self.stream is not None:
            viewer.stream = self.stream
            self.stream.subscribe(viewer)
        if viewer.audio is not None and self._transcoder is None:
            self._transcoder = AacToOpus(self._audio_out, self._transcode_stats, self._opus_bitrate)
            self._transcoder.start()

    def remove(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        if viewer.stream is not None:
            viewer.stream.unsubscribe(viewer)
            viewer.stream = None
        if not any(v.audio is not None for v in self.viewers) and self._transcoder is not None:
            self._transcoder.stop()
            self._transcoder = None

    def close(self) -> None:
        for viewer in list(self.viewers):
            self.remove(viewer)
        if self._transcoder is not None:
            self._transcoder.stop()
            self._transcoder = None

    # ----- stream lifecycle ----------------------------------------------------------------

    def stream_ended(self, stream: Stream) -> None:
        if self.stream is not stream:
            return
        self.stream = None
        self.ended_at = time.monotonic()

    def stream_started(self, stream: Stream) -> None:
        """The publisher came back: the viewers carry on with the new stream from its first keyframe."""
        self.stream = stream
        self.ended_at = None
        self.epoch += 1
        self._config_version = -1
        self._audio_offset = None
        self._gop = None
        self._last_video = self._last_unit = self._last_audio = None
        for viewer in self.viewers:
            viewer.video.restart()
            viewer.stream = stream
            stream.subscribe(viewer)

    # ----- video --------------------------------------------------------------------------

    def _avc_config(self, stream: Stream) -> AvcConfig | None:
        track = stream.video
        if track.version != self._config_version:
            self._config_version = track.version
            try:
                self._config = parse_avcc(track.config)
                self._parameter_sets = self._config.parameter_sets()
            except AnnexBError as exc:
                self._config = None
                self._parameter_sets = b""
                self._on_error("bad_avcc")
                log.warning("event=webrtc_bad_avcc stream=%s error=%s", self.key, exc)
        return self._config

    def avc_config(self) -> AvcConfig | None:
        return None if self.stream is None else self._avc_config(self.stream)

    def _convert(self, stream: Stream, packet: Packet) -> VideoUnit | None:
        if packet.codec is not Codec.H264:
            return None
        config = self._avc_config(stream)
        if config is None:
            return None
        try:
            data, idr = avcc_to_annexb(packet.data, config.length_size, self._parameter_sets)
        except AnnexBError:
            self._on_error("bad_nal")
            return None
        if not data:
            return None
        return VideoUnit(data, packet.dts, packet.keyframe or idr, self.epoch, time.time())

    def video_unit(self, packet: Packet) -> VideoUnit | None:
        """The Annex-B form of a live video packet, converted by the first viewer that asks."""
        if packet is self._last_video:
            return self._last_unit
        stream = self.stream
        unit = self._convert(stream, packet) if stream is not None else None
        self._last_video, self._last_unit = packet, unit
        if unit is not None and stream is not None:
            if unit.keyframe:
                self._gop = [unit]
            elif self._gop is not None:
                if stream.gop:
                    self._gop.append(unit)
                else:
                    # The hub gave up caching this GOP (too large): so do we.
                    self._gop = []
        return unit

    def gop_snapshot(self) -> list[VideoUnit]:
        """The cached GOP up to now, for a viewer that starts."""
        stream = self.stream
        if stream is None:
            return []
        if self._gop is None:
            units = []
            for packet in stream.gop:
                if packet.kind is TrackKind.VIDEO and not packet.is_config:
                    unit = self._convert(stream, packet)
                    if unit is not None:
                        unit.arrival = 0.0
                        units.append(unit)
            self._gop = units if units and units[0].keyframe else []
        return list(self._gop)

    # ----- audio --------------------------------------------------------------------------

    def audio_in(self, packet: Packet) -> None:
        if packet is self._last_audio:
            return
        self._last_audio = packet
        stream = self.stream
        if stream is None:
            return
        if packet.codec is Codec.AAC and self._transcoder is not None and stream.audio.config:
            self._transcoder.submit((stream.audio.config, bytes(packet.data), packet.pts))
        elif packet.codec is Codec.OPUS:
            # Enhanced-RTMP Opus goes through as it is.
            self._audio_out([AudioUnit(bytes(packet.data), packet.pts * 48)])

    def _audio_out(self, units: list[AudioUnit]) -> None:
        """Opus packets from the transcoder, released at a steady 20 ms pace.

        RTMP publishers interleave audio in bursts (ffmpeg: two AAC frames every ~46 ms); sent as they come,
        the browser's audio jitter buffer grows to cover the bursts and lip sync delays the video as much.
        Each packet goes out at its media time plus the largest lateness seen recently (slowly forgotten),
        so the pace is even and no packet waits longer than the burst it came in.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        for unit in units:
            media_time = unit.pts / AUDIO_CLOCK
            lateness = now - media_time
            if self._audio_offset is None or lateness > self._audio_offset:
                self._audio_offset = lateness
            else:
                self._audio_offset -= AUDIO_OFFSET_DECAY
            due = media_time + self._audio_offset
            if due - now <= 0.002:
                self._release_audio(unit)
            else:
                loop.call_at(due, self._release_audio, unit)

    def _release_audio(self, unit: AudioUnit) -> None:
        for viewer in self.viewers:
            if viewer.audio is not None:
                viewer.audio.push(unit)
