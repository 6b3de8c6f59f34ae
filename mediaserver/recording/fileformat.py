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


# ----- reading what the segmenter wrote (for index repair) ---------------------------------------------------


def _children(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes in data[start:end]."""
    pos = start
    while pos + 8 <= end:
        size, kind = _BOX.unpack_from(data, pos)
        if size < 8 or pos + size > end:
            raise RecordingFormatError(f"bad {kind!r} box")
        yield kind, pos + 8, pos + size
        pos += size


@dataclass(frozen=True, slots=True)
class TrackTimes:
    track_id: int
    timescale: int
    video: bool


def init_tracks(moov: bytes) -> dict[int, TrackTimes]:
    """Track id -> timescale and kind, from a `moov` box's payload."""
    tracks: dict[int, TrackTimes] = {}
    for kind, start, end in _children(moov, 0, len(moov)):
        if kind != b"trak":
            continue
        track_id = timescale = 0
        video = False
        for child, cstart, cend in _children(moov, start, end):
            if child == b"tkhd":
                version = moov[cstart]
                track_id = struct.unpack_from(">I", moov, cstart + (20 if version == 1 else 12))[0]
            elif child == b"mdia":
                for leaf, lstart, _ in _children(moov, cstart, cend):
                    if leaf == b"mdhd":
                        version = moov[lstart]
                        timescale = struct.unpack_from(">I", moov, lstart + (20 if version == 1 else 12))[0]
                    elif leaf == b"hdlr":
                        video = moov[lstart + 8 : lstart + 12] == b"vide"
        if track_id and timescale:
            tracks[track_id] = TrackTimes(track_id, timescale, video)
    return tracks


@dataclass(frozen=True, slots=True)
class FragmentTimes:
    """What a `moof` says of its main track: decode time and length (ms), and whether it starts on a sync sample."""

    start_ms: int
    duration_ms: int
    independent: bool


def fragment_times(moof: bytes, tracks: dict[int, TrackTimes]) -> FragmentTimes | None:
    """The main track's (video if any) times in a `moof` payload."""
    main = next((t for t in tracks.values() if t.video), None) or next(iter(tracks.values()), None)
    if main is None:
        return None
    for kind, start, end in _children(moof, 0, len(moof)):
        if kind != b"traf":
            continue
        track_id = 0
        default_duration = default_flags = 0
        base = 0
        duration = 0
        first_flags: int | None = None
        for child, cstart, _ in _children(moof, start, end):
            if child == b"tfhd":
                flags = int.from_bytes(moof[cstart + 1 : cstart + 4], "big")
                track_id = struct.unpack_from(">I", moof, cstart + 4)[0]
                pos = cstart + 8
                if flags & 0x01:
                    pos += 8
                if flags & 0x02:
                    pos += 4
                if flags & 0x08:
                    default_duration = struct.unpack_from(">I", moof, pos)[0]
                    pos += 4
                if flags & 0x10:
                    pos += 4
                if flags & 0x20:
                    default_flags = struct.unpack_from(">I", moof, pos)[0]
            elif child == b"tfdt":
                version = moof[cstart]
                base = int.from_bytes(moof[cstart + 4 : cstart + (12 if version == 1 else 8)], "big")
            elif child == b"trun":
                flags = int.from_bytes(moof[cstart + 1 : cstart + 4], "big")
                count = struct.unpack_from(">I", moof, cstart + 4)[0]
                pos = cstart + 8
                if flags & 0x001:
                    pos += 4
                if flags & 0x004:
                    first_flags = struct.unpack_from(">I", moof, pos)[0]
                    pos += 4
                fields = [bit for bit in (0x100, 0x200, 0x400, 0x800) if flags & bit]
                for index in range(count):
                    for bit in fields:
                        value = struct.unpack_from(">I", moof, pos)[0]
                        pos += 4
                        if bit == 0x100:
                            duration += value
                        elif bit == 0x400 and index == 0 and first_flags is None:
                            first_flags = value
                    if 0x100 not in fields:
                        duration += default_duration
        if track_id != main.track_id:
            continue
        flags_of_first = default_flags if first_flags is None else first_flags
        independent = not main.video or not flags_of_first & _SYNC_FLAGS_MASK
        scale = main.timescale
        return FragmentTimes(base * 1000 // scale, duration * 1000 // scale, independent)
    return None


def rebuild_index(path: Path, length: int, anchor_wallclock_ms: int, anchor_media_ms: int) -> list[IndexEntry]:
    """Index entries made again from the file's own `moof`s (a segment starts at each independent fragment)."""
    entries: list[IndexEntry] = []
    tracks: dict[int, TrackTimes] = {}
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
                stream.seek(offset + 8)
                tracks = init_tracks(stream.read(size - 8))
            elif kind == b"moof" and size <= MAX_SMALL_BOX:
                stream.seek(offset + 8)
                times = fragment_times(stream.read(size - 8), tracks)
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
