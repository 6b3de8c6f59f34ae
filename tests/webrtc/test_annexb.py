"""Pure functions: AVCC <-> Annex-B, avcC records, FLV bodies, H.264 format choice, SDP candidate filtering."""

from __future__ import annotations

import fractions

import av
import pytest
from aiortc import RTCRtpCodecParameters
from aiortc.rtcrtpparameters import RTCRtcpFeedback

from mediaserver.codecs import CodecError
from mediaserver.codecs.annexb import avcc_to_annexb, split_annexb, to_avcc
from mediaserver.codecs.h264 import START_CODE, avc_decoder_config, parse_avcc
from mediaserver.formats import flv
from mediaserver.media import Codec, TrackKind
from mediaserver.webrtc.codecs import answer_codecs, choose_h264
from mediaserver.webrtc.ice import strip_mdns_candidates

SPS = bytes.fromhex("6764001eacd940a02ff9610000030001000003003c8f162d96")  # High, level 3.0
PPS = bytes.fromhex("68ebe3cb22c0")
IDR = bytes([0x65]) + bytes(range(40))
SLICE = bytes([0x41]) + bytes(range(20))
SEI = bytes([0x06, 0x05, 0x01, 0x00, 0x80])
AUD = bytes([0x09, 0xF0])


def length_prefixed(*nals: bytes, size: int = 4) -> bytes:
    return b"".join(len(n).to_bytes(size, "big") + n for n in nals)


def test_avcc_record_round_trip() -> None:
    record = avc_decoder_config([SPS], [PPS])
    config = parse_avcc(record)
    assert config.sps == (SPS,) and config.pps == (PPS,)
    assert (config.profile, config.compatibility, config.level) == (100, 0, 30)
    assert config.profile_level_id == "64001e" and config.length_size == 4
    assert config.parameter_sets() == START_CODE + SPS + START_CODE + PPS


@pytest.mark.parametrize(
    "record",
    [b"", b"\x01\x64\x00", b"\x02" + bytes(10), b"\x01\x64\x00\x1e\xff\xe1\x00\x40" + SPS, b"\x01\x64\x00\x1e\xfe\xe1"],
)
def test_bad_avcc_records_are_errors(record: bytes) -> None:
    with pytest.raises(CodecError):
        parse_avcc(record)


def test_idr_gets_parameter_sets_and_delimiters_go() -> None:
    config = parse_avcc(avc_decoder_config([SPS], [PPS]))
    data, idr = avcc_to_annexb(length_prefixed(AUD, SEI, IDR), 4, config.parameter_sets())
    assert idr
    assert data == START_CODE + SPS + START_CODE + PPS + START_CODE + SEI + START_CODE + IDR
    # An IDR that carries its own SPS gets no second copy.
    data, idr = avcc_to_annexb(length_prefixed(SPS, PPS, IDR), 4, config.parameter_sets())
    assert idr and data.count(SPS) == 1
    # Other frames go through as they are.
    data, idr = avcc_to_annexb(memoryview(length_prefixed(SLICE)), 4, config.parameter_sets())
    assert not idr and data == START_CODE + SLICE
    # Two-byte lengths (rare, legal).
    data, _ = avcc_to_annexb(length_prefixed(SLICE, SLICE, size=2), 2)
    assert data == (START_CODE + SLICE) * 2
    assert avcc_to_annexb(length_prefixed(AUD), 4) == (b"", False)


@pytest.mark.parametrize("payload", [b"\x00\x00", b"\x00\x00\x00\x30\x65\x00", length_prefixed(IDR)[:-1]])
def test_truncated_frames_are_errors(payload: bytes) -> None:
    with pytest.raises(CodecError):
        avcc_to_annexb(payload, 4)


def test_split_annexb_back_to_avcc() -> None:
    stream = START_CODE + SPS + b"\x00\x00\x01" + PPS + START_CODE + IDR + b"\x00"
    assert split_annexb(stream) == [SPS, PPS, IDR]
    assert to_avcc([SLICE]) == length_prefixed(SLICE)
    annexb, _ = avcc_to_annexb(length_prefixed(SEI, IDR), 4)
    assert split_annexb(annexb) == [SEI, IDR]
    assert split_annexb(b"no start code") == []


def test_annexb_output_decodes_with_ffmpeg() -> None:
    """A real libx264 stream, carried as AVCC + avcC the way RTMP does, decodes after our conversion."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 320, 240, "yuv420p"
    encoder.time_base = fractions.Fraction(1, 25)
    encoder.options = {"tune": "zerolatency", "g": "10", "preset": "ultrafast"}
    encoder.flags |= av.codec.context.Flags.global_header  # avcC in extradata, AVCC frames, as from RTMP
    frames = []
    for index in range(12):
        frame = av.VideoFrame(320, 240, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([index * 10 % 255]) * plane.buffer_size)
        frame.pts = index
        frames.extend(bytes(p) for p in encoder.encode(frame))
    frames.extend(bytes(p) for p in encoder.encode(None))
    extradata = bytes(encoder.extradata or b"")
    config = parse_avcc(extradata) if extradata[:1] == b"\x01" else None
    if config is None:  # x264 gave Annex-B extradata: build the avcC ourselves
        nals = split_annexb(extradata)
        config = parse_avcc(
            avc_decoder_config([n for n in nals if n[0] & 0x1F == 7], [n for n in nals if n[0] & 0x1F == 8])
        )
        frames = [to_avcc(split_annexb(f)) if f.startswith((b"\x00\x00\x01", START_CODE)) else f for f in frames]
    decoder = av.CodecContext.create("h264", "r")
    decoded = 0
    for payload in frames:
        data, _ = avcc_to_annexb(payload, config.length_size, config.parameter_sets())
        decoded += len(decoder.decode(av.Packet(data)))
    decoded += len(decoder.decode(None))
    assert decoded == 12


def test_flv_bodies_parse_back() -> None:
    record = avc_decoder_config([SPS], [PPS])
    header = flv.parse_video(flv.avc_sequence_header(record), 1000)
    assert header is not None and header.is_config and header.codec is Codec.H264 and bytes(header.data) == record
    frame = flv.parse_video(flv.avc_frame(length_prefixed(IDR), keyframe=True, cts=40), 1040)
    assert frame is not None and frame.keyframe and frame.pts == 1080 and bytes(frame.data) == length_prefixed(IDR)
    inter = flv.parse_video(flv.avc_frame(length_prefixed(SLICE), keyframe=False, cts=-5), 1080)
    assert inter is not None and not inter.keyframe and inter.pts == 1075
    asc = bytes.fromhex("1190")
    config = flv.parse_audio(flv.aac_sequence_header(asc), 0)
    assert config is not None and config.is_config and config.kind is TrackKind.AUDIO and bytes(config.data) == asc
    raw = flv.parse_audio(flv.aac_frame(b"\x21\x00\x03"), 20)
    assert raw is not None and not raw.is_config and bytes(raw.data) == b"\x21\x00\x03"


def h264(pt: int, profile: str, mode: str = "1") -> RTCRtpCodecParameters:
    return RTCRtpCodecParameters(
        mimeType="video/H264",
        clockRate=90000,
        payloadType=pt,
        rtcpFeedback=[RTCRtcpFeedback("nack"), RTCRtcpFeedback("nack", "pli"), RTCRtcpFeedback("transport-cc")],
        parameters={"level-asymmetry-allowed": "1", "packetization-mode": mode, "profile-level-id": profile},
    )


# What Chromium 156 (Debian) offers: no plain High profile, but High 4:4:4 Predictive.
CHROMIUM = [
    h264(102, "42001f"),
    h264(104, "42001f", "0"),
    h264(108, "42e01f"),
    h264(116, "4d001f"),
    h264(41, "f4001f"),
    RTCRtpCodecParameters(mimeType="video/rtx", clockRate=90000, payloadType=42, parameters={"apt": 41}),
]


def stream_profile(profile: int, compat: int) -> object:
    sps = bytes([0x67, profile, compat, 0x1F]) + SPS[4:]
    return parse_avcc(avc_decoder_config([sps], [PPS]))


@pytest.mark.parametrize(
    ("profile", "compat", "offered", "expected"),
    [
        (100, 0x00, CHROMIUM, 41),  # High -> High 4:4:4 (a superset)
        (100, 0x00, [*CHROMIUM, h264(100, "64001f")], 100),  # High -> High when offered
        (77, 0x40, CHROMIUM, 116),  # Main -> Main
        (66, 0xC0, CHROMIUM, 102),  # Constrained Baseline -> first Baseline-compatible
        (66, 0x00, [h264(108, "42e01f"), h264(102, "42001f")], 102),  # Baseline prefers plain Baseline
        (100, 0x00, [h264(108, "42e01f")], None),  # nothing decodes High: leave aiortc's choice
        (100, 0x00, [h264(41, "f4001f", "0")], None),  # packetization-mode 0 is not usable
    ],
)
def test_choose_h264(profile: int, compat: int, offered: list[RTCRtpCodecParameters], expected: int | None) -> None:
    chosen = choose_h264(offered, stream_profile(profile, compat))  # type: ignore[arg-type]
    assert (chosen.payloadType if chosen is not None else None) == expected


def test_answer_codecs_keep_offered_format_and_rtx() -> None:
    chosen = choose_h264(CHROMIUM, stream_profile(100, 0))  # type: ignore[arg-type]
    assert chosen is not None
    codecs = answer_codecs(chosen, CHROMIUM)
    assert [c.payloadType for c in codecs] == [41, 42]
    assert codecs[0].parameters["profile-level-id"] == "f4001f"
    assert RTCRtcpFeedback("transport-cc") not in codecs[0].rtcpFeedback
    assert RTCRtcpFeedback("nack", "pli") in codecs[0].rtcpFeedback


def test_mdns_candidates_are_dropped() -> None:
    sdp = (
        "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
        "a=candidate:1 1 udp 2113937151 3e5d7853-5073-4721-8f65-d3cf80184023.local 48855 typ host generation 0\r\n"
        "a=candidate:2 1 udp 2113937151 192.0.2.7 48856 typ host generation 0\r\n"
    )
    stripped = strip_mdns_candidates(sdp)
    assert ".local" not in stripped and "192.0.2.7" in stripped
    assert strip_mdns_candidates(stripped) == stripped


async def test_port_range_is_used_and_its_exhaustion_is_an_error() -> None:
    import socket

    from aiortc import RTCConfiguration, RTCPeerConnection

    from mediaserver.webrtc.ice import HostCandidates, IceSetupError

    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    taken = holder.getsockname()[1]
    pcs = []
    try:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.append(pc)
        pc.addTransceiver("video", direction="recvonly")
        # One port, already in use: no candidate, a clear error.
        with pytest.raises(IceSetupError):
            await HostCandidates(["127.0.0.1"], taken, taken).prepare(pc)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.append(pc)
        pc.addTransceiver("video", direction="recvonly")
        await HostCandidates(["127.0.0.1"], taken, taken + 1).prepare(pc)
        await pc.setLocalDescription(await pc.createOffer())
        assert pc.localDescription is not None
        assert f"127.0.0.1 {taken + 1} typ host" in pc.localDescription.sdp
    finally:
        holder.close()
        for pc in pcs:
            await pc.close()
