"""Reading fragmented MP4: the tracks of an init segment and the sample runs of each `moof`.

Bytes in, tables out (numpy arrays, one per `trun` field), for files of ours and any CMAF writer that uses
default-base-is-moof or contiguous data offsets. Every size is checked against its parent box.

Reference: ISO/IEC 14496-12 (moov/trak/mvex, moof/traf/tfhd/tfdt/trun).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mediaserver.codecs import CodecError

_BOX = struct.Struct(">I4s")
_U32 = struct.Struct(">I")
# A moof larger than this is not one of ours (a fragment holds about a second of samples).
MAX_HEADER_BOX = 64 << 20

# tfhd flags
_TFHD_BASE_DATA_OFFSET = 0x000001
_TFHD_DESCRIPTION_INDEX = 0x000002
_TFHD_DURATION = 0x000008
_TFHD_SIZE = 0x000010
_TFHD_FLAGS = 0x000020
_TFHD_BASE_IS_MOOF = 0x020000
# trun flags
_TRUN_DATA_OFFSET = 0x000001
_TRUN_FIRST_FLAGS = 0x000004
_TRUN_DURATION = 0x000100
_TRUN_SIZE = 0x000200
_TRUN_FLAGS = 0x000400
_TRUN_CTO = 0x000800


class Fmp4ReadError(CodecError):
    """Boxes that are malformed or use a layout this reader does not follow."""


def iter_boxes(data: bytes | memoryview, start: int = 0, end: int | None = None) -> Iterator[tuple[str, int, int]]:
    """(type, body start, box end) of the boxes laid end to end in data[start:end]; malformed sizes raise."""
    end = len(data) if end is None else end
    pos = start
    while pos < end:
        if end - pos < 8:
            raise Fmp4ReadError("truncated box header")
        size, kind = _BOX.unpack_from(data, pos)
        body = pos + 8
        if size == 1:
            if end - pos < 16:
                raise Fmp4ReadError("truncated large box header")
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
            body = pos + 16
        elif size == 0:
            size = end - pos
        if size < body - pos or pos + size > end:
            raise Fmp4ReadError(f"box {kind!r} overruns its parent")
        yield kind.decode("latin-1"), body, pos + size
        pos += size


def _children(data: bytes, start: int, end: int) -> dict[str, tuple[int, int]]:
    """The first box of each type among the children (body start, end)."""
    found: dict[str, tuple[int, int]] = {}
    for kind, body, box_end in iter_boxes(data, start, end):
        found.setdefault(kind, (body, box_end))
    return found


# --------------------------------------------------------------------------- init segment


@dataclass(frozen=True, slots=True)
class TrackHead:
    """What a track's `trak` says, kept as the boxes the output copies (`tkhd`, `hdlr`, media header, `dinf`,
    `stsd`) plus the `trex` defaults its fragments may rely on."""

    track_id: int
    timescale: int
    handler: bytes
    tkhd: bytes
    mdhd: bytes
    hdlr: bytes
    media_header: bytes
    dinf: bytes
    stsd: bytes
    default_duration: int = 0
    default_size: int = 0
    default_flags: int = 0

    @property
    def signature(self) -> tuple[int, int, bytes, bytes]:
        """What must not change between inputs that share one output track."""
        return (self.track_id, self.timescale, self.handler, self.stsd)


@dataclass(frozen=True, slots=True)
class InitInfo:
    tracks: tuple[TrackHead, ...]
    brands: tuple[bytes, ...]

    @property
    def signature(self) -> tuple[tuple[int, int, bytes, bytes], ...]:
        return tuple(t.signature for t in self.tracks)


def _whole(data: bytes, where: tuple[int, int], header: int = 8) -> bytes:
    """A child box's bytes, header included (from its body span)."""
    return data[where[0] - header : where[1]]


def parse_init(data: bytes) -> InitInfo:
    """The tracks of an init segment (`ftyp` + `moov`; anything after the `moov` is ignored)."""
    top = _children(data, 0, len(data)) if data else {}
    if "moov" not in top:
        raise Fmp4ReadError("no moov in the init segment")
    brands: tuple[bytes, ...] = ()
    if "ftyp" in top:
        body, end = top["ftyp"]
        brands = tuple(data[i : i + 4] for i in range(body + 8, end - 3, 4))
    moov_body, moov_end = top["moov"]
    trex: dict[int, tuple[int, int, int]] = {}
    traks: list[tuple[int, int]] = []
    for kind, body, end in iter_boxes(data, moov_body, moov_end):
        if kind == "trak":
            traks.append((body, end))
        elif kind == "mvex":
            for child, cbody, cend in iter_boxes(data, body, end):
                if child == "trex" and cend - cbody >= 24:
                    track_id, _, duration, size, flags = struct.unpack_from(">IIIII", data, cbody + 4)
                    trex[track_id] = (duration, size, flags)
    tracks = [_parse_trak(data, body, end, trex) for body, end in traks]
    if not tracks:
        raise Fmp4ReadError("the init segment has no tracks")
    return InitInfo(tuple(tracks), brands)


def _parse_trak(data: bytes, body: int, end: int, trex: dict[int, tuple[int, int, int]]) -> TrackHead:
    trak = _children(data, body, end)
    if "tkhd" not in trak or "mdia" not in trak:
        raise Fmp4ReadError("a trak without tkhd or mdia")
    tkhd = _whole(data, trak["tkhd"])
    version = data[trak["tkhd"][0]]
    track_id = _U32.unpack_from(data, trak["tkhd"][0] + (20 if version == 1 else 12))[0]
    mdia = _children(data, *trak["mdia"])
    if "mdhd" not in mdia or "hdlr" not in mdia or "minf" not in mdia:
        raise Fmp4ReadError("a mdia without mdhd, hdlr or minf")
    mdhd_body = mdia["mdhd"][0]
    timescale = _U32.unpack_from(data, mdhd_body + (20 if data[mdhd_body] == 1 else 12))[0]
    if timescale <= 0:
        raise Fmp4ReadError("a track with a zero timescale")
    handler = data[mdia["hdlr"][0] + 8 : mdia["hdlr"][0] + 12]
    minf = _children(data, *mdia["minf"])
    media_header = next((_whole(data, minf[k]) for k in ("vmhd", "smhd", "sthd", "nmhd") if k in minf), b"")
    if "stbl" not in minf or "dinf" not in minf:
        raise Fmp4ReadError("a minf without stbl or dinf")
    stbl = _children(data, *minf["stbl"])
    if "stsd" not in stbl:
        raise Fmp4ReadError("a track without sample descriptions")
    duration, size, flags = trex.get(track_id, (0, 0, 0))
    return TrackHead(
        track_id=track_id,
        timescale=timescale,
        handler=bytes(handler),
        tkhd=tkhd,
        mdhd=_whole(data, mdia["mdhd"]),
        hdlr=_whole(data, mdia["hdlr"]),
        media_header=media_header,
        dinf=_whole(data, minf["dinf"]),
        stsd=_whole(data, stbl["stsd"]),
        default_duration=duration,
        default_size=size,
        default_flags=flags,
    )


# --------------------------------------------------------------------------- fragments


@dataclass(slots=True)
class Run:
    """One `trun`: samples of one track stored back to back at `offset` (absolute, in the input)."""

    track_id: int
    base_time: int
    offset: int
    durations: npt.NDArray[np.uint32]
    sizes: npt.NDArray[np.uint32]
    flags: npt.NDArray[np.uint32]
    ctos: npt.NDArray[np.int32]

    @property
    def size(self) -> int:
        return int(self.sizes.sum(dtype=np.uint64))


def parse_moof(data: bytes | memoryview, moof_offset: int, init: InitInfo) -> list[Run]:
    """The runs of one `moof` (its bytes from its header on, found at `moof_offset` in the input)."""
    heads = {t.track_id: t for t in init.tracks}
    kind, body, end = next(iter_boxes(data, 0, len(data)), ("", 0, 0))
    if kind != "moof":
        raise Fmp4ReadError("not a moof")
    runs: list[Run] = []
    for child, tbody, tend in iter_boxes(data, body, end):
        if child == "traf":
            runs.extend(_parse_traf(data, tbody, tend, moof_offset, heads, runs))
    return runs


def _parse_traf(
    data: bytes | memoryview, body: int, end: int, moof_offset: int, heads: dict[int, TrackHead], earlier: list[Run]
) -> list[Run]:
    track: TrackHead | None = None
    base_time: int | None = None
    base = moof_offset
    duration = size = flags = 0
    runs: list[Run] = []
    for kind, cbody, cend in iter_boxes(data, body, end):
        if kind == "tfhd":
            tf_flags, track_id = struct.unpack_from(">II", data, cbody)
            track = heads.get(track_id)
            if track is None:
                raise Fmp4ReadError(f"a fragment of track {track_id}, which the init segment lacks")
            duration, size, flags = track.default_duration, track.default_size, track.default_flags
            pos = cbody + 8
            if tf_flags & _TFHD_BASE_DATA_OFFSET:
                # Absolute offsets would point into the original file, not wherever these bytes were copied.
                raise Fmp4ReadError("fragments with explicit base data offsets are not supported")
            if tf_flags & _TFHD_DESCRIPTION_INDEX:
                pos += 4
            if tf_flags & _TFHD_DURATION:
                duration = _U32.unpack_from(data, pos)[0]
                pos += 4
            if tf_flags & _TFHD_SIZE:
                size = _U32.unpack_from(data, pos)[0]
                pos += 4
            if tf_flags & _TFHD_FLAGS:
                flags = _U32.unpack_from(data, pos)[0]
            if not tf_flags & _TFHD_BASE_IS_MOOF and earlier:
                # Without default-base-is-moof, a later traf's data follows the previous traf's.
                last = earlier[-1]
                base = last.offset + last.size
        elif kind == "tfdt":
            version = data[cbody]
            base_time = (
                int.from_bytes(data[cbody + 4 : cbody + 12], "big")
                if version == 1
                else _U32.unpack_from(data, cbody + 4)[0]
            )
        elif kind == "trun":
            if track is None or base_time is None:
                raise Fmp4ReadError("a trun before its tfhd or tfdt")
            previous = runs[-1] if runs else None
            start_time = base_time + (int(previous.durations.sum(dtype=np.uint64)) if previous else 0)
            default_offset = previous.offset + previous.size if previous else base
            run = _parse_trun(
                data, cbody, cend, track.track_id, start_time, base, default_offset, duration, size, flags
            )
            runs.append(run)
    return runs


def _parse_trun(
    data: bytes | memoryview,
    body: int,
    end: int,
    track_id: int,
    base_time: int,
    base: int,
    default_offset: int,
    duration: int,
    size: int,
    flags: int,
) -> Run:
    # Version 0 composition offsets are unsigned, version 1 signed; none of ours come near 2^31, so both
    # read as signed.
    tr_flags = _U32.unpack_from(data, body)[0] & 0xFFFFFF
    count = _U32.unpack_from(data, body + 4)[0]
    pos = body + 8
    offset = default_offset
    if tr_flags & _TRUN_DATA_OFFSET:
        offset = base + struct.unpack_from(">i", data, pos)[0]
        pos += 4
    first_flags: int | None = None
    if tr_flags & _TRUN_FIRST_FLAGS:
        first_flags = _U32.unpack_from(data, pos)[0]
        pos += 4
    fields = [f for f in (_TRUN_DURATION, _TRUN_SIZE, _TRUN_FLAGS, _TRUN_CTO) if tr_flags & f]
    if pos + count * 4 * len(fields) > end:
        raise Fmp4ReadError("a trun shorter than its sample count")
    table = np.frombuffer(data, dtype=">u4", count=count * len(fields), offset=pos).reshape(count, len(fields))

    def column(flag: int, default: int) -> npt.NDArray[np.uint32]:
        if flag in fields:
            return table[:, fields.index(flag)].astype(np.uint32)
        return np.full(count, default, dtype=np.uint32)

    sample_flags = column(_TRUN_FLAGS, flags)
    if first_flags is not None and count:
        sample_flags[0] = first_flags
    ctos = column(_TRUN_CTO, 0)
    return Run(
        track_id,
        base_time,
        offset,
        column(_TRUN_DURATION, duration),
        column(_TRUN_SIZE, size),
        sample_flags,
        ctos.view(np.int32),
    )
