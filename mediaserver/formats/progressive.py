"""Progressive MP4 (`moov` first) from fragmented MP4, without touching a media byte.

A fragmented file says where every sample is in its `moof` boxes; a progressive file says it once, in the
`moov`'s sample tables. `ProgressiveLayout` takes the tracks of each input's init segment and the runs of
each of its `moof`s (as `fmp4_read` finds them), then writes the `ftyp` + `moov` + `mdat` header of the
output and lists, in output order, the byte ranges of the sources that make up the `mdat`: each `trun` of
the input becomes one chunk of the output. So the whole header is known before the first media byte is
sent, and the output can be streamed while the media is copied, with its exact length announced up front.

Several inputs (consecutive recording files of one camera) join on one timeline: a gap between inputs is
closed up (as the playback playlist does), a gap inside one is held by lengthening the sample before it, and
every track of an input moves by the same amount so audio stays with video. An edit list puts a track that
starts later than the first one where it belongs and skips a leading composition offset (B-frames).

Reference: ISO/IEC 14496-12 (moov/stbl, moof/traf/trun, elst).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from mediaserver.codecs import CodecError
from mediaserver.formats.fmp4_read import InitInfo, Run, TrackHead

_BOX = struct.Struct(">I4s")
_U32 = struct.Struct(">I")
MOVIE_TIMESCALE = 1000
_NON_SYNC = 0x00010000


class ProgressiveError(CodecError):
    """Input that cannot become one progressive MP4."""


class TracksChanged(ProgressiveError):
    """An input whose tracks (codec, configuration, timescale) differ from the first input's."""


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return _BOX.pack(8 + len(body), kind) + body


def _full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, _U32.pack((version << 24) | flags), *payload)


# --------------------------------------------------------------------------- the layout


@dataclass(slots=True)
class _Track:
    head: TrackHead
    durations: list[npt.NDArray[np.uint32]] = field(default_factory=list)
    sizes: list[npt.NDArray[np.uint32]] = field(default_factory=list)
    flags: list[npt.NDArray[np.uint32]] = field(default_factory=list)
    ctos: list[npt.NDArray[np.int32]] = field(default_factory=list)
    chunks: list[int] = field(default_factory=list)  # indexes into the layout's chunk list
    start: int | None = None  # output time of the first sample, track timescale
    end: int = 0  # output time after the last sample
    shift: int | None = None  # input time -> output time for the current input

    @property
    def samples(self) -> int:
        return sum(len(d) for d in self.durations)


@dataclass(frozen=True, slots=True)
class Chunk:
    """Bytes of input `source` at [offset, offset + size) that come next in the output's mdat."""

    source: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Progressive:
    """The output: its header (ftyp, moov, mdat header), then the chunks, in order; `size` is the total."""

    header: bytes
    chunks: tuple[Chunk, ...]
    size: int
    duration: float
    samples: int


class ProgressiveLayout:
    """Collects the runs of consecutive inputs, then lays out one progressive MP4 over them."""

    def __init__(self) -> None:
        self._init: InitInfo | None = None
        self._tracks: dict[int, _Track] = {}
        self._chunks: list[Chunk] = []
        self._source = -1
        self._part_shift: float | None = None  # seconds, input time -> output time, for the current input
        self._offset = 0.0  # seconds: where the next input starts on the output timeline

    def begin(self, source: int, init: InitInfo) -> None:
        """The next input; its tracks must be the first input's (TracksChanged otherwise)."""
        if self._init is None:
            self._init = init
            self._tracks = {t.track_id: _Track(t) for t in init.tracks}
        elif init.signature != self._init.signature:
            raise TracksChanged("the stream's codecs or picture size change within the range: export it in parts")
        self._source = source
        self._part_shift = None
        self._offset = max(
            (t.end / t.head.timescale for t in self._tracks.values() if t.start is not None), default=0.0
        )
        for track in self._tracks.values():
            track.shift = None

    def add(self, runs: list[Run]) -> None:
        """The runs of one moof of the current input, in their order in the input."""
        if self._init is None:
            raise ProgressiveError("add before begin")
        if self._part_shift is None and runs:
            first = min(r.base_time / self._tracks[r.track_id].head.timescale for r in runs)
            self._part_shift = self._offset - first
        for run in runs:
            if not len(run.sizes):
                continue
            track = self._tracks[run.track_id]
            scale = track.head.timescale
            if track.shift is None:
                assert self._part_shift is not None
                track.shift = round(self._part_shift * scale)
            target = run.base_time + track.shift
            durations = run.durations
            if track.start is None:
                track.start = max(0, target)
                track.end = track.start
            elif target > track.end:
                # A gap: the sample before it lasts until this run starts.
                last = track.durations[-1]
                last[-1] += target - track.end
                track.end = target
            track.durations.append(durations)
            track.sizes.append(run.sizes)
            track.flags.append(run.flags)
            track.ctos.append(run.ctos)
            track.end += int(durations.sum(dtype=np.uint64))
            track.chunks.append(len(self._chunks))
            self._chunks.append(Chunk(self._source, run.offset, run.size))

    def finish(self) -> Progressive:
        if self._init is None or not self._chunks:
            raise ProgressiveError("no samples to lay out")
        tracks = [t for t in self._tracks.values() if t.durations]
        data_size = sum(c.size for c in self._chunks)
        large = data_size + 16 > 0xFFFFFFFF
        mdat_header = struct.pack(">I4sQ", 1, b"mdat", data_size + 16) if large else _BOX.pack(data_size + 8, b"mdat")
        ftyp = _ftyp(self._init.brands)
        # Chunk offsets need the moov's size, which depends only on whether they take 32 or 64 bits.
        wide = data_size + 16 + len(ftyp) + self._moov_size_bound(tracks) > 0xFFFFFFFF
        zero = self._moov(tracks, [0] * len(self._chunks), wide)
        data_start = len(ftyp) + len(zero) + len(mdat_header)
        offsets: list[int] = []
        position = data_start
        for chunk in self._chunks:
            offsets.append(position)
            position += chunk.size
        moov = self._moov(tracks, offsets, wide)
        header = ftyp + moov + mdat_header
        duration = max(t.end / t.head.timescale for t in tracks)
        return Progressive(
            header, tuple(self._chunks), len(header) + data_size, duration, sum(t.samples for t in tracks)
        )

    # ----- boxes ----------------------------------------------------------------------------------------------

    def _moov_size_bound(self, tracks: list[_Track]) -> int:
        # A generous bound: every table at its largest (8 bytes per sample per table, 12 per chunk).
        return 4096 + sum(t.samples * 32 + len(t.chunks) * 24 + len(t.head.stsd) + 1024 for t in tracks)

    def _moov(self, tracks: list[_Track], offsets: list[int], wide: bool) -> bytes:
        movie_duration = max(_to_movie(t.end, t.head.timescale) for t in tracks)
        next_id = max(t.head.track_id for t in tracks) + 1
        mvhd = _full_box(
            b"mvhd",
            1,
            0,
            struct.pack(">QQIQ", 0, 0, MOVIE_TIMESCALE, movie_duration),
            struct.pack(">IH10x", 0x00010000, 0x0100),
            _MATRIX,
            bytes(24),
            _U32.pack(next_id),
        )
        return _box(b"moov", mvhd, *(self._trak(t, offsets, wide) for t in tracks))

    def _trak(self, track: _Track, offsets: list[int], wide: bool) -> bytes:
        head = track.head
        durations = np.concatenate(track.durations)
        sizes = np.concatenate(track.sizes)
        flags = np.concatenate(track.flags)
        ctos = np.concatenate(track.ctos)
        media_duration = int(durations.sum(dtype=np.uint64))
        start = track.start or 0
        track_duration = _to_movie(start + media_duration, head.timescale)
        first_cto = max(0, int(ctos[0]))
        edits = []
        if start:
            edits.append(struct.pack(">Iii", _to_movie(start, head.timescale), -1, 0x00010000))
        edits.append(struct.pack(">Iii", _to_movie(media_duration, head.timescale), first_cto, 0x00010000))
        edts = _box(b"edts", _full_box(b"elst", 0, 0, _U32.pack(len(edits)), *edits))
        samples_per_chunk = np.array([len(d) for d in track.durations], dtype=np.int64)
        chunk_offsets = np.array([offsets[i] for i in track.chunks], dtype=np.uint64)
        tables = [
            head.stsd,
            _stts(durations),
            *([_ctts(ctos)] if ctos.any() else []),
            *([_stss(flags)] if (flags & _NON_SYNC).any() else []),
            _stsc(samples_per_chunk),
            _full_box(b"stsz", 0, 0, struct.pack(">II", 0, len(sizes)), sizes.astype(">u4").tobytes()),
            _chunk_offsets(chunk_offsets, wide),
        ]
        stbl = _box(b"stbl", *tables)
        minf = _box(b"minf", head.media_header, head.dinf, stbl)
        mdia = _box(b"mdia", _mdhd(head.mdhd, media_duration), head.hdlr, minf)
        return _box(b"trak", _tkhd(head.tkhd, track_duration), edts, mdia)


_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)


def _to_movie(value: int, timescale: int) -> int:
    return (value * MOVIE_TIMESCALE + timescale // 2) // timescale


def _ftyp(brands: tuple[bytes, ...]) -> bytes:
    compatible = [b"isom", b"iso6", b"mp41"]
    compatible += [b for b in brands if b in (b"av01", b"avc1", b"hvc1") and b not in compatible]
    return _box(b"ftyp", b"isom", _U32.pack(512), *compatible)


def _tkhd(tkhd: bytes, duration: int) -> bytes:
    """The input's tkhd as version 1, with the output's duration (its other fields kept)."""
    version = tkhd[8]
    flags = _U32.unpack_from(tkhd, 8)[0] & 0xFFFFFF
    if version == 1:
        track_id, tail = tkhd[28:32], tkhd[44:]
    else:
        track_id, tail = tkhd[20:24], tkhd[32:]
    return _full_box(b"tkhd", 1, flags, bytes(16), track_id, bytes(4), struct.pack(">Q", duration), tail)


def _mdhd(mdhd: bytes, duration: int) -> bytes:
    version = mdhd[8]
    timescale, tail = (mdhd[28:32], mdhd[40:]) if version == 1 else (mdhd[20:24], mdhd[28:])
    return _full_box(b"mdhd", 1, 0, bytes(16), timescale, struct.pack(">Q", duration), tail)


def _run_lengths(values: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(counts, values) of the runs of equal neighbours."""
    starts = np.concatenate(([0], np.flatnonzero(np.diff(values)) + 1))
    counts = np.diff(np.concatenate((starts, [len(values)])))
    return counts, values[starts]


def _pairs(first: npt.NDArray[np.int64], second: npt.NDArray[np.int64], dtype: str) -> bytes:
    return np.column_stack((first, second)).astype(dtype).tobytes()


def _stts(durations: npt.NDArray[np.uint32]) -> bytes:
    counts, values = _run_lengths(durations.astype(np.int64))
    return _full_box(b"stts", 0, 0, _U32.pack(len(counts)), _pairs(counts, values, ">u4"))


def _ctts(ctos: npt.NDArray[np.int32]) -> bytes:
    counts, values = _run_lengths(ctos.astype(np.int64))
    # Version 1: signed offsets, as the fragments' trun may carry.
    return _full_box(b"ctts", 1, 0, _U32.pack(len(counts)), _pairs(counts, values, ">i4"))


def _stss(flags: npt.NDArray[np.uint32]) -> bytes:
    sync = np.flatnonzero((flags & _NON_SYNC) == 0) + 1
    return _full_box(b"stss", 0, 0, _U32.pack(len(sync)), sync.astype(">u4").tobytes())


def _stsc(samples_per_chunk: npt.NDArray[np.int64]) -> bytes:
    starts = np.concatenate(([0], np.flatnonzero(np.diff(samples_per_chunk)) + 1))
    entries = np.column_stack((starts + 1, samples_per_chunk[starts], np.ones(len(starts), dtype=np.int64)))
    return _full_box(b"stsc", 0, 0, _U32.pack(len(starts)), entries.astype(">u4").tobytes())


def _chunk_offsets(offsets: npt.NDArray[np.uint64], wide: bool) -> bytes:
    if wide:
        return _full_box(b"co64", 0, 0, _U32.pack(len(offsets)), offsets.astype(">u8").tobytes())
    return _full_box(b"stco", 0, 0, _U32.pack(len(offsets)), offsets.astype(">u4").tobytes())
