from __future__ import annotations

import asyncio

from mediaserver.hub import DropCounter, Hub, PacketQueue, StreamTaken
from mediaserver.media import Codec, Packet, TrackKind

# An avcC built from the SPS/PPS that x264 wrote for a 352x288 picture.
_SPS = bytes.fromhex("6764000dacd941609684000003000400000300c83c50a658")
_PPS = bytes.fromhex("68ebe3cb22c0")
AVCC = bytes([1, 0x64, 0x00, 0x0D, 0xFF, 0xE1]) + len(_SPS).to_bytes(2, "big") + _SPS + b"\x01"
AVCC += len(_PPS).to_bytes(2, "big") + _PPS
AVC_SEQ = bytes.fromhex("1700000000") + AVCC


def video(ts: int, key: bool) -> Packet:
    body = bytes([0x17 if key else 0x27, 1, 0, 0, 0]) + b"\x00\x00\x00\x02\x65\x88"
    return Packet(TrackKind.VIDEO, Codec.H264, ts, ts, key, body, 5)


def audio(ts: int) -> Packet:
    return Packet(TrackKind.AUDIO, Codec.AAC, ts, ts, True, b"\xaf\x01\x21\x00", 2)


class FakePublisher:
    protocol = "test"
    peer = "127.0.0.1:1"

    def __init__(self) -> None:
        self.stopped: list[str] = []

    def stop(self, reason: str) -> None:
        self.stopped.append(reason)


class Recorder:
    protocol = "test"

    def __init__(self) -> None:
        self.packets: list[Packet] = []
        self.ended = False

    def on_packet(self, packet: Packet) -> None:
        self.packets.append(packet)

    def on_stream_end(self) -> None:
        self.ended = True


def test_gop_cache_restarts_on_keyframe_and_fans_out() -> None:
    hub = Hub()
    stream = hub.publish("live", "a", FakePublisher())
    sub = Recorder()
    stream.subscribe(sub)
    for ts, key in [(0, True), (40, False), (80, False), (120, True), (160, False)]:
        stream.push(video(ts, key))
        stream.push(audio(ts + 5))
    assert [p.dts for p in stream.gop] == [120, 125, 160, 165]
    assert len(sub.packets) == 10
    hub.unpublish(stream)
    assert sub.ended and hub.get("live", "a") is None


def test_second_publisher_is_refused() -> None:
    hub = Hub()
    hub.publish("live", "a", FakePublisher())
    try:
        hub.publish("live", "a", FakePublisher())
    except StreamTaken:
        pass
    else:
        raise AssertionError("duplicate publish accepted")


def test_gop_cache_is_bounded() -> None:
    hub = Hub(max_gop_bytes=100)
    stream = hub.publish("live", "a", FakePublisher())
    stream.push(video(0, True))
    for ts in range(1, 50):
        stream.push(video(ts * 40, False))
    assert stream.gop == []
    assert hub.drops.by_reason["gop_cache_overflow"] > 0


def test_new_sequence_header_clears_gop_and_sets_resolution() -> None:
    hub = Hub()
    stream = hub.publish("live", "a", FakePublisher())
    stream.push(video(0, True))
    config = Packet(TrackKind.VIDEO, Codec.H264, 0, 0, True, AVC_SEQ, 5, is_config=True)
    stream.push(config)
    assert stream.gop == []
    assert stream.video_config is config
    assert (stream.video.width, stream.video.height) == (352, 288)
    assert stream.video.config == AVCC


def test_packet_queue_skips_to_next_keyframe_on_overflow() -> None:
    async def run() -> None:
        drops = DropCounter()
        queue = PacketQueue(max_packets=3, drops=drops)
        queue.put(video(0, True))
        queue.put(video(40, False))
        queue.put(video(80, False))
        queue.put(video(120, False))  # overflow: everything goes, wait for a keyframe
        queue.put(audio(125))
        queue.put(video(160, False))
        queue.put(video(200, True))
        queue.put(audio(205))
        got = [await queue.get(), await queue.get()]
        assert [p.dts for p in got if p] == [200, 205]
        assert drops.by_reason["slow_consumer"] == 6
        queue.close()
        assert await queue.get() is None

    asyncio.run(run())


def test_idle_publisher_is_dropped() -> None:
    async def run() -> None:
        hub = Hub(idle_timeout=0.5)
        hub.start()
        publisher = FakePublisher()
        stream = hub.publish("live", "idle", publisher)
        sub = Recorder()
        stream.subscribe(sub)
        await asyncio.sleep(1.8)
        assert publisher.stopped == ["idle_timeout"]
        assert hub.get("live", "idle") is None and sub.ended
        await hub.stop()

    asyncio.run(run())


def test_typed_stream_events_and_the_hub_view() -> None:
    from mediaserver.events import StreamEvent, StreamEventKind

    hub = Hub()
    events: list[StreamEvent] = []
    hub.listen(events.append)
    publisher = FakePublisher()
    stream = hub.publish("live", "cam", publisher)
    config = Packet(TrackKind.VIDEO, Codec.H264, 0, 0, True, AVC_SEQ, 5, is_config=True)
    stream.push(config)
    stream.push(config)  # the same sequence header again: no change, no event
    stream.push(Packet(TrackKind.AUDIO, Codec.AAC, 0, 0, True, b"\xaf\x00\x12\x10", 2, is_config=True))
    assert [s.key for s in hub.list()] == ["live/cam"]
    assert hub.kick("live", "cam", "operator") and publisher.stopped == ["operator"]
    assert not hub.kick("live", "nobody", "operator")
    hub.unpublish(stream)
    kinds = [e.kind for e in events]
    assert kinds == [
        StreamEventKind.STARTED,
        StreamEventKind.CODEC_CHANGED,
        StreamEventKind.CODEC_CHANGED,
        StreamEventKind.STOPPED,
    ]
    video_change = events[1].as_dict()
    assert video_change == {
        "event": "codec-changed",
        "app": "live",
        "name": "cam",
        "at": events[1].at,
        "protocol": "test",
        "track": "video",
        "codec": "h264",
        "version": 1,
    }
    assert stream.video.width == 352 and stream.audio.sample_rate == 44100
    assert events[2].track == "audio" and events[3].as_dict()["event"] == "stream-stopped"


def _feed_gops(stream_gop: int, frames: int, min_video: int) -> tuple[Hub, list[Packet]]:
    """A stream of `frames` video frames (a keyframe every `stream_gop`) with audio between them."""
    hub = Hub(join_min_video_frames=min_video)
    stream = hub.publish("live", "a", FakePublisher())
    for index in range(frames):
        stream.push(video(index * 40, index % stream_gop == 0))
        stream.push(audio(index * 40 + 20))
    return hub, stream.join_burst()


def _video_in(packets: list[Packet]) -> list[Packet]:
    return [p for p in packets if p.kind is TrackKind.VIDEO]


def test_a_short_gop_joins_from_the_keyframe_before() -> None:
    # 2 s GOPs at 25 fps, 10 frames into the current one: the burst starts at the previous keyframe.
    _, burst = _feed_gops(50, 110, 45)
    frames = _video_in(burst)
    assert frames[0].keyframe and frames[0].dts == 50 * 40
    assert len(frames) == 60
    assert [p.dts for p in burst] == sorted(p.dts for p in burst)  # one timeline, nothing repeated
    # Once the current GOP holds enough frames by itself, only it is sent.
    _, burst = _feed_gops(50, 150, 45)
    assert _video_in(burst)[0].dts == 100 * 40 and len(_video_in(burst)) == 50


def test_short_gops_keep_only_as_many_as_the_minimum_needs() -> None:
    # 0.4 s GOPs: the burst is the fewest whole GOPs that reach 45 frames (here 5 of them).
    _, burst = _feed_gops(10, 203, 45)
    frames = _video_in(burst)
    # 3 frames into the current GOP: four GOPs before it would make 43, so five (from frame 150) make 53.
    assert frames[0].keyframe and frames[0].dts == 150 * 40
    assert len(frames) == 53


def test_without_a_minimum_the_burst_is_the_current_gop() -> None:
    hub, burst = _feed_gops(50, 110, 0)
    stream = hub.get("live", "a")
    assert stream is not None and burst == stream.gop
    assert _video_in(burst)[0].dts == 100 * 40


async def test_find_asks_the_handlers_again_when_one_says_another_worker_brings_the_stream() -> None:
    """The edge copy is asked first and finds nothing; the pull service learns that another worker has just claimed
    the stream (ELSEWHERE); the handlers are asked once more from the first, and the edge copy brings it."""
    from mediaserver.hub import ELSEWHERE

    hub = Hub()
    asked: list[str] = []
    claimed = False

    async def edge(app: str, name: str) -> bool | str:
        asked.append("edge")
        if not claimed:
            return False
        hub.publish(app, name, FakePublisher())
        return True

    async def pull(app: str, name: str) -> bool | str:
        nonlocal claimed
        asked.append("pull")
        claimed = True
        return ELSEWHERE

    hub.add_demand(pull)
    hub.add_demand(edge, first=True)
    stream = await hub.find("live", "door")
    assert stream is not None and stream.key == "live/door"
    assert asked == ["edge", "pull", "edge"]
    # A handler that keeps saying ELSEWHERE is not asked forever: once more, then the player gets nothing.
    asked.clear()
    alone = Hub()
    alone.add_demand(pull)
    assert await alone.find("live", "door") is None
    assert asked == ["pull", "pull"]
