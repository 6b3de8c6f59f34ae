"""The per-viewer media and the shared per-stream feed, with real hub streams and no network: each viewer's RTP
stream goes to a capturing link, read back with aiortc's parser and depayloader."""

from __future__ import annotations

import asyncio

import pytest
from aiortc.rtp import RtpPacket

from mediaserver.codecs.annexb import split_annexb
from mediaserver.codecs.h264 import avc_decoder_config
from mediaserver.formats.flv import avc_frame, avc_sequence_header
from mediaserver.hub import Hub, Stream
from mediaserver.webrtc import tracks
from mediaserver.webrtc.feed import StreamFeed, Viewer
from mediaserver.webrtc.rtpout import Target
from mediaserver.webrtc.sendqueue import SendQueue
from mediaserver.webrtc.tracks import DEFAULT_TICKS, SQUEEZED_TICKS, VideoOut
from mediaserver.webrtc.transcode import TranscodeStats
from tests.webrtc.rtp_capture import CaptureLink, annexb, capture_out, parse
from tests.webrtc.test_annexb import IDR, PPS, SLICE, SPS, length_prefixed


class FakePublisher:
    peer = "test"
    protocol = "test"

    def stop(self, reason: str) -> None:
        pass


class CountingQueue(SendQueue):
    """A send queue that also keeps every batch handed to it."""

    def __init__(self, **options: int) -> None:
        super().__init__(**options)
        self.batches: list[tuple[list[bytes], list[Target]]] = []

    def submit(self, payloads: list[bytes], targets: list[Target]) -> None:
        self.batches.append((payloads, list(targets)))
        super().submit(payloads, targets)


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


def new_feed(stream: Stream, queue: SendQueue | None = None) -> StreamFeed:
    return StreamFeed(stream.key, stream, TranscodeStats(), 64000, lambda reason: None, queue)


def new_viewer(feed: StreamFeed) -> tuple[Viewer, VideoOut]:
    out = VideoOut(feed.gop_snapshot, feed.send_queue)
    viewer = Viewer(out, None)
    feed.add(viewer)
    return viewer, out


class Started:
    """A started viewer's RTP stream, parsed back into frames."""

    def __init__(self, out: VideoOut) -> None:
        rtp, self.link, self.parameters = capture_out("video")
        self.origin = rtp.origin
        out.start(rtp)

    def packets(self) -> list[RtpPacket]:
        return [parse(self.parameters, data) for data in self.link.packets]

    def frames(self) -> list[tuple[int, list[bytes]]]:
        """(timestamp from the stream's origin, NAL units) of each complete frame sent so far."""
        frames: list[tuple[int, list[bytes]]] = []
        current: list[RtpPacket] = []
        for packet in self.packets():
            current.append(packet)
            if packet.marker:
                frames.append(((packet.timestamp - self.origin) & 0xFFFFFFFF, split_annexb(annexb(current))))
                current = []
        return frames


async def settle() -> None:
    """Let the send queue's slices and the catch-up ticks run."""
    await asyncio.sleep(0.05)


async def test_viewer_starts_on_the_cached_gop_then_goes_live() -> None:
    hub = Hub()
    stream = live_stream(hub)
    for index, ts in enumerate((0, 40, 80, 120)):
        push_video(stream, ts, key=index == 0)
    feed = new_feed(stream)
    _, out = new_viewer(feed)
    assert stream.subscriber_counts() == {"webrtc": 1}
    viewer = Started(out)
    await settle()

    frames = viewer.frames()
    # Every IDR carries SPS and PPS in front; the cached GOP goes out at once, 1 ms apart, so the picture
    # reaches the live edge at once.
    assert frames[0] == (0, [SPS, PPS, IDR])
    assert frames[1:] == [(SQUEEZED_TICKS * n, [SLICE]) for n in (1, 2, 3)]
    # Live frames keep the stream's own spacing (40 ms = 3600 ticks at 90 kHz).
    push_video(stream, 160, key=False)
    await settle()
    live = viewer.frames()[-1]
    assert live == (3 * SQUEEZED_TICKS + 3600, [SLICE])
    # Sequence numbers run on without a gap.
    seqs = [packet.sequence_number for packet in viewer.packets()]
    assert seqs == [(seqs[0] + n) & 0xFFFF for n in range(len(seqs))]

    # The publisher reconnects: the viewer carries on from the new stream's first keyframe.
    hub.unpublish(stream)
    assert feed.stream is None and feed.ended_at is not None
    restarted = live_stream(hub)
    feed.stream_started(restarted)
    push_video(restarted, 0, key=False)  # not decodable without its keyframe: dropped
    push_video(restarted, 40, key=True)
    push_video(restarted, 80, key=False)
    await settle()
    again, after = viewer.frames()[-2:]
    assert again == (live[0] + DEFAULT_TICKS, [SPS, PPS, IDR])
    assert after[0] == again[0] + 3600
    assert out.counters.dropped == 1 and restarted.subscriber_counts() == {"webrtc": 1}


async def test_viewers_share_the_packetised_frames() -> None:
    hub = Hub()
    stream = live_stream(hub)
    push_video(stream, 0, key=True)
    queue = CountingQueue()
    feed = new_feed(stream, queue)
    _, one = new_viewer(feed)
    _, two = new_viewer(feed)
    first, second = Started(one), Started(two)
    queue.batches.clear()
    push_video(stream, 40, key=False)
    # One batch for both viewers: the payloads made once, each viewer with its own numbering.
    ((payloads, targets),) = queue.batches
    assert [target[0] for target in targets] == [one.rtp, two.rtp]
    await settle()
    a, b = first.packets()[-1], second.packets()[-1]
    assert a.payload == b.payload == payloads[0] and a.ssrc != b.ssrc
    # A late joiner starts on the same cached units.
    queue.batches.clear()
    _, three = new_viewer(feed)
    Started(three)
    cached = feed.gop_snapshot()
    assert [batch[0] for batch in queue.batches] == [unit.payloads for unit in cached]
    assert all(batch[0] is unit.payloads for batch, unit in zip(queue.batches, cached, strict=True))
    feed.close()
    assert stream.subscriber_counts() == {}


async def test_a_viewer_that_falls_behind_its_catch_up_skips_to_the_next_keyframe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tracks, "CATCHUP_PACKETS", 1)  # one cached frame a tick
    hub = Hub()
    stream = live_stream(hub)
    for index in range(10):
        push_video(stream, index * 40, key=index == 0)
    feed = new_feed(stream)
    out = VideoOut(feed.gop_snapshot, feed.send_queue, max_backlog=12)
    feed.add(Viewer(out, None))
    viewer = Started(out)
    # The catch-up has 9 cached frames to go: live frames wait behind them, up to 12 frames in all; the 4th
    # live one overflows the backlog, and everything waiting is dropped.
    for index in range(10, 14):
        push_video(stream, index * 40, key=False)
    assert out.counters.dropped == 12 + 1
    push_video(stream, 14 * 40, key=False)  # waiting for a keyframe
    push_video(stream, 15 * 40, key=True)
    push_video(stream, 16 * 40, key=False)
    await asyncio.sleep(0.2)
    assert out.counters.dropped == 14
    nals = [frame[1] for frame in viewer.frames()]
    # The cached keyframe, then the new keyframe and what follows it (the catch-up was given up).
    assert nals == [[SPS, PPS, IDR], [SPS, PPS, IDR], [SLICE]]


async def test_a_live_keyframe_cuts_the_catch_up_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracks, "CATCHUP_PACKETS", 1)
    hub = Hub()
    stream = live_stream(hub)
    for index in range(6):
        push_video(stream, index * 40, key=index == 0)
    feed = new_feed(stream)
    _, out = new_viewer(feed)
    viewer = Started(out)
    push_video(stream, 240, key=True)
    await settle()
    # Nothing of the old GOP is worth sending once a newer keyframe is here; nothing counts as dropped.
    assert [frame[1] for frame in viewer.frames()] == [[SPS, PPS, IDR], [SPS, PPS, IDR]]
    assert out.counters.dropped == 0


async def test_an_overloaded_send_queue_drops_delta_frames_for_everyone() -> None:
    hub = Hub()
    stream = live_stream(hub)
    push_video(stream, 0, key=True)
    queue = SendQueue(max_delay=0.0)
    feed = new_feed(stream, queue)
    outs = [new_viewer(feed)[1] for _ in range(2)]
    viewers = [Started(out) for out in outs]
    # Both cached keyframes are still queued (the loop has not run), "too long": the next delta frame is dropped.
    assert queue.overloaded
    push_video(stream, 40, key=False)
    await settle()
    push_video(stream, 80, key=False)  # not overloaded any more, but the viewers wait for a keyframe
    push_video(stream, 120, key=True)
    await settle()
    for out, viewer in zip(outs, viewers, strict=True):
        assert out.counters.dropped == 2
        assert [frame[1] for frame in viewer.frames()] == [[SPS, PPS, IDR], [SPS, PPS, IDR]]


async def test_a_keyframe_request_resends_the_cached_gop_at_most_once_a_second() -> None:
    hub = Hub()
    stream = live_stream(hub)
    push_video(stream, 0, key=True)
    push_video(stream, 40, key=False)
    feed = new_feed(stream)
    _, out = new_viewer(feed)
    viewer = Started(out)
    await settle()
    # Just after a keyframe went out: nothing to do.
    assert not out.resync()
    out.keyframe_sent_at -= tracks.RESYNC_INTERVAL
    assert out.resync()
    await settle()
    timestamps = [ts for ts, _ in viewer.frames()]
    assert [nals for _, nals in viewer.frames()] == [[SPS, PPS, IDR], [SLICE], [SPS, PPS, IDR], [SLICE]]
    assert timestamps == sorted(timestamps) and len(set(timestamps)) == 4
    assert not out.resync()


async def test_nothing_goes_to_a_viewer_that_left() -> None:
    hub = Hub()
    stream = live_stream(hub)
    push_video(stream, 0, key=True)
    feed = new_feed(stream)
    viewer_obj, out = new_viewer(feed)
    viewer = Started(out)
    push_video(stream, 40, key=False)  # queued, not sent yet
    out.end()
    feed.remove(viewer_obj)
    await settle()
    assert viewer.link.packets == [] and isinstance(viewer.link, CaptureLink)


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


async def test_catching_up_waits_while_the_send_queue_is_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracks, "CATCHUP_QUEUE_LIMIT", 0)
    hub = Hub()
    stream = live_stream(hub)
    push_video(stream, 0, key=True)
    push_video(stream, 40, key=False)
    queue = CountingQueue()
    feed = new_feed(stream, queue)
    _, busy = new_viewer(feed)
    _, late = new_viewer(feed)
    Started(busy)  # its keyframe is queued: the queue is not empty
    Started(late)
    # The late viewer's catch-up waited for the queue to drain, then went on.
    assert [batch[1][0][0] for batch in queue.batches] == [busy.rtp, busy.rtp]
    await settle()
    assert [batch[1][0][0] for batch in queue.batches][2:] == [late.rtp, late.rtp]
