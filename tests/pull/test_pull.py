"""Pulled sources: the conversion of demuxed packets (unit), and a real IP-camera stand-in (GStreamer's RTSP server
with a password, H.264 + AAC) pulled by a real server process, played back with ffprobe over RTMP and HLS,
killed and brought back (the source reconnects), with its credentials never in the log."""

from __future__ import annotations

import fractions
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from mediaserver.auth import shown_url
from mediaserver.codecs.h264 import NAL_PPS, NAL_SPS, nal_type
from mediaserver.config import ConfigError, load_config
from mediaserver.hub import Hub
from mediaserver.media import TrackKind
from mediaserver.pull.audio import G711ToAac
from mediaserver.pull.convert import SourceConverter, avc_config_from_extradata
from mediaserver.pull.service import PullService, parse_source
from mediaserver.pull.source import RefusedAddress, check_addresses
from tests.conftest import ServerProcess, free_port, require, wait_for_stream
from tests.recording.helpers import call, wait_until
from tests.snapshot.media import h264

CAMERA = Path(__file__).with_name("rtsp_camera.py")
SYSTEM_PYTHON = "/usr/bin/python3"
USER, PASSWORD = "admin", "cam-pass-never-logged"


# ----- units ------------------------------------------------------------------------------------------------


def _annexb_units() -> tuple[bytes, list[tuple[bool, bytes]]]:
    """libx264 access units in Annex-B, parameter sets in band before the first keyframe (as cameras send)."""
    config, units = h264(160, 120, 6, gop=3)
    record = avc_config_from_extradata(config)
    assert record == config
    out = []
    for keyframe, avcc in units:
        nals, pos = [], 0
        while pos < len(avcc):
            size = int.from_bytes(avcc[pos : pos + 4], "big")
            nals.append(avcc[pos + 4 : pos + 4 + size])
            pos += 4 + size
        out.append((keyframe, b"".join(b"\x00\x00\x00\x01" + n for n in nals)))
    return config, out


def test_annexb_video_becomes_a_sequence_header_then_avcc_frames() -> None:
    config, units = _annexb_units()
    sps_pps = b"".join(b"\x00\x00\x00\x01" + n for n in _parameter_sets(config))
    converter = SourceConverter()
    assert converter.video(units[0][1], 0, 0, True) == []  # nothing before parameter sets are known
    first = converter.video(sps_pps + units[0][1], 40, 40, True)
    assert [p.is_config for p in first] == [True, False]
    assert first[0].kind is TrackKind.VIDEO and bytes(first[0].data) == config
    assert first[1].keyframe and bytes(first[1].data)[:4] != b"\x00\x00\x00\x01"  # length-prefixed now
    later = converter.video(units[1][1], 80, 80, units[1][0])
    assert [p.is_config for p in later] == [False] and later[0].dts == 40  # times from the first packet


def _parameter_sets(avcc: bytes) -> list[bytes]:
    count, pos, found = avcc[5] & 0x1F, 6, []
    for _ in range(count):
        size = int.from_bytes(avcc[pos : pos + 2], "big")
        found.append(avcc[pos + 2 : pos + 2 + size])
        pos += 2 + size
    pps_count = avcc[pos]
    pos += 1
    for _ in range(pps_count):
        size = int.from_bytes(avcc[pos : pos + 2], "big")
        found.append(avcc[pos + 2 : pos + 2 + size])
        pos += 2 + size
    assert [nal_type(n) for n in found] == [NAL_SPS, NAL_PPS]
    return found


def test_g711_becomes_aac_on_the_cameras_clock() -> None:
    encoder = av.CodecContext.create("pcm_alaw", "w")
    assert isinstance(encoder, av.AudioCodecContext)
    encoder.sample_rate, encoder.layout, encoder.format = 8000, "mono", "s16"
    encoder.time_base = fractions.Fraction(1, 8000)
    encoder.open()
    transcoder = G711ToAac("pcm_alaw", 8000)
    made: list[tuple[bytes, int]] = []
    for index in range(100):  # 2 s of 20 ms packets, as RTP carries G.711
        tone = (np.sin((np.arange(160) + index * 160) / 8000 * 2 * np.pi * 440) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(tone.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, index * 160
        for packet in encoder.encode(frame):
            made += transcoder.transcode(bytes(packet), 5000 + index * 20)
    # 2 s at 16 kHz is 31 AAC frames of 1024 samples, less the encoder's start-up delay; 64 ms apart.
    assert 28 <= len(made) <= 31
    assert all(b - a == 64 for (_, a), (_, b) in itertools.pairwise(made))
    assert 4900 <= made[0][1] <= 5100
    decoder = av.CodecContext.create("aac", "r")
    assert isinstance(decoder, av.AudioCodecContext)
    decoder.extradata = transcoder.config
    frames = [f for data, _ in made for f in decoder.decode(av.Packet(data))]
    assert frames and frames[-1].sample_rate == 16000 and frames[-1].samples == 1024


def test_clocks_that_step_back_or_leap_are_kept_monotonic() -> None:
    converter = SourceConverter(audio_config=bytes.fromhex("1190"))
    stamps = [1000, 1021, 1042, 900, 921, 60_000, 60_021]  # a step back (Dahua's audio), then a clock leap
    times = [p.dts for ms in stamps for p in converter.audio(b"\x21\x00", ms) if not p.is_config]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert times[:3] == [0, 21, 42]
    assert times[-1] - times[-2] == 21  # after a leap the track goes on at its own pace
    assert times[-2] - times[2] < 100


def test_sources_that_would_reach_the_server_itself_or_cloud_metadata_are_refused() -> None:
    for host in ("169.254.169.254", "0.0.0.0", "fe80::1", "224.0.0.1"):
        with pytest.raises(RefusedAddress):
            check_addresses(host, allow_loopback=True)
    with pytest.raises(RefusedAddress):
        check_addresses("127.0.0.1", allow_loopback=False)
    check_addresses("127.0.0.1", allow_loopback=True)
    check_addresses("192.0.2.10", allow_loopback=False)  # a camera on a LAN address is fine


def test_urls_are_shown_without_credentials_and_entries_are_checked() -> None:
    assert shown_url("rtsp://admin:pw@10.0.0.5:554/Streaming/101?token=x") == "rtsp://***@10.0.0.5:554/Streaming/101"
    assert shown_url("rtsp://[fd00::5]/cam") == "rtsp://[fd00::5]/cam"
    assert parse_source("live/door=rtsp://cam/1") == ("live", "door", "rtsp://cam/1")
    for bad in ("live/door", "door=rtsp://cam", "live/a/b=rtsp://cam", "live/door="):
        with pytest.raises(ConfigError):
            parse_source(bad)
    for values in ({"MEDIASERVER_PULL_RTSP_TRANSPORT": "http"}, {"MEDIASERVER_PULL_RECONNECT_MIN": "0"}):
        with pytest.raises(ConfigError):
            load_config(None, values).validate()


def test_sources_are_found_by_name_and_a_name_listed_twice_is_refused() -> None:
    sources = "live/door=rtsp://10.0.0.5/1,live/yard=rtsp://10.0.0.6/1"
    service = PullService(Hub(), load_config(None, {"MEDIASERVER_PULL_SOURCES": sources}).pull, CollectorRegistry())
    assert [s.key for s in service.sources] == ["live/door", "live/yard"]
    yard = service.get("live", "yard")
    assert yard is not None and yard.name == "yard"
    assert service.get("live", "gate") is None
    twice = sources + ",live/door=rtsp://10.0.0.7/1"
    with pytest.raises(ConfigError, match="twice"):
        PullService(Hub(), load_config(None, {"MEDIASERVER_PULL_SOURCES": twice}).pull, CollectorRegistry())


# ----- a real camera stand-in ----------------------------------------------------------------------------------


def _start_camera(port: int, audio: str = "aac", auth: str = "basic") -> subprocess.Popen[str]:
    if not Path(SYSTEM_PYTHON).exists() or shutil.which("gst-launch-1.0") is None:
        pytest.fail("GStreamer's RTSP server (python3-gi, gir1.2-gst-rtsp-server-1.0) is not installed (.ci/run does)")
    camera = subprocess.Popen(
        [SYSTEM_PYTHON, str(CAMERA), str(port), USER, PASSWORD],
        env={**os.environ, "CAMERA_AUDIO": audio, "CAMERA_AUTH": auth},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert camera.stdout is not None
    line = camera.stdout.readline().strip()
    if line != "ready":
        camera.kill()
        raise AssertionError(f"the RTSP camera did not start: {line} {camera.stderr.read() if camera.stderr else ''}")
    return camera


@pytest.fixture
def camera_port() -> Iterator[int]:
    yield free_port()


def _metric(server: ServerProcess, name: str, labels: str = "") -> float:
    text = server.get_text("/metrics")
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _wait(what: str, check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _played_streams(server: ServerProcess, path: str) -> list[dict[str, Any]]:
    """Once `path` is live: its streams as ffprobe sees them over RTMP."""
    app, name = path.split("/")
    wait_for_stream(server, app, name, timeout=20)
    probe = subprocess.run(
        [require("ffprobe"), "-v", "error", "-show_streams", "-of", "json", server.rtmp_url(path)],
        capture_output=True,
        timeout=30,
        check=True,
    )
    return list(json.loads(probe.stdout)["streams"])


def _streams(server: ServerProcess) -> list[str]:
    data = server.get_json("/api/v1/streams")
    assert isinstance(data, dict)
    return [f"{s['app']}/{s['name']}" for s in data["streams"]]


@pytest.mark.slow
def test_a_pulled_rtsp_camera_plays_and_comes_back(server_factory, camera_port: int) -> None:  # type: ignore[no-untyped-def]
    camera = _start_camera(camera_port)
    url = f"rtsp://{USER}:{PASSWORD}@127.0.0.1:{camera_port}/cam"
    server: ServerProcess = server_factory(
        {
            "MEDIASERVER_PULL_SOURCES": json.dumps([f"live/door={url}"]),
            "MEDIASERVER_PULL_RECONNECT_MIN": "0.5",
            "MEDIASERVER_PULL_ALLOW_LOOPBACK": "true",
            "MEDIASERVER_PULL_TIMEOUT": "1.5",
            "MEDIASERVER_PULL_RECONNECT_MAX": "2",
        }
    )
    try:
        streams = _played_streams(server, "live/door")
        codecs = sorted(s["codec_name"] for s in streams)
        assert codecs == ["aac", "h264"]
        _wait("an HLS segment", lambda: "seg-" in server.get_text("/hls/live/door/index.m3u8"))
        assert _metric(server, "mediaserver_pull_sources", '{state="online"}') == 1

        # The camera hangs with its connection open (no packets, no close): the read times out, the stream
        # ends, and it comes back once the camera does.
        camera.send_signal(signal.SIGSTOP)
        _wait("the stalled stream to end", lambda: "live/door" not in _streams(server))
        camera.send_signal(signal.SIGCONT)
        wait_for_stream(server, "live", "door", timeout=30)

        # The camera goes away: the stream ends, the source says so, and tries again.
        camera.kill()
        camera.wait()
        _wait("the stream to end", lambda: "live/door" not in _streams(server))
        _wait("the source to be offline", lambda: _metric(server, "mediaserver_pull_sources", '{state="online"}') == 0)
        sessions = _metric(server, "mediaserver_pull_sessions_total")
        _wait("a retry", lambda: _metric(server, "mediaserver_pull_sessions_total") > sessions)

        # Back on the same address: the stream is live again without anyone touching the server.
        camera = _start_camera(camera_port)
        wait_for_stream(server, "live", "door", timeout=20)
        with urllib.request.urlopen(server.http_url("/hls/live/door/index.m3u8"), timeout=5) as answer:
            assert answer.status == 200
    finally:
        camera.kill()
        camera.wait()
    log = server.log()
    assert PASSWORD not in log and "event=pull_online" in log and "rtsp://***@127.0.0.1" in log


@pytest.mark.slow
def test_a_wrong_password_is_an_error_without_the_password(server_factory, camera_port: int) -> None:  # type: ignore[no-untyped-def]
    # The camera takes Digest authentication only, as Hikvision and Dahua cameras do by default.
    camera = _start_camera(camera_port, auth="digest")
    wrong = "not-the-password-either"
    server: ServerProcess = server_factory(
        {
            "MEDIASERVER_PULL_SOURCES": json.dumps(
                [
                    f"live/gate=rtsp://{USER}:{wrong}@127.0.0.1:{camera_port}/cam",
                    f"live/door=rtsp://{USER}:{PASSWORD}@127.0.0.1:{camera_port}/cam",
                ]
            ),
            "MEDIASERVER_PULL_ALLOW_LOOPBACK": "true",
        }
    )
    try:
        _wait("the source to fail", lambda: _metric(server, "mediaserver_pull_sources", '{state="error"}') == 1)
        assert "live/gate" not in _streams(server)
        # The right password gets through the Digest challenge, and the stream plays.
        codecs = sorted(s["codec_name"] for s in _played_streams(server, "live/door"))
        assert codecs == ["aac", "h264"]
    finally:
        camera.kill()
        camera.wait()
    log = server.log()
    assert "event=pull_failed stream=live/gate" in log
    assert wrong not in log and PASSWORD not in log


def _login(server: ServerProcess, username: str, password: str) -> str:
    answer = call(server, "POST", "/api/v1/auth/login", body={"username": username, "password": password})
    assert answer.status == 200, answer.body
    return str(answer.json()["access_token"])


@pytest.mark.slow
def test_a_camera_with_a_source_url_is_pulled_and_its_credentials_stay_with_operators(
    server_factory,  # type: ignore[no-untyped-def]
    camera_port: int,
) -> None:
    camera = _start_camera(camera_port)
    server: ServerProcess = server_factory(
        {"MEDIASERVER_AUTH_PUBLISH_MODE": "database", "MEDIASERVER_PULL_ALLOW_LOOPBACK": "true"}
    )
    try:
        admin = server.admin_token()
        url = f"rtsp://{USER}:{PASSWORD}@127.0.0.1:{camera_port}/cam"
        created = call(server, "POST", "/api/v1/cameras", admin, {"name": "Gate", "source_url": url})
        assert created.status == 201, created.body
        cam = created.json()
        assert cam["source_url"] == url and cam["source"] == f"rtsp://***@127.0.0.1:{camera_port}/cam"
        wait_for_stream(server, "live", cam["id"], timeout=20)
        status = wait_until(
            "the camera to be online",
            lambda: (
                (s := call(server, "GET", f"/api/v1/cameras/{cam['id']}/status", admin).json())["status"] == "online"
                and s
            ),
        )
        assert status["source_state"] == "online" and status["live"]

        # A viewer sees where the camera is, never how to log in to it.
        password = "viewer-password-1"
        made = call(server, "POST", "/api/v1/users", admin, {"username": "watcher", "password": password})
        assert made.status == 201, made.body
        viewer = _login(server, "watcher", password)
        for path in (f"/api/v1/cameras/{cam['id']}", "/api/v1/cameras", f"/api/v1/cameras/{cam['id']}/status"):
            answer = call(server, "GET", path, viewer)
            assert answer.status == 200 and PASSWORD.encode() not in answer.body, path
        seen = call(server, "GET", f"/api/v1/cameras/{cam['id']}", viewer).json()
        assert seen["source_url"] is None and seen["source"] == cam["source"]

        # Bad URLs are refused; one that points at cloud metadata is taken but never reached.
        bad = call(server, "POST", "/api/v1/cameras", admin, {"name": "Bad", "source_url": "file:///etc/passwd"})
        assert bad.status == 422 and "source_url" in bad.json()["error"]["message"] + str(bad.json()["error"])
        metadata = call(
            server, "POST", "/api/v1/cameras", admin, {"name": "Meta", "source_url": "http://169.254.169.254/x.flv"}
        ).json()
        refused = wait_until(
            "the metadata source to be refused",
            lambda: (
                (s := call(server, "GET", f"/api/v1/cameras/{metadata['id']}/status", admin).json())["source_state"]
                == "error"
                and s
            ),
        )
        assert "link-local" in refused["source_error"]
        wait_until(
            "the metadata camera to be marked error",
            lambda: call(server, "GET", f"/api/v1/cameras/{metadata['id']}", admin).json()["status"] == "error",
        )

        # Clearing the URL stops the pull: the camera is an RTMP camera again.
        cleared = call(server, "PUT", f"/api/v1/cameras/{cam['id']}", admin, {"source_url": ""})
        assert cleared.status == 200 and cleared.json()["source_url"] is None
        wait_until("the pulled stream to stop", lambda: f"live/{cam['id']}" not in _streams(server))
    finally:
        camera.kill()
        camera.wait()
    assert PASSWORD not in server.log()


@pytest.mark.slow
def test_a_camera_with_g711_audio_is_heard_as_aac(server_factory, camera_port: int) -> None:  # type: ignore[no-untyped-def]
    camera = _start_camera(camera_port, audio="pcma")
    url = f"rtsp://{USER}:{PASSWORD}@127.0.0.1:{camera_port}/cam"
    server: ServerProcess = server_factory(
        {"MEDIASERVER_PULL_SOURCES": json.dumps([f"live/yard={url}"]), "MEDIASERVER_PULL_ALLOW_LOOPBACK": "true"}
    )
    try:
        streams = _played_streams(server, "live/yard")
        audio = next(s for s in streams if s["codec_type"] == "audio")
        assert audio["codec_name"] == "aac" and audio["sample_rate"] == "16000"
        _wait("an HLS segment", lambda: "seg-" in server.get_text("/hls/live/yard/index.m3u8"))
        init = re.search(r'URI="(init-\d+\.mp4)"', server.get_text("/hls/live/yard/index.m3u8"))
        assert init is not None
        with urllib.request.urlopen(server.http_url(f"/hls/live/yard/{init.group(1)}"), timeout=5) as answer:
            assert b"mp4a" in answer.read()  # the HLS track carries the AAC made from the camera's G.711
    finally:
        camera.kill()
        camera.wait()
    assert "event=pull_audio_transcode stream=live/yard from=pcm_alaw" in server.log()


@pytest.mark.slow
def test_an_on_demand_camera_starts_with_its_first_player_and_stops_when_idle(  # type: ignore[no-untyped-def]
    server_factory, camera_port: int
) -> None:
    camera = _start_camera(camera_port)
    url = f"rtsp://{USER}:{PASSWORD}@127.0.0.1:{camera_port}/cam"
    server: ServerProcess = server_factory(
        {
            "MEDIASERVER_PULL_SOURCES": json.dumps([f"live/gate={url}"]),
            "MEDIASERVER_PULL_ALLOW_LOOPBACK": "true",
            "MEDIASERVER_PULL_ON_DEMAND": json.dumps(["live/*"]),
            "MEDIASERVER_PULL_ON_DEMAND_IDLE": "3",
        }
    )
    try:
        # Nobody watches: nothing is pulled.
        time.sleep(1.5)
        assert "live/gate" not in _streams(server)
        assert _metric(server, "mediaserver_pull_sources", '{state="idle"}') == 1
        assert _metric(server, "mediaserver_pull_sessions_total") == 0
        # The first RTMP player starts the source and gets the stream (ffprobe waits while it comes up).
        asked = time.monotonic()
        probe = subprocess.run(
            [require("ffprobe"), "-v", "error", "-show_streams", "-of", "json", server.rtmp_url("live/gate")],
            capture_output=True,
            timeout=30,
            check=True,
        )
        print(f"on-demand RTMP join: {time.monotonic() - asked:.2f} s to ffprobe's answer")
        assert sorted(s["codec_name"] for s in json.loads(probe.stdout)["streams"]) == ["aac", "h264"]
        assert _metric(server, "mediaserver_pull_sessions_total") == 1
        # Nobody left: stopped after the idle time, and started again by the next player.
        _wait("the idle source to stop", lambda: "live/gate" not in _streams(server), timeout=15)
        assert _metric(server, "mediaserver_pull_sources", '{state="idle"}') == 1
        assert "event=pull_on_demand_stop stream=live/gate" in server.log()
        probe = subprocess.run(
            [require("ffprobe"), "-v", "error", "-show_streams", "-of", "json", server.rtmp_url("live/gate")],
            capture_output=True,
            timeout=30,
            check=True,
        )
        assert json.loads(probe.stdout)["streams"]
        assert _metric(server, "mediaserver_pull_sessions_total") == 2
        # An HLS player starts it too: its first playlist request waits for the first segment.
        _wait("the idle source to stop again", lambda: "live/gate" not in _streams(server), timeout=15)
        with urllib.request.urlopen(server.http_url("/hls/live/gate/index.m3u8"), timeout=30) as answer:
            assert answer.status == 200 and "#EXTINF" in answer.read().decode()
        assert _metric(server, "mediaserver_pull_sessions_total") == 3
    finally:
        camera.kill()
        camera.wait()
    assert PASSWORD not in server.log()
