"""What a pulled source's demuxer gives (PyAV packets: Annex-B or AVCC H.264, raw AAC) as the hub's packets.

Pure: bytes and times in, `Packet`s out, the same FLV-framed packets an RTMP publisher would push, so HLS,
RTMP players, WebRTC and the recorder take a pulled camera exactly as a pushing one. Times become milliseconds
from the source's first packet and never run backwards per track (cameras step their clocks; Dahua's audio
is known to jump back), which would otherwise start a new timeline in every consumer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mediaserver.codecs import CodecError
from mediaserver.codecs.annexb import split_annexb, to_avcc
from mediaserver.codecs.h264 import NAL_PPS, NAL_SPS, avc_decoder_config, nal_type
from mediaserver.formats.flv import (
    aac_frame,
    aac_sequence_header,
    avc_frame,
    avc_sequence_header,
    parse_audio,
    parse_video,
)
from mediaserver.media import Packet

# Codecs taken from a source today, by FFmpeg's name.
VIDEO_CODECS = ("h264",)
AUDIO_CODECS = ("aac",)
# A forward jump larger than this (ms) in a track's clock is a camera clock step: the track is re-anchored
# so that it goes on one frame after its last packet.
MAX_STEP_MS = 10_000


class UnsupportedSource(CodecError):
    """A source whose tracks cannot be carried (no H.264 video and no AAC audio)."""


def _is_annexb(data: bytes) -> bool:
    return data.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01"))


def avc_config_from_extradata(extradata: bytes) -> bytes | None:
    """An avcC record from the demuxer's extradata (already avcC, or Annex-B SPS/PPS from the SDP)."""
    if not extradata:
        return None
    if extradata[0] == 1:
        return extradata
    nals = split_annexb(extradata) if _is_annexb(extradata) else []
    sps = [n for n in nals if nal_type(n) == NAL_SPS]
    pps = [n for n in nals if nal_type(n) == NAL_PPS]
    return avc_decoder_config(sps, pps) if sps and pps else None


@dataclass(slots=True)
class _Clock:
    """Milliseconds since the source's first packet, kept monotonic for one track."""

    last: int | None = None
    shift: int = 0
    frame: int = 40  # the last step seen, used to bridge a jump

    def map(self, ms: int) -> int:
        value = ms + self.shift
        if self.last is not None:
            step = value - self.last
            if step <= 0 or step > MAX_STEP_MS:
                # Backwards or a big leap: go on just after the last packet.
                self.shift += self.last + (self.frame if step > MAX_STEP_MS else 1) - value
                value = ms + self.shift
            else:
                self.frame = step
        self.last = value
        return value


@dataclass(slots=True)
class SourceConverter:
    """Packets of one pulled session (one `av.open`), for its chosen video and audio streams."""

    video_config: bytes | None = None
    audio_config: bytes | None = None
    _origin_ms: int | None = None
    _video_clock: _Clock = field(default_factory=_Clock)
    _audio_clock: _Clock = field(default_factory=_Clock)
    _sent_video_config: bytes | None = None
    _sent_audio_config: bytes | None = None

    def _relative(self, ms: int) -> int:
        if self._origin_ms is None:
            self._origin_ms = ms
        return max(ms - self._origin_ms, 0)

    def video(self, data: bytes, dts_ms: int, pts_ms: int, keyframe: bool) -> list[Packet]:
        """The hub packets for one H.264 access unit: its sequence header first when it is new."""
        nals = split_annexb(data) if _is_annexb(data) else None
        if nals is not None:
            # In-band parameter sets (cameras repeat them before keyframes) update the configuration.
            sps = [n for n in nals if nal_type(n) == NAL_SPS]
            pps = [n for n in nals if nal_type(n) == NAL_PPS]
            if sps and pps:
                self.video_config = avc_decoder_config(sps, pps)
            payload = to_avcc([n for n in nals if nal_type(n) not in (NAL_SPS, NAL_PPS)])
        else:
            payload = data
        if self.video_config is None or not payload:
            return []  # nothing decodable before the first parameter sets
        packets: list[Packet] = []
        dts = self._video_clock.map(self._relative(dts_ms))
        cts = max(pts_ms - dts_ms, 0)
        if self.video_config != self._sent_video_config:
            self._sent_video_config = self.video_config
            config = parse_video(avc_sequence_header(self.video_config), dts)
            if config is not None:
                packets.append(config)
        packet = parse_video(avc_frame(payload, keyframe, cts), dts)
        if packet is not None:
            packets.append(packet)
        return packets

    def audio(self, data: bytes, dts_ms: int) -> list[Packet]:
        """The hub packets for one raw AAC frame: the AudioSpecificConfig first when it is new."""
        if self.audio_config is None or not data:
            return []
        packets: list[Packet] = []
        dts = self._audio_clock.map(self._relative(dts_ms))
        if self.audio_config != self._sent_audio_config:
            self._sent_audio_config = self.audio_config
            config = parse_audio(aac_sequence_header(self.audio_config), dts)
            if config is not None:
                packets.append(config)
        packet = parse_audio(aac_frame(data), dts)
        if packet is not None:
            packets.append(packet)
        return packets
