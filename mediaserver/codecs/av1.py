"""AV1: the codec string from an av1C record (AV1-ISOBMFF 2.3 and Annex A)."""

from __future__ import annotations

from mediaserver.codecs import CodecError


def codec_string(av1c: bytes) -> str:
    if len(av1c) < 4 or av1c[0] != 0x81:
        raise CodecError("malformed av1C")
    profile = av1c[1] >> 5
    level = av1c[1] & 0x1F
    tier = "H" if av1c[2] & 0x80 else "M"
    high_bitdepth = av1c[2] & 0x40
    twelve_bit = av1c[2] & 0x20
    depth = (12 if twelve_bit and profile == 2 else 10) if high_bitdepth else 8
    return f"av01.{profile}.{level:02d}{tier}.{depth:02d}"
