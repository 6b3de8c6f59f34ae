"""H.264 framing: AVCC (length-prefixed NAL units, as RTMP and MP4 carry them) <-> Annex-B (start codes, as RTP
packetisers, RTSP cameras and decoders of raw streams use them).

Pure functions over bytes; the loops are per NAL unit (a handful per frame), never per byte.
"""

from __future__ import annotations

from mediaserver.codecs import CodecError
from mediaserver.codecs.h264 import MAX_NAL_SIZE, NAL_AUD, NAL_FILLER, NAL_IDR, NAL_SPS, START_CODE

# NAL units that carry nothing a receiver needs (access unit delimiters, filler data).
_DROPPED = frozenset((NAL_AUD, NAL_FILLER))


class AnnexBError(CodecError):
    """Malformed H.264 framing (truncated length prefix, NAL unit past the end)."""


def avcc_to_annexb(
    payload: bytes | bytearray | memoryview, length_size: int = 4, parameter_sets: bytes = b""
) -> tuple[bytes, bool]:
    """Convert one access unit from AVCC to Annex-B.

    Access unit delimiters and filler data are dropped. When the access unit holds an IDR slice but no SPS,
    `parameter_sets` (Annex-B SPS+PPS) goes in front, so every IDR is decodable on its own.
    Returns (Annex-B bytes, whether the access unit holds an IDR slice).
    """
    view = memoryview(payload)
    end = len(view)
    pos = 0
    parts: list[memoryview] = []
    has_idr = has_sps = False
    while pos < end:
        if pos + length_size > end:
            raise AnnexBError("truncated NAL length prefix")
        size = int.from_bytes(view[pos : pos + length_size], "big")
        pos += length_size
        if size == 0:
            continue
        if size > MAX_NAL_SIZE or pos + size > end:
            raise AnnexBError("NAL unit runs past the end of the frame")
        nal_type = view[pos] & 0x1F
        if nal_type not in _DROPPED:
            parts.append(view[pos : pos + size])
            if nal_type == NAL_IDR:
                has_idr = True
            elif nal_type == NAL_SPS:
                has_sps = True
        pos += size
    if not parts:
        return b"", False
    body = START_CODE + START_CODE.join(parts)
    if has_idr and not has_sps and parameter_sets:
        body = parameter_sets + body
    return body, has_idr


def split_annexb(data: bytes | bytearray) -> list[bytes]:
    """The NAL units of an Annex-B byte stream (3- or 4-byte start codes), without their start codes."""
    buf = bytes(data)
    nals: list[bytes] = []
    start = buf.find(b"\x00\x00\x01")
    while start != -1:
        begin = start + 3
        following = buf.find(b"\x00\x00\x01", begin)
        # A NAL unit never ends with a zero byte: zeros before the next start code belong to a 4-byte start
        # code or are trailing_zero_8bits.
        stop = len(buf) if following == -1 else following
        while stop > begin and buf[stop - 1] == 0:
            stop -= 1
        nal = buf[begin:stop]
        if nal:
            nals.append(nal)
        start = following
    return nals


def to_avcc(nals: list[bytes]) -> bytes:
    """NAL units as one AVCC access unit (4-byte big-endian lengths)."""
    return b"".join(len(nal).to_bytes(4, "big") + nal for nal in nals)
