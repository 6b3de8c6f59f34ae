"""Real clients against a real server process: ffmpeg, ffprobe, rtmpdump, PyAV."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import pytest

from mediaserver.rtmp.client import RtmpClient
from tests.conftest import ServerProcess, ffmpeg_publish, require, self_signed_cert, wait_for_stream


def ffprobe_json(url: str, *args: str, timeout: float = 20) -> dict[str, object]:
    result = subprocess.run(
        [require("ffprobe"), "-hide_banner", "-v", "error", "-of", "json", *args, url],
        capture_output=True,
        timeout=timeout,
        check=True,
    )
    return dict(json.loads(result.stdout))


def streams_by_type(probe: dict[str, object]) -> dict[str, dict[str, object]]:
    streams = probe["streams"]
    assert isinstance(streams, list)
    return {s["codec_type"]: s for s in streams}


def finish(process: subprocess.Popen[bytes], timeout: float = 30) -> str:
    _, stderr = process.communicate(timeout=timeout)
    return stderr.decode(errors="replace") if stderr else ""


def test_ffmpeg_publish_and_ffprobe_playback(server: ServerProcess) -> None:
    publisher = ffmpeg_publish(server.rtmp_url("live/cam1"), 8, size="640x360", rate=25)
    try:
        info = wait_for_stream(server, "live", "cam1")
        assert info["video"] == {"codec": "h264", "width": 640, "height": 360, "fps": pytest.approx(25, abs=3)}
        probe = ffprobe_json(server.rtmp_url("live/cam1"), "-show_streams")
        kinds = streams_by_type(probe)
        assert set(kinds) == {"video", "audio"}, kinds
        video, audio = kinds["video"], kinds["audio"]
        assert video["codec_name"] == "h264"
        assert (video["width"], video["height"]) == (640, 360)
        assert Fraction(str(video["r_frame_rate"])) == 25
        assert audio["codec_name"] == "aac"
        assert int(str(audio["sample_rate"])) == 44100
        streams = server.get_json("/api/v1/streams")
        assert isinstance(streams, dict) and streams["count"] == 1
        metrics = server.get_text("/metrics")
        assert 'mediaserver_publishers{protocol="rtmp"} 1.0' in metrics
        assert "mediaserver_received_bytes_total" in metrics
    finally:
        assert "error" not in finish(publisher).lower()


def test_second_player_joins_mid_stream_on_a_keyframe(server: ServerProcess) -> None:
    # A 2 s GOP, and the player joins ~3.3 s in: it must still start on a keyframe, at once.
    publisher = ffmpeg_publish(server.rtmp_url("live/mid"), 10, gop=50)
    try:
        wait_for_stream(server, "live", "mid")
        first = ffprobe_json(
            server.rtmp_url("live/mid"), "-show_packets", "-select_streams", "v", "-read_intervals", "%+#2"
        )
        time.sleep(2.3)
        started = time.monotonic()
        second = ffprobe_json(
            server.rtmp_url("live/mid"), "-show_packets", "-select_streams", "v", "-read_intervals", "%+#5"
        )
        elapsed = time.monotonic() - started
        for probe in (first, second):
            packets = probe["packets"]
            assert isinstance(packets, list) and packets
            assert packets[0]["flags"].startswith("K"), packets[0]
        # The second player did not start at the beginning of the stream.
        assert float(second["packets"][0]["pts_time"]) > 1.5  # type: ignore[index]
        assert elapsed < 5, f"joining took {elapsed:.1f}s"
    finally:
        finish(publisher)


async def _first_video_frames(port: int, name: str, count: int) -> list[tuple[float, int, bool]]:
    """(seconds after play, timestamp ms, keyframe) of the first `count` video frames a new player gets."""
    frames: list[tuple[float, int, bool]] = []
    async with RtmpClient() as player:
        await player.connect("127.0.0.1", port, "live")
        await player.play(name)
        started = time.monotonic()
        while len(frames) < count:
            message = await asyncio.wait_for(player.read_message(), 10)
            assert message is not None, "the stream ended"
            payload = bytes(message.payload)
            if message.type_id == 9 and len(payload) > 1 and payload[1] == 1:  # AVC NALU, not the sequence header
                frames.append((time.monotonic() - started, message.timestamp, payload[0] >> 4 == 1))
    return frames


def test_a_new_player_gets_enough_cached_frames_to_start_at_once(server: ServerProcess) -> None:
    # FFmpeg-based players read ~40 frames before they show one. A 2 s GOP at 25 fps, joined at several
    # points of it: the player always gets 45 frames from the cache at once, starting on a keyframe.
    publisher = ffmpeg_publish(server.rtmp_url("live/burst"), 12, gop=50)
    try:
        wait_for_stream(server, "live", "burst")
        time.sleep(2.5)
        for _ in range(3):
            frames = asyncio.run(_first_video_frames(server.rtmp_port, "burst", 45))
            assert frames[0][2], "the burst does not start on a keyframe"
            span = (frames[-1][1] - frames[0][1]) / 1000
            arrived = frames[-1][0]
            # 1.76 s of media: from the cache they come far faster than live would bring them.
            assert span >= 1.7 and arrived < span / 2, (span, arrived)
            time.sleep(0.7)
    finally:
        finish(publisher)


def test_rtmpdump_plays_live_stream(server: ServerProcess, tmp_path: Path) -> None:
    publisher = ffmpeg_publish(server.rtmp_url("live/dump"), 10)
    out = tmp_path / "dump.flv"
    try:
        wait_for_stream(server, "live", "dump")
        subprocess.run(
            [require("rtmpdump"), "-q", "-v", "-r", server.rtmp_url("live/dump"), "-o", str(out), "-B", "3"],
            timeout=30,
            check=False,
        )
    finally:
        finish(publisher)
    assert out.stat().st_size > 10_000
    kinds = streams_by_type(ffprobe_json(str(out), "-show_streams"))
    assert kinds["video"]["codec_name"] == "h264"
    assert kinds["audio"]["codec_name"] == "aac"
    decoded = subprocess.run(
        [require("ffmpeg"), "-v", "error", "-i", str(out), "-f", "null", "-"], capture_output=True, timeout=30
    )
    assert decoded.returncode == 0


def test_publisher_disconnect_ends_players_cleanly(server: ServerProcess, tmp_path: Path) -> None:
    publisher = ffmpeg_publish(server.rtmp_url("live/bye"), 4)
    wait_for_stream(server, "live", "bye")
    out = tmp_path / "copy.flv"
    player = subprocess.Popen(
        [require("ffmpeg"), "-v", "error", "-i", server.rtmp_url("live/bye"), "-c", "copy", "-f", "flv", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    finish(publisher)
    # The player ends by itself once the publisher is gone, and what it wrote is playable.
    player_err = finish(player, timeout=15)
    assert player.returncode == 0, player_err
    decoded = subprocess.run(
        [require("ffmpeg"), "-v", "error", "-i", str(out), "-f", "null", "-"], capture_output=True, timeout=30
    )
    assert decoded.returncode == 0 and not decoded.stderr
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and server.get_json("/api/v1/streams")["count"]:  # type: ignore[index]
        time.sleep(0.1)
    assert server.get_json("/api/v1/streams")["count"] == 0  # type: ignore[index]


def test_duplicate_publish_is_refused(server: ServerProcess) -> None:
    first = ffmpeg_publish(server.rtmp_url("live/dup"), 8)
    try:
        wait_for_stream(server, "live", "dup")
        second = ffmpeg_publish(server.rtmp_url("live/dup"), 3)
        second_err = finish(second)
        assert second.returncode != 0
        assert "already being published" in second_err or "BadName" in second_err or second_err
        assert first.poll() is None, "the first publisher must be unharmed"
        assert 'mediaserver_publish_denied_total{reason="stream_taken"} 1.0' in server.get_text("/metrics")
    finally:
        finish(first)
    assert first.returncode == 0


def test_static_keys_refuse_a_wrong_key(server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory({"MEDIASERVER_AUTH_PUBLISH_MODE": "static", "MEDIASERVER_AUTH_PUBLISH_KEYS": "s3cret,other"})
    wrong = ffmpeg_publish(srv.rtmp_url("live/guess"), 2)
    finish(wrong)
    assert wrong.returncode != 0
    right = ffmpeg_publish(srv.rtmp_url("live/cam?key=s3cret"), 4)
    try:
        wait_for_stream(srv, "live", "cam")
    finally:
        finish(right)
    assert right.returncode == 0
    metrics = srv.get_text("/metrics")
    assert 'mediaserver_publish_denied_total{reason="bad_stream_key"} 1.0' in metrics
    # The key never appears in full in the logs.
    assert "s3cret" not in srv.log()


def test_rtmps_publish_and_play(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cert, key = self_signed_cert(tmp_path)
    srv = server_factory({"MEDIASERVER_RTMPS_CERT_FILE": str(cert), "MEDIASERVER_RTMPS_KEY_FILE": str(key)}, rtmps=True)
    url = f"rtmps://127.0.0.1:{srv.rtmps_port}/live/secure"
    publisher = ffmpeg_publish(url, 8)
    try:
        info = wait_for_stream(srv, "live", "secure")
        assert info["publisher"]["protocol"] == "rtmps"  # type: ignore[index]
        kinds = streams_by_type(ffprobe_json(url, "-show_streams"))
        assert kinds["video"]["codec_name"] == "h264"
        assert (kinds["video"]["width"], kinds["video"]["height"]) == (640, 360)
        assert kinds["audio"]["codec_name"] == "aac"
    finally:
        err = finish(publisher)
    assert publisher.returncode == 0, err


def _publish_hevc_with_pyav(url: str, seconds: float) -> None:
    """PyAV's bundled FFmpeg 8 writes Enhanced-RTMP HEVC (Debian's 5.1 cannot)."""
    import av
    import numpy as np

    container = av.open(url, "w", format="flv")
    stream = container.add_stream("libx265", rate=25)
    stream.width, stream.height = 320, 240
    stream.pix_fmt = "yuv420p"
    stream.options = {"x265-params": "log-level=error:keyint=25"}
    frames = int(seconds * 25)
    started = time.monotonic()
    for index in range(frames):
        image = np.zeros((240, 320, 3), dtype=np.uint8)
        image[:, :, 0] = (index * 7) % 256
        image[(index * 3) % 240 :, :, 1] = 200
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = index
        for packet in stream.encode(frame):
            container.mux(packet)
        # Real-time pace, as a camera would send.
        delay = started + index / 25 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()


def test_hevc_over_enhanced_rtmp(server: ServerProcess) -> None:
    import threading

    import av

    url = server.rtmp_url("live/hevc")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _publish_hevc_with_pyav(url, 8)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        info = wait_for_stream(server, "live", "hevc")
        assert info["video"]["codec"] == "h265"  # type: ignore[index]
        player = av.open(url, options={"rw_timeout": "10000000"})
        video = player.streams.video[0]
        assert video.codec_context.name == "hevc"
        decoded = 0
        for frame in player.decode(video):
            assert (frame.width, frame.height) == (320, 240)
            decoded += 1
            if decoded >= 20:
                break
        player.close()
        assert decoded >= 20
    finally:
        thread.join(timeout=30)
    assert not errors, errors
