"""What all WHEP viewers of one stream share: frames packetised for RTP once (not per viewer), a mirror of the
stream's GOP cache in that form, and the AAC -> Opus transcoder.

Fan-out is hub -> one `StreamFeed` per stream -> one `SendQueue` batch per frame for all its viewers. The feed
is the stream's only WebRTC subscriber: it subscribes when its first viewer comes and unsubscribes when the last
one leaves (or the stream ends), so the hub calls WebRTC once per packet whatever the number of viewers. Each
viewer only numbers the frame for its own RTP stream (`VideoOut.take`); when the send queue falls behind, delta
frames are dropped and the viewers skip to the next keyframe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mediaserver.auth import redact
from mediaserver.codecs.annexb import AnnexBError, avcc_to_annexb, split_annexb
from mediaserver.codecs.h264 import AvcConfig, parse_avcc
from mediaserver.hub import Stream
from mediaserver.media import Codec, Packet, TrackKind
from mediaserver.webrtc.packetize import h264_payloads
from mediaserver.webrtc.rtpout import Target
from mediaserver.webrtc.sendqueue import SendQueue
from mediaserver.webrtc.tracks import AUDIO_CLOCK, AudioOut, AudioUnit, VideoOut, VideoUnit
from mediaserver.webrtc.transcode import AacToOpus, TranscodeStats

log = logging.getLogger("mediaserver.webrtc")

# How fast the audio pacer forgets a late burst: 0.2 ms per packet, 10 ms per second.
AUDIO_OFFSET_DECAY = 0.0002


class Viewer:
    """One WHEP peer's media, fed by its stream's feed (the viewer itself never subscribes to the hub)."""

    __slots__ = ("audio", "video")

    def __init__(self, video: VideoOut, audio: AudioOut | None) -> None:
        self.video = video
        self.audio = audio


class StreamFeed:
    """The hub subscriber for all WebRTC viewers of one stream."""

    protocol = "webrtc"

    def __init__(
        self,
        key: str,
        stream: Stream,
        transcode_stats: TranscodeStats,
        opus_bitrate: int,
        on_error: Callable[[str], None],
        send_queue: SendQueue | None = None,
    ) -> None:
        self.key = key
        self.send_queue = send_queue if send_queue is not None else SendQueue()
        # The stream as logs may show it (the name may be a stream key).
        self.shown = f"{stream.app}/{redact(stream.name)}"
        self.stream: Stream | None = stream
        self.ended_at: float | None = None
        self.epoch = 0
        self.viewers: set[Viewer] = set()
        # The viewers' media fed on every packet, kept as flat lists so the per-packet loop touches nothing else.
        self._video_outs: list[VideoOut] = []
        self._audio_outs: list[AudioOut] = []
        # The stream this feed is subscribed to, if any.
        self._subscribed: Stream | None = None
        self._on_error = on_error
        self._config: AvcConfig | None = None
        self._config_version = -1
        self._parameter_sets = b""
        # The GOP in Annex-B, mirroring stream.gop; None until a viewer needs it or a keyframe passes.
        self._gop: list[VideoUnit] | None = None
        self._transcode_stats = transcode_stats
        self._opus_bitrate = opus_bitrate
        self._transcoder: AacToOpus | None = None
        self._audio_offset: float | None = None

    @property
    def subscribed(self) -> bool:
        return self._subscribed is not None

    # ----- viewers ----------------------------------------------------------------------

    def add(self, viewer: Viewer) -> None:
        if viewer in self.viewers:
            return
        self.viewers.add(viewer)
        self._video_outs.append(viewer.video)
        if viewer.audio is not None:
            self._audio_outs.append(viewer.audio)
            if self._transcoder is None:
                self._transcoder = AacToOpus(self._audio_out, self._transcode_stats, self._opus_bitrate)
                self._transcoder.start()
        self._subscribe()

    def remove(self, viewer: Viewer) -> None:
        if viewer not in self.viewers:
            return
        self.viewers.discard(viewer)
        self._video_outs.remove(viewer.video)
        if viewer.audio is not None:
            self._audio_outs.remove(viewer.audio)
        if not self._audio_outs:
            self._stop_transcoder()
        if not self.viewers:
            self._unsubscribe()

    def close(self) -> None:
        for viewer in list(self.viewers):
            self.remove(viewer)
        self._unsubscribe()
        self._stop_transcoder()

    def _stop_transcoder(self) -> None:
        if self._transcoder is not None:
            self._transcoder.stop()
            self._transcoder = None

    def _subscribe(self) -> None:
        stream = self.stream
        if self._subscribed is None and stream is not None and not stream.ended and self.viewers:
            stream.subscribe(self)
            self._subscribed = stream

    def _unsubscribe(self) -> None:
        stream, self._subscribed = self._subscribed, None
        if stream is not None:
            stream.unsubscribe(self)
            # Unsubscribed, the mirror would go stale: rebuild it from the hub's GOP if viewers come back.
            self._gop = None

    # ----- stream lifecycle (hub subscriber and hub events) ----------------------------------

    def on_stream_end(self) -> None:
        stream, self._subscribed = self._subscribed, None
        if stream is not None:
            self.stream_ended(stream)

    def stream_ended(self, stream: Stream) -> None:
        if self.stream is not stream:
            return
        if self._subscribed is stream:
            self._unsubscribe()
        self.stream = None
        self.ended_at = time.monotonic()

    def stream_started(self, stream: Stream) -> None:
        """The publisher came back: the viewers carry on with the new stream from its first keyframe."""
        self._unsubscribe()
        self.stream = stream
        self.ended_at = None
        self.epoch += 1
        self._config_version = -1
        self._audio_offset = None
        self._gop = None
        for out in self._video_outs:
            out.restart()
        self._subscribe()

    # ----- packets ----------------------------------------------------------------------

    def on_packet(self, packet: Packet) -> None:
        """Called by the hub once per packet for all viewers of the stream."""
        if packet.is_config:
            # Sequence headers update stream.video/audio; the conversion picks the new version up itself.
            return
        kind = packet.kind
        if kind is TrackKind.VIDEO:
            unit = self._live_video(packet)
            if unit is not None and self._video_outs:
                self._fan_out(unit)
        elif kind is TrackKind.AUDIO and self._audio_outs:
            self._audio_in(packet)

    # ----- video --------------------------------------------------------------------------

    def _fan_out(self, unit: VideoUnit) -> None:
        """One batch for every viewer sending live: each numbers the frame for its own stream."""
        if self.send_queue.overloaded and not unit.keyframe:
            for out in self._video_outs:
                out.drop()
            return
        now = time.time()
        targets: list[Target] = []
        for out in self._video_outs:
            target = out.take(unit, now)
            if target is not None:
                targets.append(target)
        if targets:
            self.send_queue.submit(unit.payloads, targets)

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
                log.warning("event=webrtc_bad_avcc stream=%s error=%s", self.shown, exc)
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
        payloads = h264_payloads(split_annexb(data))
        octets = sum(len(payload) for payload in payloads)
        return VideoUnit(payloads, octets, packet.dts, packet.keyframe or idr, self.epoch, time.time())

    def _live_video(self, packet: Packet) -> VideoUnit | None:
        """The RTP form of a live video packet, kept in the GOP mirror too."""
        stream = self.stream
        if stream is None:
            return None
        unit = self._convert(stream, packet)
        if unit is not None:
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
            gop = units if units and units[0].keyframe else []
            if self._subscribed is None:
                # Not fed live packets: the mirror would go stale, so do not keep it.
                return gop
            self._gop = gop
        return list(self._gop)

    # ----- audio --------------------------------------------------------------------------

    def _audio_in(self, packet: Packet) -> None:
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
        now = time.time()
        targets: list[Target] = []
        for audio in self._audio_outs:
            target = audio.take(unit, now)
            if target is not None:
                targets.append(target)
        if targets:
            self.send_queue.submit(unit.payloads, targets)
