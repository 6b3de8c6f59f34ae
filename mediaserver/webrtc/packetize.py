"""H.264 access units as RTP payloads (RFC 6184, non-interleaved mode): done once per frame and stream, then
shared by every viewer's RTP stream, which only adds its own header.

- A NAL unit that fits goes alone (single NAL unit packet), or with its small neighbours in one STAP-A
  (SPS + PPS + SEI + a small slice of an IDR access unit, typically).
- A larger one is cut into FU-A fragments of nearly equal size (no tiny last fragment).
"""

from __future__ import annotations

from collections.abc import Sequence

# Payload bytes per RTP packet: with the RTP header, its extensions and the SRTP tag, a datagram stays under
# 1400 bytes (aiortc's own packetiser uses the same figure).
MAX_PAYLOAD = 1300

_STAP_A = 24
_FU_A = 28
_FU_START = 0x80
_FU_END = 0x40
_STAP_LENGTH = 2
# At most this many NAL units in one STAP-A (receivers need no more; keeps the aggregation loop short).
_STAP_MAX_UNITS = 16

Nal = bytes | memoryview


def h264_payloads(nals: Sequence[Nal], max_payload: int = MAX_PAYLOAD) -> list[bytes]:
    """The RTP payloads of one access unit, given its NAL units (no start codes, no empty units)."""
    payloads: list[bytes] = []
    index = 0
    count = len(nals)
    while index < count:
        nal = nals[index]
        if len(nal) > max_payload:
            payloads.extend(_fragments(nal, max_payload))
            index += 1
            continue
        # Aggregate this unit and the small ones after it while they fit in one STAP-A.
        end = index + 1
        size = 1 + _STAP_LENGTH + len(nal)
        while end < count and end - index < _STAP_MAX_UNITS:
            grown = size + _STAP_LENGTH + len(nals[end])
            if grown > max_payload:
                break
            size = grown
            end += 1
        if end - index == 1:
            payloads.append(bytes(nal))
        else:
            payloads.append(_aggregate(nals[index:end]))
        index = end
    return payloads


def _aggregate(nals: Sequence[Nal]) -> bytes:
    """A STAP-A: its F bit is any unit's F bit, its NRI the highest unit's NRI (RFC 6184 5.7.1)."""
    forbidden = 0
    nri = 0
    parts: list[bytes | memoryview] = []
    for nal in nals:
        forbidden |= nal[0] & 0x80
        nri = max(nri, nal[0] & 0x60)
        parts.append(len(nal).to_bytes(_STAP_LENGTH, "big"))
        parts.append(nal)
    return bytes((forbidden | nri | _STAP_A,)) + b"".join(parts)


def _fragments(nal: Nal, max_payload: int) -> list[bytes]:
    """FU-A fragments of one NAL unit: its header byte becomes the FU indicator and header (RFC 6184 5.8)."""
    view = memoryview(nal)
    head = view[0]
    indicator = (head & 0xE0) | _FU_A
    nal_type = head & 0x1F
    body = view[1:]
    room = max_payload - 2
    pieces = -(-len(body) // room)
    base, extra = divmod(len(body), pieces)
    fragments: list[bytes] = []
    offset = 0
    for piece in range(pieces):
        size = base + (1 if piece < extra else 0)
        flags = (_FU_START if piece == 0 else 0) | (_FU_END if piece == pieces - 1 else 0)
        fragments.append(bytes((indicator, flags | nal_type)) + body[offset : offset + size])
        offset += size
    return fragments
