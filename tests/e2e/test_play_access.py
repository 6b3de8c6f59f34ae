"""One play-authorization path: RTMP play, HLS (playlists, init, segments, parts) and WHEP all ask the same
authorizer, with static play keys as with camera tokens; a stream published under its own key never shows it."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from aiortc import RTCRtpTransceiver

from tests.conftest import ServerProcess, ffmpeg_publish, require, start_server, wait_for_stream
from tests.webrtc.helpers import loopback_offer, loopback_pc, post

PLAY_KEY = "viewer-secret-4711"
PUBLISH_KEY = "publisher-secret-0815"


def fetch(url: str, cookie: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def rtmp_readable(url: str) -> bool:
    probe = subprocess.run(
        [require("ffprobe"), "-v", "error", "-rw_timeout", "5000000", "-show_entries", "stream=codec_name", url],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0 and b"h264" in probe.stdout


async def whep_status(server: ServerProcess, path: str) -> int:
    pc = loopback_pc()
    try:
        for kind in ("video", "audio"):
            transceiver: RTCRtpTransceiver = pc.addTransceiver(kind, direction="recvonly")
            assert transceiver is not None
        answer = await post(server.http_url(path), await loopback_offer(pc))
        return answer.status
    finally:
        await pc.close()


def first_media_uris(playlist: str) -> list[str]:
    """The init segment, the first full segment and the first part a playlist names."""
    init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', playlist)
    segment = re.search(r"^(seg-\d+\.m4s)$", playlist, re.MULTILINE)
    part = re.search(r'#EXT-X-PART:[^\n]*URI="([^"]+)"', playlist)
    assert init and segment and part, playlist
    return [init.group(1), segment.group(1), part.group(1)]


async def test_static_play_keys_guard_every_protocol(tmp_path: Path) -> None:
    server = start_server(
        tmp_path, {"MEDIASERVER_AUTH_PLAY_KEYS": PLAY_KEY, "MEDIASERVER_WEBRTC_HOST_ADDRESSES": "127.0.0.1"}
    )
    publisher = ffmpeg_publish(server.rtmp_url("live/cam"), 20, gop=12)
    try:
        wait_for_stream(server, "live", "cam")
        base = server.http_url("/hls/live/cam/")
        # HLS: no key, no playlist; a wrong key neither.
        assert fetch(base + "index.m3u8")[0] == 403
        assert fetch(base + "index.m3u8?key=wrong")[0] == 403
        status, body, headers = fetch(base + "index.m3u8?key=" + PLAY_KEY)
        assert status == 200 and body.startswith(b"#EXTM3U")
        cookie = headers["Set-Cookie"].split(";")[0]
        assert cookie.startswith("ms_play=")
        # Init, segment and part URIs carry no query: without the cookie they are refused, with it served.
        for uri in first_media_uris(body.decode()):
            assert fetch(base + uri)[0] == 403, uri
            status, data, _ = fetch(base + uri, cookie)
            assert status == 200 and data, uri
        # RTMP play and WHEP ask the same authorizer.
        assert not rtmp_readable(server.rtmp_url("live/cam"))
        assert rtmp_readable(server.rtmp_url(f"live/cam?key={PLAY_KEY}"))
        assert await whep_status(server, "/whep/live/cam") == 403
        assert await whep_status(server, f"/whep/live/cam?key={PLAY_KEY}") == 201
        refused = re.search(
            r'^mediaserver_play_denied_total\{protocol="hls"\} (\S+)$', server.get_text("/metrics"), re.M
        )
        assert refused is not None and float(refused.group(1)) >= 4
        # The viewer key is in no log line.
        assert PLAY_KEY not in server.log()
    finally:
        publisher.kill()
        publisher.wait()
        server.stop()


def test_a_stream_named_by_its_key_never_shows_the_key(tmp_path: Path) -> None:
    server = start_server(
        tmp_path, {"MEDIASERVER_AUTH_PUBLISH_MODE": "static", "MEDIASERVER_AUTH_PUBLISH_KEYS": PUBLISH_KEY}
    )
    publisher = ffmpeg_publish(server.rtmp_url(f"live/{PUBLISH_KEY}"), 15, gop=12)
    try:
        deadline = time.monotonic() + 10
        streams: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not streams:
            data = server.get_json("/api/v1/streams")
            assert isinstance(data, dict)
            streams = [s for s in data["streams"] if s["video"]]
            time.sleep(0.1)
        assert len(streams) == 1
        alias = streams[0]["name"]
        assert alias.startswith("key-") and PUBLISH_KEY not in alias
        # Old nginx-style players that play live/<key> still find it; the alias plays too.
        assert rtmp_readable(server.rtmp_url(f"live/{PUBLISH_KEY}"))
        status, body, _ = fetch(server.http_url(f"/hls/live/{alias}/index.m3u8"))
        assert status == 200 and PUBLISH_KEY.encode() not in body
        sessions = server.get_json("/api/v1/webrtc/sessions", auth=True)
        everything = json.dumps(server.get_json("/api/v1/streams")) + json.dumps(sessions)
        everything += server.get_text("/metrics") + server.log()
        assert PUBLISH_KEY not in everything
    finally:
        publisher.kill()
        publisher.wait()
        server.stop()


def test_webrtc_sessions_need_system_read(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        status, body, _ = fetch(server.http_url("/api/v1/webrtc/sessions"))
        assert status == 401 and json.loads(body)["error"]["code"]
        listing = server.get_json("/api/v1/webrtc/sessions", auth=True)
        assert isinstance(listing, dict) and listing["count"] == 0
    finally:
        server.stop()
