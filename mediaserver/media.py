"""The media model shared by every part of the data plane.

One `Packet` type flows from ingest to every consumer. Its payload is kept in the
form RTMP carried it (the FLV tag body), so RTMP relays forward it untouched and the
other consumers read the codec payload through `data`, a view that copies nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class TrackKind(enum.Enum):
    VIDEO = "video"
    AUDIO = "audio"
    DATA = "data"


class Codec(enum.Enum):
    H264 = "h264"
    H265 = "h265"
    AV1 = "av1"
    VP9 = "vp9"
    AAC = "aac"
    OPUS = "opus"
    MP3 = "mp3"
    PCMA = "pcma"
    PCMU = "pcmu"
    UNKNOWN = "unknown"


@dataclass(slots=True)
class Packet:
    """One media message.

    `flv` is the RTMP message body (an FLV tag body); `offset` is where the codec's own
    payload starts inside it (AVCC NAL units, raw AAC, an OBU sequence, ...).
    Times are in milliseconds, RTMP's clock.
    """

    kind: TrackKind
    codec: Codec
    dts: int
    pts: int
    keyframe: bool
    flv: bytes | bytearray
    offset: int
    # A sequence header (avcC, hvcC, av1C, AudioSpecificConfig, OpusHead): configuration, not media.
    is_config: bool = False
    # This message serialised as RTMP chunks (default chunk size, message stream 1), made by
    # the first RTMP player that sends it and reused by every other one.
    wire: bytes | None = field(default=None, repr=False)

    @property
    def data(self) -> memoryview:
        return memoryview(self.flv)[self.offset :]

    @property
    def size(self) -> int:
        return len(self.flv)


@dataclass(slots=True)
class TrackInfo:
    """What a consumer needs to initialise a decoder or a muxer for one track."""

    kind: TrackKind
    codec: Codec
    # avcC / hvcC / av1C record, AudioSpecificConfig or OpusHead, as carried by the sequence header.
    config: bytes = b""
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channels: int = 0
    # Bumped each time the configuration changes, so consumers know to re-initialise.
    version: int = 0
