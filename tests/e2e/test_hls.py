"""Live HLS / LL-HLS served from memory, read by real ffmpeg/ffprobe and by plain HTTP."""

from __future__ import annotations

import gzip
import re
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request

from tests.conftest import ServerProcess, ffmpeg_publish, require, wait_for_stream
from tests.hls.test_fmp4 import Box, walk


def http_get(
    server: ServerProcess, path: str, headers: dict[str, str] | None = None, timeout: float = 15
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(server.http_url(path), headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_playlist(server: ServerProcess, path: str, segments: int = 1, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        status, _, body = http_get(server, path)
        if status == 200:
            text = body.decode()
            if text.count("#EXTINF") >= segments:
                return text
        time.sleep(0.2)
    raise AssertionError(f"playlist {path} never had {segments} segments:\n{text}\n{server.log()[-2000:]}")


def tag_values(playlist: str, tag: str) -> list[str]:
    return [line.split(":", 1)[1] for line in playlist.splitlines() if line.startswith(tag + ":")]


def check_isobmff(data: bytes, top_kinds: list[bytes]) -> list[Box]:
    boxes = walk(data, 0, len(data))
    assert [b.kind for b in boxes][: len(top_kinds)] == top_kinds
    return boxes


def test_hls_playlist_segments_and_ffmpeg_decode(server: ServerProcess) -> None:
    publisher = ffmpeg_publish(server.rtmp_url("live/hls1"), 20, size="640x360", rate=30, gop=60)
    try:
        wait_for_stream(server, "live", "hls1")
        playlist = wait_playlist(server, "/hls/live/hls1/index.m3u8", segments=2)
        assert playlist.startswith("#EXTM3U\n")
        for tag in (
            "#EXT-X-VERSION",
            "#EXT-X-TARGETDURATION",
            "#EXT-X-MEDIA-SEQUENCE",
            "#EXT-X-MAP",
            "#EXT-X-PROGRAM-DATE-TIME",
            "#EXT-X-PART-INF",
            "#EXT-X-SERVER-CONTROL",
            "#EXT-X-PART",
            "#EXT-X-PRELOAD-HINT",
        ):
            assert tag in playlist, tag
        control = tag_values(playlist, "#EXT-X-SERVER-CONTROL")[0]
        part_target = float(tag_values(playlist, "#EXT-X-PART-INF")[0].split("=")[1])
        hold_back = float(re.search(r"PART-HOLD-BACK=([\d.]+)", control).group(1))  # type: ignore[union-attr]
        assert "CAN-BLOCK-RELOAD=YES" in control and hold_back >= 3 * part_target - 0.01
        for part in tag_values(playlist, "#EXT-X-PART"):
            assert float(re.search(r"DURATION=([\d.]+)", part).group(1)) <= part_target + 1e-6  # type: ignore[union-attr]
        target = int(tag_values(playlist, "#EXT-X-TARGETDURATION")[0])
        for extinf in tag_values(playlist, "#EXTINF"):
            assert round(float(extinf.rstrip(","))) <= target
        # Every segment begins with an independent part.
        lines = playlist.splitlines()
        for index, line in enumerate(lines):
            if line.startswith("#EXT-X-PROGRAM-DATE-TIME") and lines[index + 1].startswith("#EXT-X-PART:"):
                assert "INDEPENDENT=YES" in lines[index + 1]

        init_uri = re.search(r'#EXT-X-MAP:URI="([^"]+)"', playlist).group(1)  # type: ignore[union-attr]
        status, headers, init = http_get(server, f"/hls/live/hls1/{init_uri}")
        assert status == 200 and headers["Content-Type"] == "video/mp4"
        assert "immutable" in headers["Cache-Control"] and headers["Access-Control-Allow-Origin"] == "*"
        boxes = check_isobmff(init, [b"ftyp", b"moov"])
        moov = boxes[1]
        assert len(moov.find(b"trak")) == 2 and moov.find(b"mvex")
        segment_uri = next(line for line in lines if line.startswith("seg-"))
        status, headers, segment = http_get(server, f"/hls/live/hls1/{segment_uri}")
        assert status == 200
        media = walk(segment, 0, len(segment))
        kinds = [b.kind for b in media]
        assert kinds[0] == b"moof" and kinds.count(b"moof") == kinds.count(b"mdat") >= 2
        for box in media:
            if box.kind == b"moof":
                assert box.find(b"mfhd") and len(box.find(b"traf")) >= 1
                for traf in box.find(b"traf"):
                    assert traf.find(b"tfhd") and traf.find(b"tfdt") and traf.find(b"trun")
        part_uri = re.search(r'#EXT-X-PART:[^\n]*URI="([^"]+)"', playlist).group(1)  # type: ignore[union-attr]
        status, _, part = http_get(server, f"/hls/live/hls1/{part_uri}")
        assert status == 200 and walk(part, 0, len(part))[0].kind == b"moof"

        # A real client decodes 10 s of the live stream without a single error.
        decoded = subprocess.run(
            [
                require("ffmpeg"),
                "-v",
                "error",
                "-i",
                server.http_url("/hls/live/hls1/index.m3u8"),
                "-t",
                "10",
                "-f",
                "null",
                "-",
            ],
            capture_output=True,
            timeout=60,
        )
        assert decoded.returncode == 0 and not decoded.stderr.strip(), decoded.stderr.decode()
        probe = subprocess.run(
            [
                require("ffprobe"),
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name,width,height",
                "-of",
                "compact",
                server.http_url("/hls/live/hls1/index.m3u8"),
            ],
            capture_output=True,
            timeout=60,
            text=True,
        )
        assert "codec_name=h264|width=640|height=360" in probe.stdout and "codec_name=aac" in probe.stdout
        metrics = server.get_text("/metrics")
        assert re.search(r"mediaserver_hls_parts_total [1-9]", metrics)
        assert re.search(r"mediaserver_hls_segments_total [1-9]", metrics)
        assert 'mediaserver_hls_memory_bytes{stream="live/hls1"}' in metrics
    finally:
        publisher.kill()
        publisher.wait()
    # The playlist ends once the publisher has gone.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, _, body = http_get(server, "/hls/live/hls1/index.m3u8")
        if b"#EXT-X-ENDLIST" in body:
            break
        time.sleep(0.2)
    assert b"#EXT-X-ENDLIST" in body and b"PRELOAD-HINT" not in body


def test_blocking_reload_returns_the_next_part_promptly(server: ServerProcess) -> None:
    publisher = ffmpeg_publish(server.rtmp_url("live/block"), 15, rate=30, gop=60)
    try:
        wait_for_stream(server, "live", "block")
        playlist = wait_playlist(server, "/hls/live/block/index.m3u8", segments=1)
        part_target = float(tag_values(playlist, "#EXT-X-PART-INF")[0].split("=")[1])
        for _ in range(4):
            _, _, body = http_get(server, "/hls/live/block/index.m3u8")
            hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="part-(\d+)-(\d+)\.m4s"', body.decode())
            assert hint is not None
            msn, part = int(hint.group(1)), int(hint.group(2))
            started = time.monotonic()
            status, _headers, blocked = http_get(server, f"/hls/live/block/index.m3u8?_HLS_msn={msn}&_HLS_part={part}")
            waited = time.monotonic() - started
            assert status == 200
            # The part did not exist when we asked; the answer came as soon as it did.
            assert f'URI="part-{msn}-{part}.m4s"' in blocked.decode() or f"seg-{msn}.m4s" in blocked.decode()
            assert waited <= part_target + 0.25, f"blocked {waited:.3f}s for a {part_target}s part"
            # The preload-hinted part itself is served by a blocking request too.
            hint_next = re.search(r'PRELOAD-HINT:TYPE=PART,URI="(part-\d+-\d+\.m4s)"', blocked.decode())
            assert hint_next is not None
            started = time.monotonic()
            status, _, data = http_get(server, f"/hls/live/block/{hint_next.group(1)}")
            assert status == 200 and data[4:8] == b"moof"
            assert time.monotonic() - started <= part_target + 0.25
        # Delta update: hls.js asks for _HLS_skip=YES.
        status, _, skipped = http_get(server, f"/hls/live/block/index.m3u8?_HLS_msn={msn}&_HLS_skip=YES")
        assert status == 200 and skipped.startswith(b"#EXTM3U")
        metrics = server.get_text("/metrics")
        assert 'mediaserver_hls_playlist_requests_total{blocking="yes"}' in metrics
        assert "mediaserver_hls_blocking_wait_seconds_bucket" in metrics
    finally:
        publisher.kill()
        publisher.wait()


def test_hls_bad_requests_get_clear_4xx(server: ServerProcess) -> None:
    status, headers, body = http_get(server, "/hls/live/nothing/index.m3u8")
    assert status == 404 and b'"error"' in body
    publisher = ffmpeg_publish(server.rtmp_url("live/bad"), 12)
    try:
        wait_for_stream(server, "live", "bad")
        playlist = wait_playlist(server, "/hls/live/bad/index.m3u8")
        msn = int(tag_values(playlist, "#EXT-X-MEDIA-SEQUENCE")[0])
        cases = {
            f"/hls/live/bad/index.m3u8?_HLS_msn={msn + 100}": 400,
            "/hls/live/bad/index.m3u8?_HLS_msn=abc": 400,
            "/hls/live/bad/index.m3u8?_HLS_msn=-1": 400,
            "/hls/live/bad/index.m3u8?_HLS_part=1": 400,
            "/hls/live/bad/index.m3u8?_HLS_msn=1&_HLS_part=x": 400,
            "/hls/live/bad/index.m3u8?_HLS_skip=maybe": 400,
            "/hls/live/bad/seg-1.m4s": 404,
            "/hls/live/bad/part-1-99.m4s": 404,
            "/hls/live/bad/init-99.mp4": 404,
            "/hls/live/bad/../../etc/passwd": 404,
            "/hls/live/bad/evil.txt": 404,
        }
        for path, expected in cases.items():
            status, headers, body = http_get(server, path)
            assert status == expected, (path, status, body)
            assert body.startswith(b'{"error"'), (path, body)
        segment_uri = next(line for line in playlist.splitlines() if line.startswith("seg-"))
        _, _, whole = http_get(server, f"/hls/live/bad/{segment_uri}")
        status, headers, part = http_get(server, f"/hls/live/bad/{segment_uri}", {"Range": "bytes=10-99"})
        assert status == 206 and part == whole[10:100]
        assert headers["Content-Range"] == f"bytes 10-99/{len(whole)}"
        status, _, tail = http_get(server, f"/hls/live/bad/{segment_uri}", {"Range": "bytes=-16"})
        assert status == 206 and tail == whole[-16:]
        status, headers, _ = http_get(server, f"/hls/live/bad/{segment_uri}", {"Range": f"bytes={len(whole)}-"})
        assert status == 416 and headers["Content-Range"] == f"bytes */{len(whole)}"
        status, headers, body = http_get(server, "/hls/live/bad/index.m3u8", {"Accept-Encoding": "gzip"})
        assert status == 200 and headers.get("Content-Encoding") == "gzip"
        assert gzip.decompress(body).startswith(b"#EXTM3U")
        assert headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
        assert "500" not in server.get_text("/metrics").split("mediaserver_hls_request_errors_total")[-1][:200]
    finally:
        publisher.kill()
        publisher.wait()


def test_reconnecting_publisher_gives_a_discontinuity(server: ServerProcess) -> None:
    first = ffmpeg_publish(server.rtmp_url("live/again"), 5, gop=25)
    first.communicate(timeout=30)
    wait_playlist(server, "/hls/live/again/index.m3u8", segments=1)
    second = ffmpeg_publish(server.rtmp_url("live/again"), 8, size="320x240", gop=25)
    try:
        deadline = time.monotonic() + 20
        playlist = ""
        while time.monotonic() < deadline:
            _, _, body = http_get(server, "/hls/live/again/index.m3u8")
            playlist = body.decode()
            if "#EXT-X-DISCONTINUITY" in playlist and playlist.count("#EXT-X-MAP") == 2:
                break
            time.sleep(0.3)
        assert "#EXT-X-DISCONTINUITY" in playlist and "#EXT-X-ENDLIST" not in playlist, playlist
        inits = re.findall(r'#EXT-X-MAP:URI="([^"]+)"', playlist)
        assert len(set(inits)) == 2
        # The new init segment carries the new resolution.
        _, _, init = http_get(server, f"/hls/live/again/{inits[-1]}")
        tkhd = init.index(b"tkhd")
        width, height = struct.unpack_from(">II", init, tkhd - 4 + 84)
        assert (width >> 16, height >> 16) == (320, 240)
        # Timestamps continue across the discontinuity: ffmpeg decodes the whole window cleanly.
        decoded = subprocess.run(
            [require("ffmpeg"), "-v", "error", "-i", server.http_url("/hls/live/again/index.m3u8"), "-f", "null", "-"],
            capture_output=True,
            timeout=60,
        )
        assert decoded.returncode == 0
    finally:
        second.kill()
        second.wait()


def test_audio_only_and_video_only_streams(server: ServerProcess) -> None:
    audio = ffmpeg_publish(server.rtmp_url("live/radio"), 8, extra=["-vn"])
    video = ffmpeg_publish(server.rtmp_url("live/silent"), 8, extra=["-an"])
    try:
        results: dict[str, str] = {}

        def fetch(name: str) -> None:
            results[name] = wait_playlist(server, f"/hls/live/{name}/index.m3u8", segments=1)

        threads = [threading.Thread(target=fetch, args=(name,)) for name in ("radio", "silent")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for name, codec in (("radio", "codec_name=aac"), ("silent", "codec_name=h264")):
            probe = subprocess.run(
                [
                    require("ffprobe"),
                    "-v",
                    "error",
                    "-show_entries",
                    "stream=codec_name",
                    "-of",
                    "compact",
                    server.http_url(f"/hls/live/{name}/index.m3u8"),
                ],
                capture_output=True,
                timeout=60,
                text=True,
            )
            streams = [line for line in probe.stdout.splitlines() if line.startswith("stream|")]
            assert streams == [f"stream|{codec}"], (name, probe.stdout)
    finally:
        for process in (audio, video):
            process.kill()
            process.wait()
