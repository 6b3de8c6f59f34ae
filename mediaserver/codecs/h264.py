"""H.264: NAL unit types, the avcC record (AVCDecoderConfigurationRecord), the SPS (resolution) and the
RFC 6381 codec string. References: ISO/IEC 14496-10 7.3.2.1 (SPS), 14496-15 5.3.3.1 (avcC)."""

from __future__ import annotations

from dataclasses import dataclass

from mediaserver.codecs import CodecError
from mediaserver.codecs.bits import BitReader, unescape

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

# A NAL unit longer than this is not H.264 a camera sends; treat it as corruption.
MAX_NAL_SIZE = 16 * 1024 * 1024


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
        raise CodecError("not an avcC record")
    length_size = (data[4] & 0x03) + 1
    if length_size == 3:
        raise CodecError("avcC with a 3-byte NAL length size")
    pos = 5
    sets: list[list[bytes]] = [[], []]
    for index in range(2):
        if pos >= len(data):
            raise CodecError("avcC truncated")
        count = data[pos] & (0x1F if index == 0 else 0xFF)
        pos += 1
        for _ in range(count):
            if pos + 2 > len(data):
                raise CodecError("avcC truncated")
            size = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
            if size == 0 or pos + size > len(data):
                raise CodecError("avcC parameter set truncated")
            sets[index].append(data[pos : pos + size])
            pos += size
    if not sets[0] or not sets[1]:
        raise CodecError("avcC without SPS or PPS")
    return AvcConfig(data[1], data[2], data[3], length_size, tuple(sets[0]), tuple(sets[1]))


def avc_decoder_config(sps: list[bytes], pps: list[bytes]) -> bytes:
    """An avcC record (4-byte NAL lengths) for the given parameter sets."""
    if not sps or not pps or len(sps[0]) < 4:
        raise CodecError("an avcC record needs an SPS and a PPS")
    if len(sps) > 31 or len(pps) > 255:
        raise CodecError("too many parameter sets")
    first = sps[0]
    out = bytearray((1, first[1], first[2], first[3], 0xFF, 0xE0 | len(sps)))
    for nal in sps:
        out += len(nal).to_bytes(2, "big") + nal
    out.append(len(pps))
    for nal in pps:
        out += len(nal).to_bytes(2, "big") + nal
    return bytes(out)


def nal_type(nal: bytes | bytearray | memoryview) -> int:
    return nal[0] & 0x1F if len(nal) else 0


def _skip_scaling_list(r: BitReader, size: int) -> None:
    last = next_ = 8
    for _ in range(size):
        if next_ != 0:
            next_ = (last + r.se() + 256) % 256
        last = next_ if next_ != 0 else last


def resolution(avcc: bytes | memoryview) -> tuple[int, int]:
    """Width and height from the first SPS of an avcC record (configuration time only)."""
    if len(avcc) < 8 or avcc[5] & 0x1F == 0:
        raise CodecError("avcC without SPS")
    sps_len = (avcc[6] << 8) | avcc[7]
    sps = unescape(bytes(avcc[8 : 8 + sps_len]))
    if len(sps) < 4:
        raise CodecError("SPS truncated")
    r = BitReader(sps[1:])
    profile = r.bits(8)
    r.bits(16)
    r.ue()
    chroma = 1
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma = r.ue()
        if chroma == 3:
            r.bit()
        r.ue()
        r.ue()
        r.bit()
        if r.bit():
            for i in range(8 if chroma != 3 else 12):
                if r.bit():
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    r.ue()
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.bit()
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()
    r.bit()
    width_mbs = r.ue() + 1
    height_units = r.ue() + 1
    frame_mbs_only = r.bit()
    if not frame_mbs_only:
        r.bit()
    r.bit()
    crop = (0, 0, 0, 0)
    if r.bit():
        crop = (r.ue(), r.ue(), r.ue(), r.ue())
    sub_w = 2 if chroma in (1, 2) else 1
    sub_h = (2 if chroma == 1 else 1) * (2 - frame_mbs_only)
    width = width_mbs * 16 - sub_w * (crop[0] + crop[1])
    height = height_units * 16 * (2 - frame_mbs_only) - sub_h * (crop[2] + crop[3])
    return width, height


def codec_string(avcc: bytes) -> str:
    """`avc1.PPCCLL` from an avcC record."""
    if len(avcc) < 4 or avcc[0] != 1:
        raise CodecError("malformed avcC")
    return f"avc1.{avcc[1:4].hex()}"
