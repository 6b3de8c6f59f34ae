"""The Snapshotter with real pictures: PyAV encodes them, the hub caches them, the JPEG is decoded back."""

from __future__ import annotations

import asyncio
import fractions
import io
import threading

import av
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from mediaserver.config import ConfigError, SnapshotConfig
from mediaserver.formats.flv import avc_frame, parse_video
from mediaserver.hub import Hub, Stream
from mediaserver.snapshot import SnapshotError, Snapshotter, output_size
from tests.snapshot.media import LEFT, RIGHT, FakePublisher, coded, live_stream


def decode_jpeg(jpeg: bytes) -> np.ndarray:
    with av.open(io.BytesIO(jpeg), "r") as container:
        assert container.streams.video[0].codec_context.name == "mjpeg"
        frame = next(container.decode(video=0))
    return frame.to_ndarray(format="rgb24")


def assert_halves(rgb: np.ndarray) -> None:
    """The picture still shows its two halves, in their colours (JPEG and 4:2:0 allow a little drift)."""
    height, width, _ = rgb.shape
    left = rgb[height // 2, width // 4].astype(int)
    right = rgb[height // 2, 3 * width // 4].astype(int)
    assert np.abs(left - LEFT).max() <= 12, left
    assert np.abs(right - RIGHT).max() <= 12, right


def samples(registry: CollectorRegistry) -> dict[str, float]:
    names = ("made", "cache_hits", "shared")
    values = {
        name: registry.get_sample_value(f"mediaserver_snapshot{'s' if name == 'made' else ''}_{name}_total")
        for name in names
    }
    return {name: value or 0.0 for name, value in values.items()}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.mark.parametrize("codec", ["h264", "hevc", "av1", "vp9"])
async def test_keyframe_becomes_a_scaled_jpeg(codec: str, registry: CollectorRegistry) -> None:
    encoder = {"h264": "libx264", "hevc": "libx265", "av1": "libsvtav1", "vp9": "libvpx-vp9"}[codec]
    if encoder not in av.codecs_available:
        pytest.skip(f"no {encoder} in this FFmpeg")
    hub = Hub()
    snapshotter = Snapshotter(hub, max_width=640, registry=registry)
    stream = live_stream(hub, "cam", codec, 1280, 720)
    try:
        snapshot = await snapshotter.snapshot(stream)
        # The work ran in the snapshotter's own threads, which now wait for the next picture.
        assert any(t.name.startswith("snapshot") for t in threading.enumerate())
    finally:
        snapshotter.close()
    assert snapshot.jpeg[:2] == b"\xff\xd8" and snapshot.jpeg[-2:] == b"\xff\xd9"
    assert (snapshot.width, snapshot.height) == (640, 360)
    rgb = decode_jpeg(snapshot.jpeg)
    assert rgb.shape == (360, 640, 3)
    assert_halves(rgb)
    assert samples(registry)["made"] == 1
    assert registry.get_sample_value("mediaserver_snapshot_decode_seconds_count") == 1


async def test_small_pictures_are_not_enlarged_and_zero_means_native() -> None:
    hub = Hub()
    small = live_stream(hub, "small", "h264", 320, 240)
    large = live_stream(hub, "large", "h264", 1280, 720)
    capped, native = Snapshotter(max_width=640), Snapshotter(max_width=0, quality=2)
    try:
        assert decode_jpeg((await capped.snapshot(small)).jpeg).shape == (240, 320, 3)
        picture = await native.snapshot(large)
        assert decode_jpeg(picture.jpeg).shape == (720, 1280, 3)
        assert_halves(decode_jpeg(picture.jpeg))
    finally:
        capped.close()
        native.close()


def test_output_size_keeps_the_display_aspect() -> None:
    assert output_size(1920, 1080, 640) == (640, 360)
    assert output_size(320, 240, 640) == (320, 240)
    assert output_size(2560, 1440, 0) == (2560, 1440)
    # PAL 4:3 with non-square pixels (SAR 12:11): 768x576 on screen.
    assert output_size(704, 576, 640, fractions.Fraction(12, 11)) == (640, 480)
    assert output_size(704, 576, 0, fractions.Fraction(12, 11)) == (768, 576)
    # Odd results are made even (4:2:0), never zero.
    assert output_size(1000, 562, 500) == (500, 280)
    assert output_size(4000, 2, 640) == (640, 2)


async def test_cache_hit_then_a_new_keyframe_after_the_ttl(registry: CollectorRegistry) -> None:
    hub = Hub()
    snapshotter = Snapshotter(hub, cache_seconds=0.2, registry=registry)
    stream = live_stream(hub, "cam", "h264", 640, 360)
    try:
        first = await snapshotter.snapshot(stream)
        assert first.max_age() == 1  # 0.2 s, rounded up
        assert await snapshotter.snapshot(stream) is first
        assert samples(registry) == {"made": 1, "cache_hits": 1, "shared": 0}
        # Past the TTL with the same keyframe: the same picture, served again without a decode.
        await asyncio.sleep(0.25)
        again = await snapshotter.snapshot(stream)
        assert again.jpeg is first.jpeg and again.expires > first.expires
        assert samples(registry)["made"] == 1
        # A new keyframe: the cached picture stays until the TTL, then a new one is made.
        packets = coded("h264", 640, 360, count=1)
        for packet in packets:
            stream.push(packet)
        assert (await snapshotter.snapshot(stream)).jpeg is first.jpeg
        await asyncio.sleep(0.25)
        fresh = await snapshotter.snapshot(stream)
        assert fresh.jpeg is not first.jpeg
        assert samples(registry) == {"made": 2, "cache_hits": 3, "shared": 0}
    finally:
        snapshotter.close()


async def test_concurrent_requests_share_one_decode(registry: CollectorRegistry) -> None:
    hub = Hub()
    snapshotter = Snapshotter(hub, registry=registry)
    stream = live_stream(hub, "cam", "h264", 1920, 1080)
    try:
        results = await asyncio.gather(*(snapshotter.snapshot(stream) for _ in range(20)))
    finally:
        snapshotter.close()
    assert all(result is results[0] for result in results)
    assert samples(registry) == {"made": 1, "cache_hits": 0, "shared": 19}


async def test_no_cache_still_shares_the_decode_in_flight(registry: CollectorRegistry) -> None:
    hub = Hub()
    snapshotter = Snapshotter(hub, cache_seconds=0, registry=registry)
    stream = live_stream(hub, "cam", "h264", 640, 360)
    try:
        together = await asyncio.gather(snapshotter.snapshot(stream), snapshotter.snapshot(stream))
        assert together[0] is together[1] and together[0].max_age() == 0
        await snapshotter.snapshot(stream)
    finally:
        snapshotter.close()
    assert samples(registry) == {"made": 2, "cache_hits": 0, "shared": 1}


async def test_a_waiter_that_leaves_does_not_cancel_the_others() -> None:
    hub = Hub()
    snapshotter = Snapshotter(hub)
    stream = live_stream(hub, "cam", "h264", 1280, 720)
    try:
        leaving = asyncio.ensure_future(snapshotter.snapshot(stream))
        staying = asyncio.ensure_future(snapshotter.snapshot(stream))
        await asyncio.sleep(0)
        leaving.cancel()
        snapshot = await staying
        assert leaving.cancelled()
        assert decode_jpeg(snapshot.jpeg).shape == (360, 640, 3)
    finally:
        snapshotter.close()


async def test_nothing_to_decode_and_undecodable_keyframes_fail_cleanly(registry: CollectorRegistry) -> None:
    hub = Hub()
    snapshotter = Snapshotter(hub, registry=registry)
    try:
        stream = hub.publish("live", "empty", FakePublisher())
        with pytest.raises(SnapshotError) as empty:
            await snapshotter.snapshot(stream)
        assert empty.value.code == "snapshot_unavailable"
        # A configuration, then a "keyframe" of noise.
        stream.push(coded("h264", 640, 360, count=1)[0])
        with pytest.raises(SnapshotError) as unavailable:
            await snapshotter.snapshot(stream)
        assert unavailable.value.code == "snapshot_unavailable"
        noise = parse_video(avc_frame(b"\x00\x00\x00\x08" + bytes(range(0x65, 0x6D)), True), 0)
        assert noise is not None
        stream.push(noise)
        with pytest.raises(SnapshotError) as broken:
            await snapshotter.snapshot(stream)
        assert broken.value.code == "snapshot_failed"
    finally:
        snapshotter.close()
    assert registry.get_sample_value("mediaserver_snapshot_failures_total", {"reason": "snapshot_unavailable"}) == 2
    assert registry.get_sample_value("mediaserver_snapshot_failures_total", {"reason": "snapshot_failed"}) == 1
    # A failure is not cached: the next request tries again.
    assert not snapshotter._cache


async def test_an_ended_stream_leaves_the_cache_and_a_new_one_is_not_served_the_old_picture() -> None:
    hub = Hub()
    snapshotter = Snapshotter(hub)
    try:
        old: Stream = live_stream(hub, "cam", "h264", 640, 360)
        first = await snapshotter.snapshot(old)
        hub.unpublish(old)
        assert "live/cam" not in snapshotter._cache
        new = live_stream(hub, "cam", "h264", 320, 240)
        second = await snapshotter.snapshot(new)
        assert second is not first and (second.width, second.height) == (320, 240)
    finally:
        snapshotter.close()


def test_settings_are_checked_and_come_from_the_config() -> None:
    for bad in ({"quality": 1}, {"quality": 32}, {"max_width": -1}, {"cache_seconds": -1.0}, {"workers": 0}):
        with pytest.raises(ConfigError):
            Snapshotter(**bad)
    snapshotter = Snapshotter.from_config(SnapshotConfig(max_width=320, cache_seconds=1.5, quality=9))
    assert (snapshotter.max_width, snapshotter.cache_seconds, snapshotter.quality) == (320, 1.5, 9)
    snapshotter.close()


def test_metrics_register_once_per_registry(registry: CollectorRegistry) -> None:
    snapshotter = Snapshotter()
    snapshotter.register_metrics(registry)
    snapshotter.register_metrics(registry)
    assert registry.get_sample_value("mediaserver_snapshots_made_total") == 0
    snapshotter.close()
