"""WHIP ingest: media received by aiortc becomes FLV-body `Packet`s on the hub, like an RTMP publisher's.

aiortc hands received media only as decoded frames: each `RTCRtpReceiver` puts the re-assembled encoded
frames (H.264 depayloaded to Annex-B, Opus packets) on a queue read by its decoder thread. We put our own
queue in its place (`FrameTap`), so the encoded frames come to us and are never decoded:

- H.264 goes through untouched (no re-encoding): Annex-B -> AVCC, SPS/PPS -> avcC sequence header.
- Opus is transcoded to AAC-LC in a worker thread (RTMP players and HLS want AAC).

This relies on one private attribute of aiortc's receiver (`_RTCRtpReceiver__decoder_queue`, checked when a
session starts; aiortc is pinned below 2). Browsers make a keyframe only when asked: we send a PLI every
`whip_keyframe_interval` seconds so HLS segments and the GOP cache get one.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpCodecParameters, RTCRtpReceiver
from aiortc.jitterbuffer import JitterFrame

from mediaserver.codecs.annexb import AnnexBError, split_annexb, to_avcc
from mediaserver.codecs.h264 import NAL_AUD, NAL_IDR, NAL_PPS, NAL_SPS, avc_decoder_config, nal_type
from mediaserver.formats.flv import (
    aac_frame,
    aac_sequence_header,
    avc_frame,
    avc_sequence_header,
    parse_audio,
    parse_video,
)
from mediaserver.hub import Stream
from mediaserver.webrtc.transcode import AacOut, OpusToAac, TranscodeStats

log = logging.getLogger("mediaserver.webrtc")

_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"

FrameSink = Callable[[RTCRtpCodecParameters, JitterFrame], None]


class TapUnsupported(RuntimeError):
    """This aiortc version has no decoder queue to tap."""


class FrameTap(queue.Queue[Any]):
    """Stands in for a receiver's decoder queue: encoded frames go to `sink`, the stop marker to the thread."""

    def __init__(self, sink: FrameSink) -> None:
        super().__init__()
        self._sink = sink

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:
            super().put(None, block, timeout)
            return
        codec, frame = item
        self._sink(codec, frame)


def tap_receiver(receiver: RTCRtpReceiver, sink: FrameSink) -> None:
    """Route `receiver`'s encoded frames to `sink` (call before the connection starts)."""
    if not isinstance(getattr(receiver, _DECODER_QUEUE, None), queue.Queue):
        raise TapUnsupported("aiortc's RTCRtpReceiver has no decoder queue to tap")
    setattr(receiver, _DECODER_QUEUE, FrameTap(sink))


class WhipPublisher:
    """The hub's view of a WHIP peer."""

    protocol = "webrtc"

    def __init__(self, peer: str, on_stop: Callable[[str], None]) -> None:
        self.peer = peer
        self._on_stop = on_stop

    def stop(self, reason: str) -> None:
        self._on_stop(reason)


class WhipIngest:
    """Turns one WHIP peer's frames into hub packets."""

    def __init__(self, stream: Stream, transcode_stats: TranscodeStats, aac_bitrate: int) -> None:
        self.stream = stream
        self.started = time.monotonic()
        self.last_media = self.started
        self.video_frames = 0
        self.audio_frames = 0
        self.bytes_in = 0
        self.errors = 0
        self.keyframe_wanted = True
        self._avcc = b""
        self._video_anchor: int | None = None
        self._audio_anchor: int | None = None
        self._last_video_ts = -1
        self._last_audio_ts = -1
        self._audio_config = b""
        self._waiting_idr = True
        self._aac = OpusToAac(self._aac_out, transcode_stats, aac_bitrate)
        self.closed = False

    def start(self, audio: bool) -> None:
        if audio:
            # The audio sequence header first, so consumers that set up their tracks on the first
            # keyframe (HLS) know there is audio.
            self._audio_config = self._aac.prepare()
            packet = parse_audio(aac_sequence_header(self._audio_config), 0)
            if packet is not None:
                self.stream.push(packet)
        self._aac.start()

    def close(self) -> None:
        self.closed = True
        self._aac.stop()

    def _now_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    # ----- video --------------------------------------------------------------------------

    def on_video(self, codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        if self.closed or self.stream.ended:
            return
        self.last_media = time.monotonic()
        self.bytes_in += len(frame.data)
        try:
            nals = split_annexb(frame.data)
        except AnnexBError:
            self.errors += 1
            return
        sps = [n for n in nals if nal_type(n) == NAL_SPS]
        pps = [n for n in nals if nal_type(n) == NAL_PPS]
        if sps and pps:
            avcc = avc_decoder_config(sps, pps)
            if avcc != self._avcc:
                self._avcc = avcc
                self._push_video(avc_sequence_header(avcc), self._video_ts(frame.timestamp))
        body = [n for n in nals if nal_type(n) not in (NAL_SPS, NAL_PPS, NAL_AUD)]
        if not body:
            return
        idr = any(nal_type(n) == NAL_IDR for n in body)
        if idr:
            self.keyframe_wanted = False
        if not self._avcc or (self._waiting_idr and not idr):
            # Nothing decodable yet: ask the sender for a keyframe.
            self.keyframe_wanted = True
            return
        self._waiting_idr = False
        self.video_frames += 1
        self._push_video(avc_frame(to_avcc(body), idr), self._video_ts(frame.timestamp))

    def _video_ts(self, rtp_timestamp: int) -> int:
        if self._video_anchor is None:
            self._video_anchor = self._now_ms() - rtp_timestamp // 90
        ts = max(self._video_anchor + rtp_timestamp // 90, self._last_video_ts)
        self._last_video_ts = ts
        return ts

    def _push_video(self, body: bytes, ts: int) -> None:
        packet = parse_video(body, ts)
        if packet is not None:
            self.stream.push(packet)

    # ----- audio --------------------------------------------------------------------------

    def on_audio(self, codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        if self.closed or self.stream.ended or codec.mimeType.lower() != "audio/opus":
            return
        self.last_media = time.monotonic()
        self.bytes_in += len(frame.data)
        if self._audio_anchor is None:
            self._audio_anchor = self._now_ms() - frame.timestamp // 48
        self._aac.submit((bytes(frame.data), self._audio_anchor + frame.timestamp // 48))

    def _aac_out(self, frames: list[AacOut]) -> None:
        if self.closed or self.stream.ended:
            return
        for out in frames:
            if out.config and out.config != self._audio_config:
                self._audio_config = out.config
                packet = parse_audio(aac_sequence_header(out.config), out.pts)
                if packet is not None:
                    self.stream.push(packet)
            if not self._audio_config:
                continue
            ts = max(out.pts, self._last_audio_ts)
            self._last_audio_ts = ts
            packet = parse_audio(aac_frame(out.data), ts)
            if packet is not None:
                self.audio_frames += 1
                self.stream.push(packet)
