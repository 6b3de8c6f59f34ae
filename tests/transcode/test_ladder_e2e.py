"""The ABR ladder in a real server: a real ffmpeg publishes H.264 + AAC, a real ffprobe asks for a rung over RTMP
(its demand starts the ladder's worker process), the rung's keyframes line up with the source's, the master
playlist lists the rungs, a killed worker is restarted, and the worker goes away when idle and when the source
ends. Play keys are on, so every request goes through play authorization."""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, ffmpeg_publish, require, wait_for_stream

KEY = "play-key-for-tests"
LADDER = ["480p:854x480:1000k", "240p:426x240:300k", "180p:320x180:200k"]
FRAME_MS = 40  # 25 fps
IDLE = 2


def _env() -> dict[str, str]:
    return {
        "MEDIASERVER_TRANSCODE_STREAMS": json.dumps(["live/*"]),
        "MEDIASERVER_TRANSCODE_LADDER": json.dumps(LADDER),
        "MEDIASERVER_TRANSCODE_IDLE": str(IDLE),
        "MEDIASERVER_TRANSCODE_THREADS": "1",
        "MEDIASERVER_AUTH_PLAY_KEYS": json.dumps([KEY]),
    }


def _wait(what: str, check: Callable[[], object], server: ServerProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{server.log()[-3000:]}")


def _metric(server: ServerProcess, name: str, labels: str = "") -> float:
    text = server.get_text("/metrics")
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _workers(server: ServerProcess) -> list[int]:
    """Worker pids the server has started, in order."""
    return [int(p) for p in re.findall(r"event=transcode_worker_started stream=live/x pid=(\d+)", server.log())]


def _alive(pid: int) -> bool:
    try:
        return b"mediaserver.transcode.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _get(server: ServerProcess, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(server.http_url(path), timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _probe_streams(server: ServerProcess, path: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [require("ffprobe"), "-v", "error", "-show_streams", "-of", "json", server.rtmp_url(f"{path}?key={KEY}")],
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, f"ffprobe {path}: {done.stderr.decode()[-500:]}\n{server.log()[-3000:]}"
    return list(json.loads(done.stdout)["streams"])


def _keyframes(server: ServerProcess, path: str, seconds: float) -> tuple[list[int], int, int]:
    """(keyframe pts, first pts, last pts) of `seconds` of the video of `path`, in ms."""
    done = subprocess.run(
        [
            require("ffprobe"),
            "-v",
            "error",
            "-read_intervals",
            f"%+{seconds}",
            "-select_streams",
            "v",
            "-show_entries",
            "packet=pts,flags",
            "-of",
            "json",
            server.rtmp_url(f"{path}?key={KEY}"),
        ],
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr.decode()[-500:]
    packets = json.loads(done.stdout)["packets"]
    times = [int(p["pts"]) for p in packets]
    return [int(p["pts"]) for p in packets if "K" in p["flags"]], min(times), max(times)


@pytest.mark.slow
def test_a_rung_comes_up_on_demand_aligned_listed_restarted_and_stopped(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(_env())
    publisher = ffmpeg_publish(server.rtmp_url("live/x"), 60, size="640x360", rate=25, gop=25)
    try:
        wait_for_stream(server, "live", "x")
        assert _metric(server, "mediaserver_transcode_workers") == 0  # nobody asked for a rung yet
        assert not _workers(server)

        # An RTMP player of a rung starts the ladder and gets the rung, scaled, with the source's audio.
        asked = time.monotonic()
        streams = _probe_streams(server, "live/x_240p")
        print(f"rung on demand: {time.monotonic() - asked:.2f} s to ffprobe's answer")
        video = next(s for s in streams if s["codec_type"] == "video")
        audio = next(s for s in streams if s["codec_type"] == "audio")
        assert (video["codec_name"], video["width"], video["height"]) == ("h264", 426, 240)
        assert audio["codec_name"] == "aac"
        assert len(_workers(server)) == 1 and _metric(server, "mediaserver_transcode_workers") == 1
        assert (
            "event=transcode_worker_started stream=live/x" in server.log()
            and "rungs=240p:426x240:300k,180p" in server.log()
        )

        # Never upscaled: a 640x360 source has no 480p rung.
        done = subprocess.run(
            [require("ffprobe"), "-v", "error", server.rtmp_url(f"live/x_480p?key={KEY}")],
            capture_output=True,
            timeout=30,
        )
        assert done.returncode != 0
        assert "live/x_480p" not in json.dumps(server.get_json("/api/v1/streams"))

        # Keyframes line up: the same few seconds of the source and of each rung, read at the same time.
        with ThreadPoolExecutor(3) as pool:
            source, low, lowest = pool.map(lambda p: _keyframes(server, p, 4), ("live/x", "live/x_240p", "live/x_180p"))
        for rung in (low, lowest):
            start, end = max(source[1], rung[1]), min(source[2], rung[2])
            ours = [t for t in rung[0] if start <= t <= end]
            theirs = [t for t in source[0] if start <= t <= end]
            assert len(theirs) >= 2, (source, rung)
            for t in ours:
                assert min(abs(t - s) for s in source[0]) <= FRAME_MS, (ours, theirs)
            for t in theirs:
                assert min(abs(t - r) for r in rung[0]) <= FRAME_MS, (ours, theirs)
        assert _metric(server, "mediaserver_transcode_frames_total", '{rung="240p"}') > 25
        assert _metric(server, "mediaserver_transcode_frames_total", '{rung="480p"}') == 0

        # Nobody watches a rung any more: the ladder stops after `idle` and its worker process is gone.
        first = _workers(server)[0]
        _wait(
            "the idle ladder to stop", lambda: "event=transcode_stop stream=live/x reason=idle" in server.log(), server
        )
        _wait("the worker process to exit", lambda: not _alive(first), server, timeout=5)
        assert _metric(server, "mediaserver_transcode_workers") == 0
        assert "live/x_240p" not in json.dumps(server.get_json("/api/v1/streams"))

        # The master playlist is authorized like the media playlists, starts the ladder and lists every rung.
        assert _get(server, "/hls/live/x/master.m3u8")[0] == 403
        status, master = _get(server, f"/hls/live/x/master.m3u8?key={KEY}")
        assert status == 200, master
        lines = master.splitlines()
        assert lines[0] == "#EXTM3U"
        variants = {}
        for info, uri in itertools.pairwise(lines):
            if info.startswith("#EXT-X-STREAM-INF:"):
                attributes = dict(re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', info[len("#EXT-X-STREAM-INF:") :]))
                variants[uri] = attributes
        assert set(variants) == {f"../x{s}/index.m3u8?key={KEY}" for s in ("", "_240p", "_180p")}, master
        assert [v["RESOLUTION"] for v in variants.values()] == ["640x360", "426x240", "320x180"]
        for attributes in variants.values():
            assert int(attributes["BANDWIDTH"]) > 100_000
            assert re.fullmatch(r'"avc1\.[0-9a-f]{6},mp4a\.40\.2"', attributes["CODECS"]), attributes
        assert len(_workers(server)) == 2
        # The rungs are live by the time the player asks for their media playlists.
        status, media = _get(server, f"/hls/live/x_240p/index.m3u8?key={KEY}")
        assert status == 200 and "#EXTINF" in media, media
        # Each LL-HLS media playlist reports where the other renditions are (a player switching joins there).
        reports = re.findall(
            r'#EXT-X-RENDITION-REPORT:URI="\.\./(x[^/"]*)/index\.m3u8",LAST-MSN=\d+,LAST-PART=\d+', media
        )
        assert sorted(reports) == ["x", "x_180p"], media

        # A worker that dies is restarted while the ladder is wanted (the HLS player above counts).
        second = _workers(server)[-1]
        subprocess.run(["kill", "-KILL", str(second)], check=True)
        _wait("a new worker", lambda: len(_workers(server)) == 3, server)
        assert "event=transcode_worker_died stream=live/x" in server.log()
        assert _metric(server, "mediaserver_transcode_restarts_total") == 1
        wait_for_stream(server, "live", "x_240p")

        # The source ends: so do its rungs and the worker.
        third = _workers(server)[-1]
        publisher.send_signal(signal.SIGINT)
        publisher.wait(timeout=10)
        _wait(
            "the ladder to end with its source",
            lambda: "event=transcode_stop stream=live/x reason=source_ended" in server.log(),
            server,
        )
        _wait("the worker process to exit", lambda: not _alive(third), server, timeout=5)
        assert not [s for s in json.dumps(server.get_json("/api/v1/streams")).split() if "x_" in s]
        assert _metric(server, "mediaserver_transcode_workers") == 0
        assert KEY not in server.log()
    finally:
        if publisher.poll() is None:
            publisher.kill()
            publisher.wait()


@pytest.mark.slow
async def test_a_webrtc_viewer_picks_a_rung(server_factory: Callable[..., ServerProcess]) -> None:
    from tests.webrtc.helpers import WEBRTC_ENV, wait_until, whep_play

    server = server_factory({**_env(), **WEBRTC_ENV})
    publisher = ffmpeg_publish(server.rtmp_url("live/w"), 30, size="640x360", rate=25, gop=25)
    try:
        wait_for_stream(server, "live", "w")
        # WHEP asks the hub for the rung: the ladder starts for this viewer, who gets the rung's pictures.
        pc, answer, received = await whep_play(server, f"/whep/live/w_180p?key={KEY}", audio=False)
        assert answer.status == 201, answer.body
        try:
            assert await wait_until(lambda: len(received.video) >= 10, 20.0), "no rung frames over WebRTC"
            frame = received.video[-1]
            assert (frame.width, frame.height) == (320, 180)
        finally:
            await pc.close()
            for task in received.tasks:
                task.cancel()
    finally:
        publisher.kill()
        publisher.wait()
