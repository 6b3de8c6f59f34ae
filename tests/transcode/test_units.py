"""The ladder's pure parts: the worker framing, which rungs a source gets (never upscaled), the master playlist,
the configuration; and the real worker process fed real H.264 (decoded once, encoded per rung, keyframes aligned)."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys

import pytest

from mediaserver.codecs.h264 import resolution
from mediaserver.config import ConfigError, load_config
from mediaserver.transcode import framing
from mediaserver.transcode.framing import MAX_PAYLOAD, FramingError, Kind, Message
from mediaserver.transcode.ladder import (
    LadderError,
    Rung,
    parse_ladder,
    parse_rung,
    select_rungs,
    split_rung_stream,
)
from mediaserver.transcode.master import Variant, render_master
from tests.snapshot.media import h264

DEFAULT = parse_ladder(["1080p:1920x1080:5000k", "720p:1280x720:2500k", "480p:854x480:1000k"])

# ----- framing ----------------------------------------------------------------------------------------------


def test_messages_round_trip_through_both_readers() -> None:
    messages = [
        Message(Kind.SETUP, b'{"rungs": []}'),
        Message(Kind.CONFIG, b"\x01\x64\x00\x1f", rung=2, pts=40, dts=40),
        Message(Kind.VIDEO, b"\x00\x00\x00\x02\x65\x88", rung=1, pts=-5, dts=2**40, keyframe=True),
        Message(Kind.VIDEO, b"", rung=0, pts=7, dts=6),
    ]
    wire = b"".join(framing.encode(m) for m in messages)
    stream = io.BytesIO(wire)
    assert [framing.read_message_sync(stream) for _ in messages] == messages
    assert framing.read_message_sync(stream) is None

    async def read_all() -> list[Message | None]:
        reader = asyncio.StreamReader()
        reader.feed_data(wire)
        reader.feed_eof()
        return [await framing.read_message(reader) for _ in range(len(messages) + 1)]

    assert asyncio.run(read_all()) == [*messages, None]


def test_a_confused_peer_fails_the_session_not_the_process() -> None:
    good = framing.encode(Message(Kind.VIDEO, b"abcdef", pts=1, dts=1))
    for broken in (good[:5], good[:-1]):
        with pytest.raises(FramingError):
            framing.read_message_sync(io.BytesIO(broken))
    unknown = bytes([99]) + good[1:]
    with pytest.raises(FramingError, match="unknown message kind"):
        framing.read_message_sync(io.BytesIO(unknown))
    # A length over the limit is refused from the header alone, before anything is read or allocated.
    huge = framing.HEADER.pack(Kind.VIDEO, 0, 0, 0, 0, MAX_PAYLOAD + 1)
    with pytest.raises(FramingError, match="over the"):
        framing.read_message_sync(io.BytesIO(huge))
    with pytest.raises(FramingError):
        framing.header(Kind.VIDEO, MAX_PAYLOAD + 1)


# ----- the ladder -------------------------------------------------------------------------------------------


def test_rungs_parse_with_units_and_bad_ones_are_refused() -> None:
    assert parse_rung("720p:1280x720:2500k") == Rung("720p", 1280, 720, 2_500_000)
    assert parse_rung(" hd:1920x1080:4.5M ") == Rung("hd", 1920, 1080, 4_500_000)
    assert parse_rung("low:320x180:300000") == Rung("low", 320, 180, 300_000)
    for bad in ("720p", "720p:1280:2500k", "7 20p:1280x720:1k", "x:1281x720:900k", "x:1280x720:10k", "a_b:2x2:1M"):
        with pytest.raises(LadderError):
            parse_rung(bad)
    with pytest.raises(LadderError, match="unique"):
        parse_ladder(["a:640x360:500k", "a:320x180:200k"])
    assert [r.name for r in parse_ladder(["s:320x180:200k", "l:1280x720:2M", "m:640x360:800k"])] == ["l", "m", "s"]


def test_a_source_gets_only_the_rungs_below_it_never_an_upscale() -> None:
    names = lambda w, h: [r.name for r in select_rungs(DEFAULT, w, h)]  # noqa: E731
    assert names(3840, 2160) == ["1080p", "720p", "480p"]
    assert names(1920, 1080) == ["720p", "480p"]  # the original is the 1080p rung
    assert names(1280, 720) == ["480p"]
    assert names(640, 360) == []  # smaller than every rung: nothing to make
    assert names(0, 0) == []
    # The configured size when the shape matches (854x480 is 16:9 rounded) ...
    assert select_rungs(DEFAULT, 1920, 1080)[1] == Rung("480p", 854, 480, 1_000_000)
    # ... and the source's aspect at the rung's height when it does not (a 4:3 camera is not stretched).
    assert [(r.width, r.height) for r in select_rungs(DEFAULT, 1440, 1080)] == [(960, 720), (640, 480)]


def test_rung_stream_names_split_only_for_rungs_of_the_ladder() -> None:
    rungs = ("720p", "480p")
    assert split_rung_stream("cam_720p", rungs) == ("cam", "720p")
    assert split_rung_stream("front_door_480p", rungs) == ("front_door", "480p")
    assert split_rung_stream("cam_360p", rungs) is None
    assert split_rung_stream("cam", rungs) is None
    assert split_rung_stream("_720p", rungs) is None


def test_the_master_playlist_lists_every_variant() -> None:
    text = render_master(
        [
            Variant("../cam/index.m3u8?token=t", 3_000_000, 1280, 720, "avc1.64001f,mp4a.40.2", 25.0),
            Variant("../cam_480p/index.m3u8?token=t", 1_128_000, 854, 480, "avc1.64001e,mp4a.40.2"),
        ]
    )
    assert text.splitlines() == [
        "#EXTM3U",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        '#EXT-X-STREAM-INF:BANDWIDTH=3000000,RESOLUTION=1280x720,CODECS="avc1.64001f,mp4a.40.2",FRAME-RATE=25.000',
        "../cam/index.m3u8?token=t",
        '#EXT-X-STREAM-INF:BANDWIDTH=1128000,RESOLUTION=854x480,CODECS="avc1.64001e,mp4a.40.2"',
        "../cam_480p/index.m3u8?token=t",
    ]


def test_the_configuration_is_checked() -> None:
    config = load_config(None, environ={"MEDIASERVER_TRANSCODE_STREAMS": '["live/*"]'})
    assert config.transcode.streams == ["live/*"] and len(config.transcode.ladder) == 3
    for key, value in (("LADDER", '["720p:1280x720"]'), ("PRESET", "quick"), ("IDLE", "0"), ("WORKERS", "0")):
        with pytest.raises(ConfigError, match="transcode"):
            load_config(None, environ={f"MEDIASERVER_TRANSCODE_{key}": value})


# ----- the worker process -----------------------------------------------------------------------------------


def test_the_worker_encodes_every_rung_with_the_sources_keyframes() -> None:
    config, units = h264(640, 360, 30, gop=7)
    rungs = [
        {"name": "240p", "width": 426, "height": 240, "bitrate": 300_000},
        {"name": "180p", "width": 320, "height": 180, "bitrate": 200_000},
    ]
    wire = io.BytesIO()
    wire.write(framing.setup({"rungs": rungs, "preset": "veryfast", "threads": 1, "fps": 25}))
    wire.write(framing.encode(Message(Kind.CONFIG, config)))
    for index, (keyframe, unit) in enumerate(units):
        wire.write(
            framing.encode(Message(Kind.VIDEO, unit, pts=1000 + index * 40, dts=1000 + index * 40, keyframe=keyframe))
        )
    done = subprocess.run(
        [sys.executable, "-m", "mediaserver.transcode.worker"], input=wire.getvalue(), capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"event=transcode_worker_exit frames=30 decode_errors=0" in done.stderr
    out = io.BytesIO(done.stdout)
    configs: dict[int, bytes] = {}
    pts: dict[int, list[int]] = {0: [], 1: []}
    keys: dict[int, list[int]] = {0: [], 1: []}
    while (message := framing.read_message_sync(out)) is not None:
        if message.kind is Kind.CONFIG:
            configs[message.rung] = message.payload
            continue
        assert message.kind is Kind.VIDEO and message.rung in configs, "a rung's avcC comes before its pictures"
        assert message.payload[:4] != b"\x00\x00\x00\x01", "AVCC (length-prefixed), not Annex-B"
        pts[message.rung].append(message.pts)
        if message.keyframe:
            keys[message.rung].append(message.pts)
    assert resolution(configs[0]) == (426, 240) and resolution(configs[1]) == (320, 180)
    source_pts = [1000 + i * 40 for i in range(30)]
    source_keys = [1000 + i * 40 for i, (keyframe, _) in enumerate(units) if keyframe]
    assert len(source_keys) == 5
    for rung in (0, 1):
        assert pts[rung] == source_pts  # one picture out per picture in, on the source's clock
        assert keys[rung] == source_keys  # keyframes exactly where the source has them, none elsewhere
