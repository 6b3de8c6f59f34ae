"""Codec negotiation details aiortc leaves to us.

aiortc only knows H.264 Constrained Baseline/Baseline (`profile-level-id` 42e01f/42001f) and answers an offer
with one of those, whatever the stream really is. A camera usually sends Main or High profile. Browsers decode
any profile with the same decoder, but they pick the decoder configuration by payload type, so we answer with
the offered H.264 payload type whose profile can decode the stream (RFC 6184 `profile-level-id`), and fall back
to aiortc's choice when the offer has none.
"""

from __future__ import annotations

import copy

from aiortc import RTCRtpCodecCapability, RTCRtpCodecParameters, RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtcpFeedback

from mediaserver.codecs.h264 import AvcConfig

PROFILE_BASELINE = 66
PROFILE_MAIN = 77
PROFILE_HIGH = 100
PROFILE_HIGH_10 = 110
PROFILE_HIGH_422 = 122
PROFILE_HIGH_444 = 244
_CONSTRAINT_SET1 = 0x40

# For a stream of a given profile: the offered profiles whose decoders can decode it, best first
# (a decoder of a profile also decodes the profiles it contains: CB ⊂ Main ⊂ High ⊂ High 10 ⊂ 4:2:2 ⊂ 4:4:4).
_DECODABLE_BY: dict[int, tuple[int, ...]] = {
    PROFILE_BASELINE: (
        PROFILE_BASELINE,
        PROFILE_MAIN,
        PROFILE_HIGH,
        PROFILE_HIGH_10,
        PROFILE_HIGH_422,
        PROFILE_HIGH_444,
    ),
    PROFILE_MAIN: (PROFILE_MAIN, PROFILE_HIGH, PROFILE_HIGH_10, PROFILE_HIGH_422, PROFILE_HIGH_444),
    PROFILE_HIGH: (PROFILE_HIGH, PROFILE_HIGH_10, PROFILE_HIGH_422, PROFILE_HIGH_444),
    PROFILE_HIGH_10: (PROFILE_HIGH_10, PROFILE_HIGH_422, PROFILE_HIGH_444),
    PROFILE_HIGH_422: (PROFILE_HIGH_422, PROFILE_HIGH_444),
    PROFILE_HIGH_444: (PROFILE_HIGH_444,),
}
# What aiortc's sender understands of the feedback a browser offers.
_SUPPORTED_FEEDBACK = (
    RTCRtcpFeedback(type="nack"),
    RTCRtcpFeedback(type="nack", parameter="pli"),
    RTCRtcpFeedback(type="goog-remb"),
)


def is_h264(codec: RTCRtpCodecParameters) -> bool:
    return codec.mimeType.lower() == "video/h264"


def packetization_mode(codec: RTCRtpCodecParameters) -> int:
    try:
        return int(str(codec.parameters.get("packetization-mode", "0")))
    except ValueError:
        return -1


def profile_of(codec: RTCRtpCodecParameters) -> tuple[int, int] | None:
    """(profile_idc, constraint flags) of an offered H.264 codec, None when malformed."""
    value = str(codec.parameters.get("profile-level-id", "42e01f"))
    if len(value) != 6:
        return None
    try:
        return int(value[0:2], 16), int(value[2:4], 16)
    except ValueError:
        return None


def usable_h264(codecs: list[RTCRtpCodecParameters]) -> list[RTCRtpCodecParameters]:
    """Offered H.264 formats aiortc can packetise (non-interleaved mode 1: FU-A and STAP-A)."""
    return [c for c in codecs if is_h264(c) and packetization_mode(c) == 1 and profile_of(c) is not None]


def choose_h264(offered: list[RTCRtpCodecParameters], stream: AvcConfig | None) -> RTCRtpCodecParameters | None:
    """The offered H.264 format that can decode `stream`'s profile; None when the offer has no such format."""
    if stream is None:
        return None
    candidates = usable_h264(offered)
    wanted = _DECODABLE_BY.get(stream.profile, ())
    constrained_baseline = stream.profile == PROFILE_BASELINE and stream.compatibility & _CONSTRAINT_SET1
    for idc in wanted:
        for codec in candidates:
            profile = profile_of(codec)
            if profile is None or profile[0] != idc:
                continue
            # A plain Baseline stream may use FMO/ASO, which a Constrained Baseline decoder cannot; Chromium's
            # decoder does not care, so accept CB for it only after an exact Baseline match was not found.
            if idc == PROFILE_BASELINE and not constrained_baseline and profile[1] & _CONSTRAINT_SET1:
                continue
            return codec
    if stream.profile == PROFILE_BASELINE:
        for codec in candidates:
            profile = profile_of(codec)
            if profile is not None and profile[0] == PROFILE_BASELINE:
                return codec
    return None


def answer_codecs(chosen: RTCRtpCodecParameters, offered: list[RTCRtpCodecParameters]) -> list[RTCRtpCodecParameters]:
    """The codec list for the video transceiver: `chosen` (its payload type and fmtp as offered, feedback cut
    down to what aiortc handles) followed by its RTX format when the offer has one."""
    codec = copy.deepcopy(chosen)
    codec.rtcpFeedback = [fb for fb in chosen.rtcpFeedback if fb in _SUPPORTED_FEEDBACK]
    result = [codec]
    for rtx in offered:
        if rtx.mimeType.lower() == "video/rtx" and rtx.parameters.get("apt") == chosen.payloadType:
            result.append(copy.deepcopy(rtx))
            break
    return result


def preferences(kind: str, mime_type: str) -> list[RTCRtpCodecCapability]:
    """aiortc's capabilities of one codec (plus RTX for video), for `setCodecPreferences`."""
    capabilities = RTCRtpSender.getCapabilities(kind).codecs
    wanted = [c for c in capabilities if c.mimeType.lower() == mime_type.lower()]
    wanted += [c for c in capabilities if c.mimeType.lower() == f"{kind}/rtx"]
    return wanted
