"""Fragmented MP4 (CMAF) boxes: the init segment and media segments (codec strings: `codecs.strings`).

The init segment is `ftyp` + `moov` with one empty-table track per stream and an `mvex`;
each media segment is one `moof` (a `traf` per track) followed by one `mdat`. Sample
payloads are written exactly as RTMP carried them: length-prefixed NAL units for
H.264/H.265, low-overhead OBUs for AV1, raw AAC frames and raw Opus packets are already
the MP4 sample formats, so nothing is converted or copied before the final join.

References: ISO/IEC 14496-12 (box layouts), 14496-14 (esds), 14496-15 (avcC/hvcC and the
hvc1 codec string), AV1-ISOBMFF (av01/av1C), Opus-in-ISOBMFF (Opus/dOps), CMAF.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

from mediaserver.codecs import CodecError, aac, h264, opus
from mediaserver.media import Codec, Packet, TrackInfo, TrackKind


class Fmp4Error(CodecError):
    """A track or sample that cannot be written as fragmented MP4."""


@dataclass(slots=True)
class Sample:
    """One access unit; `duration` and `cts_offset` are in the track's timescale."""

    data: bytes | memoryview
    duration: int
    cts_offset: int
    keyframe: bool


VIDEO_TIMESCALE = 90000
OPUS_TIMESCALE = opus.CLOCK_RATE

_U32 = struct.Struct(">I")
_BOX_HEADER = struct.Struct(">I4s")
_FULL_BOX_HEADER = struct.Struct(">I4sI")

# The unity matrix of mvhd/tkhd.
_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)

# Sample flags (14496-12 8.8.3.1): depends_on in bits 24-25, is_non_sync_sample in bit 16.
SYNC_SAMPLE_FLAGS = 0x02000000  # depends on no other sample, sync
NON_SYNC_SAMPLE_FLAGS = 0x01010000  # depends on others, not sync

# trun flags.
_TRUN_DATA_OFFSET = 0x000001
_TRUN_DURATION = 0x000100
_TRUN_SIZE = 0x000200
_TRUN_FLAGS = 0x000400
_TRUN_CTO = 0x000800
# tfhd flag: offsets are relative to the start of the enclosing moof.
_TFHD_DEFAULT_BASE_IS_MOOF = 0x020000


def video_timescale() -> int:
    return VIDEO_TIMESCALE


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return _BOX_HEADER.pack(8 + len(body), kind) + body


def _full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return _FULL_BOX_HEADER.pack(12 + len(body), kind, (version << 24) | flags) + body


# --------------------------------------------------------------------------- timescales


def track_timescale(track: TrackInfo) -> int:
    """The media timescale used for a track: 90 kHz for video, the sample rate for audio."""
    if track.kind is TrackKind.VIDEO:
        return VIDEO_TIMESCALE
    if track.kind is TrackKind.AUDIO:
        if track.codec is Codec.OPUS:
            return OPUS_TIMESCALE
        rate = track.sample_rate
        if not rate and track.codec is Codec.AAC and track.config:
            try:
                rate = aac.audio_config(track.config)[0]
            except CodecError as exc:
                raise Fmp4Error(str(exc)) from exc
        if rate <= 0:
            raise Fmp4Error(f"{track.codec.value} track without a sample rate")
        return rate
    raise Fmp4Error(f"cannot put a {track.kind.value} track in MP4")


# --------------------------------------------------------------------------- init segment


def _ftyp(tracks: list[TrackInfo]) -> bytes:
    brands = [b"iso6", b"cmfc", b"mp41"]
    if any(t.codec is Codec.AV1 for t in tracks):
        brands.append(b"av01")
    return _box(b"ftyp", b"iso6", _U32.pack(0), *brands)


def _mvhd(next_track_id: int) -> bytes:
    return _full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, 1000, 0),  # creation, modification, timescale, duration
        struct.pack(">IH10x", 0x00010000, 0x0100),  # rate 1.0, volume 1.0, reserved
        _MATRIX,
        bytes(24),  # pre_defined
        _U32.pack(next_track_id),
    )


def _tkhd(track_id: int, track: TrackInfo) -> bytes:
    audio = track.kind is TrackKind.AUDIO
    width, height = (0, 0) if audio else _video_size(track)
    return _full_box(
        b"tkhd",
        0,
        0x000003,  # enabled, in movie
        struct.pack(">IIIII", 0, 0, track_id, 0, 0),  # creation, modification, id, reserved, duration
        struct.pack(">8xhhH2x", 0, 0, 0x0100 if audio else 0),  # layer, alternate group, volume
        _MATRIX,
        struct.pack(">II", width << 16, height << 16),
    )


def _mdhd(timescale: int) -> bytes:
    # language 'und' packed as three 5-bit letters minus 0x60.
    return _full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, 0, 0x55C4, 0))


def _hdlr(audio: bool) -> bytes:
    handler, name = (b"soun", b"SoundHandler\x00") if audio else (b"vide", b"VideoHandler\x00")
    return _full_box(b"hdlr", 0, 0, _U32.pack(0), handler, bytes(12), name)


_DINF = _box(b"dinf", _full_box(b"dref", 0, 0, _U32.pack(1), _full_box(b"url ", 0, 1)))
_EMPTY_TABLES = b"".join(
    (
        _full_box(b"stts", 0, 0, _U32.pack(0)),
        _full_box(b"stsc", 0, 0, _U32.pack(0)),
        _full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
        _full_box(b"stco", 0, 0, _U32.pack(0)),
    )
)
_VMHD = _full_box(b"vmhd", 0, 1, bytes(8))
_SMHD = _full_box(b"smhd", 0, 0, bytes(4))


def _video_size(track: TrackInfo) -> tuple[int, int]:
    width, height = track.width, track.height
    if (not width or not height) and track.codec is Codec.H264 and track.config:
        try:
            width, height = h264.resolution(track.config)
        except CodecError as exc:
            raise Fmp4Error(f"no video size: {exc}") from exc
    if not 0 <= width <= 0xFFFF or not 0 <= height <= 0xFFFF:
        raise Fmp4Error(f"video size {width}x{height} out of range")
    return width, height


def _visual_sample_entry(kind: bytes, track: TrackInfo, *children: bytes) -> bytes:
    width, height = _video_size(track)
    return _box(
        kind,
        bytes(6),
        struct.pack(">H", 1),  # data_reference_index
        bytes(16),  # pre_defined, reserved, pre_defined[3]
        struct.pack(">HHII", width, height, 0x00480000, 0x00480000),  # size, 72 dpi
        struct.pack(">IH", 0, 1),  # reserved, frame_count
        bytes(32),  # compressorname (empty Pascal string)
        struct.pack(">Hh", 0x0018, -1),  # depth, pre_defined
        *children,
    )


def _audio_sample_entry(kind: bytes, channels: int, rate: int, *children: bytes) -> bytes:
    # samplerate is 16.16 fixed point; rates that do not fit are left to the decoder config.
    return _box(
        kind,
        bytes(6),
        struct.pack(">H", 1),  # data_reference_index
        bytes(8),  # reserved
        struct.pack(">HHHHI", channels, 16, 0, 0, (rate << 16) if rate < 0x10000 else 0),
        *children,
    )


def _descriptor(tag: int, *payload: bytes) -> bytes:
    body = b"".join(payload)
    size = len(body)
    if size >= 1 << 28:
        raise Fmp4Error("descriptor too large")
    # Expandable size: 7 bits per byte, high bit set on all but the last.
    size_bytes = [size & 0x7F]
    size >>= 7
    while size:
        size_bytes.append(0x80 | (size & 0x7F))
        size >>= 7
    return bytes([tag, *reversed(size_bytes)]) + body


def _esds(track_id: int, asc: bytes) -> bytes:
    decoder_config = _descriptor(
        0x04,
        # objectTypeIndication 0x40 (MPEG-4 audio), streamType 5 (audio) << 2 | reserved 1,
        # bufferSizeDB (24 bits), maxBitrate, avgBitrate (unknown: 0).
        struct.pack(">BB3sII", 0x40, 0x15, bytes(3), 0, 0),
        _descriptor(0x05, asc),
    )
    es = _descriptor(0x03, struct.pack(">HB", track_id & 0xFFFF, 0), decoder_config, _descriptor(0x06, b"\x02"))
    return _full_box(b"esds", 0, 0, es)


def _dops(head: bytes) -> tuple[bytes, int]:
    """The dOps box built from an Ogg-style OpusHead, and the channel count."""
    if len(head) < 19 or head[:8] != b"OpusHead":
        raise Fmp4Error("Opus config is not an OpusHead")
    if head[8] >> 4:
        raise Fmp4Error(f"unsupported OpusHead version {head[8]}")
    channels = head[9]
    pre_skip, input_rate, gain = struct.unpack_from("<HIh", head, 10)
    family = head[18]
    fields = struct.pack(">BBHIhB", 0, channels, pre_skip, input_rate, gain, family)
    if family != 0:
        table = head[19 : 21 + channels]
        if len(table) != 2 + channels:
            raise Fmp4Error("OpusHead channel mapping table truncated")
        fields += table
    elif channels not in (1, 2):
        raise Fmp4Error(f"Opus mapping family 0 with {channels} channels")
    return _box(b"dOps", fields), channels


def _sample_entry(track_id: int, track: TrackInfo) -> bytes:
    config = bytes(track.config)
    codec = track.codec
    if track.kind is TrackKind.VIDEO:
        if not config:
            raise Fmp4Error(f"{codec.value} track without a decoder configuration record")
        if codec is Codec.H264:
            if config[0] != 1 or len(config) < 7:
                raise Fmp4Error("malformed avcC")
            return _visual_sample_entry(b"avc1", track, _box(b"avcC", config))
        if codec is Codec.H265:
            if config[0] != 1 or len(config) < 23:
                raise Fmp4Error("malformed hvcC")
            return _visual_sample_entry(b"hvc1", track, _box(b"hvcC", config))
        if codec is Codec.AV1:
            if config[0] != 0x81 or len(config) < 4:
                raise Fmp4Error("malformed av1C")
            return _visual_sample_entry(b"av01", track, _box(b"av1C", config))
    elif track.kind is TrackKind.AUDIO:
        if not config:
            raise Fmp4Error(f"{codec.value} track without a decoder configuration")
        if codec is Codec.AAC:
            if len(config) < 2:
                raise Fmp4Error("AudioSpecificConfig too short")
            channels = track.channels or (config[1] >> 3) & 0x0F or 2
            return _audio_sample_entry(b"mp4a", channels, track_timescale(track), _esds(track_id, config))
        if codec is Codec.OPUS:
            dops, channels = _dops(config)
            return _audio_sample_entry(b"Opus", channels, OPUS_TIMESCALE, dops)
    raise Fmp4Error(f"cannot put {track.kind.value} codec {codec.value} in fragmented MP4")


def _trak(track_id: int, track: TrackInfo) -> bytes:
    audio = track.kind is TrackKind.AUDIO
    stsd = _full_box(b"stsd", 0, 0, _U32.pack(1), _sample_entry(track_id, track))
    stbl = _box(b"stbl", stsd, _EMPTY_TABLES)
    minf = _box(b"minf", _SMHD if audio else _VMHD, _DINF, stbl)
    mdia = _box(b"mdia", _mdhd(track_timescale(track)), _hdlr(audio), minf)
    return _box(b"trak", _tkhd(track_id, track), mdia)


def _trex(track_id: int) -> bytes:
    # default sample description 1; per-sample values always come from trun.
    return _full_box(b"trex", 0, 0, struct.pack(">IIIII", track_id, 1, 0, 0, 0))


def init_segment(tracks: list[TrackInfo]) -> bytes:
    """ftyp + moov for `tracks`; track i gets track_id i + 1."""
    if not tracks:
        raise Fmp4Error("no tracks")
    traks = [_trak(i + 1, t) for i, t in enumerate(tracks)]
    mvex = _box(b"mvex", *(_trex(i + 1) for i in range(len(tracks))))
    moov = _box(b"moov", _mvhd(len(tracks) + 1), *traks, mvex)
    return _ftyp(tracks) + moov


# --------------------------------------------------------------------------- media segments


@lru_cache(maxsize=256)
def _words(count: int) -> struct.Struct:
    return struct.Struct(f">{count}I")


_MFHD_SIZE = 16
_TFHD_SIZE = 16
_TFDT_SIZE = 20
_TRUN_HEADER_SIZE = 20  # box header, version/flags, sample_count, data_offset
_TRAF_FIXED = 8 + _TFHD_SIZE + _TFDT_SIZE + _TRUN_HEADER_SIZE


def media_segment(sequence: int, fragments: list[tuple[int, int, list[Sample]]]) -> bytes:
    """One moof + mdat as one buffer. `fragments` is [(track_id, base decode time, samples)], in traf order.

    Entries with no samples are left out; at least one sample overall is required.
    """
    return b"".join(media_segment_chunks(sequence, fragments))


def media_segment_chunks(sequence: int, fragments: list[tuple[int, int, list[Sample]]]) -> list[bytes | memoryview]:
    """One moof + mdat as buffers to write one after the other: the boxes up to the mdat header, then each
    sample's own data (no copy of the media: the samples' buffers are what the list holds)."""
    frags = [f for f in fragments if f[2]]
    if not frags:
        raise Fmp4Error("media segment without samples")
    if not 0 <= sequence <= 0xFFFFFFFF:
        raise Fmp4Error(f"sequence number {sequence} out of range")

    # Pass 1: sizes, so the moof length (and with it every data offset) is known up front.
    with_cto = [any(s.cts_offset for s in samples) for _, _, samples in frags]
    moof_size = 8 + _MFHD_SIZE
    data_size = 0
    sample_sizes: list[list[int]] = []
    for (_, _, samples), cto in zip(frags, with_cto, strict=True):
        moof_size += _TRAF_FIXED + len(samples) * (16 if cto else 12)
        sizes = [len(s.data) for s in samples]
        sample_sizes.append(sizes)
        data_size += sum(sizes)
    if moof_size + 8 + data_size > 0x7FFFFFFF:
        raise Fmp4Error("media segment too large for trun's signed 32-bit data offsets")
    mdat_header = _BOX_HEADER.pack(data_size + 8, b"mdat")

    parts: list[bytes | memoryview] = [struct.pack(">I4sI4sII", moof_size, b"moof", _MFHD_SIZE, b"mfhd", 0, sequence)]
    data_offset = moof_size + len(mdat_header)
    try:
        for (track_id, base_time, samples), cto, sizes in zip(frags, with_cto, sample_sizes, strict=True):
            count = len(samples)
            per_sample = 4 if cto else 3
            trun_size = _TRUN_HEADER_SIZE + count * per_sample * 4
            values: list[int] = []
            if cto:
                for s, size in zip(samples, sizes, strict=True):
                    values += (
                        s.duration,
                        size,
                        SYNC_SAMPLE_FLAGS if s.keyframe else NON_SYNC_SAMPLE_FLAGS,
                        s.cts_offset & 0xFFFFFFFF,
                    )
                    if not -0x80000000 <= s.cts_offset <= 0x7FFFFFFF:
                        raise Fmp4Error(f"composition offset {s.cts_offset} out of range")
            else:
                for s, size in zip(samples, sizes, strict=True):
                    values += (s.duration, size, SYNC_SAMPLE_FLAGS if s.keyframe else NON_SYNC_SAMPLE_FLAGS)
            trun_flags = _TRUN_DATA_OFFSET | _TRUN_DURATION | _TRUN_SIZE | _TRUN_FLAGS | (_TRUN_CTO if cto else 0)
            parts.append(
                struct.pack(
                    ">I4sI4sIII4sIQI4sIIi",
                    _TRAF_FIXED + count * per_sample * 4,
                    b"traf",
                    _TFHD_SIZE,
                    b"tfhd",
                    _TFHD_DEFAULT_BASE_IS_MOOF,
                    track_id,
                    _TFDT_SIZE,
                    b"tfdt",
                    1 << 24,
                    base_time,
                    trun_size,
                    b"trun",
                    ((1 if cto else 0) << 24) | trun_flags,
                    count,
                    data_offset,
                )
            )
            parts.append(_words(len(values)).pack(*values))
            data_offset += sum(sizes)
    except struct.error as exc:
        raise Fmp4Error(f"value out of range in media segment: {exc}") from exc
    parts.append(mdat_header)
    chunks: list[bytes | memoryview] = [b"".join(parts)]
    for _, _, samples in frags:
        chunks.extend(s.data for s in samples)
    return chunks


# --------------------------------------------------------------------------- packets to samples


def ms_to_timescale(ms: int, timescale: int) -> int:
    """ms * timescale / 1000, rounded half up (floor division keeps negatives consistent)."""
    return (ms * timescale * 2 + 1000) // 2000


def packets_to_samples(
    packets: list[Packet], timescale: int, last_duration: int | None = None
) -> tuple[int, list[Sample]]:
    """Samples for one track's packets: (base decode time in `timescale`, samples).

    Each absolute millisecond time is converted on its own and durations are differences of
    converted times, so a run of segments never drifts from the packets' clock. The last
    sample lasts `last_duration` (timescale units) or, if None, as long as the one before it.
    Configuration packets are skipped.
    """
    media = [p for p in packets if not p.is_config]
    if not media:
        raise Fmp4Error("no media packets")
    if len(media) == 1 and last_duration is None:
        raise Fmp4Error("a single packet needs last_duration")
    if last_duration is not None and last_duration < 0:
        raise Fmp4Error(f"negative last_duration {last_duration}")
    ts = timescale
    dts = [ms_to_timescale(p.dts, ts) for p in media]
    base = dts[0]
    if base < 0:
        raise Fmp4Error(f"negative decode time {media[0].dts} ms")
    samples: list[Sample] = []
    for i in range(len(media) - 1):
        p = media[i]
        duration = dts[i + 1] - dts[i]
        if duration < 0:
            raise Fmp4Error(f"decode time goes backwards at {media[i + 1].dts} ms")
        cts = 0 if p.pts == p.dts else ms_to_timescale(p.pts, ts) - dts[i]
        samples.append(Sample(p.data, duration, cts, p.keyframe))
    p = media[-1]
    cts = 0 if p.pts == p.dts else ms_to_timescale(p.pts, ts) - dts[-1]
    final = last_duration if last_duration is not None else samples[-1].duration
    samples.append(Sample(p.data, final, cts, p.keyframe))
    return base, samples
