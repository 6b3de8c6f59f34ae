"""The serving path in a real server process (uvloop, the whole HTTP stack): many viewers of one ffmpeg-published
stream cost one render per change, not one per request; written-out segments leave through sendfile, and what
arrives is the stream ffprobe decodes."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import aiohttp

from tests.conftest import ServerProcess, ffmpeg_publish, wait_for_stream
from tests.e2e.test_hls import wait_playlist
from tests.hls.media import decoded_frames

BASE = "/hls/live/many/"


def metric(server: ServerProcess, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", server.get_text("/metrics"), re.M)
    assert found is not None, name
    return float(found.group(1))


async def _get(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as response:
        assert response.status == 200, (url, response.status)
        return await response.read()


async def test_many_viewers_one_render_per_change_and_sendfile(server: ServerProcess, tmp_path: Path) -> None:
    publisher = ffmpeg_publish(server.rtmp_url("live/many"), 30, size="640x360", rate=25, gop=25)
    try:
        wait_for_stream(server, "live", "many")
        await asyncio.to_thread(wait_playlist, server, BASE + "index.m3u8", 3, 30)
        url = server.http_url(BASE)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
            # 300 plain reloads as fast as they go: each change of the stream is rendered once (and compressed
            # once), whatever the number of requests that saw it.
            renders = metric(server, "mediaserver_hls_playlist_renders_total")
            started = time.monotonic()
            bodies = await asyncio.gather(*(_get(session, url + "index.m3u8") for _ in range(300)))
            elapsed = time.monotonic() - started
            rendered = metric(server, "mediaserver_hls_playlist_renders_total") - renders
            # Parts close about every 0.33 s (each a change); a margin for the segment closes. (The state before
            # the first of them may have been rendered already, for wait_playlist.)
            assert rendered <= elapsed / 0.3 + 3, (rendered, elapsed)
            assert len(set(bodies)) <= rendered + 1
            # Blocking reloads for the part after the preload hint's: all answered by one change, one render.
            text = bodies[-1].decode()
            hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="part-(\d+)-(\d+)\.m4s"', text)
            assert hint is not None
            msn, part = int(hint.group(1)), int(hint.group(2))
            renders = metric(server, "mediaserver_hls_playlist_renders_total")
            blocked = await asyncio.wait_for(
                asyncio.gather(
                    *(_get(session, url + f"index.m3u8?_HLS_msn={msn}&_HLS_part={part}") for _ in range(100))
                ),
                10,
            )
            assert all(f'part-{msn}-{part}.m4s"'.encode() in b or f"seg-{msn}.m4s".encode() in b for b in blocked)
            assert metric(server, "mediaserver_hls_playlist_renders_total") - renders <= 3
            assert len(set(blocked)) <= 3

            # The newest complete segment, fetched by many: written out of memory, sent from its file.
            sent = metric(server, "mediaserver_hls_sendfile_bytes_total")
            text = (await _get(session, url + "index.m3u8")).decode()
            init_uri = re.search(r'#EXT-X-MAP:URI="([^"]+)"', text)
            assert init_uri is not None
            newest = re.findall(r"^(seg-\d+\.m4s)$", text, re.M)[-1]
            segments = await asyncio.gather(*(_get(session, url + newest) for _ in range(50)))
            assert len(set(segments)) == 1
            assert metric(server, "mediaserver_hls_sendfile_bytes_total") - sent >= len(segments[0])
            # It is its parts, byte for byte.
            msn = int(newest[4:-4])
            uris = re.findall(rf'#EXT-X-PART:[^\n]*URI="(part-{msn}-\d+\.m4s)"', text)
            assert uris
            joined = b"".join([await _get(session, url + uri) for uri in uris])
            assert joined == segments[0]
            init = await _get(session, url + init_uri.group(1))
        media = tmp_path / "served.mp4"
        media.write_bytes(init + segments[0])
        video, audio = decoded_frames(media)
        assert video[0] == "h264" and int(video[1]) >= 45
        assert audio[0] == "aac" and int(audio[1]) >= 80
    finally:
        publisher.terminate()
        publisher.wait(10)
