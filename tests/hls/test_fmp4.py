"""The fMP4/CMAF writer against real encoder output: box structure, ffprobe/ffmpeg and PyAV decoding."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.codecs import CodecError
from mediaserver.codecs.strings import codec_string
from mediaserver.formats.fmp4 import (
    Fmp4Error,
    Sample,
    init_segment,
    media_segment,
    ms_to_timescale,
    packets_to_samples,
    track_timescale,
    video_timescale,
)
from mediaserver.media import Codec, Packet, TrackInfo, TrackKind

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only

WIDTH, HEIGHT, FPS, FRAMES, GOP = 320, 240, 30, 60, 15
HAVE_FFPROBE = shutil.which("ffprobe") is not None and shutil.which("ffmpeg") is not None


# --------------------------------------------------------------------------- test media


@dataclass
class Encoded:
    track: TrackInfo
    packets: list[Packet]
    # Reference decode of the encoder's own MP4: one entry per frame (video) or per packet (audio).
    reference: list[bytes] = field(default_factory=list)


def _ms(value: int, time_base: Fraction) -> int:
    return round(value * time_base * 1000)


def _demux(buf: io.BytesIO, kind: TrackKind, codec: Codec) -> Encoded:
    buf.seek(0)
    with av.open(buf) as container:
        stream = container.streams.video[0] if kind is TrackKind.VIDEO else container.streams.audio[0]
        extradata = bytes(stream.codec_context.extradata or b"")
        tb = Fraction(stream.time_base)
        raw = [p for p in container.demux(stream) if p.size]
        origin = min(p.dts for p in raw)
        packets = [
            Packet(
                kind,
                codec,
                _ms(p.dts - origin, tb),
                _ms(p.pts - origin, tb),
                bool(p.is_keyframe),
                bytes(p),
                0,
            )
            for p in raw
        ]
        track = TrackInfo(kind, codec, extradata)
        if kind is TrackKind.VIDEO:
            track.width, track.height = stream.codec_context.width, stream.codec_context.height
        else:
            track.sample_rate, track.channels = stream.codec_context.sample_rate, stream.codec_context.channels
    buf.seek(0)
    with av.open(buf) as container:
        if kind is TrackKind.VIDEO:
            reference = [f.to_ndarray(format="yuv420p").tobytes() for f in container.decode(video=0)]
        else:
            reference = []
    return Encoded(track, packets, reference)


def _test_pattern(i: int) -> np.ndarray:
    frame = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    frame[:, :, 0] = (np.arange(WIDTH)[None, :] + i * 4) % 256
    frame[:, :, 1] = (np.arange(HEIGHT)[:, None] * 2 + i * 3) % 256
    frame[:, :, 2] = ((np.arange(WIDTH)[None, :] // 40 + np.arange(HEIGHT)[:, None] // 40 + i // 10) % 2) * 200
    return frame


@cache
def encode_video(encoder: str) -> Encoded:
    options = {
        "libx264": {"profile": "high", "bf": "2", "g": str(GOP), "preset": "veryfast"},
        "libx265": {"preset": "ultrafast", "x265-params": f"bframes=2:keyint={GOP}:min-keyint={GOP}:log-level=error"},
        "libsvtav1": {"preset": "12", "g": str(GOP)},
    }[encoder]
    codec = {"libx264": Codec.H264, "libx265": Codec.H265, "libsvtav1": Codec.AV1}[encoder]
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream(encoder, rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(_test_pattern(i), format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return _demux(buf, TrackKind.VIDEO, codec)


@cache
def encode_audio(encoder: str, rate: int) -> Encoded:
    codec = Codec.AAC if encoder == "aac" else Codec.OPUS
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream(encoder, rate=rate, layout="stereo")
        fmt = stream.codec_context.format
        chunk = 1024
        for pos in range(0, rate * 2, chunk):
            t = (np.arange(chunk) + pos) / rate
            mono = 0.3 * np.sin(2 * np.pi * 440 * t)
            if fmt.name.startswith("s16"):
                pcm = (np.stack([mono, mono]) * 32767).astype(np.int16)
            else:
                pcm = np.stack([mono, mono]).astype(np.float32)
            if not fmt.is_planar:
                pcm = pcm.T.reshape(1, -1).copy()
            frame = av.AudioFrame.from_ndarray(pcm, format=fmt.name, layout="stereo")
            frame.sample_rate, frame.pts = rate, pos
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return _demux(buf, TrackKind.AUDIO, codec)


# --------------------------------------------------------------------------- segmenting


@dataclass
class Built:
    data: bytes
    # Per media segment, per track: the sample payloads in order.
    expected: list[dict[int, list[bytes]]]
    build_seconds: list[float]


def build_file(tracks: list[Encoded]) -> Built:
    """init + media segments cut at the first track's keyframes, every track in each segment."""
    lead = tracks[0].packets
    cuts = [p.dts for p in lead if p.keyframe] + [10**9]
    parts = [init_segment([t.track for t in tracks])]
    expected: list[dict[int, list[bytes]]] = []
    timings: list[float] = []
    for seq in range(len(cuts) - 1):
        fragments: list[tuple[int, int, list[Sample]]] = []
        payloads: dict[int, list[bytes]] = {}
        for index, enc in enumerate(tracks):
            scale = track_timescale(enc.track)
            chunk = [p for p in enc.packets if cuts[seq] <= p.dts < cuts[seq + 1]]
            rest = [p for p in enc.packets if p.dts >= cuts[seq + 1]]
            if not chunk:
                continue
            last = None
            if rest:
                last = ms_to_timescale(rest[0].dts, scale) - ms_to_timescale(chunk[-1].dts, scale)
            base, samples = packets_to_samples(chunk, scale, last)
            fragments.append((index + 1, base, samples))
            payloads[index + 1] = [bytes(p.data) for p in chunk]
        start = time.perf_counter()
        parts.append(media_segment(seq + 1, fragments))
        timings.append(time.perf_counter() - start)
        expected.append(payloads)
    return Built(b"".join(parts), expected, timings)


# --------------------------------------------------------------------------- box walker


CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"dinf", b"stbl", b"mvex", b"moof", b"traf", b"edts"}
# Boxes whose children start after a fixed-size body prefix.
PREFIXED = {
    b"stsd": 8,
    b"dref": 8,
    b"avc1": 78,
    b"hvc1": 78,
    b"av01": 78,
    b"mp4a": 28,
    b"Opus": 28,
}


@dataclass
class Box:
    kind: bytes
    start: int
    size: int
    header: int
    children: list[Box]

    @property
    def body(self) -> int:
        return self.start + self.header

    @property
    def end(self) -> int:
        return self.start + self.size

    def find(self, kind: bytes) -> list[Box]:
        return [c for c in self.children if c.kind == kind]

    def one(self, kind: bytes) -> Box:
        found = self.find(kind)
        assert len(found) == 1, f"{self.kind!r} has {len(found)} {kind!r}"
        return found[0]


def walk(data: bytes, start: int, end: int) -> list[Box]:
    boxes = []
    pos = start
    while pos < end:
        assert end - pos >= 8, f"trailing {end - pos} bytes at {pos}"
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        assert size >= header, f"{kind!r} at {pos}: size {size}"
        assert pos + size <= end, f"{kind!r} at {pos} overruns its parent ({pos + size} > {end})"
        children: list[Box] = []
        if kind in CONTAINERS:
            children = walk(data, pos + header, pos + size)
        elif kind in PREFIXED:
            children = walk(data, pos + header + PREFIXED[kind], pos + size)
        boxes.append(Box(kind, pos, size, header, children))
        pos += size
    assert pos == end
    return boxes


def check_structure(built: Built, entry: list[bytes]) -> list[Box]:
    data = built.data
    top = walk(data, 0, len(data))
    kinds = [b.kind for b in top]
    assert kinds[:2] == [b"ftyp", b"moov"]
    assert kinds[2:] == [b"moof", b"mdat"] * len(built.expected)
    ftyp = top[0]
    assert data[ftyp.body : ftyp.body + 4] == b"iso6"
    assert b"cmfc" in data[ftyp.body + 8 : ftyp.end]

    moov = top[1]
    moov.one(b"mvhd")
    traks = moov.find(b"trak")
    assert len(traks) == len(entry)
    trex = moov.one(b"mvex").find(b"trex")
    assert [struct.unpack_from(">I", data, t.body + 4)[0] for t in trex] == list(range(1, len(entry) + 1))
    for index, (trak, sample_entry) in enumerate(zip(traks, entry, strict=True)):
        tkhd = trak.one(b"tkhd")
        assert struct.unpack_from(">I", data, tkhd.body + 12)[0] == index + 1
        mdia = trak.one(b"mdia")
        mdia.one(b"mdhd")
        handler = data[mdia.one(b"hdlr").body + 8 : mdia.one(b"hdlr").body + 12]
        minf = mdia.one(b"minf")
        minf.one(b"vmhd" if handler == b"vide" else b"smhd")
        minf.one(b"dinf").one(b"dref").one(b"url ")
        stbl = minf.one(b"stbl")
        for table in (b"stts", b"stsc", b"stsz", b"stco"):
            stbl.one(table)
        stsd = stbl.one(b"stsd")
        (sample_entry_box,) = stsd.children
        assert sample_entry_box.kind == sample_entry
        config_kind = {b"avc1": b"avcC", b"hvc1": b"hvcC", b"av01": b"av1C", b"mp4a": b"esds", b"Opus": b"dOps"}
        sample_entry_box.one(config_kind[sample_entry])

    for seq, (moof, mdat) in enumerate(zip(top[2::2], top[3::2], strict=True)):
        mfhd = moof.one(b"mfhd")
        assert struct.unpack_from(">I", data, mfhd.body + 4)[0] == seq + 1
        expected = built.expected[seq]
        trafs = moof.find(b"traf")
        assert len(trafs) == len(expected)
        covered = []
        for traf, (track_id, payloads) in zip(trafs, expected.items(), strict=True):
            tfhd = traf.one(b"tfhd")
            flags, tid = struct.unpack_from(">II", data, tfhd.body)
            assert flags & 0xFFFFFF == 0x020000 and tid == track_id
            tfdt = traf.one(b"tfdt")
            assert data[tfdt.body] == 1 and tfdt.size == 20
            trun = traf.one(b"trun")
            vflags, count, offset = struct.unpack_from(">IIi", data, trun.body)
            version, flags = vflags >> 24, vflags & 0xFFFFFF
            assert flags & 0x701 == 0x701
            assert count == len(payloads)
            per = 16 if flags & 0x800 else 12
            assert version == (1 if flags & 0x800 else 0)
            assert trun.size == 8 + 12 + count * per
            pos = moof.start + offset
            for i, payload in enumerate(payloads):
                size = struct.unpack_from(">I", data, trun.body + 12 + i * per + 4)[0]
                assert size == len(payload)
                assert mdat.body <= pos and pos + size <= mdat.end
                assert data[pos : pos + size] == payload
                covered.append((pos, size))
                pos += size
        # The samples tile the mdat payload exactly, in traf order.
        assert covered[0][0] == mdat.body
        assert sum(size for _, size in covered) == mdat.size - mdat.header
    return top


def sample_flags_and_cto(data: bytes, trun: Box) -> list[tuple[int, int]]:
    vflags, count = struct.unpack_from(">II", data, trun.body)
    if vflags & 0x800:
        return [struct.unpack_from(">Ii", data, trun.body + 12 + i * 16 + 8) for i in range(count)]
    return [(struct.unpack_from(">I", data, trun.body + 12 + i * 12 + 8)[0], 0) for i in range(count)]


# --------------------------------------------------------------------------- external checks


def ffprobe_streams(path: Path) -> list[dict[str, object]]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-count_frames", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    streams: list[dict[str, object]] = json.loads(result.stdout)["streams"]
    return streams


def ffmpeg_decode_clean(path: Path) -> None:
    result = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@dataclass
class PyavResult:
    codecs: list[str]
    video_frames: list[tuple[int, bytes]] = field(default_factory=list)  # (pts in stream time base, pixels)
    audio_frames: int = 0


def pyav_decode(path: Path) -> PyavResult:
    with av.open(str(path)) as container:
        result = PyavResult([s.codec_context.name for s in container.streams])
        for frame in container.decode(*container.streams):
            if isinstance(frame, av.VideoFrame):
                result.video_frames.append((int(frame.pts), frame.to_ndarray(format="yuv420p").tobytes()))
            else:
                result.audio_frames += 1
    return result


def check_video_decode(enc: Encoded, result: PyavResult) -> None:
    assert len(result.video_frames) == FRAMES
    # Presentation order and times survive: decoded pts are the packets' pts in 90 kHz units.
    got_pts = [pts for pts, _ in result.video_frames]
    assert got_pts == sorted(round(p.pts * 90) for p in enc.packets)
    # Bit-exact against decoding the encoder's own MP4.
    assert [pixels for _, pixels in result.video_frames] == enc.reference


# --------------------------------------------------------------------------- tests


@pytest.fixture
def out_file(tmp_path: Path) -> Path:
    return tmp_path / "stream.mp4"


def test_h264_aac_structure_and_decoders(out_file: Path) -> None:
    video, audio = encode_video("libx264"), encode_audio("aac", 44100)
    assert video.track.config[0] == 1  # avcC, not Annex B
    built = build_file([video, audio])
    top = check_structure(built, [b"avc1", b"mp4a"])
    assert len(built.expected) == FRAMES // GOP

    # B-frames: the video trun is version 1 with composition offsets; keyframes are sync samples.
    moofs = top[2::2]
    first_video = sample_flags_and_cto(built.data, moofs[0].find(b"traf")[0].one(b"trun"))
    assert any(cto for _, cto in first_video)
    assert first_video[0][0] == 0x02000000
    assert all(flags == 0x01010000 for flags, _ in first_video[1:])
    audio_flags = sample_flags_and_cto(built.data, moofs[0].find(b"traf")[1].one(b"trun"))
    assert {flags for flags, _ in audio_flags} == {0x02000000}
    assert all(cto == 0 for _, cto in audio_flags)

    out_file.write_bytes(built.data)
    result = pyav_decode(out_file)
    assert result.codecs == ["h264", "aac"]
    check_video_decode(video, result)
    assert result.audio_frames == len(audio.packets)

    if HAVE_FFPROBE:
        streams = ffprobe_streams(out_file)
        v, a = streams
        assert (v["codec_name"], v["width"], v["height"], int(str(v["nb_read_frames"]))) == (
            "h264",
            WIDTH,
            HEIGHT,
            FRAMES,
        )
        assert v["profile"] == "High"
        assert (a["codec_name"], a["sample_rate"], a["channels"]) == ("aac", "44100", 2)
        assert int(str(a["nb_read_frames"])) == len(audio.packets)
        ffmpeg_decode_clean(out_file)


def test_h265_opus(out_file: Path) -> None:
    video, audio = encode_video("libx265"), encode_audio("libopus", 48000)
    built = build_file([video, audio])
    check_structure(built, [b"hvc1", b"Opus"])
    out_file.write_bytes(built.data)
    result = pyav_decode(out_file)
    assert result.codecs == ["hevc", "opus"]
    check_video_decode(video, result)
    assert result.audio_frames == len(audio.packets)
    if HAVE_FFPROBE:
        v, a = ffprobe_streams(out_file)
        assert (v["codec_name"], v["width"], v["height"], int(str(v["nb_read_frames"]))) == (
            "hevc",
            WIDTH,
            HEIGHT,
            FRAMES,
        )
        assert (a["codec_name"], a["sample_rate"], int(str(a["nb_read_frames"]))) == (
            "opus",
            "48000",
            len(audio.packets),
        )
        ffmpeg_decode_clean(out_file)


def test_av1(out_file: Path) -> None:
    video = encode_video("libsvtav1")
    assert video.track.config[0] == 0x81
    built = build_file([video])
    check_structure(built, [b"av01"])
    out_file.write_bytes(built.data)
    result = pyav_decode(out_file)
    assert result.codecs[0] in ("libdav1d", "av1")
    check_video_decode(video, result)
    if HAVE_FFPROBE:
        (v,) = ffprobe_streams(out_file)
        assert (v["codec_name"], v["width"], v["height"], int(str(v["nb_read_frames"]))) == (
            "av1",
            WIDTH,
            HEIGHT,
            FRAMES,
        )
        ffmpeg_decode_clean(out_file)


def test_codec_strings() -> None:
    # A High@3.1 avcC: version 1, profile 0x64, compatibility 0x00, level 0x1f.
    high31 = bytes.fromhex("0164001fffe100046764001f01000468ee3c80")
    assert codec_string(TrackInfo(TrackKind.VIDEO, Codec.H264, high31)) == "avc1.64001f"
    x264 = encode_video("libx264").track
    assert codec_string(x264) == f"avc1.{x264.config[1:4].hex()}"
    assert codec_string(x264).startswith("avc1.64")

    # The encoded hvcC: Main profile (compat flag 1 and 2 set → reversed 0x6), Main tier.
    hvcc = encode_video("libx265").track
    level = hvcc.config[12]
    constraints = ".".join(f"{b:X}" for b in hvcc.config[6:12].rstrip(b"\x00"))
    assert codec_string(hvcc) == f"hvc1.1.6.L{level}" + (f".{constraints}" if constraints else "")
    # Main 10, High tier, level 5.1, progressive-source constraint: the Apple/ISO example form.
    main10 = bytearray(23)
    main10[0], main10[1] = 1, 0x22
    main10[2:6] = (0x20000000).to_bytes(4, "big")
    main10[6], main10[12] = 0xB0, 153
    assert codec_string(TrackInfo(TrackKind.VIDEO, Codec.H265, bytes(main10))) == "hvc1.2.4.H153.B0"

    assert codec_string(encode_video("libsvtav1").track).startswith("av01.0.")
    av1_10bit = bytes([0x81, 0x08, 0x4C, 0x00])  # main profile, level 8 (4.0), main tier, 10 bit
    assert codec_string(TrackInfo(TrackKind.VIDEO, Codec.AV1, av1_10bit)) == "av01.0.08M.10"
    av1_high = bytes([0x81, 0x4D, 0xE0, 0x00])  # profile 2, level 13, high tier, 12 bit
    assert codec_string(TrackInfo(TrackKind.VIDEO, Codec.AV1, av1_high)) == "av01.2.13H.12"

    assert codec_string(TrackInfo(TrackKind.AUDIO, Codec.AAC, bytes.fromhex("1210"))) == "mp4a.40.2"
    assert codec_string(encode_audio("aac", 44100).track) == "mp4a.40.2"
    assert codec_string(TrackInfo(TrackKind.AUDIO, Codec.AAC, bytes.fromhex("2b920800"))) == "mp4a.40.5"
    assert codec_string(TrackInfo(TrackKind.AUDIO, Codec.AAC, bytes.fromhex("f940"))) == "mp4a.40.42"
    assert codec_string(encode_audio("libopus", 48000).track) == "opus"
    with pytest.raises(CodecError):
        codec_string(TrackInfo(TrackKind.VIDEO, Codec.VP9, b"\x01"))


def test_opus_dops_from_opushead() -> None:
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 2, 312, 44100, -256, 0)
    track = TrackInfo(TrackKind.AUDIO, Codec.OPUS, head, sample_rate=44100, channels=2)
    assert track_timescale(track) == 48000  # Opus always runs at 48 kHz, whatever the input rate
    init = init_segment([track])
    dops = init.index(b"dOps")
    assert init[dops - 4 : dops] == struct.pack(">I", 19)
    assert init[dops + 4 : dops + 15] == struct.pack(">BBHIhB", 0, 2, 312, 44100, -256, 0)
    entry = init.index(b"Opus")
    assert struct.unpack_from(">HHHHI", init, entry + 4 + 16) == (2, 16, 0, 0, 48000 << 16)
    with pytest.raises(Fmp4Error):
        init_segment([TrackInfo(TrackKind.AUDIO, Codec.OPUS, b"OpusTags" + bytes(11))])


def test_init_errors_and_sizes() -> None:
    x264 = encode_video("libx264").track
    with pytest.raises(Fmp4Error):
        init_segment([TrackInfo(TrackKind.VIDEO, Codec.VP9, b"\x01\x00\x00\x00", 320, 240)])
    with pytest.raises(Fmp4Error):
        init_segment([TrackInfo(TrackKind.VIDEO, Codec.H264, b"", 320, 240)])
    with pytest.raises(Fmp4Error):
        init_segment([TrackInfo(TrackKind.AUDIO, Codec.MP3, b"x", sample_rate=44100)])
    with pytest.raises(Fmp4Error):
        init_segment([TrackInfo(TrackKind.DATA, Codec.UNKNOWN)])
    with pytest.raises(Fmp4Error):
        init_segment([TrackInfo(TrackKind.VIDEO, Codec.H264, b"\x00" * 10, 320, 240)])
    with pytest.raises(Fmp4Error):
        init_segment([])
    # H.264 without a size in TrackInfo: taken from the SPS.
    unsized = TrackInfo(TrackKind.VIDEO, Codec.H264, x264.config)
    init = init_segment([unsized])
    tkhd = init.index(b"tkhd")
    assert struct.unpack_from(">II", init, tkhd + 4 + 76) == (WIDTH << 16, HEIGHT << 16)
    av1c = TrackInfo(TrackKind.VIDEO, Codec.AV1, bytes([0x81, 0x08, 0x0C, 0x00]), 1920, 1080)
    init = init_segment([av1c])
    top = walk(init, 0, len(init))
    assert b"av01" in init[top[0].start : top[0].end]  # brand
    entry = init.index(b"av01", top[0].end)
    assert struct.unpack_from(">HH", init, entry + 4 + 24) == (1920, 1080)
    assert init[init.index(b"av1C") + 4 : init.index(b"av1C") + 8] == bytes([0x81, 0x08, 0x0C, 0x00])
    assert video_timescale() == 90000


def test_media_segment_errors() -> None:
    with pytest.raises(Fmp4Error):
        media_segment(1, [])
    with pytest.raises(Fmp4Error):
        media_segment(1, [(1, 0, [])])
    with pytest.raises(Fmp4Error):
        media_segment(1, [(1, -1, [Sample(b"x", 1, 0, True)])])
    with pytest.raises(Fmp4Error):
        media_segment(1, [(1, 0, [Sample(b"x", -1, 0, True)])])
    with pytest.raises(Fmp4Error):
        media_segment(1, [(1, 0, [Sample(b"x", 1, 1 << 31, True)])])
    # Negative composition offsets are legal with trun version 1.
    seg = media_segment(7, [(1, 5, [Sample(b"ab", 10, -3, True)]), (2, 0, []), (3, 9, [Sample(b"c", 4, 0, True)])])
    top = walk(seg, 0, len(seg))
    trafs = top[0].find(b"traf")
    assert len(trafs) == 2
    assert sample_flags_and_cto(seg, trafs[0].one(b"trun")) == [(0x02000000, -3)]
    assert seg[-3:] == b"abc"


def half_up(x: Fraction) -> int:
    return int((x + Fraction(1, 2)) // 1)


def _packets(dts_ms: list[int], pts_ms: list[int] | None = None, kind: TrackKind = TrackKind.VIDEO) -> list[Packet]:
    pts_ms = pts_ms or dts_ms
    return [
        Packet(kind, Codec.H264, d, p, i == 0, b"\x00", 0) for i, (d, p) in enumerate(zip(dts_ms, pts_ms, strict=True))
    ]


def _check_no_drift(dts_ms: list[int], exact: list[Fraction], scale: int, per_segment: int, tolerance: float) -> None:
    packets = _packets(dts_ms)
    expected_end = None
    for start in range(0, len(packets), per_segment):
        chunk = packets[start : start + per_segment]
        following = packets[start + per_segment : start + per_segment + 1]
        last = None
        if following:
            last = ms_to_timescale(following[0].dts, scale) - ms_to_timescale(chunk[-1].dts, scale)
        base, samples = packets_to_samples(chunk, scale, last)
        if expected_end is not None:
            assert base == expected_end  # segments join without gap or overlap
        t = base
        for i, sample in enumerate(samples):
            # Every decode time is exactly the rounded absolute time, so error stays within half a ms.
            assert t == half_up(Fraction(chunk[i].dts * scale, 1000))
            assert abs(t - exact[start + i]) <= tolerance
            t += sample.duration
        expected_end = t


def test_packets_to_samples_30fps_no_drift() -> None:
    n = 30 * 60 * 10  # ten minutes
    exact = [Fraction(i * 90000, 30) for i in range(n)]
    dts_ms = [round(Fraction(i * 1000, 30)) for i in range(n)]
    _check_no_drift(dts_ms, exact, 90000, 60, 45)
    _, samples = packets_to_samples(_packets(dts_ms[:100]), 90000)
    assert {s.duration for s in samples} <= {2970, 3000, 3060}
    assert sum(s.duration for s in samples[:99]) == 90 * dts_ms[99]


def test_packets_to_samples_aac_44100_no_drift() -> None:
    n = 44100 * 600 // 1024  # ten minutes of 1024-sample frames
    exact = [Fraction(i * 1024) for i in range(n)]
    dts_ms = [round(Fraction(i * 1024 * 1000, 44100)) for i in range(n)]
    _check_no_drift(dts_ms, exact, 44100, 47, 22.05)
    _, samples = packets_to_samples(_packets(dts_ms[:10], kind=TrackKind.AUDIO), 44100, 1024)
    assert samples[-1].duration == 1024
    assert all(abs(s.duration - 1024) <= 45 for s in samples)


def test_packets_to_samples_cts_and_errors() -> None:
    # I P B B at 25 fps with a 80 ms reorder delay.
    base, samples = packets_to_samples(_packets([0, 40, 80, 120], [80, 200, 120, 160]), 90000)
    assert base == 0
    assert [s.cts_offset for s in samples] == [7200, 14400, 3600, 3600]
    assert [s.duration for s in samples] == [3600] * 4
    base, _ = packets_to_samples(_packets([1001, 1034]), 90000)
    assert base == 90090
    config = Packet(TrackKind.VIDEO, Codec.H264, 0, 0, True, b"\x01", 0, is_config=True)
    base, samples = packets_to_samples([config, *_packets([10, 20])], 1000)
    assert (base, len(samples)) == (10, 2)
    with pytest.raises(Fmp4Error):
        packets_to_samples(_packets([5]), 90000)
    assert packets_to_samples(_packets([5]), 90000, 3000)[1][0].duration == 3000
    with pytest.raises(Fmp4Error):
        packets_to_samples(_packets([10, 5]), 90000)
    with pytest.raises(Fmp4Error):
        packets_to_samples([], 90000)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**32),
    st.lists(st.integers(0, 200), min_size=2, max_size=80),
    st.sampled_from([1000, 8000, 44100, 48000, 90000]),
)
def test_packets_to_samples_property(start: int, gaps: list[int], scale: int) -> None:
    dts = [start]
    for gap in gaps:
        dts.append(dts[-1] + gap)
    base, samples = packets_to_samples(_packets(dts), scale)
    t = base
    for d, sample in zip(dts, samples, strict=True):
        assert t == half_up(Fraction(d * scale, 1000))
        t += sample.duration


def test_segment_build_speed() -> None:
    video, audio = encode_video("libx264"), encode_audio("aac", 44100)
    base_v, v_samples = packets_to_samples(video.packets[:30], 90000)
    base_a, a_samples = packets_to_samples(audio.packets[:30], 44100)
    fragments = [(1, base_v, v_samples), (2, base_a, a_samples)]
    media_segment(1, fragments)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(100):
            media_segment(1, fragments)
        best = min(best, (time.perf_counter() - start) / 100)
    print(f"60-sample media_segment: {best * 1e6:.1f} us")
    assert best < 1e-3
    start = time.perf_counter()
    for _ in range(100):
        packets_to_samples(video.packets[:30], 90000)
    print(f"30-packet packets_to_samples: {(time.perf_counter() - start) * 1e4:.1f} us")
