"""The bytes of a recording file and of the segment index beside it.

A recording is a fragmented MP4: the stream's init segment (`ftyp`+`moov`), one `uuid` box of ours with the
file's facts as JSON (stream, publisher instance, wall-clock anchor of the first sample, codecs), then the
fragments (`moof`+`mdat`) exactly as the segmenter made them. Every complete fragment is playable on its own
terms, so a file cut anywhere is repaired by truncating it after its last complete top-level box.

The index (`<file>.mp4.idx`) has one line per segment (a run of fragments that starts with a keyframe):
`offset size start_ms duration_ms wallclock_ms`, written after the segment's bytes. It is what playback
playlists and exports read; `rebuild_index` makes it again from the file when a crash cut it short.
"""

from __future__ import annotations

import contextlib
import json
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mediaserver.formats.fmp4_read import Fmp4ReadError, InitInfo, parse_init, parse_moof

# Our header box's extended type (a random UUID of this project's, never changed).
HEADER_UUID = uuid.UUID("6d1b4c3e-58a2-4f0e-9a47-2f3c1de0b7a5").bytes
HEADER_VERSION = 1
# Refuse to parse a header (or a box we must read whole) larger than this.
MAX_SMALL_BOX = 1 << 20
_BOX = struct.Struct(">I4s")
_SYNC_FLAGS_MASK = 0x00010000  # sample_is_non_sync_sample


class RecordingFormatError(ValueError):
    """A file that is not one of our recordings, or not readable as one."""


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One segment of a recording: where its bytes are and when it plays."""

    offset: int
    size: int
    start_ms: int
    duration_ms: int
    wallclock_ms: int

    def line(self) -> str:
        return f"{self.offset} {self.size} {self.start_ms} {self.duration_ms} {self.wallclock_ms}\n"

    @property
    def end_wallclock(self) -> float:
        return (self.wallclock_ms + self.duration_ms) / 1000


def header_box(facts: dict[str, Any]) -> bytes:
    payload = json.dumps({"v": HEADER_VERSION, **facts}, separators=(",", ":"), sort_keys=True).encode()
    return _BOX.pack(8 + 16 + len(payload), b"uuid") + HEADER_UUID + payload


def boxes(stream: BinaryIO, end: int) -> Iterator[tuple[int, int, bytes]]:
    """(offset, size, type) of the top-level boxes that lie completely within the first `end` bytes."""
    offset = 0
    while offset + 8 <= end:
        stream.seek(offset)
        head = stream.read(16)
        if len(head) < 8:
            return
        size, kind = _BOX.unpack_from(head)
        if size == 1:
            if len(head) < 16:
                return
            size = int.from_bytes(head[8:16], "big")
        elif size == 0:
            size = end - offset
        if size < 8 or offset + size > end:
            return
        yield offset, size, kind
        offset += size


def complete_length(path: Path) -> int:
    """The length of the file up to the end of its last complete `moof`+`mdat` pair (or header box)."""
    total = path.stat().st_size
    keep = 0
    pending_moof = False
    with path.open("rb") as stream:
        for offset, size, kind in boxes(stream, total):
            if kind == b"moof":
                pending_moof = True
                continue
            if kind == b"mdat" and not pending_moof:
                break
            pending_moof = False
            keep = offset + size
    return keep


def read_header(path: Path) -> dict[str, Any]:
    """The facts in a recording's header box."""
    with path.open("rb") as stream:
        total = path.stat().st_size
        for offset, size, kind in boxes(stream, total):
            if kind == b"moof":
                break
            if kind == b"uuid" and size <= MAX_SMALL_BOX:
                stream.seek(offset + 8)
                body = stream.read(size - 8)
                if body[:16] == HEADER_UUID:
                    try:
                        facts = json.loads(body[16:])
                    except ValueError as exc:
                        raise RecordingFormatError(f"unreadable header: {exc}") from exc
                    if not isinstance(facts, dict) or facts.get("v") != HEADER_VERSION:
                        raise RecordingFormatError("unknown header version")
                    return facts
    raise RecordingFormatError("no recording header")


def parse_index(text: str) -> list[IndexEntry]:
    """The entries of an index file's text. A torn last line (a crash mid-write) ends the list; entries that
    cover no bytes or no time, or that run backwards in the file, are dropped."""
    # An hour's index is ~1,800 lines, and playback reads a day of them per request: the common case (every
    # line whole and sound) is parsed by numpy in one go; anything else goes line by line below.
    whole = text[: text.rfind("\n") + 1]
    with contextlib.suppress(ValueError, OverflowError):
        values = np.array(whole.split(), dtype=np.int64)
        if values.size == 5 * whole.count("\n"):
            rows = values.reshape(-1, 5)
            offsets, sizes, durations = rows[:, 0], rows[:, 1], rows[:, 3]
            ends = offsets + sizes
            if (
                rows.size
                and (sizes > 0).all()
                and (durations > 0).all()
                and (rows >= 0).all()
                and offsets[0] > 0
                and (offsets[1:] >= ends[:-1]).all()
            ):
                return list(map(IndexEntry, *rows.T.tolist()))
    return _parse_index_lines(text)


def _parse_index_lines(text: str) -> list[IndexEntry]:
    entries: list[IndexEntry] = []
    end_of_previous = 0
    for line in text.splitlines(keepends=True):
        fields = line.split()
        if not line.endswith("\n") or len(fields) != 5 or not all(f.isdigit() for f in fields):
            break
        offset, size, start, duration, wallclock = (int(f) for f in fields)
        if size <= 0 or duration <= 0 or offset < end_of_previous or (not entries and offset == 0):
            continue
        entries.append(IndexEntry(offset, size, start, duration, wallclock))
        end_of_previous = offset + size
    return entries


def read_index(path: Path) -> list[IndexEntry]:
    try:
        return parse_index(path.read_text())
    except FileNotFoundError:
        return []


# ----- reading what the segmenter wrote (for index repair), through formats.fmp4_read ----------------------


@dataclass(frozen=True, slots=True)
class FragmentTimes:
    """What a `moof` says of its main track: decode time and length (ms), and whether it starts on a sync sample."""

    start_ms: int
    duration_ms: int
    independent: bool


def read_init(moov: bytes) -> InitInfo:
    """The tracks of a whole `moov` box (`formats.fmp4_read`, its errors as ours)."""
    try:
        return parse_init(moov)
    except Fmp4ReadError as exc:
        raise RecordingFormatError(f"unreadable moov: {exc}") from exc


def fragment_times(moof: bytes, init: InitInfo) -> FragmentTimes | None:
    """The main track's (video if any) times in a whole `moof` box."""
    main = next((t for t in init.tracks if t.handler == b"vide"), None) or next(iter(init.tracks), None)
    if main is None:
        return None
    try:
        runs = [r for r in parse_moof(moof, 0, init) if r.track_id == main.track_id and len(r.sizes)]
    except Fmp4ReadError as exc:
        raise RecordingFormatError(f"unreadable moof: {exc}") from exc
    if not runs:
        return None
    duration = sum(int(r.durations.sum(dtype=np.uint64)) for r in runs)
    independent = main.handler != b"vide" or not int(runs[0].flags[0]) & _SYNC_FLAGS_MASK
    scale = main.timescale
    return FragmentTimes(runs[0].base_time * 1000 // scale, duration * 1000 // scale, independent)


def rebuild_index(path: Path, length: int, anchor_wallclock_ms: int, anchor_media_ms: int) -> list[IndexEntry]:
    """Index entries made again from the file's own `moof`s (a segment starts at each independent fragment)."""
    entries: list[IndexEntry] = []
    init: InitInfo | None = None
    current: list[int] = []  # offset, size, start_ms, duration_ms of the segment being summed

    def flush() -> None:
        if current:
            offset, size, start, duration = current
            entries.append(IndexEntry(offset, size, start, duration, anchor_wallclock_ms + start - anchor_media_ms))
            current.clear()

    with path.open("rb") as stream:
        moof_at = -1
        times: FragmentTimes | None = None
        for offset, size, kind in boxes(stream, length):
            if kind == b"moov" and size <= 16 * MAX_SMALL_BOX:
                stream.seek(offset)
                init = read_init(stream.read(size))
            elif kind == b"moof" and size <= MAX_SMALL_BOX and init is not None:
                stream.seek(offset)
                times = fragment_times(stream.read(size), init)
                moof_at = offset
            elif kind == b"mdat" and moof_at >= 0 and times is not None:
                end = offset + size
                if times.independent or not current:
                    flush()
                    current.extend((moof_at, end - moof_at, times.start_ms, times.duration_ms))
                else:
                    current[1] = end - current[0]
                    current[3] = times.start_ms + times.duration_ms - current[2]
                moof_at = -1
                times = None
    flush()
    return entries
