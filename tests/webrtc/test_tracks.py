"""The per-peer tracks and the shared per-stream feed, with real hub streams and no network."""

from __future__ import annotations

import asyncio

from mediaserver.codecs.h264 import START_CODE, avc_decoder_config
from mediaserver.formats.flv import avc_frame, avc_sequence_header
from mediaserver.hub import Hub, Stream
from mediaserver.webrtc.feed import StreamFeed, Viewer
from mediaserver.webrtc.tracks import DEFAULT_TICKS, SQUEEZED_TICKS, H264Track, UnitQueue, VideoUnit
from mediaserver.webrtc.transcode import TranscodeStats
from tests.webrtc.test_annexb import IDR, PPS, SLICE, SPS, length_prefixed


class FakePublisher:
    peer = "test"
    protocol = "test"

    def stop(self, reason: str) -> None:
        pass


def push_video(stream: Stream, ts: int, key: bool) -> None:
    from mediaserver.formats.flv import parse_video

    packet = parse_video(avc_frame(length_prefixed(IDR if key else SLICE), key), ts)
    assert packet is not None
    stream.push(packet)


def live_stream(hub: Hub, name: str = "cam") -> Stream:
    from mediaserver.formats.flv import parse_video

    stream = hub.publish("live", name, FakePublisher())
    config = parse_video(avc_sequence_header(avc_decoder_config([SPS], [PPS])), 0)
    assert config is not None
    stream.push(config)
    return stream


def new_viewer(feed: StreamFeed) -> tuple[Viewer, H264Track]:
    track = H264Track(feed.gop_snapshot)
    viewer = Viewer(track, None)
    feed.add(viewer)
    return viewer, track


async def test_viewer_starts_on_the_cached_gop_then_goes_live() -> None:
    hub = Hub()
    stream = live_stream(hub)
    for index, ts in enumerate((0, 40, 80, 120)):
        push_video(stream, ts, key=index == 0)
    errors: list[str] = []
    feed = StreamFeed(stream.key, stream, TranscodeStats(), 64000, errors.append)
    _, track = new_viewer(feed)
    assert stream.subscriber_counts() == {"webrtc": 1}

    first = await track.recv()
    assert first.is_keyframe and first.pts == 0
    # Every IDR carries SPS and PPS in front, as Annex-B.
    assert bytes(first).startswith(START_CODE + SPS + START_CODE + PPS + START_CODE + IDR)
    cached = [await track.recv() for _ in range(3)]
    # The rest of the cached GOP goes out at once, 1 ms apart: the picture reaches the live edge at once.
    assert [p.pts for p in cached] == [SQUEEZED_TICKS, 2 * SQUEEZED_TICKS, 3 * SQUEEZED_TICKS]
    assert all(bytes(p) == START_CODE + SLICE for p in cached)
    # Live frames keep the stream's own spacing (40 ms = 3600 ticks at 90 kHz).
    push_video(stream, 160, key=False)
    live = await track.recv()
    assert live.pts == 3 * SQUEEZED_TICKS + 3600 and live.time_base.denominator == 90000

    # The publisher reconnects: the viewer carries on from the new stream's first keyframe.
    hub.unpublish(stream)
    assert feed.stream is None and feed.ended_at is not None
    restarted = live_stream(hub)
    feed.stream_started(restarted)
    push_video(restarted, 0, key=False)  # not decodable without its keyframe: dropped
    push_video(restarted, 40, key=True)
    again = await track.recv()
    assert again.is_keyframe and again.pts == live.pts + DEFAULT_TICKS
    push_video(restarted, 80, key=False)
    assert (await track.recv()).pts == again.pts + 3600
    assert restarted.subscriber_counts() == {"webrtc": 1} and not errors


async def test_viewers_share_the_converted_frames() -> None:
    hub = Hub()
    stream = live_stream(hub)
    push_video(stream, 0, key=True)
    feed = StreamFeed(stream.key, stream, TranscodeStats(), 64000, lambda reason: None)
    _, one = new_viewer(feed)
    _, two = new_viewer(feed)
    await one.recv()
    await two.recv()
    push_video(stream, 40, key=False)
    # One conversion per packet, whatever the number of viewers.
    assert one._queue._items[0][0] is two._queue._items[0][0]  # type: ignore[attr-defined]
    # A late joiner starts on the same cached units.
    _, three = new_viewer(feed)
    first = await three.recv()
    assert first.is_keyframe and len(three._queue) == 1  # type: ignore[attr-defined]
    feed.close()
    assert stream.subscriber_counts() == {}


async def test_a_viewer_that_falls_behind_skips_to_the_next_keyframe() -> None:
    drops: list[int] = []
    queue: UnitQueue[VideoUnit] = UnitQueue(3, drops.append, lambda unit: unit.keyframe)
    units = [VideoUnit(b"x", ts, ts % 5 == 0, 0) for ts in range(12)]
    for unit in units:
        queue.put(unit)
    # 3 overflows the queue: 0-2 and 3 are dropped, then 4 (waiting for a keyframe); 5 is one, 5-7 queue up;
    # 8 overflows again, 9 waits, and the consumer resumes at the keyframe 10.
    got = [await asyncio.wait_for(queue.get(), 1) for _ in range(len(queue))]
    assert [u.dts for u in got] == [10, 11]
    assert sum(drops) == 10


def test_transcoders_round_trip() -> None:
    """AAC (as RTMP carries it: raw frames + AudioSpecificConfig) -> Opus 20 ms -> AAC again."""
    import fractions

    import av
    import numpy as np

    from mediaserver.webrtc.transcode import AacToOpus, OpusToAac

    encoder = av.CodecContext.create("aac", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 44100, "stereo", "fltp"
    encoder.time_base = fractions.Fraction(1, 44100)
    encoder.open()
    asc = bytes(encoder.extradata or b"")
    raw: list[bytes] = []
    tone = np.sin(np.arange(44100) * 2 * np.pi * 440 / 44100).astype(np.float32)
    for start in range(0, 44100 - 1024, 1024):
        frame = av.AudioFrame.from_ndarray(np.stack([tone[start : start + 1024]] * 2), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = 44100, start
        raw.extend(bytes(p) for p in encoder.encode(frame))
    stats = TranscodeStats()
    to_opus = AacToOpus(lambda units: None, stats, 64000)
    opus = [unit for index, data in enumerate(raw) for unit in to_opus.process((asc, data, index * 23))]
    # About a second of audio as 20 ms Opus packets with continuous timestamps.
    assert 40 <= len(opus) <= 50 and {u.samples for u in opus} == {960}
    assert [u.pts for u in opus] == [i * 960 for i in range(len(opus))]
    to_aac = OpusToAac(lambda frames: None, stats, 128000)
    config = to_aac.prepare()
    assert config[:2] == bytes.fromhex("1190")  # AAC-LC, 48 kHz, stereo
    aac = [out for unit in opus for out in to_aac.process((unit.data, unit.pts // 48))]
    assert len(aac) >= 35 and all(out.config == config and out.data for out in aac)
    assert [out.pts for out in aac] == sorted(out.pts for out in aac)
