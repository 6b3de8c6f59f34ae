"""Playback by time: which segments of which files cover a time range, and where the gaps are.

Everything here works on the segment indexes (`<file>.mp4.idx`), never on media bytes: a segment is a run of
fragments that starts on a keyframe, with its byte range and its wall-clock start and length. Times are UTC
epoch seconds. Files are named by an opaque `ref` (the control plane's row id).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mediaserver.recording.fileformat import IndexEntry

# Segments closer than this (seconds) count as one continuous span: wall-clock stamps jitter, and consecutive
# files of one publisher join with a few milliseconds between them.
MERGE_GAP = 1.5


@dataclass(frozen=True, slots=True)
class Span:
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class IndexedFile:
    """A recording file and the segments its index lists, in file order."""

    ref: int
    entries: tuple[IndexEntry, ...]

    @property
    def head(self) -> int:
        """Bytes before the first segment: the init segment (`ftyp`+`moov`) and our header box."""
        return self.entries[0].offset if self.entries else 0


@dataclass(frozen=True, slots=True)
class Selection:
    """The segments of one file that a time range asks for (consecutive, in file order)."""

    file: IndexedFile
    entries: tuple[IndexEntry, ...]

    @property
    def ref(self) -> int:
        return self.file.ref

    @property
    def head(self) -> int:
        return self.file.head

    @property
    def start(self) -> float:
        return self.entries[0].wallclock_ms / 1000

    @property
    def end(self) -> float:
        return self.entries[-1].end_wallclock


def _overlaps(entry: IndexEntry, start_ms: float, end_ms: float) -> bool:
    return entry.wallclock_ms < end_ms and entry.wallclock_ms + entry.duration_ms > start_ms


def select(files: Iterable[IndexedFile], start: float, end: float) -> list[Selection]:
    """The segments overlapping [start, end), per file, in time order: the first one starts at or before
    `start`, the last one ends at or after `end` (cuts fall on keyframes)."""
    start_ms, end_ms = start * 1000, end * 1000
    chosen: list[Selection] = []
    for file in files:
        entries = tuple(e for e in file.entries if _overlaps(e, start_ms, end_ms))
        if entries:
            chosen.append(Selection(file, entries))
    chosen.sort(key=lambda s: (s.entries[0].wallclock_ms, s.ref))
    return chosen


def spans(selections: Iterable[Selection], merge_gap: float = MERGE_GAP) -> list[Span]:
    """Where there is video: segments merged into spans wherever less than `merge_gap` separates them."""
    ordered = sorted(
        ((e.wallclock_ms / 1000, e.end_wallclock) for s in selections for e in s.entries), key=lambda t: t[0]
    )
    merged: list[list[float]] = []
    for begin, finish in ordered:
        if merged and begin - merged[-1][1] < merge_gap:
            merged[-1][1] = max(merged[-1][1], finish)
        else:
            merged.append([begin, finish])
    return [Span(begin, finish) for begin, finish in merged]


def coverage(
    selections: Iterable[Selection], start: float, end: float, merge_gap: float = MERGE_GAP
) -> tuple[list[Span], list[Span]]:
    """(spans, gaps) within [start, end]: the spans clipped to the range, the gaps what lies between them."""
    clipped = [
        Span(max(s.start, start), min(s.end, end))
        for s in spans(selections, merge_gap)
        if s.end > start and s.start < end
    ]
    clipped = [s for s in clipped if s.end > s.start]
    gaps: list[Span] = []
    cursor = start
    for span in clipped:
        if span.start > cursor:
            gaps.append(Span(cursor, span.start))
        cursor = max(cursor, span.end)
    if cursor < end:
        gaps.append(Span(cursor, end))
    return clipped, gaps


def byte_runs(selection: Selection) -> list[tuple[int, int]]:
    """[start, end) byte ranges of the selected segments, adjacent ones joined (a file's segments follow each
    other, so this is usually one range)."""
    runs: list[list[int]] = []
    for entry in selection.entries:
        if runs and runs[-1][1] == entry.offset:
            runs[-1][1] = entry.offset + entry.size
        else:
            runs.append([entry.offset, entry.offset + entry.size])
    return [(a, b) for a, b in runs]


def total_duration(selections: Sequence[Selection]) -> float:
    return sum(e.duration_ms for s in selections for e in s.entries) / 1000
