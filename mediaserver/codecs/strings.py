"""RFC 6381 `codecs` values for a track, as HLS playlists and MSE need them."""

from __future__ import annotations

from mediaserver.codecs import CodecError, aac, av1, h264, hevc
from mediaserver.media import Codec, TrackInfo


def codec_string(track: TrackInfo) -> str:
    """The RFC 6381 `codecs` value of a track."""
    config = bytes(track.config)
    codec = track.codec
    if codec is Codec.OPUS:
        return "opus"
    if not config:
        raise CodecError(f"{codec.value} track without a decoder configuration")
    if codec is Codec.H264:
        return h264.codec_string(config)
    if codec is Codec.H265:
        return hevc.codec_string(config)
    if codec is Codec.AV1:
        return av1.codec_string(config)
    if codec is Codec.AAC:
        return f"mp4a.40.{aac.object_type(config)}"
    raise CodecError(f"no MP4 codec string for {codec.value}")
