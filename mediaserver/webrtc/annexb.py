"""H.264 framing: AVCC (length-prefixed NAL units, as RTMP and MP4 carry them) <-> Annex-B (start codes, as RTP
packetisers and decoders of raw streams want them), and the avcC record (AVCDecoderConfigurationRecord).

Pure functions over bytes; the loops are per NAL unit (a handful per frame), never per byte.
"""

from __future__ import annotations

from dataclasses import dataclass

START_CODE = b"\x00\x00\x00\x01"

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
NAL_END_OF_SEQUENCE = 10
NAL_END_OF_STREAM = 11
NAL_FILLER = 12

# NAL units that carry nothing a WebRTC receiver needs (access unit delimiters, filler data).
_DROPPED = frozenset((NAL_AUD, NAL_FILLER))
# A NAL unit longer than this is not H.264 a camera sends; treat it as corruption.
MAX_NAL_SIZE = 16 * 1024 * 1024


class AnnexBError(ValueError):
    """Malformed H.264 framing (truncated length prefix, bad avcC)."""


@dataclass(frozen=True, slots=True)
class AvcConfig:
    """The parts of an avcC record a WebRTC sender needs."""

    profile: int
    compatibility: int
    level: int
    length_size: int
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]

    @property
    def profile_level_id(self) -> str:
        """The SDP `profile-level-id` (RFC 6184): profile_idc, constraint flags, level_idc in hex."""
        return f"{self.profile:02x}{self.compatibility:02x}{self.level:02x}"

    def parameter_sets(self) -> bytes:
        """SPS and PPS as Annex-B, to put in front of an IDR picture."""
        return b"".join(START_CODE + nal for nal in (*self.sps, *self.pps))


def parse_avcc(record: bytes | bytearray | memoryview) -> AvcConfig:
    """Parse an AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1)."""
    data = bytes(record)
    if len(data) < 7 or data[0] != 1:
        raise AnnexBError("not an avcC record")
    length_size = (data[4] & 0x03) + 1
    if length_size == 3:
        raise AnnexBError("avcC with a 3-byte NAL length size")
    pos = 5
    sets: list[list[bytes]] = [[], []]
    for index in range(2):
        if pos >= len(data):
            raise AnnexBError("avcC truncated")
        count = data[pos] & (0x1F if index == 0 else 0xFF)
        pos += 1
        for _ in range(count):
            if pos + 2 > len(data):
                raise AnnexBError("avcC truncated")
            size = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
            if size == 0 or pos + size > len(data):
                raise AnnexBError("avcC parameter set truncated")
            sets[index].append(data[pos : pos + size])
            pos += size
    if not sets[0] or not sets[1]:
        raise AnnexBError("avcC without SPS or PPS")
    return AvcConfig(data[1], data[2], data[3], length_size, tuple(sets[0]), tuple(sets[1]))


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


def nal_type(nal: bytes | bytearray | memoryview) -> int:
    return nal[0] & 0x1F if len(nal) else 0


def to_avcc(nals: list[bytes]) -> bytes:
    """NAL units as one AVCC access unit (4-byte big-endian lengths)."""
    return b"".join(len(nal).to_bytes(4, "big") + nal for nal in nals)


def avc_decoder_config(sps: list[bytes], pps: list[bytes]) -> bytes:
    """An avcC record (4-byte NAL lengths) for the given parameter sets."""
    if not sps or not pps or len(sps[0]) < 4:
        raise AnnexBError("an avcC record needs an SPS and a PPS")
    if len(sps) > 31 or len(pps) > 255:
        raise AnnexBError("too many parameter sets")
    first = sps[0]
    out = bytearray((1, first[1], first[2], first[3], 0xFF, 0xE0 | len(sps)))
    for nal in sps:
        out += len(nal).to_bytes(2, "big") + nal
    out.append(len(pps))
    for nal in pps:
        out += len(nal).to_bytes(2, "big") + nal
    return bytes(out)
