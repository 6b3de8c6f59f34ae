"""The HLS master (multivariant) playlist of a stream and its ABR rungs (RFC 8216bis 4.4.6.2)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Variant:
    uri: str
    # Peak bits per second of the variant, audio included.
    bandwidth: int
    width: int
    height: int
    # RFC 6381 values: "avc1.64001f,mp4a.40.2".
    codecs: str
    frame_rate: float = 0.0


def render_master(variants: list[Variant]) -> str:
    """The playlist; the first variant is where players start (the original, which needs no transcoder)."""
    lines = ["#EXTM3U", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for variant in variants:
        attributes = [
            f"BANDWIDTH={variant.bandwidth}",
            f"RESOLUTION={variant.width}x{variant.height}",
            f'CODECS="{variant.codecs}"',
        ]
        if variant.frame_rate > 0:
            attributes.append(f"FRAME-RATE={variant.frame_rate:.3f}")
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attributes), variant.uri]
    return "\n".join(lines) + "\n"
