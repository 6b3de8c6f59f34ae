"""Opus: the OpusHead identification header (RFC 7845 5.1)."""

from __future__ import annotations

from mediaserver.codecs import CodecError

# Opus always decodes at 48 kHz, whatever OpusHead's input rate says.
CLOCK_RATE = 48000


def head_config(head: bytes | memoryview) -> tuple[int, int]:
    """(input sample rate, channels) from an OpusHead."""
    if len(head) < 19 or bytes(head[:8]) != b"OpusHead":
        raise CodecError("not an OpusHead")
    return int.from_bytes(head[12:16], "little"), head[9]
