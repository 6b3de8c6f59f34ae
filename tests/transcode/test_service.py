"""The transcode service in-process with a real worker process: a rung asked of the hub brings its source through
the next demand handler (as an on-demand pulled camera would), a busy worker's queue skips to the next keyframe
and counts it, and a source that ends takes its rungs and its worker with it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from mediaserver.config import TranscodeConfig
from mediaserver.formats.flv import avc_frame, avc_sequence_header, parse_video
from mediaserver.hub import Hub, Stream
from mediaserver.media import Packet
from mediaserver.transcode.service import TranscodeService
from tests.snapshot.media import FakePublisher, h264


def _packet(body: bytes, dts: int) -> Packet:
    packet = parse_video(body, dts)
    assert packet is not None
    return packet


async def test_a_rung_brings_its_source_through_the_chain_and_ends_with_it() -> None:
    config, units = h264(640, 360, 120, gop=10)
    hub = Hub(idle_timeout=0)
    sources: list[Stream] = []

    async def bring_source(app: str, name: str) -> bool:
        """Another demand handler (the pull service's role): brings live/cam with its first keyframe group."""
        if (app, name) != ("live", "cam"):
            return False
        stream = hub.publish(app, name, FakePublisher())
        stream.push(_packet(avc_sequence_header(config), 0))
        for index, (keyframe, unit) in enumerate(units[:10]):
            stream.push(_packet(avc_frame(unit, keyframe), index * 40))
        sources.append(stream)
        return True

    hub.add_demand(bring_source)
    registry = CollectorRegistry()
    settings = TranscodeConfig(streams=["live/*"], ladder=["180p:320x180:200k"], threads=1, queue_packets=16)
    service = TranscodeService(hub, settings, registry)
    service.start()
    try:
        assert await hub.find("live", "other_180p") is None  # not a source anyone can bring
        rung = await hub.find("live", "cam_180p")
        assert rung is not None and (rung.video.width, rung.video.height) == (320, 180)
        assert rung.publisher.protocol == "transcode" and len(sources) == 1
        ladder = service.ladders["live/cam"]
        process = ladder.process
        assert service.renditions("live", "cam") == ["cam_180p"]
        assert service.renditions("live", "cam_180p") == ["cam"]
        assert service.renditions("live", "other") == [] and service.renditions("live", "cam_720p") == []
        assert process is not None and registry.get_sample_value("mediaserver_transcode_workers") == 1
        # Far more than the queue holds at once: it drops to the next keyframe and counts what it skipped.
        for index, (keyframe, unit) in enumerate(units[10:], start=10):
            sources[0].push(_packet(avc_frame(unit, keyframe), index * 40))
        dropped = registry.get_sample_value("mediaserver_transcode_dropped_total")
        assert dropped is not None and dropped > 0
        for _ in range(100):
            if rung.video_frames >= 20:
                break
            await asyncio.sleep(0.05)
        assert rung.video_frames >= 20  # it goes on after the skip
        frames = registry.get_sample_value("mediaserver_transcode_frames_total", {"rung": "180p"})
        assert frames == rung.video_frames
        # The source ends: the rung ends, and the worker process goes.
        hub.unpublish(sources[0])
        for _ in range(100):
            if process.returncode is not None and "live/cam" not in service.ladders:
                break
            await asyncio.sleep(0.05)
        assert process.returncode is not None and not Path(f"/proc/{process.pid}").exists()
        assert rung.ended and hub.get("live", "cam_180p") is None
        assert registry.get_sample_value("mediaserver_transcode_workers") == 0
    finally:
        await service.stop()
