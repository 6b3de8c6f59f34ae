"""Real coded pictures for snapshot tests: PyAV's encoders, wrapped in the FLV bodies RTMP would carry."""

from __future__ import annotations

import fractions
import io

import av
import numpy as np

from mediaserver.codecs.annexb import split_annexb, to_avcc
from mediaserver.codecs.h264 import NAL_PPS, NAL_SPS, avc_decoder_config, nal_type
from mediaserver.formats.flv import avc_frame, avc_sequence_header, parse_video
from mediaserver.hub import Hub, Stream
from mediaserver.media import Packet

LEFT = (200, 60, 30)
RIGHT = (20, 120, 220)
_FOURCC = {"hevc": b"hvc1", "av1": b"av01", "vp9": b"vp09"}
_ENCODERS = {"hevc": "libx265", "av1": "libsvtav1", "vp9": "libvpx-vp9"}


class FakePublisher:
    protocol = "rtmp"
    peer = "127.0.0.1:50000"

    def stop(self, reason: str) -> None:
        pass


def picture(width: int, height: int, shift: int = 0) -> av.VideoFrame:
    """Two flat halves (LEFT | RIGHT), so that colours and aspect can be checked after a round trip."""
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:, : width // 2] = LEFT
    rgb[:, width // 2 :] = RIGHT
    rgb[: height // 8, : width // 8] = shift  # a small marker that differs between pictures
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")


def h264(width: int, height: int, count: int = 3, gop: int = 2) -> tuple[bytes, list[tuple[bool, bytes]]]:
    """libx264 in Annex-B, turned into an avcC record and AVCC access units as an RTMP encoder sends them."""
    encoder = av.CodecContext.create("libx264", "w")
    assert isinstance(encoder, av.VideoCodecContext)
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = fractions.Fraction(1, 25)
    encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "bframes": "0", "g": str(gop)}
    packets = []
    for index in range(count):
        frame = picture(width, height, index * 40 % 256)
        frame.pts = index
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    sps: list[bytes] = []
    pps: list[bytes] = []
    units: list[tuple[bool, bytes]] = []
    for packet in packets:
        nals = split_annexb(bytes(packet))
        sps += [n for n in nals if nal_type(n) == NAL_SPS and n not in sps]
        pps += [n for n in nals if nal_type(n) == NAL_PPS and n not in pps]
        units.append((packet.is_keyframe, to_avcc([n for n in nals if nal_type(n) not in (NAL_SPS, NAL_PPS)])))
    return avc_decoder_config(sps, pps), units


def through_mp4(codec: str, width: int, height: int, count: int = 3) -> tuple[bytes, list[tuple[bool, bytes]]]:
    """Encode with `_ENCODERS[codec]` into an in-memory MP4 and read it back: the hvcC/av1C record and the
    samples, in the framing MP4 and RTMP share."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream(_ENCODERS[codec], rate=25)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "hevc":
            stream.options = {"preset": "ultrafast", "x265-params": "log-level=none:bframes=0"}
        elif codec == "av1":
            stream.options = {"preset": "12"}
        else:
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for index in range(count):
            frame = picture(width, height, index * 40 % 256)
            frame.pts = index
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
    buffer.seek(0)
    with av.open(buffer, "r") as source:
        video = source.streams.video[0]
        config = bytes(video.codec_context.extradata or b"")
        units = [(p.is_keyframe, bytes(p)) for p in source.demux(video) if p.size]
    return config, units


def _enhanced(codec: str, packet_type: int, keyframe: bool, payload: bytes) -> bytes:
    """An Enhanced RTMP video body: ex-header flag, frame type, packet type, FourCC (and a zero CTS for HEVC)."""
    head = bytes((0x80 | (1 if keyframe else 2) << 4 | packet_type,)) + _FOURCC[codec]
    if packet_type == 1 and codec == "hevc":
        head += b"\x00\x00\x00"
    return head + payload


def flv_packets(codec: str, config: bytes, units: list[tuple[bool, bytes]]) -> list[Packet]:
    if codec == "h264":
        bodies = [avc_sequence_header(config)] + [avc_frame(data, key) for key, data in units]
    else:
        bodies = [_enhanced(codec, 0, True, config)] + [_enhanced(codec, 1, key, data) for key, data in units]
    packets = []
    for index, body in enumerate(bodies):
        packet = parse_video(body, max(0, index - 1) * 40)
        assert packet is not None
        packets.append(packet)
    return packets


def coded(codec: str, width: int, height: int, count: int = 3) -> list[Packet]:
    """The sequence header and `count` pictures of `codec` ("h264", "hevc", "av1", "vp9"), as hub packets."""
    config, units = h264(width, height, count) if codec == "h264" else through_mp4(codec, width, height, count)
    assert units[0][0], "the first picture is a keyframe"
    return flv_packets(codec, config, units)


def live_stream(hub: Hub, name: str, codec: str = "h264", width: int = 1280, height: int = 720) -> Stream:
    stream = hub.publish("live", name, FakePublisher())
    for packet in coded(codec, width, height):
        stream.push(packet)
    return stream
