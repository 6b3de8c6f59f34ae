"""HLS VOD playlists (RFC 8216) over recorded files, by byte ranges: no segment is cut or copied.

Each file's init segment and header box (the bytes before its first segment) is its `EXT-X-MAP`; each index
entry is one media segment. A new file, or a hole in the recording, starts a new discontinuity: players lay
the pieces end to end, and `EXT-X-PROGRAM-DATE-TIME` says when each was recorded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from mediaserver.recording.timeline import MERGE_GAP, Selection

CONTENT_TYPE = "application/vnd.apple.mpegurl"


def _date(epoch_ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_ms // 1000)) + f".{epoch_ms % 1000:03d}Z"


def target_duration(selections: Sequence[Selection]) -> int:
    """Every EXTINF, rounded to the nearest integer, must not exceed it (RFC 8216 4.4.3.1)."""
    longest = max((e.duration_ms for s in selections for e in s.entries), default=1000)
    return max(1, math.floor(longest / 1000 + 0.5))


def render_vod(selections: Sequence[Selection], uri: Callable[[int], str], merge_gap: float = MERGE_GAP) -> str:
    """The playlist; `uri(ref)` is where a file's bytes are served (with Range requests)."""
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{target_duration(selections)}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    for index, selection in enumerate(selections):
        location = uri(selection.ref)
        if any(c in location for c in '"\r\n'):
            raise ValueError("a playlist URI cannot hold quotes or line breaks")
        if index:
            lines.append("#EXT-X-DISCONTINUITY")
        lines.append(f'#EXT-X-MAP:URI="{location}",BYTERANGE="{selection.head}@0"')
        previous_end: float | None = None
        for entry in selection.entries:
            if previous_end is not None and entry.wallclock_ms / 1000 - previous_end >= merge_gap:
                lines.append("#EXT-X-DISCONTINUITY")  # a hole inside the file: no EXT-X-GAP, just a new piece
            previous_end = entry.end_wallclock
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_date(entry.wallclock_ms)}")
            lines.append(f"#EXTINF:{entry.duration_ms / 1000:.3f},")
            lines.append(f"#EXT-X-BYTERANGE:{entry.size}@{entry.offset}")
            lines.append(location)
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
