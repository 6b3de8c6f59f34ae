"""Our RTP send path without a network: header fields and extensions as aiortc parses them, retransmission (RTX),
the figures of aiortc's sender reports, and the send queue's slices."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

from aiortc import RTCDtlsTransport, RTCRtpSender
from aiortc.rtcdtlstransport import State
from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpRtpfbPacket, RtcpSrPacket, unwrap_rtx

from mediaserver.webrtc.rtpout import (
    HISTORY_FRAMES,
    NTP_OFFSET,
    FeedSender,
    RtpLink,
    RtpOut,
    Target,
    abs_send_time,
    extension_block,
    ntp_time,
)
from mediaserver.webrtc.sendqueue import SendQueue
from mediaserver.webrtc.tracks import AudioOut, AudioUnit
from tests.webrtc.helpers import wait_until
from tests.webrtc.rtp_capture import H264, RTX, CaptureLink, capture_out, new_sender, parse, send_parameters

PAYLOADS = [b"\x7c\x85" + bytes(100), b"\x7c\x05" + bytes(100), b"\x7c\x45" + bytes(50)]


def send_frame(timestamp: int = 1000, **options: object) -> tuple[RtpOut, CaptureLink, RTCRtpSendParameters, int]:
    """One three-packet frame, numbered and sent."""
    out, link, parameters = capture_out("video", **options)
    seq = out.allocate(PAYLOADS, 252, timestamp, True, 1_700_000_000.0)
    out.send(PAYLOADS, seq, timestamp, True, abs_send_time(1_700_000_000.0))
    return out, link, parameters, seq


async def test_header_fields_and_extensions_read_back_by_aiortc() -> None:
    out, link, parameters, seq = send_frame()
    packets = [parse(parameters, data) for data in link.packets]
    assert [p.sequence_number for p in packets] == [seq, seq + 1, seq + 2]
    assert {p.payload_type for p in packets} == {H264.payloadType}
    assert {p.ssrc for p in packets} == {out.ssrc}
    assert {p.timestamp for p in packets} == {1000}
    assert [p.marker for p in packets] == [0, 0, 1]
    assert [p.payload for p in packets] == PAYLOADS
    assert {p.extensions.mid for p in packets} == {"0"}
    expected = (int((1_700_000_000.0 + NTP_OFFSET) * 262_144)) & 0xFFFFFF
    assert {p.extensions.abs_send_time for p in packets} == {expected}


async def test_extension_forms() -> None:
    block, offsets = extension_block([(1, b"0"), (3, b"abc")])
    # One-byte form: 0xBEDE, 2 words; elements (id << 4 | len - 1) + value; zero padding.
    assert block == bytes.fromhex("bede0002") + b"\x100" + b"\x32abc" + b"\0\0"
    assert [block[o : o + len(v)] for o, v in zip(offsets, (b"0", b"abc"), strict=True)] == [b"0", b"abc"]
    # An id above 14 needs the two-byte form (profile 0x1000, id and length bytes); aiortc reads it too.
    _, link, parameters, _ = send_frame(ids=(15, 16), mid="video-main")
    packet = parse(parameters, link.packets[0])
    assert link.packets[0][12:14] == b"\x10\x00"
    assert packet.extensions.mid == "video-main" and packet.extensions.abs_send_time is not None


async def test_a_lost_packet_is_resent_as_rtx_or_as_it_was() -> None:
    out, link, parameters, seq = send_frame()
    original = parse(parameters, link.packets[2])
    await out.retransmit(seq + 2)
    rtx = parse(parameters, link.packets[3])
    assert rtx.payload_type == RTX.payloadType and rtx.ssrc == out.rtx_ssrc
    recovered = unwrap_rtx(rtx, payload_type=out.payload_type, ssrc=out.ssrc)
    assert (recovered.sequence_number, recovered.timestamp, recovered.marker, recovered.payload) == (
        original.sequence_number,
        original.timestamp,
        original.marker,
        original.payload,
    )
    # Unknown sequence numbers are ignored.
    await out.retransmit(seq + 3)
    await out.retransmit(seq - 1)
    assert len(link.packets) == 4 and out.retransmitted == 1
    # Without RTX in the offer, the packet goes again as it was.
    plain, plain_link, plain_parameters, plain_seq = send_frame(rtx=False)
    await plain.retransmit(plain_seq)
    again, first = (parse(plain_parameters, plain_link.packets[i]) for i in (3, 0))
    assert (again.payload_type, again.ssrc, again.sequence_number, again.timestamp, again.payload) == (
        first.payload_type,
        first.ssrc,
        first.sequence_number,
        first.timestamp,
        first.payload,
    )


async def test_the_history_is_bounded() -> None:
    out, _, _, first = send_frame()
    for index in range(HISTORY_FRAMES):
        out.allocate(PAYLOADS, 252, 2000 + index, True, 0.0)
    await out.retransmit(first)
    assert out.retransmitted == 0
    await out.retransmit((out.seq - 1) & 0xFFFF)
    assert out.retransmitted == 1


async def test_the_sender_is_ours_once_aiortc_starts_it() -> None:
    """Through aiortc's own code paths: `send` starts our stream, NACKs reach our history, the RTCP sender
    reports and the statistics carry our figures."""
    link = CaptureLink()
    sender = new_sender()
    made: list[RtpOut] = []

    def start(started: FeedSender, parameters: RTCRtpSendParameters) -> RtpOut:
        made.append(RtpOut(started, parameters, link=link))
        return made[-1]

    adopted = FeedSender.adopt(sender, start)
    assert adopted is sender and isinstance(sender, RTCRtpSender)
    reports: list[RtcpSrPacket] = []

    async def send_rtcp(packets: list[object]) -> None:
        reports.extend(p for p in packets if isinstance(p, RtcpSrPacket))

    setattr(sender, "_send_rtcp", send_rtcp)  # noqa: B010
    await sender.send(send_parameters())
    try:
        (out,) = made
        assert adopted.feed_out is out and out.ssrc == sender._ssrc
        seq = out.allocate(PAYLOADS, 252, 1000, True, 1_700_000_000.0)
        out.send(PAYLOADS, seq, 1000, True, abs_send_time(1_700_000_000.0))
        nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1234, media_ssrc=sender._ssrc, lost=[seq + 1])
        await sender._handle_rtcp_packet(nack)
        assert len(link.packets) == 4 and out.retransmitted == 1
        report = await sender.getStats()
        (outbound,) = [s for s in report.values() if s.type == "outbound-rtp"]
        assert (outbound.packetsSent, outbound.bytesSent, outbound.ssrc) == (3, 252, out.ssrc)
        # aiortc's next RTCP SR (0.5-1.5 s apart): the NTP time of the last frame and its RTP timestamp.
        assert await wait_until(lambda: bool(reports), 3)
        info = reports[0].sender_info
        assert (info.packet_count, info.octet_count) == (3, 252)
        assert (info.ntp_timestamp, info.rtp_timestamp) == (ntp_time(1_700_000_000.0), 1000)
    finally:
        await sender.stop()


async def test_audio_packets_are_marked_at_the_start_of_the_talkspurt_only() -> None:
    rtp, link, parameters = capture_out("audio")
    audio = AudioOut()
    assert audio.take(AudioUnit(b"\x01", 960), 0.0) is None  # not started: nothing
    audio.start(rtp)
    queue = SendQueue()
    for index in range(3):
        unit = AudioUnit(bytes((index + 1,)) * 80, 48_000 + index * 960)
        target = audio.take(unit, 0.0)
        assert target is not None
        queue.submit(unit.payloads, [target])
    await asyncio.sleep(0.01)
    packets = [parse(parameters, data) for data in link.packets]
    assert [p.marker for p in packets] == [1, 0, 0]
    assert [(p.timestamp - rtp.origin) & 0xFFFFFFFF for p in packets] == [0, 960, 1920]
    assert all(p.extensions.abs_send_time is None and p.extensions.mid == "0" for p in packets)
    # No NACK for Opus in the offer: nothing is kept for retransmission.
    await rtp.retransmit(packets[0].sequence_number)
    assert len(link.packets) == 3


async def test_the_send_queue_works_in_slices_and_keeps_the_order() -> None:
    queue = SendQueue(slice_packets=4)
    outs = [capture_out("video") for _ in range(3)]
    targets: list[Target] = []
    for out, _, _ in outs:
        targets.append((out, out.allocate(PAYLOADS, 252, 0, True, 0.0), 0, True))
    queue.submit(PAYLOADS, targets)
    queue.submit(PAYLOADS[:1], [(outs[0][0], outs[0][0].allocate(PAYLOADS[:1], 102, 90, True, 0.0), 90, True)])
    assert queue.backlog == 10
    sent: list[list[int]] = []
    for _ in range(4):
        await asyncio.sleep(0)
        sent.append([len(link.packets) for _, link, _ in outs])
    # A slice stops once it has sent 4 packets or more (whole frames for a viewer): two viewers, then the
    # third and the next batch.
    assert sent[0] == [3, 3, 0] and sent[1] == [4, 3, 3] and queue.backlog == 0
    packets = [parse(outs[0][2], data) for data in outs[0][1].packets]
    assert [p.sequence_number for p in packets] == [(packets[0].sequence_number + n) & 0xFFFF for n in range(4)]
    assert queue.slices == 2 and queue.packets == 10


async def test_a_closed_stream_or_link_sends_nothing() -> None:
    queue = SendQueue()
    out, link, _ = capture_out("video")
    queue.submit(PAYLOADS, [(out, out.allocate(PAYLOADS, 252, 0, True, 0.0), 0, True)])
    link.is_ready = False
    await asyncio.sleep(0)
    link.is_ready = True
    queue.submit(PAYLOADS, [(out, out.allocate(PAYLOADS, 252, 0, True, 0.0), 0, True)])
    out.close()
    await asyncio.sleep(0)
    await out.retransmit(out.seq - 1)
    assert link.packets == []


async def test_through_a_turn_relay_packets_go_through_aioice_in_order() -> None:
    """A relayed ICE pair has no socket of its own to write to: aioice's coroutine sends, one after the other."""
    sent: list[bytes] = []

    async def relay_send(data: bytes) -> None:
        await asyncio.sleep(0.001)  # a channel being bound, say
        sent.append(data)

    pair = SimpleNamespace(protocol=object(), remote_addr=("192.0.2.1", 3478))
    connection = SimpleNamespace(_nominated={1: pair}, send=relay_send)
    dtls = SimpleNamespace(
        _state=State.CONNECTED,
        _tx_srtp=SimpleNamespace(protect=lambda data: b"srtp:" + data),
        transport=SimpleNamespace(_connection=connection),
    )
    link = RtpLink(cast(RTCDtlsTransport, dtls))
    assert not link.direct and link.ready()
    for index in range(5):
        link.sendto(link.protect(bytes((index,))), link.addr)
    assert await wait_until(lambda: len(sent) == 5, 2)
    assert sent == [b"srtp:" + bytes((index,)) for index in range(5)]
    dtls._state = State.CLOSED
    assert not link.ready()
