"""H.264 RTP payloads (RFC 6184), read back by aiortc's own depayloader."""

from __future__ import annotations

import pytest
from aiortc.codecs import depayload

from mediaserver.codecs.annexb import split_annexb
from mediaserver.webrtc.packetize import MAX_PAYLOAD, h264_payloads
from tests.webrtc.rtp_capture import H264
from tests.webrtc.test_annexb import IDR, PPS, SEI, SLICE, SPS


def nal(header: int, size: int) -> bytes:
    """A NAL unit of `size` bytes with no zero byte in it (no start code can show up inside)."""
    return bytes((header,)) + bytes((i * 7 + header) % 255 + 1 for i in range(size - 1))


def rebuilt(payloads: list[bytes]) -> list[bytes]:
    return split_annexb(b"".join(depayload(H264, payload) for payload in payloads))


@pytest.mark.parametrize(
    "nals",
    [
        [SPS, PPS, IDR],
        [SLICE],
        [SPS, PPS, SEI, nal(0x65, 40_000)],
        [nal(0x41, MAX_PAYLOAD)],
        [nal(0x41, MAX_PAYLOAD + 1)],
        [nal(0x41, 3 * (MAX_PAYLOAD - 2) + 1)],
        [nal(0x06, 30) for _ in range(40)],
        [nal(0x41, 700), nal(0x41, 700), nal(0x41, 5000), nal(0x01, 10)],
    ],
)
def test_payloads_carry_the_access_unit(nals: list[bytes]) -> None:
    payloads = h264_payloads(nals)
    assert all(0 < len(p) <= MAX_PAYLOAD for p in payloads)
    assert rebuilt(payloads) == nals


def test_small_units_share_one_stap_a_and_large_ones_are_cut_evenly() -> None:
    big = nal(0x65, 10_000)
    payloads = h264_payloads([SPS, PPS, SEI, big])
    stap, *fragments = payloads
    # SPS, PPS and SEI in one STAP-A, its NRI the highest of theirs (SPS: 3).
    assert stap[0] == 0x60 | 24
    assert len(fragments) == -(-(len(big) - 1) // (MAX_PAYLOAD - 2))
    # FU-A: indicator keeps F/NRI, header has S on the first, E on the last; sizes differ by one at most.
    assert {f[0] for f in fragments} == {(0x65 & 0xE0) | 28}
    assert [f[1] for f in fragments] == [0x80 | 5] + [5] * (len(fragments) - 2) + [0x40 | 5]
    assert max(map(len, fragments)) - min(map(len, fragments)) <= 1


def test_a_lone_small_unit_goes_as_it_is() -> None:
    assert h264_payloads([SLICE]) == [SLICE]
    # Two units too big to share a packet go alone too.
    first, second = nal(0x41, 800), nal(0x41, 800)
    assert h264_payloads([first, second]) == [first, second]
