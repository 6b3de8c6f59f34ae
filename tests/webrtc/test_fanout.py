"""Fan-out is hub -> one feed per stream -> its viewers: N WHEP viewers make exactly one hub subscriber, and
none is left once they are gone. In-process: a real `WebrtcService` behind aiohttp, real aiortc offers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCPeerConnection

from mediaserver.auth import AllowAll
from mediaserver.config import WebrtcConfig
from mediaserver.http.app import create_app
from mediaserver.hub import Hub
from mediaserver.media import Packet
from mediaserver.metrics import Metrics
from mediaserver.webrtc.feed import StreamFeed
from mediaserver.webrtc.service import WebrtcService
from mediaserver.webrtc.tracks import VideoOut
from mediaserver.webrtc.transcode import TranscodeStats
from tests.webrtc.helpers import SDP, loopback_offer, loopback_pc
from tests.webrtc.test_tracks import CountingQueue, Started, live_stream, new_viewer, push_video

VIEWERS = 3


def test_one_hub_subscriber_for_many_viewers_of_a_feed() -> None:
    hub = Hub()
    stream = live_stream(hub)
    push_video(stream, 0, key=True)
    feed = StreamFeed(stream.key, stream, TranscodeStats(), 64000, lambda reason: None)
    viewers = [new_viewer(feed)[0] for _ in range(VIEWERS)]
    assert stream.subscribers == [feed]
    for viewer in viewers[:-1]:
        feed.remove(viewer)
    assert stream.subscribers == [feed]
    feed.remove(viewers[-1])
    # The last viewer gone: the feed leaves the hub; the next one makes it subscribe again.
    assert stream.subscribers == []
    again, _ = new_viewer(feed)
    assert stream.subscribers == [feed]
    feed.remove(again)
    assert stream.subscribers == [] and not feed.viewers


async def test_one_packet_reaches_every_viewer_through_one_hub_call() -> None:
    hub = Hub()
    stream = live_stream(hub)
    push_video(stream, 0, key=True)
    queue = CountingQueue()
    feed = StreamFeed(stream.key, stream, TranscodeStats(), 64000, lambda reason: None, queue)
    outs = [new_viewer(feed)[1] for _ in range(VIEWERS)]
    for out in outs:
        Started(out)  # started, on the cached keyframe
    queue.batches.clear()
    calls = 0
    on_packet = feed.on_packet

    def counted(packet: Packet) -> None:
        nonlocal calls
        calls += 1
        on_packet(packet)

    feed.on_packet = counted  # type: ignore[method-assign]
    push_video(stream, 40, key=False)
    assert calls == 1
    # One send batch for all the viewers.
    ((_, targets),) = queue.batches
    assert [target[0] for target in targets] == [out.rtp for out in outs]


def test_the_stream_ending_unsubscribes_the_feed() -> None:
    hub = Hub()
    stream = live_stream(hub)
    feed = StreamFeed(stream.key, stream, TranscodeStats(), 64000, lambda reason: None)
    new_viewer(feed)
    new_viewer(feed)
    hub.unpublish(stream)
    assert feed.stream is None and not feed.subscribed
    restarted = live_stream(hub)
    feed.stream_started(restarted)
    assert restarted.subscribers == [feed]
    feed.close()
    assert restarted.subscribers == []


@pytest.fixture
async def whep() -> AsyncIterator[tuple[Hub, WebrtcService, TestClient]]:  # type: ignore[type-arg]
    hub = Hub()
    metrics = Metrics(hub)
    config = WebrtcConfig(host_addresses=["127.0.0.1"], max_sessions=VIEWERS + 1)
    service = WebrtcService(hub, config, metrics.registry, AllowAll(), metrics.traffic)
    client = TestClient(TestServer(create_app(hub, metrics, service.routes())))
    await client.start_server()
    service.start()
    try:
        yield hub, service, client
    finally:
        await service.stop()
        await client.close()


async def test_n_whep_viewers_make_one_hub_subscriber(whep: tuple[Hub, WebrtcService, TestClient]) -> None:  # type: ignore[type-arg]
    hub, service, client = whep
    stream = live_stream(hub)
    push_video(stream, 0, key=True)
    peers: list[RTCPeerConnection] = []
    locations = []
    try:
        for _ in range(VIEWERS):
            pc = loopback_pc()
            peers.append(pc)
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")
            response = await client.post("/whep/live/cam", data=await loopback_offer(pc), headers=SDP)
            assert response.status == 201, await response.text()
            locations.append(response.headers["Location"])
        assert len(service.sessions) == VIEWERS and len(service.feeds) == 1
        (feed,) = service.feeds.values()
        # The feed is the stream's only subscriber, and its viewers are not subscribers at all.
        assert stream.subscribers == [feed] and len(feed.viewers) == VIEWERS
        assert stream.subscriber_counts() == {"webrtc": 1}
        scrape = await (await client.get("/metrics")).text()
        assert 'mediaserver_subscribers{protocol="webrtc"} 1.0' in scrape
        assert "mediaserver_webrtc_feeds 1.0" in scrape
        # Video only: no audio in the stream, so no Opus track and no transcoder.
        assert all(isinstance(viewer.video, VideoOut) and viewer.audio is None for viewer in feed.viewers)
        listing = await (await client.get("/api/v1/webrtc/sessions")).json()
        assert listing["feeds"] == 1 and {s["name"] for s in listing["sessions"]} == {"cam"}

        for location in locations[:-1]:
            assert (await client.delete(location)).status == 200
        assert stream.subscribers == [feed]
        assert (await client.delete(locations[-1])).status == 200
        assert stream.subscribers == [] and not service.feeds and not service.sessions
    finally:
        for pc in peers:
            await pc.close()


async def test_a_failed_offer_leaves_no_subscriber(whep: tuple[Hub, WebrtcService, TestClient]) -> None:  # type: ignore[type-arg]
    hub, service, client = whep
    stream = live_stream(hub)
    pc = loopback_pc()
    try:
        pc.addTransceiver("video", direction="recvonly")
        offer = await loopback_offer(pc)
        # Valid SDP that aiortc refuses (no RTCP mux): the set-up fails after the viewer joined its feed.
        broken = "".join(line for line in offer.splitlines(keepends=True) if not line.startswith("a=rtcp-mux"))
        response = await client.post("/whep/live/cam", data=broken, headers=SDP)
        assert response.status == 400, await response.text()
        assert (await response.json())["error"]["code"] == "bad_offer"
        assert stream.subscribers == [] and not service.feeds and not service.sessions
    finally:
        await pc.close()
