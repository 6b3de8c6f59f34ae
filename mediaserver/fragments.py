"""CMAF fragments as the segmenter makes them, for whoever wants them besides the HLS playlists.

The LL-HLS segmenter muxes each stream once; the recorder (and later relays to other nodes) take the same
`moof`+`mdat` bytes through `FragmentListener` rather than muxing again. Protocol folders share these types and
never import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CmafInit:
    """An init segment (`ftyp`+`moov`), made when a stream's codec configuration is first known or changes."""

    init_id: int
    data: bytes
    codecs: tuple[str, ...]
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class CmafFragment:
    """One `moof`+`mdat` (an LL-HLS part), with where it sits on the stream's timelines."""

    init_id: int
    data: bytes
    # Decode time of the first sample on the segmenter's continuous timeline (ms), and the fragment's length.
    start_ms: int
    duration: float
    # Wall clock (UTC epoch seconds) of the first sample: PROGRAM-DATE-TIME carried along the media timeline.
    wallclock: float
    # Starts with a keyframe; the first fragment of a segment; the first of a new timeline (a publisher came
    # back, timestamps jumped, or the codec changed).
    independent: bool
    segment_start: bool
    discontinuity: bool


class FragmentListener(Protocol):
    """Called on the event loop, synchronously, from the segmenter's hub callback: must not block."""

    def on_init(self, app: str, name: str, init: CmafInit) -> None: ...

    def on_fragment(self, app: str, name: str, fragment: CmafFragment) -> None: ...

    def on_timeline_end(self, app: str, name: str) -> None:
        """The publisher left; fragments that follow (if it comes back) start a new timeline."""
