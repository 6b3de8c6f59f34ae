"""Playback by time: which segments of which files cover a time range, and where the gaps are.

Everything here works on the segment indexes (`<file>.mp4.idx`), never on media bytes: a segment is a run of
fragments that starts on a keyframe, with its byte range and its wall-clock start and length. Times are UTC
epoch seconds. Files are named by an opaque `ref` (the control plane's row id).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

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
    # Wall-clock starts of the entries (ms), when they never go backwards: ranges are then found by bisection.
    starts: tuple[int, ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.starts is None:
            starts = tuple(e.wallclock_ms for e in self.entries)
            if all(a <= b for a, b in itertools.pairwise(starts)):
                object.__setattr__(self, "starts", starts)

    def overlapping(self, start_ms: float, end_ms: float) -> tuple[IndexEntry, ...]:
        """The entries that overlap [start_ms, end_ms), in file order."""
        entries = self.entries
        if self.starts is None:
            return tuple(e for e in entries if _overlaps(e, start_ms, end_ms))
        first = max(bisect.bisect_right(self.starts, start_ms) - 1, 0)
        while first < len(entries) and entries[first].wallclock_ms + entries[first].duration_ms <= start_ms:
            first += 1
        last = bisect.bisect_left(self.starts, end_ms)
        return entries[first:last] if first < last else ()

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
        entries = file.overlapping(start_ms, end_ms)
        if entries:
            chosen.append(Selection(file, entries))
    chosen.sort(key=lambda s: (s.entries[0].wallclock_ms, s.ref))
    return chosen


def spans(selections: Iterable[Selection], merge_gap: float = MERGE_GAP) -> list[Span]:
    """Where there is video: segments merged into spans wherever less than `merge_gap` separates them."""
    # Each file's own segments first, in one pass (they are in time order), then the few pieces across files.
    pieces: list[tuple[float, float]] = []
    gap_ms = merge_gap * 1000
    for selection in selections:
        entries: Iterable[IndexEntry] = selection.entries
        if selection.file.starts is None:  # a file whose stamps step back: order them first
            entries = sorted(selection.entries, key=lambda e: e.wallclock_ms)
        begin = finish = -1.0
        for entry in entries:
            if begin >= 0 and entry.wallclock_ms - finish < gap_ms:
                finish = max(finish, entry.wallclock_ms + entry.duration_ms)
                continue
            if begin >= 0:
                pieces.append((begin, finish))
            begin, finish = entry.wallclock_ms, entry.wallclock_ms + entry.duration_ms
        if begin >= 0:
            pieces.append((begin, finish))
    pieces.sort()
    merged: list[list[float]] = []
    for begin, finish in pieces:
        if merged and begin - merged[-1][1] < gap_ms:
            merged[-1][1] = max(merged[-1][1], finish)
        else:
            merged.append([begin, finish])
    return [Span(begin / 1000, finish / 1000) for begin, finish in merged]


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
