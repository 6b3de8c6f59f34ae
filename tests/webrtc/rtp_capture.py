"""RTP streams without a network: a real aiortc sender (never connected) whose packets our send path hands to a
capturing link instead of SRTP and a socket; aiortc's own parser and depayloader read them back."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport, RTCRtpSender
from aiortc.codecs import depayload
from aiortc.rtcrtpparameters import (
    RTCRtcpFeedback,
    RTCRtcpParameters,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpSendParameters,
)
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from mediaserver.webrtc.rtpout import ABS_SEND_TIME_URI, MID_URI, Addr, RtpOut

H264 = RTCRtpCodecParameters(
    mimeType="video/H264",
    clockRate=90000,
    payloadType=102,
    parameters={"packetization-mode": "1"},
    rtcpFeedback=[RTCRtcpFeedback(type="nack"), RTCRtcpFeedback(type="nack", parameter="pli")],
)
RTX = RTCRtpCodecParameters(mimeType="video/rtx", clockRate=90000, payloadType=103, parameters={"apt": 102})
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)


@dataclass
class CaptureLink:
    """Stands in for `RtpLink`: keeps the plain RTP packets (no SRTP), in order."""

    packets: list[bytes] = field(default_factory=list)
    addr: Addr | None = None
    is_ready: bool = True

    def protect(self, data: bytes) -> bytes:
        return data

    def sendto(self, data: bytes, addr: Addr | None = None) -> None:
        self.packets.append(data)

    def ready(self) -> bool:
        return self.is_ready


def send_parameters(
    kind: str = "video", rtx: bool = True, mid: str = "0", ids: tuple[int, int] = (4, 2)
) -> RTCRtpSendParameters:
    """What aiortc's peer connection hands a sender: codecs, header extensions (mid, abs-send-time), mid."""
    codecs = [H264, RTX] if kind == "video" and rtx else [H264] if kind == "video" else [OPUS]
    extensions = [RTCRtpHeaderExtensionParameters(id=ids[0], uri=MID_URI)]
    if kind == "video":
        extensions.append(RTCRtpHeaderExtensionParameters(id=ids[1], uri=ABS_SEND_TIME_URI))
    return RTCRtpSendParameters(codecs=codecs, headerExtensions=extensions, muxId=mid, rtcp=RTCRtcpParameters())


def new_sender(kind: str = "video") -> RTCRtpSender:
    dtls = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    return RTCRtpSender(kind, dtls)


def capture_out(kind: str = "video", **options: object) -> tuple[RtpOut, CaptureLink, RTCRtpSendParameters]:
    parameters = send_parameters(kind, **options)  # type: ignore[arg-type]
    link = CaptureLink()
    return RtpOut(new_sender(kind), parameters, link=link), link, parameters


def parse(parameters: RTCRtpSendParameters, data: bytes) -> RtpPacket:
    extensions = HeaderExtensionsMap()
    extensions.configure(parameters)
    return RtpPacket.parse(data, extensions)


def annexb(packets: list[RtpPacket]) -> bytes:
    """The H.264 byte stream (Annex-B) the packets carry, as aiortc's receiver rebuilds it."""
    return b"".join(depayload(H264, packet.payload) for packet in packets)
