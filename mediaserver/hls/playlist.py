"""LL-HLS media playlists (RFC 8216bis) rendered from an `HlsStream`."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from mediaserver.hls.segmenter import HlsStream, Segment

# Partial segments are listed for the segments this close to the live edge.
_PART_SEGMENTS = 3


def _date(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}Z"


def target_duration(stream: HlsStream) -> int:
    """EXTINF rounded to the nearest integer must not exceed it (RFC 8216 4.4.3.1): a 2.09 s
    segment keeps a 2 s target; only a camera GOP longer than the target raises it."""
    return max(1, math.floor(stream.max_segment_duration + 0.5))


def part_target(stream: HlsStream) -> float:
    return stream.settings.part_duration


def skip_until(stream: HlsStream) -> float:
    return 6 * target_duration(stream)


def last_part(stream: HlsStream) -> tuple[int, int] | None:
    """(media sequence number, part index) of the newest part of `stream`, None when it has none."""
    current = stream.current
    if current is not None and current.parts:
        return current.msn, len(current.parts) - 1
    for segment in reversed(stream.segments):
        if segment.parts:
            return segment.msn, len(segment.parts) - 1
    return None


def render(stream: HlsStream, skip: bool = False, renditions: Sequence[HlsStream] = ()) -> str:
    """The playlist as it stands; with `skip`, older segments become one EXT-X-SKIP (delta update).
    `renditions` are the other renditions of the same picture (an ABR ladder's rungs): each gets an
    EXT-X-RENDITION-REPORT, so a player switching to it knows where to join."""
    target = target_duration(stream)
    part = part_target(stream)
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:9",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,"
        f"CAN-SKIP-UNTIL={skip_until(stream):.1f},"
        f"PART-HOLD-BACK={3 * part:.3f},HOLD-BACK={3 * target:.1f}",
        f"#EXT-X-PART-INF:PART-TARGET={part:.3f}",
    ]
    segments: list[Segment] = list(stream.segments)
    if stream.current is not None and stream.current.parts:
        segments.append(stream.current)
    if segments:
        first_msn = segments[0].msn
    elif stream.current is not None:
        # The first segment has begun but has no part yet: it is the one the preload hint names.
        first_msn = stream.current.msn
    else:
        first_msn = stream.last_msn + 1
    lines.append(f"#EXT-X-MEDIA-SEQUENCE:{first_msn}")
    if stream.discontinuity_sequence:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{stream.discontinuity_sequence}")
    skipped = 0
    if skip:
        # Segments older than CAN-SKIP-UNTIL from the live edge may be skipped.
        remaining = sum(s.duration for s in segments)
        for segment in segments:
            if remaining - segment.duration < skip_until(stream) or not segment.complete:
                break
            if segment.discontinuity and skipped:
                break
            remaining -= segment.duration
            skipped += 1
        if skipped:
            lines.append(f"#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}")
    init_id = -1
    part_from = len(segments) - _PART_SEGMENTS
    for index, segment in enumerate(segments):
        if index < skipped:
            init_id = segment.init_id
            continue
        if segment.discontinuity and index > 0:
            lines.append("#EXT-X-DISCONTINUITY")
        if segment.init_id != init_id:
            lines.append(f'#EXT-X-MAP:URI="init-{segment.init_id}.mp4"')
            init_id = segment.init_id
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_date(segment.program_date_time)}")
        if index >= part_from:
            for p in segment.parts:
                independent = ",INDEPENDENT=YES" if p.independent else ""
                lines.append(
                    f'#EXT-X-PART:DURATION={p.duration:.5f},URI="part-{segment.msn}-{p.index}.m4s"{independent}'
                )
        if segment.complete:
            lines.append(f"#EXTINF:{segment.duration:.5f},")
            lines.append(f"seg-{segment.msn}.m4s")
    if stream.ended:
        lines.append("#EXT-X-ENDLIST")
    elif segments or stream.current is not None:
        if stream.current is not None:
            hint = (stream.current.msn, len(stream.current.parts))
        else:
            hint = (stream.last_msn + 1, 0)
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part-{hint[0]}-{hint[1]}.m4s"')
    for other in renditions:
        newest = last_part(other)
        if newest is not None and not other.ended:
            lines.append(
                f'#EXT-X-RENDITION-REPORT:URI="../{other.name}/index.m3u8",LAST-MSN={newest[0]},LAST-PART={newest[1]}'
            )
    return "\n".join(lines) + "\n"
