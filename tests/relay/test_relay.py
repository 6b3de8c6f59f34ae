"""Relay (push): rule matching and URL templating (unit), and two real server processes: ffmpeg publishes to A,
A pushes to B, ffprobe plays the stream from B over RTMP and HLS; B is down at first, killed and started again
(A reconnects by itself); the target's stream key never reaches A's log."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mediaserver.config import ConfigError, load_config
from mediaserver.relay.rules import parse_rule, parse_target
from tests.conftest import ServerProcess, ffmpeg_publish, free_port, require, self_signed_cert, wait_for_stream
from tests.recording.helpers import wait_until

KEY = "relay-k3y-never-logged"

# ----- units ------------------------------------------------------------------------------------------------


def test_rules_match_streams_and_fill_in_the_target_url() -> None:
    exact = parse_rule(f"live/cam=rtmp://a.rtmp.example.com/live2/{KEY}")
    assert exact.matches("live", "cam") and not exact.matches("live", "cam2") and not exact.matches("other", "cam")
    target = exact.target("live", "cam")
    assert (target.host, target.port, target.app, target.name) == ("a.rtmp.example.com", 1935, "live2", KEY)
    assert target.tc_url == "rtmp://a.rtmp.example.com/live2" and not target.tls
    assert target.shown == "rtmp://a.rtmp.example.com/live2/***"

    pattern = parse_rule("live/*=rtmps://edge.example.com:8443/{app}-copy/{name}?key=" + KEY)
    assert pattern.matches("live", "door") and pattern.matches("live", "x") and not pattern.matches("cams", "door")
    door = pattern.target("live", "door")
    assert (door.port, door.app, door.name, door.tls) == (8443, "live-copy", f"door?key={KEY}", True)
    assert door.tc_url == "rtmps://edge.example.com:8443/live-copy"
    assert door.shown == "rtmps://edge.example.com:8443/live-copy/***" and KEY not in door.shown
    assert KEY in door.secrets() and f"key={KEY}" in door.secrets()
    # A stream name cannot send the stream elsewhere: it only ever fills the publish name.
    odd = pattern.target("live", "a/../@evil.example.com:1/x")
    assert odd.host == "edge.example.com" and odd.port == 8443

    assert parse_rule("*/*=rtmp://[fd00::9]/live/{name}").target("a", "b").tc_url == "rtmp://[fd00::9]/live"
    assert parse_target("rtmp://user:pw@host/app/key").shown == "rtmp://***@host/app/***"
    assert parse_target("rtmps://host/app/key").port == 443


@pytest.mark.parametrize(
    "entry",
    [
        "live/cam",  # no URL
        "cam=rtmp://host/app/key",  # no app
        "live/a/b=rtmp://host/app/key",
        "live/cam=http://host/app/key",  # not RTMP
        "live/cam=rtmp://host/app",  # no stream key
        "live/cam=rtmp://host:port/app/key",
        "live/cam=rtmp://host/app/{stream}",  # unknown placeholder
        "live/*=rtmp://{name}.example.com/app/key",  # the host may not depend on the stream
        "live/cam=rtmp://user:key@host/app/x",  # no RTMP login: the key goes in the path or query
    ],
)
def test_bad_rules_are_refused_without_showing_the_url(entry: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_rule(entry.replace("key", KEY))
    assert KEY not in str(error.value)


def test_the_relay_section_is_read_from_the_environment() -> None:
    config = load_config(
        None,
        {
            "MEDIASERVER_RELAY_PUSHES": json.dumps(["live/cam=rtmp://10.0.0.9/live/k", "live/*=rtmp://h/a/{name}"]),
            "MEDIASERVER_RELAY_RECONNECT_MAX": "5",
            "MEDIASERVER_RELAY_QUEUE_BYTES": "1048576",
        },
    )
    assert config.relay.pushes == ["live/cam=rtmp://10.0.0.9/live/k", "live/*=rtmp://h/a/{name}"]
    assert config.relay.reconnect_max == 5.0 and config.relay.queue_bytes == 1048576
    for bad in (
        {"MEDIASERVER_RELAY_PUSHES": '["live/cam=srt://host/x"]'},
        {"MEDIASERVER_RELAY_RECONNECT_MIN": "0"},
        {"MEDIASERVER_RELAY_QUEUE_BYTES": "10"},
    ):
        with pytest.raises(ConfigError):
            load_config(None, bad)


# ----- two real servers ---------------------------------------------------------------------------------------


def _metric(server: ServerProcess, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", server.get_text("/metrics"), re.M)
    return float(match.group(1)) if match else 0.0


def _streams(server: ServerProcess) -> list[str]:
    data = server.get_json("/api/v1/streams")
    assert isinstance(data, dict)
    return [f"{s['app']}/{s['name']}" for s in data["streams"]]


def _probe(url: str) -> dict[str, dict[str, Any]]:
    """The streams ffprobe finds at `url`, by type."""
    result = subprocess.run(
        [require("ffprobe"), "-v", "error", "-show_streams", "-of", "json", url],
        capture_output=True,
        timeout=30,
        check=True,
    )
    return {s["codec_type"]: s for s in json.loads(result.stdout)["streams"]}


def _target_server(
    factory: Callable[..., ServerProcess], rtmp_port: int, extra: dict[str, str] | None = None
) -> ServerProcess:
    """Server B on a fixed RTMP port (the one A's rule names), taking only publishers with the key."""
    env = {
        "MEDIASERVER_RTMP_PORT": str(rtmp_port),
        "MEDIASERVER_AUTH_PUBLISH_MODE": "static",
        "MEDIASERVER_AUTH_PUBLISH_KEYS": KEY,
        **(extra or {}),
    }
    server = factory(env)
    server.rtmp_port = rtmp_port
    return server


def _relay_env(rule: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "MEDIASERVER_RELAY_PUSHES": json.dumps([rule]),
        "MEDIASERVER_RELAY_RECONNECT_MIN": "0.3",
        "MEDIASERVER_RELAY_RECONNECT_MAX": "1",
        "MEDIASERVER_RELAY_CONNECT_TIMEOUT": "3",
        **(extra or {}),
    }


def test_a_stream_is_pushed_to_a_second_server_that_comes_and_goes(server_factory) -> None:  # type: ignore[no-untyped-def]
    b_port = free_port()
    # The key travels as the publish name's ?key= parameter; B (static keys) refuses anything else.
    a = server_factory(_relay_env(f"live/*=rtmp://127.0.0.1:{b_port}/live/{{name}}?key={KEY}"))
    publisher = ffmpeg_publish(a.rtmp_url("live/cam"), 40, size="640x360", gop=25)
    try:
        wait_for_stream(a, "live", "cam")
        # Nothing listens on B's port yet: the push fails and keeps trying on its own.
        wait_until("a failed push", lambda: _metric(a, "mediaserver_relay_sessions_total") >= 2)
        assert _metric(a, "mediaserver_relay_targets", '{state="publishing"}') == 0

        b = _target_server(server_factory, b_port)
        wait_for_stream(b, "live", "cam", timeout=15)
        assert _metric(a, "mediaserver_relay_targets", '{state="publishing"}') == 1
        played = _probe(b.rtmp_url("live/cam"))
        assert played["video"]["codec_name"] == "h264" and (played["video"]["width"], played["video"]["height"]) == (
            640,
            360,
        )
        assert played["audio"]["codec_name"] == "aac"
        wait_until("two HLS segments on B", lambda: b.get_text("/hls/live/cam/index.m3u8").count("#EXTINF") >= 2)
        hls = _probe(b.http_url("/hls/live/cam/index.m3u8"))
        assert hls["video"]["codec_name"] == "h264" and (hls["video"]["width"], hls["video"]["height"]) == (640, 360)
        info = b.get_json("/api/v1/streams")
        assert isinstance(info, dict) and info["streams"][0]["publisher"]["protocol"] == "rtmp"
        a_streams = a.get_json("/api/v1/streams")
        assert isinstance(a_streams, dict) and a_streams["streams"][0]["subscribers"].get("relay") == 1

        # B dies without a word; A notices, backs off, and pushes to the new B once it listens again.
        sessions = _metric(a, "mediaserver_relay_sessions_total")
        b.process.send_signal(signal.SIGKILL)
        b.process.wait()
        wait_until("a retry after B died", lambda: _metric(a, "mediaserver_relay_sessions_total") > sessions)
        b2 = _target_server(server_factory, b_port)
        wait_for_stream(b2, "live", "cam", timeout=15)
        assert _probe(b2.rtmp_url("live/cam"))["video"]["codec_name"] == "h264"
        assert _metric(a, "mediaserver_relay_sent_bytes_total") > 100_000

        # The source ends: A unpublishes at B, which ends the stream at once (not after its idle timeout).
        publisher.kill()
        publisher.wait()
        wait_until("the stream to end on A", lambda: "live/cam" not in _streams(a), timeout=15)
        wait_until("the stream to end on B", lambda: "live/cam" not in _streams(b2), timeout=5)
        wait_until(
            "no relay left",
            lambda: (
                sum(
                    _metric(a, "mediaserver_relay_targets", f'{{state="{s}"}}')
                    for s in ("connecting", "publishing", "backoff")
                )
                == 0
            ),
        )
    finally:
        publisher.kill()
        publisher.wait()
    log = a.log()
    assert KEY not in log
    shown = f"target=rtmp://127.0.0.1:{b_port}/live/***"
    assert f"event=relay_connected stream=live/cam {shown}" in log
    assert f"event=relay_failed stream=live/cam {shown}" in log
    assert f"event=relay_stopped stream=live/cam {shown} reason=stream_ended" in log
    assert KEY not in _metrics_text(a)


def _metrics_text(server: ServerProcess) -> str:
    return server.get_text("/metrics")


def _publish_hevc(url: str, seconds: float, errors: list[BaseException]) -> None:
    """H.265 over Enhanced RTMP from PyAV's FFmpeg 8 (Debian's ffmpeg 5.1 cannot send it), at camera pace."""
    import av
    import numpy as np

    try:
        output = av.open(url, "w", format="flv")
        video = output.add_stream("libx265", rate=25)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        video.options = {"x265-params": "log-level=error:keyint=25"}
        begin = time.monotonic()
        for index in range(int(seconds * 25)):
            picture = np.full((240, 320, 3), index * 5 % 256, dtype=np.uint8)
            picture[: (index * 4) % 240, :, 2] = 255
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = index
            for packet in video.encode(frame):
                output.mux(packet)
            time.sleep(max(0.0, begin + index / 25 - time.monotonic()))
        for packet in video.encode(None):
            output.mux(packet)
        output.close()
    except BaseException as exc:  # reported by the test's thread join
        errors.append(exc)


@pytest.mark.slow
def test_hevc_goes_through_unchanged_to_an_rtmps_target(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import av

    cert, key = self_signed_cert(tmp_path)
    b = server_factory(
        {
            "MEDIASERVER_RTMPS_CERT_FILE": str(cert),
            "MEDIASERVER_RTMPS_KEY_FILE": str(key),
            "MEDIASERVER_AUTH_PUBLISH_MODE": "static",
            "MEDIASERVER_AUTH_PUBLISH_KEYS": KEY,
        },
        rtmps=True,
    )
    # B's certificate is trusted through relay.ca_file, and checked against the address A dials.
    rule = f"live/hevc=rtmps://127.0.0.1:{b.rtmps_port}/live/copy?key={KEY}"
    a = server_factory(_relay_env(rule, {"MEDIASERVER_RELAY_CA_FILE": str(cert)}))
    errors: list[BaseException] = []
    thread = threading.Thread(target=_publish_hevc, args=(a.rtmp_url("live/hevc"), 10, errors))
    thread.start()
    try:
        info = wait_for_stream(b, "live", "copy", timeout=15)
        assert info["publisher"]["protocol"] == "rtmps"  # type: ignore[index]
        assert info["video"]["codec"] == "h265"  # type: ignore[index]
        player = av.open(b.rtmp_url("live/copy"), options={"rw_timeout": "10000000"})
        try:
            stream = player.streams.video[0]
            assert stream.codec_context.name == "hevc"
            sizes = {(f.width, f.height) for f, _ in zip(player.decode(stream), range(15), strict=False)}
        finally:
            player.close()
        assert sizes == {(320, 240)}
    finally:
        thread.join(timeout=30)
    assert not errors, errors
    assert KEY not in a.log() and f"target=rtmps://127.0.0.1:{b.rtmps_port}/live/***" in a.log()


@pytest.mark.slow
def test_a_target_that_stops_reading_never_slows_the_publisher(server_factory) -> None:  # type: ignore[no-untyped-def]
    b_port = free_port()
    a = server_factory(
        _relay_env(
            f"live/fast=rtmp://127.0.0.1:{b_port}/live/fast?key={KEY}", {"MEDIASERVER_RELAY_QUEUE_BYTES": "65536"}
        )
    )
    b = _target_server(server_factory, b_port)
    # 20 Mbit/s (CBR with filler) fills the loopback socket buffers within seconds once B stops reading.
    rate = ["-b:v", "20M", "-minrate", "20M", "-maxrate", "20M", "-bufsize", "2M", "-x264-params", "nal-hrd=cbr"]
    publisher = ffmpeg_publish(a.rtmp_url("live/fast"), 40, size="640x360", gop=25, extra=rate)
    try:
        wait_for_stream(b, "live", "fast", timeout=15)
        b.process.send_signal(signal.SIGSTOP)
        try:
            wait_until("dropped relay packets", lambda: _metric(a, "mediaserver_relay_dropped_packets_total") > 0, 20)
            # A still takes the publisher's packets at full pace, and serves them.
            before = _stream(a, "live/fast")["bytes_in"]
            time.sleep(2)
            assert _stream(a, "live/fast")["bytes_in"] - before > 2 * 2_000_000
            assert _probe(a.rtmp_url("live/fast"))["video"]["codec_name"] == "h264"
            # Nothing drains for connect_timeout: the push is dropped and dialled again (B, stopped, answers nobody).
            wait_until("the stalled push to be dropped", lambda: "reason=RtmpClientError: stalled" in a.log(), 15)
        finally:
            b.process.send_signal(signal.SIGCONT)
        wait_until(
            "the push to publish again",
            lambda: _metric(a, "mediaserver_relay_targets", '{state="publishing"}') == 1 and "live/fast" in _streams(b),
            20,
        )
    finally:
        publisher.kill()
        publisher.wait()
    assert 'mediaserver_packets_dropped_total{reason="slow_relay"}' in a.get_text("/metrics")


def _stream(server: ServerProcess, key: str) -> dict[str, Any]:
    data = server.get_json("/api/v1/streams")
    assert isinstance(data, dict)
    return next(s for s in data["streams"] if f"{s['app']}/{s['name']}" == key)
