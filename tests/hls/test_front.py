"""The HTTP front (`mediaserver.http.fastpath`) in a real server, over raw sockets: what it answers, what it hands to
aiohttp with the connection (another route, pipelined requests, a Range, a malformed request, HTTP/1.0), and that
every answer arrives once, whole and in order."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator

import jwt
import pytest

from control.security import PLAY_AUDIENCE
from tests.conftest import ServerProcess, ffmpeg_publish, wait_for_stream
from tests.e2e.test_hls import wait_playlist

BASE = "/hls/live/front/"


def _front(server: ServerProcess) -> tuple[float, float]:
    text = server.get_text("/metrics")
    answered = re.search(r'^mediaserver_http_front_requests_total\{path="answered"\} (\S+)$', text, re.M)
    handed = re.search(r'^mediaserver_http_front_requests_total\{path="handed_over"\} (\S+)$', text, re.M)
    assert answered is not None and handed is not None
    return float(answered.group(1)), float(handed.group(1))


def _front_waits(server: ServerProcess) -> float:
    found = re.search(r"^mediaserver_http_front_waits_total (\S+)$", server.get_text("/metrics"), re.M)
    assert found is not None
    return float(found.group(1))


class Connection:
    """One kept-alive connection, answers read one at a time (status, lower-cased headers, body)."""

    def __init__(self, server: ServerProcess) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> tuple[int, dict[str, str], bytes]:
        status_line = self.file.readline()
        assert status_line.startswith(b"HTTP/1."), status_line
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self.file.read(int(headers.get("content-length", "0")))
        return status, headers, body

    def get(self, path: str, extra: str = "") -> tuple[int, dict[str, str], bytes]:
        self.send(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
        return self.read()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def live(server: ServerProcess) -> Iterator[tuple[ServerProcess, str, str]]:
    """A live stream with a few segments: the server, its newest complete segment's name and a part's."""
    publisher = ffmpeg_publish(server.rtmp_url("live/front"), 40, size="640x360", rate=25, gop=25)
    try:
        wait_for_stream(server, "live", "front")
        wait_playlist(server, BASE + "index.m3u8", 3, 30)
        text = server.get_text(BASE + "index.m3u8")
        segment = re.findall(r"^(seg-\d+\.m4s)$", text, re.M)[-1]
        part = re.findall(r'#EXT-X-PART:[^\n]*URI="(part-\d+-\d+\.m4s)"', text)[0]
        yield server, segment, part
    finally:
        publisher.kill()
        publisher.wait()


def test_front_answers_hls_then_hands_the_connection_to_aiohttp(live: tuple[ServerProcess, str, str]) -> None:
    server, segment, part = live
    answered, handed = _front(server)
    conn = Connection(server)
    try:
        status, headers, playlist = conn.get(BASE + "index.m3u8")
        assert status == 200 and playlist.startswith(b"#EXTM3U")
        assert headers["content-type"].startswith("application/vnd.apple.mpegurl")
        assert headers["cache-control"] == "no-cache" and headers["access-control-allow-origin"] == "*"
        assert headers["server"] == "mediaserver" and "date" in headers
        status, headers, gzipped = conn.get(BASE + "index.m3u8", "Accept-Encoding: gzip\r\n")
        assert status == 200 and headers["content-encoding"] == "gzip" and gzipped[:2] == b"\x1f\x8b"
        status, headers, whole = conn.get(BASE + segment)
        assert status == 200 and headers["content-type"] == "video/iso.segment" and len(whole) > 1000
        assert headers["cache-control"].startswith("public")
        status, _, part_body = conn.get(BASE + part)
        assert status == 200 and part_body
        answered_now, handed_now = _front(server)
        assert answered_now - answered == 4 and handed_now - handed == 1  # the one handed over: /metrics
        # Another route on the same connection: aiohttp takes the connection over and answers it, then the rest.
        status, _, body = conn.get("/healthz")
        assert status == 200 and b"ok" in body
        status, _, again = conn.get(BASE + segment)
        assert status == 200 and again == whole
        # A Range (aiohttp's): the same bytes as the front's whole answer.
        ranged = Connection(server)
        try:
            status, headers, first = ranged.get(BASE + segment, "Range: bytes=0-99\r\n")
            assert status == 206 and first == whole[:100] and headers["content-range"].endswith(f"/{len(whole)}")
        finally:
            ranged.close()
        # Neither was the front's: the healthz request, the segment after it and the Range were handed over.
        answered_later, handed_later = _front(server)
        assert answered_later == answered_now and handed_later - handed_now == 3  # + /metrics again
    finally:
        conn.close()


def test_pipelined_split_and_bad_requests(live: tuple[ServerProcess, str, str]) -> None:
    server, segment, _ = live
    # Two requests in one write: both answered, in order (by aiohttp, which takes pipelining).
    conn = Connection(server)
    try:
        request = f"GET {BASE}index.m3u8 HTTP/1.1\r\nHost: x\r\n\r\nGET {BASE}{segment} HTTP/1.1\r\nHost: x\r\n\r\n"
        conn.send(request.encode())
        first, second = conn.read(), conn.read()
        assert first[0] == 200 and first[2].startswith(b"#EXTM3U")
        assert second[0] == 200 and second[1]["content-type"] == "video/iso.segment"
    finally:
        conn.close()
    # A request that arrives a few bytes at a time: answered whole, by the front.
    answered, _ = _front(server)
    conn = Connection(server)
    try:
        raw = f"GET {BASE}{segment} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n\r\n".encode()
        for i in range(0, len(raw), 7):
            conn.send(raw[i : i + 7])
            time.sleep(0.005)
        status, _, body = conn.read()
        assert status == 200 and len(body) > 1000
        assert _front(server)[0] - answered >= 1
    finally:
        conn.close()
    # Not HTTP: aiohttp's 400, and the server goes on.
    conn = Connection(server)
    try:
        conn.send(b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
        assert conn.read()[0] == 400
    finally:
        conn.close()
    # HTTP/1.0 (no keep-alive): aiohttp's answer, then the connection closes.
    conn = Connection(server)
    try:
        conn.send(f"GET {BASE}index.m3u8 HTTP/1.0\r\n\r\n".encode())
        status, _, body = conn.read()
        assert status == 200 and body.startswith(b"#EXTM3U")
        assert conn.file.read() == b""
    finally:
        conn.close()
    # An unknown stream or file: aiohttp's JSON 404.
    conn = Connection(server)
    try:
        status, headers, body = conn.get("/hls/live/nobody/index.m3u8")
        assert status == 404 and headers["content-type"].startswith("application/json")
    finally:
        conn.close()
    assert server.get_text(BASE + "index.m3u8").startswith("#EXTM3U")
    # (aiohttp logs the garbage request's parse error at debug level, with its traceback: not an error.)
    log = server.log()
    assert "level=ERROR" not in log and "fastpath.py" not in log, log[-3000:]


def test_front_holds_blocking_reloads_and_the_hinted_part(live: tuple[ServerProcess, str, str]) -> None:
    """LL-HLS on one connection, all answered by the front: a blocking reload for the preload hint's part waits for
    it, then the hinted part itself (asked before it exists) arrives whole."""
    server, _, _ = live
    answered, handed = _front(server)
    conn = Connection(server)
    try:
        status, _, text = conn.get(BASE + "index.m3u8")
        hint = re.search(rb'PRELOAD-HINT:TYPE=PART,URI="part-(\d+)-(\d+)\.m4s"', text)
        assert status == 200 and hint is not None
        msn, part = int(hint.group(1)), int(hint.group(2))
        status, headers, blocked = conn.get(BASE + f"index.m3u8?_HLS_msn={msn}&_HLS_part={part}")
        assert status == 200 and headers["cache-control"] == "public, max-age=2"
        assert f"part-{msn}-{part}.m4s".encode() in blocked or f"seg-{msn}.m4s".encode() in blocked
        # The next hinted part, asked for before it is there.
        hint = re.search(rb'PRELOAD-HINT:TYPE=PART,URI="(part-\d+-\d+\.m4s)"', blocked)
        assert hint is not None
        status, headers, body = conn.get(BASE + hint.group(1).decode())
        assert status == 200 and headers["content-type"] == "video/iso.segment" and body
        # Too far ahead: aiohttp's 400, on the connection it now holds.
        status, _, _ = conn.get(BASE + f"index.m3u8?_HLS_msn={msn + 100}")
        assert status == 400
        now_answered, now_handed = _front(server)
        assert now_answered - answered == 3 and now_handed - handed == 2  # this connection, and /metrics
    finally:
        conn.close()


def _expired_play_token(server: ServerProcess, camera_id: str) -> str:
    """A play token for `camera_id` signed with the server's own secret, expired a minute ago."""
    secret = (server.data_dir / "jwt_secret").read_text().strip()
    now = int(time.time())
    claims = {"iss": "mediaserver", "aud": PLAY_AUDIENCE, "cam": camera_id, "iat": now - 400, "exp": now - 60}
    return jwt.encode(claims, secret, algorithm="HS256")


def test_front_serves_public_and_private_cameras_under_the_database_authorizer(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """Database publish mode (the default): the first playlist of a public camera is aiohttp's (the authorizer
    looks the camera up), the next ones the front's (it knows the camera now). A private camera's playlists and
    segments are the front's too once the camera is cached: the URL's first playlist hands the play cookie back,
    then reloads and segments carry it, also once the token of the URL the player was given has expired."""
    server = server_factory({"MEDIASERVER_AUTH_PUBLISH_MODE": "database"})
    token = server.admin_token()
    cameras = {}
    for name, private in (("public", False), ("private", True)):
        body = json.dumps({"name": name, "private": private}).encode()
        request = urllib.request.Request(
            server.http_url("/api/v1/cameras"),
            body,
            {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            cameras[name] = json.loads(response.read())
    publishers = [
        ffmpeg_publish(server.rtmp_url(f"live/{camera['stream_key']}"), 30, size="320x240", rate=25, gop=25)
        for camera in cameras.values()
    ]
    try:
        public, private = cameras["public"]["id"], cameras["private"]["id"]
        wait_for_stream(server, "live", public)
        wait_for_stream(server, "live", private)
        wait_playlist(server, f"/hls/live/{public}/index.m3u8", 2, 30)
        # A camera change empties the authorizer's cache: the first request then waits for the camera's lookup in
        # the front (once), instead of leaving its connection to aiohttp.
        request = urllib.request.Request(
            server.http_url("/api/v1/cameras"),
            json.dumps({"name": "third"}).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        urllib.request.urlopen(request, timeout=10).close()
        answered, _ = _front(server)
        waits = _front_waits(server)
        conn = Connection(server)
        try:
            for _ in range(3):
                status, _, body = conn.get(f"/hls/live/{public}/index.m3u8")
                assert status == 200 and body.startswith(b"#EXTM3U")
        finally:
            conn.close()
        assert _front(server)[0] - answered == 3 and _front_waits(server) - waits == 1
        # The private camera: 403 without its token (aiohttp's answer, logged and counted).
        answered, _ = _front(server)
        conn = Connection(server)
        try:
            assert conn.get(f"/hls/live/{private}/index.m3u8")[0] == 403
            assert _front(server)[0] == answered
        finally:
            conn.close()  # aiohttp's now
        conn = Connection(server)
        try:
            request = urllib.request.Request(
                server.http_url(f"/api/v1/streaming/hls/{private}"), headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                url = json.loads(response.read())["url"]
            play = url[url.index("/hls/") :]
            wait_playlist(server, play, 2, 30)
            # The URL's first playlist hands the cookie back, as aiohttp's route would.
            answered, _ = _front(server)
            status, headers, text = conn.get(play)
            assert status == 200 and _front(server)[0] - answered == 1
            cookie, *attributes = headers["set-cookie"].split("; ")
            assert cookie.startswith("ms_play=") and cookie != "ms_play="
            assert set(attributes) == {"HttpOnly", "Max-Age=300", f"Path=/hls/live/{private}/", "SameSite=Lax"}
            segment = re.findall(r"^(seg-\d+\.m4s)$", text.decode(), re.M)[-1]
            # With the cookie: the same URL's reloads and the segments are the front's, with no new cookie.
            status, headers, _ = conn.get(play, f"Cookie: theme=dark; {cookie}\r\n")
            assert status == 200 and "set-cookie" not in headers
            status, _, data = conn.get(f"/hls/live/{private}/{segment}", f"Cookie: {cookie}\r\n")
            assert status == 200 and data[4:8] in (b"styp", b"moof")
            assert _front(server)[0] - answered == 3
            # A segment without the cookie is refused; a URL whose token has expired still plays with it.
            assert conn.get(f"/hls/live/{private}/{segment}")[0] == 403
            expired = play.split("?token=")[0] + "?token=" + _expired_play_token(server, private)
            assert conn.get(expired)[0] == 403
            assert conn.get(expired, f"Cookie: {cookie}\r\n")[0] == 200
        finally:
            conn.close()
        # The refusals went to aiohttp with the connection; a new one's reload with the cookie is the front's.
        answered, _ = _front(server)
        conn = Connection(server)
        try:
            assert conn.get(expired, f"Cookie: {cookie}\r\n")[0] == 200
            assert _front(server)[0] - answered == 1
        finally:
            conn.close()
    finally:
        for publisher in publishers:
            publisher.kill()
            publisher.wait()


def test_a_camera_reconnecting_keeps_its_viewers_connections_on_the_front(server: ServerProcess) -> None:
    """While the publisher is away the kept playlist and its segments answer from the front, as aiohttp's route
    would; so the connection is still the front's when the camera is back (one left to aiohttp stays there)."""
    publisher = ffmpeg_publish(server.rtmp_url("live/gap"), 40, size="320x240", rate=25, gop=25)
    conn: Connection | None = None
    try:
        wait_for_stream(server, "live", "gap")
        wait_playlist(server, "/hls/live/gap/index.m3u8", 2, 30)
        answered, _ = _front(server)
        conn = Connection(server)
        assert conn.get("/hls/live/gap/index.m3u8")[0] == 200
        publisher.kill()
        publisher.wait()
        deadline = time.monotonic() + 10
        while any(s["name"] == "gap" for s in server.get_json("/api/v1/streams")["streams"]):  # type: ignore[index]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        status, _, text = conn.get("/hls/live/gap/index.m3u8")
        assert status == 200 and text.startswith(b"#EXTM3U")
        segment = re.findall(r"^(seg-\d+\.m4s)$", text.decode(), re.M)[-1]
        assert conn.get(f"/hls/live/gap/{segment}")[0] == 200
        publisher = ffmpeg_publish(server.rtmp_url("live/gap"), 40, size="320x240", rate=25, gop=25)
        wait_for_stream(server, "live", "gap")
        assert conn.get("/hls/live/gap/index.m3u8")[0] == 200
        # All four answers on this connection were the front's (the API calls around them are aiohttp's).
        assert _front(server)[0] - answered == 4
    finally:
        if conn is not None:
            conn.close()
        publisher.kill()
        publisher.wait()
