"""AAC: the AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1): sample rate, channels, object type."""

from __future__ import annotations

from mediaserver.codecs import CodecError

_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def audio_config(asc: bytes | memoryview) -> tuple[int, int]:
    """(sample rate, channels) from an AudioSpecificConfig."""
    if len(asc) < 2:
        raise CodecError("AudioSpecificConfig too short")
    bits = (asc[0] << 8) | asc[1]
    object_type = bits >> 11
    index = (bits >> 7) & 0x0F
    channels = (bits >> 3) & 0x0F
    if object_type == 31 or index == 15:
        # Escaped object type or explicit 24-bit rate: rare enough to report without decoding further.
        return 0, channels
    return (_AAC_RATES[index] if index < len(_AAC_RATES) else 0), channels


def object_type(asc: bytes) -> int:
    """The audio object type (2 = AAC-LC, 5 = SBR, 29 = PS, 42 = xHE-AAC), with the escape for 32+."""
    if len(asc) < 2:
        raise CodecError("AudioSpecificConfig too short")
    aot = asc[0] >> 3
    if aot == 31:
        aot = 32 + (((asc[0] & 0x07) << 3) | (asc[1] >> 5))
    return aot
