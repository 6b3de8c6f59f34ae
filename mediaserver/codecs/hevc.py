"""H.265/HEVC: the RFC 6381 codec string from an hvcC record (ISO/IEC 14496-15 E.3)."""

from __future__ import annotations

from mediaserver.codecs import CodecError


def codec_string(hvcc: bytes) -> str:
    if len(hvcc) < 23 or hvcc[0] != 1:
        raise CodecError("malformed hvcC")
    profile_space = hvcc[1] >> 6
    tier = "H" if hvcc[1] & 0x20 else "L"
    profile_idc = hvcc[1] & 0x1F
    compat = int.from_bytes(hvcc[2:6], "big")
    reversed_compat = int(f"{compat:032b}"[::-1], 2)
    constraints = hvcc[6:12].rstrip(b"\x00")
    level = hvcc[12]
    parts = [
        "hvc1",
        ("", "A", "B", "C")[profile_space] + str(profile_idc),
        f"{reversed_compat:X}",
        f"{tier}{level}",
        *(f"{b:X}" for b in constraints),
    ]
    return ".".join(parts)
