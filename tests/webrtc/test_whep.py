"""WHEP playback with real clients: aiortc viewers of a real ffmpeg RTMP publish, abrupt disconnects, bad input."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

from aiortc import RTCRtpReceiver

from tests.conftest import ServerProcess, ffmpeg_publish, wait_for_stream
from tests.webrtc.helpers import (
    SDP,
    loopback_offer,
    loopback_pc,
    metric,
    post,
    project_root,
    request,
    sessions,
    wait_no_sessions,
    wait_until,
    whep_play,
)

SESSION_TIMEOUT = 3.0


async def test_aiortc_viewer_decodes_the_rtmp_stream(webrtc_server: ServerProcess) -> None:
    server = webrtc_server
    publisher = ffmpeg_publish(server.rtmp_url("live/cam"), 25, size="640x360", rate=25, gop=25)
    try:
        wait_for_stream(server, "live", "cam")
        await asyncio.sleep(1.2)  # a GOP in the cache, so the viewer starts mid-GOP
        posted = time.monotonic()
        pc, answer, received = await whep_play(server, "/whep/live/cam")
        try:
            assert answer.status == 201, answer.body
            assert answer.headers["Content-Type"].startswith("application/sdp")
            location = answer.headers["Location"]
            assert re.fullmatch(r"/whep/live/cam/[0-9a-f]{24}", location), location
            assert answer.headers["Access-Control-Allow-Origin"] == "*"
            assert "Location" in answer.headers["Access-Control-Expose-Headers"]
            # Complete answer, non-trickle: our candidates, on 127.0.0.1 only, and end-of-candidates.
            candidates = re.findall(r"a=candidate:\S+ \d \S+ \d+ (\S+) \d+ typ (\w+)", answer.body)
            assert candidates and {c[0] for c in candidates} == {"127.0.0.1"}, answer.body
            assert "a=end-of-candidates" in answer.body and "a=rtpmap:" in answer.body
            assert re.search(r"a=rtpmap:\d+ H264/90000", answer.body) and "opus/48000/2" in answer.body

            assert await wait_until(lambda: len(received.video) >= 50 and len(received.audio) >= 50, 15)
            # The first picture comes from the cached GOP, at once (ICE + DTLS included).
            assert received.first_video_at is not None and received.first_video_at - posted < 2.5
            sizes = {(frame.width, frame.height) for frame in received.video}
            assert sizes == {(640, 360)}, sizes
            assert {frame.sample_rate for frame in received.audio} == {48000}
            # Timestamps only go forward.
            pts = [frame.pts for frame in received.video]
            assert pts == sorted(pts)

            listing = sessions(server)
            assert listing["count"] == 1
            (session,) = listing["sessions"]
            assert session["kind"] == "whep" and session["state"] == "connected"
            assert session["video"]["frames"] >= 50 and session["audio"]["frames"] > 0
            assert session["setup_seconds"] is not None and session["setup_seconds"] < 2.5
            stream = server.get_json("/api/v1/streams/live/cam")
            assert isinstance(stream, dict) and stream["subscribers"].get("webrtc") == 1
            assert metric(server, "mediaserver_webrtc_sessions", 'kind="whep",state="connected"') == 1
            assert metric(server, "mediaserver_webrtc_setup_seconds_count") >= 1
            assert metric(server, "mediaserver_webrtc_transcode_calls_total", 'direction="aac_to_opus"') > 0
            assert metric(server, "mediaserver_webrtc_transcoders", 'direction="aac_to_opus"') == 1
            assert metric(server, "mediaserver_webrtc_sent_frames_total", 'media="video"') >= 50
            assert "mediaserver_event_loop_lag_seconds" in server.get_text("/metrics")

            deleted = await request("DELETE", server.http_url(location))
            assert deleted.status in (200, 204)
            await wait_no_sessions(server)
            # The last viewer gone: the shared transcoder stops, the stream keeps its other subscribers.
            assert metric(server, "mediaserver_webrtc_transcoders", 'direction="aac_to_opus"') == 0
            assert metric(server, "mediaserver_webrtc_feeds") == 0
            assert (await request("DELETE", server.http_url(location))).status == 404
        finally:
            await pc.close()
    finally:
        publisher.kill()
        publisher.wait()


async def test_two_viewers_share_one_transcoder(webrtc_server: ServerProcess) -> None:
    server = webrtc_server
    publisher = ffmpeg_publish(server.rtmp_url("live/two"), 20, size="320x240", rate=25, gop=25)
    try:
        wait_for_stream(server, "live", "two")
        first = await whep_play(server, "/whep/live/two")
        second = await whep_play(server, "/whep/live/two")
        try:
            assert first[1].status == 201 and second[1].status == 201
            assert await wait_until(
                lambda: all(len(c[2].video) >= 25 and len(c[2].audio) >= 25 for c in (first, second)), 15
            )
            assert metric(server, "mediaserver_webrtc_transcoders", 'direction="aac_to_opus"') == 1
            assert metric(server, "mediaserver_webrtc_feeds") == 1
            assert {(f.width, f.height) for f in second[2].video} == {(320, 240)}
        finally:
            await first[0].close()
            await second[0].close()
        # A client that closes its peer connection (RTCP BYE, DTLS close) without DELETE is cleaned up too.
        await wait_no_sessions(server, SESSION_TIMEOUT + 3)
    finally:
        publisher.kill()
        publisher.wait()


async def test_vanished_viewer_is_closed_within_session_timeout(webrtc_server: ServerProcess) -> None:
    """A viewer process killed outright (no DELETE, no BYE, no DTLS close): found by its silence."""
    server = webrtc_server
    publisher = ffmpeg_publish(server.rtmp_url("live/gone"), 25, size="320x240", rate=25, gop=25)
    client = None
    try:
        wait_for_stream(server, "live", "gone")
        client = subprocess.Popen(
            [sys.executable, "-m", "tests.webrtc.whep_client", server.http_url("/whep/live/gone")],
            cwd=project_root(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(project_root())},
        )
        assert client.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(client.stdout.readline), 20)
        assert line.startswith(b"FRAMES"), (line, client.stderr.read() if client.poll() is not None else b"")
        assert sessions(server)["by_state"].get("connected") == 1
        client.send_signal(signal.SIGKILL)
        client.wait()
        killed = time.monotonic()
        await wait_no_sessions(server, SESSION_TIMEOUT + 4)
        elapsed = time.monotonic() - killed
        # The session timeout plus the housekeeping tick (1 s).
        assert elapsed <= SESSION_TIMEOUT + 2.5, elapsed
        assert metric(server, "mediaserver_webrtc_sessions_closed_total", 'kind="whep",reason="idle"') >= 1
        stream = server.get_json("/api/v1/streams/live/gone")
        assert isinstance(stream, dict) and not stream["subscribers"].get("webrtc")
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        publisher.kill()
        publisher.wait()


async def test_bad_requests_get_clear_errors_and_leak_nothing(webrtc_server: ServerProcess) -> None:
    server = webrtc_server
    publisher = ffmpeg_publish(server.rtmp_url("live/bad"), 30, size="320x240", rate=25, gop=25)
    clients = []
    try:
        wait_for_stream(server, "live", "bad")
        whep = server.http_url("/whep/live/bad")

        pc = loopback_pc()
        clients.append(pc)
        pc.addTransceiver("video", direction="recvonly")
        offer = await loopback_offer(pc)
        vp8_pc = loopback_pc()
        clients.append(vp8_pc)
        vp8 = vp8_pc.addTransceiver("video", direction="recvonly")
        vp8.setCodecPreferences(
            [c for c in RTCRtpReceiver.getCapabilities("video").codecs if c.mimeType == "video/VP8"]
        )
        vp8_offer = await loopback_offer(vp8_pc)
        assert "H264" not in vp8_offer
        no_ice = "\r\n".join(line for line in offer.splitlines() if not line.startswith("a=ice-")) + "\r\n"
        sending = offer.replace("a=recvonly", "a=sendonly")

        cases: list[tuple[str, str, str | bytes, dict[str, str], int, str]] = [
            ("malformed", whep, "this is not SDP at all", SDP, 400, "bad_sdp"),
            ("truncated", whep, offer[: len(offer) // 3], SDP, 400, "bad_sdp"),
            ("binary", whep, b"\xff\xfe\x00garbage", SDP, 400, "bad_sdp"),
            ("empty", whep, "", SDP, 400, "bad_sdp"),
            ("no ICE credentials", whep, no_ice, SDP, 400, "bad_sdp"),
            ("VP8 only", whep, vp8_offer, SDP, 400, "no_h264"),
            ("sends instead of receiving", whep, sending, SDP, 400, "bad_direction"),
            ("no such stream", server.http_url("/whep/live/nothing"), offer, SDP, 404, "stream_not_found"),
            ("wrong content type", whep, offer, {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
            ("JSON", whep, '{"sdp": "v=0"}', {"Content-Type": "application/json"}, 415, "unsupported_media_type"),
            ("too large", whep, "v=0\r\n" + "a=x-padding\r\n" * 8000, SDP, 413, "offer_too_large"),
            ("WHIP to a live name", server.http_url("/whip/live/bad"), offer, SDP, 409, "stream_taken"),
        ]
        for label, url, body, headers, status, code in cases:
            answer = await post(url, body, headers)
            assert answer.status == status, (label, answer.status, answer.body)
            assert answer.json()["error"]["code"] == code, (label, answer.body)
            assert answer.json()["error"]["message"], label
            assert answer.headers.get("Access-Control-Allow-Origin") == "*", label
            data = sessions(server)
            assert data["count"] == 0 and metric(server, "mediaserver_webrtc_peer_connections") == 0, (label, data)
        assert metric(server, "mediaserver_webrtc_requests_rejected_total", 'endpoint="whep",reason="no_h264"') == 1

        # Trickle ICE is not supported; CORS preflight is.
        patched = await request("PATCH", server.http_url("/whep/live/bad/0123456789abcdef01234567"))
        assert patched.status == 405 and patched.json()["error"]["code"] == "trickle_not_supported"
        assert "DELETE" in patched.headers["Allow"]
        preflight = await request("OPTIONS", whep)
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "*"
        for method in ("POST", "DELETE", "PATCH", "OPTIONS"):
            assert method in preflight.headers["Access-Control-Allow-Methods"]
        assert {"content-type", "authorization"} <= {
            h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")
        }
        assert "Location" in preflight.headers["Access-Control-Expose-Headers"]
        missing = await request("DELETE", server.http_url("/whep/live/bad/0123456789abcdef01234567"))
        assert missing.status == 404 and missing.json()["error"]["code"] == "session_not_found"

        # Too many sessions: three offers that never connect fill max_sessions = 3; the fourth is refused.
        locations = []
        for _ in range(3):
            viewer = loopback_pc()
            clients.append(viewer)
            viewer.addTransceiver("video", direction="recvonly")
            answer = await post(whep, await loopback_offer(viewer))
            assert answer.status == 201, answer.body
            locations.append(answer.headers["Location"])
        refused = await post(whep, offer)
        assert refused.status == 503 and refused.json()["error"]["code"] == "too_many_sessions"
        assert refused.headers.get("Retry-After")
        assert sessions(server)["count"] == 3 and metric(server, "mediaserver_webrtc_peer_connections") == 3
        # Two are hung up; the third never connects and is closed by the session timeout.
        for location in locations[:2]:
            assert (await request("DELETE", server.http_url(location))).status == 200
        started = time.monotonic()
        await wait_no_sessions(server, SESSION_TIMEOUT + 4)
        assert time.monotonic() - started <= SESSION_TIMEOUT + 2.5
        assert metric(server, "mediaserver_webrtc_sessions_closed_total", 'kind="whep",reason="connect_timeout"') >= 1
        assert metric(server, "mediaserver_webrtc_feeds") == 0
        assert "Traceback" not in server.log()
    finally:
        for client in clients:
            await client.close()
        publisher.kill()
        publisher.wait()
