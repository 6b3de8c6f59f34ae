"""WHIP ingest: an aiortc publisher (synthetic video + audio) joins the hub and plays over RTMP, HLS and WHEP."""

from __future__ import annotations

import asyncio
import time

from aiortc import AudioStreamTrack, RTCSessionDescription, VideoStreamTrack

from tests.conftest import ServerProcess, wait_for_stream
from tests.webrtc.helpers import (
    loopback_offer,
    loopback_pc,
    metric,
    post,
    probe,
    request,
    sessions,
    wait_no_sessions,
    wait_until,
    whep_play,
)


async def test_whip_publish_plays_over_rtmp_hls_and_whep(webrtc_server: ServerProcess) -> None:
    server = webrtc_server
    publisher = loopback_pc()
    publisher.addTrack(VideoStreamTrack())  # 640x480 at 30 fps, encoded by aiortc (H.264 as negotiated)
    publisher.addTrack(AudioStreamTrack())  # silence, Opus
    viewer = None
    try:
        answer = await post(server.http_url("/whip/live/whipcam"), await loopback_offer(publisher))
        assert answer.status == 201, answer.body
        location = answer.headers["Location"]
        assert location.startswith("/whip/live/whipcam/")
        assert "H264/90000" in answer.body and "opus/48000/2" in answer.body
        await publisher.setRemoteDescription(RTCSessionDescription(answer.body, "answer"))

        # Blocking helpers run in a thread: this loop is also the publisher's.
        stream = await asyncio.to_thread(wait_for_stream, server, "live", "whipcam", 15)
        assert stream["publisher"] == {"protocol": "webrtc", "peer": "127.0.0.1"}
        assert stream["video"] == {"codec": "h264", "width": 640, "height": 480, "fps": stream["video"]["fps"]}  # type: ignore[index]

        # RTMP: a real client sees H.264 640x480 and AAC (transcoded from Opus).
        streams = await probe(server.rtmp_url("live/whipcam"))
        by_codec = {s["codec_name"]: s for s in streams}
        assert by_codec["h264"]["width"] == 640 and by_codec["h264"]["height"] == 480, streams
        assert by_codec["aac"]["sample_rate"] == "48000", streams

        # HLS: the playlist fills (segments cut on the keyframes our PLIs ask for).
        async def playlist_ready() -> bool:
            reply = await request("GET", server.http_url("/hls/live/whipcam/index.m3u8"))
            return reply.status == 200 and "#EXTINF" in reply.body

        deadline = time.monotonic() + 15
        while not await playlist_ready():
            assert time.monotonic() < deadline, "no HLS segment from the WHIP stream"
            await asyncio.sleep(0.3)
        hls = await probe(server.http_url("/hls/live/whipcam/index.m3u8"))
        assert {s["codec_name"] for s in hls} == {"h264", "aac"}

        # WHEP: a WebRTC viewer of the WebRTC publisher.
        viewer, viewer_answer, received = await whep_play(server, "/whep/live/whipcam")
        assert viewer_answer.status == 201, viewer_answer.body
        assert await wait_until(lambda: len(received.video) >= 20, 15)
        assert {(f.width, f.height) for f in received.video} == {(640, 480)}

        # The name is taken while the publisher is live.
        second = loopback_pc()
        second.addTrack(VideoStreamTrack())
        taken = await post(server.http_url("/whip/live/whipcam"), await loopback_offer(second))
        await second.close()
        assert taken.status == 409 and taken.json()["error"]["code"] == "stream_taken"

        assert metric(server, "mediaserver_webrtc_sessions", 'kind="whip",state="connected"') == 1
        assert metric(server, "mediaserver_webrtc_keyframe_requests_total", 'direction="sent"') >= 1
        assert metric(server, "mediaserver_webrtc_transcode_calls_total", 'direction="opus_to_aac"') > 0
        assert metric(server, "mediaserver_webrtc_received_frames_total", 'media="video"') > 0

        # Hang up: the stream ends, and its WHEP viewer is closed once its stream has been gone a while.
        assert (await request("DELETE", server.http_url(location))).status == 200
        gone = await request("GET", server.http_url("/api/v1/streams/live/whipcam"))
        assert gone.status == 404
        await wait_no_sessions(server, 8)
        listing = sessions(server)
        assert listing["count"] == 0
    finally:
        await publisher.close()
        if viewer is not None:
            await viewer.close()
