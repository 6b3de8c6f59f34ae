"""FLV tag bodies (RTMP audio/video messages) to `Packet`s, legacy and Enhanced RTMP.

Legacy video: FrameType(4) CodecID(4), then for AVC an AVCPacketType and a signed 24-bit
composition time. Enhanced RTMP (veovera v1/v2): bit 7 set, FrameType(3) PacketType(4),
a FourCC, and for CodedFrames of AVC/HEVC a composition time. Audio: SoundFormat 10 is
AAC with an AACPacketType; SoundFormat 9 is the Enhanced-RTMP audio header with a FourCC.
Parsing reads a handful of header bytes per message and never touches the payload.
"""

from __future__ import annotations

from mediaserver.codecs import CodecError
from mediaserver.media import Codec, Packet, TrackKind

_VIDEO_FOURCC = {b"avc1": Codec.H264, b"hvc1": Codec.H265, b"av01": Codec.AV1, b"vp09": Codec.VP9}
_AUDIO_FOURCC = {b"mp4a": Codec.AAC, b"Opus": Codec.OPUS, b".mp3": Codec.MP3}
# Legacy CodecIDs; 12 (HEVC) and 13 (AV1) are the pre-Enhanced-RTMP extensions some encoders still send.
_VIDEO_CODEC_ID = {7: Codec.H264, 12: Codec.H265, 13: Codec.AV1}
_SOUND_FORMAT = {10: Codec.AAC, 2: Codec.MP3, 7: Codec.PCMA, 8: Codec.PCMU}

# Enhanced RTMP packet types.
EX_SEQUENCE_START = 0
EX_CODED_FRAMES = 1
EX_SEQUENCE_END = 2
EX_CODED_FRAMES_X = 3
EX_METADATA = 4
EX_MULTITRACK = 6
EX_MOD_EX = 7

VIDEO_FRAME_KEY = 1
VIDEO_FRAME_COMMAND = 5


class FlvError(CodecError):
    """A tag body too short or of a kind we do not carry."""


def _si24(b: bytes | bytearray, i: int) -> int:
    v = (b[i] << 16) | (b[i + 1] << 8) | b[i + 2]
    return v - 0x1000000 if v & 0x800000 else v


def _skip_mod_ex(body: bytes | bytearray, i: int) -> tuple[int, int]:
    """Skip ModEx blocks starting at `i` (after the header byte); return (new index, real packet type)."""
    while True:
        if i + 1 > len(body):
            raise FlvError("truncated ModEx")
        size = body[i] + 1
        i += 1
        if size == 256:
            if i + 2 > len(body):
                raise FlvError("truncated ModEx")
            size = ((body[i] << 8) | body[i + 1]) + 1
            i += 2
        i += size
        if i + 1 > len(body):
            raise FlvError("truncated ModEx")
        packet_type = body[i] & 0x0F
        i += 1
        if packet_type != EX_MOD_EX:
            return i, packet_type


def _video_packet(
    codec: Codec, timestamp: int, cts: int, frame_type: int, body: bytes | bytearray, offset: int, is_config: bool
) -> Packet:
    # A sequence header counts as a keyframe: players must get it before anything else.
    keyframe = frame_type == VIDEO_FRAME_KEY or is_config
    return Packet(TrackKind.VIDEO, codec, timestamp, timestamp + cts, keyframe, body, offset, is_config)


def parse_video(body: bytes | bytearray, timestamp: int) -> Packet | None:
    """Return the packet, or None for messages that carry no media (end of sequence, commands)."""
    if len(body) < 1:
        raise FlvError("empty video message")
    b0 = body[0]
    if b0 & 0x80:
        frame_type = (b0 >> 4) & 0x07
        packet_type = b0 & 0x0F
        i = 1
        if packet_type == EX_MOD_EX:
            i, packet_type = _skip_mod_ex(body, i)
        if frame_type == VIDEO_FRAME_COMMAND or packet_type in (EX_SEQUENCE_END, EX_METADATA):
            return None
        if packet_type == EX_MULTITRACK:
            raise FlvError("multitrack video is not supported")
        if len(body) < i + 4:
            raise FlvError("truncated enhanced video header")
        codec = _VIDEO_FOURCC.get(bytes(body[i : i + 4]), Codec.UNKNOWN)
        i += 4
        cts = 0
        if packet_type == EX_CODED_FRAMES and codec in (Codec.H264, Codec.H265):
            if len(body) < i + 3:
                raise FlvError("truncated composition time")
            cts = _si24(body, i)
            i += 3
        elif packet_type not in (EX_SEQUENCE_START, EX_CODED_FRAMES, EX_CODED_FRAMES_X):
            return None
        return _video_packet(codec, timestamp, cts, frame_type, body, i, packet_type == EX_SEQUENCE_START)
    frame_type = b0 >> 4
    codec = _VIDEO_CODEC_ID.get(b0 & 0x0F, Codec.UNKNOWN)
    if frame_type == VIDEO_FRAME_COMMAND:
        return None
    if codec is Codec.UNKNOWN:
        # Sorenson, VP6 and friends: relayed over RTMP untouched, opaque to everything else.
        return Packet(TrackKind.VIDEO, codec, timestamp, timestamp, frame_type == VIDEO_FRAME_KEY, body, 1)
    if len(body) < 5:
        raise FlvError("truncated AVC video header")
    avc_packet_type = body[1]
    if avc_packet_type == 2:
        return None
    return _video_packet(codec, timestamp, _si24(body, 2), frame_type, body, 5, avc_packet_type == 0)


def parse_audio(body: bytes | bytearray, timestamp: int) -> Packet | None:
    if len(body) < 1:
        raise FlvError("empty audio message")
    b0 = body[0]
    sound_format = b0 >> 4
    if sound_format == 9:
        packet_type = b0 & 0x0F
        i = 1
        if packet_type == EX_MOD_EX:
            i, packet_type = _skip_mod_ex(body, i)
        if packet_type not in (EX_SEQUENCE_START, EX_CODED_FRAMES):
            return None
        if len(body) < i + 4:
            raise FlvError("truncated enhanced audio header")
        codec = _AUDIO_FOURCC.get(bytes(body[i : i + 4]), Codec.UNKNOWN)
        is_config = packet_type == EX_SEQUENCE_START
        return Packet(TrackKind.AUDIO, codec, timestamp, timestamp, True, body, i + 4, is_config)
    codec = _SOUND_FORMAT.get(sound_format, Codec.UNKNOWN)
    if codec is Codec.AAC:
        if len(body) < 2:
            raise FlvError("truncated AAC header")
        is_config = body[1] == 0
        return Packet(TrackKind.AUDIO, codec, timestamp, timestamp, True, body, 2, is_config)
    return Packet(TrackKind.AUDIO, codec, timestamp, timestamp, True, body, 1)


# ----- FLV tag bodies from codec data (the reverse of parse_video/parse_audio, for ingest that is not RTMP) -----

_AVC_KEY = 0x17  # FrameType 1 (key) << 4 | CodecID 7 (AVC)
_AVC_INTER = 0x27  # FrameType 2 (inter) << 4 | CodecID 7
_AAC_HEADER = 0xAF  # SoundFormat 10 (AAC), 44 kHz, 16-bit, stereo (fixed for AAC by the FLV spec)


def avc_sequence_header(avcc: bytes) -> bytes:
    """An AVC sequence header body: 0x17, AVCPacketType 0, composition time 0, then the avcC record."""
    return bytes((_AVC_KEY, 0, 0, 0, 0)) + avcc


def avc_frame(nalus: bytes, keyframe: bool, cts: int = 0) -> bytes:
    """An AVC NALU body: frame type, AVCPacketType 1, signed 24-bit composition time, AVCC NAL units."""
    if not -0x800000 <= cts <= 0x7FFFFF:
        raise FlvError("composition time out of range")
    return bytes((_AVC_KEY if keyframe else _AVC_INTER, 1)) + (cts & 0xFFFFFF).to_bytes(3, "big") + nalus


def aac_sequence_header(asc: bytes) -> bytes:
    """An AAC sequence header body: 0xAF, AACPacketType 0, AudioSpecificConfig."""
    return bytes((_AAC_HEADER, 0)) + asc


def aac_frame(raw: bytes) -> bytes:
    """An AAC raw frame body: 0xAF, AACPacketType 1, one raw AAC access unit."""
    return bytes((_AAC_HEADER, 1)) + raw
