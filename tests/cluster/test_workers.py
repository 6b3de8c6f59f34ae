"""Worker processes on one machine: a stream lives in the worker its publisher reached, and every worker
serves it (RTMP through an edge copy over the internal socket, HLS and WHEP forwarded to the holder);
a worker killed outright is restarted and only its own streams are cut."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from aiortc import RTCSessionDescription

from mediaserver.codecs.h264 import resolution
from mediaserver.rtmp import chunk
from mediaserver.rtmp.chunk import Message
from mediaserver.rtmp.client import RtmpClient
from tests.cluster.helpers import fetch, ffprobe_codecs, metric, owner, start_workers, worker_pids
from tests.conftest import ServerProcess, api_call, ffmpeg_publish, start_server, wait_for_stream
from tests.e2e.test_hls import wait_playlist
from tests.hls.test_front import Connection
from tests.webrtc.helpers import SDP, WEBRTC_ENV, collect, loopback_offer, loopback_pc, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_workers(tmp_path, 2, WEBRTC_ENV)
    yield server
    server.stop()
    assert "Traceback" not in server.log(), server.log()[-5000:]


def test_any_worker_serves_any_stream(workers: ServerProcess) -> None:
    publisher = ffmpeg_publish(workers.rtmp_url("live/cam"), 60, gop=25)
    try:
        wait_for_stream(workers, "live", "cam", timeout=15)
        holder = owner(workers, "live", "cam")
        assert holder in (0, 1)
        other = 1 - holder

        # RTMP: real ffprobe on the shared port until the kernel has handed one to the other worker, which
        # plays it from its edge copy.
        for _ in range(16):
            assert ffprobe_codecs(workers.rtmp_url("live/cam")) == ["h264", "aac"]
            if metric(workers, "mediaserver_edge_copies_opened_total", worker=str(other)) >= 1:
                break
        else:
            pytest.fail("no RTMP play reached the worker that does not hold the stream")
        assert metric(workers, "mediaserver_edge_copies", worker=str(other)) == 1  # one copy, however many plays
        # The copy is not segmented: HLS requests reaching that worker are forwarded to the holder.
        assert metric(workers, "mediaserver_hls_streams", worker=str(holder)) == 1
        assert metric(workers, "mediaserver_hls_streams", worker=str(other)) == 0
        assert metric(workers, "mediaserver_hls_parts_total", worker=str(other)) == 0

        # HLS: whichever worker a request reaches, the playlist is the holder's: its media sequence never goes
        # back (a second segmenter would number its own segments).
        sequences = []
        for _ in range(12):
            playlist = fetch(workers.http_url("/hls/live/cam/index.m3u8"))
            sequences.append(int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", playlist).group(1)))  # type: ignore[union-attr]
        assert sequences == sorted(sequences), sequences
        # The connections that reached the other worker went to the holder whole (its HTTP front answers them).
        passed = "mediaserver_http_front_requests_total"
        assert metric(workers, passed, worker=str(other), path="passed_to_worker") >= 1
        assert metric(workers, "mediaserver_http_front_adopted_connections_total", worker=str(holder)) >= 1
        assert set(ffprobe_codecs(workers.http_url("/hls/live/cam/index.m3u8"))) == {"h264", "aac"}

        # WHEP through the other worker (its internal socket, so the path is certain): the offer is answered by
        # the holder, media flows, and the session is listed and deleted through the shared port.
        frames = asyncio.run(_whep_through(workers, other))
        assert frames >= 5
    finally:
        publisher.kill()
        publisher.wait()


async def _whep_through(server: ServerProcess, worker: int) -> int:
    pc = loopback_pc()
    pc.addTransceiver("video", direction="recvonly")
    received = collect(pc)
    offer = await loopback_offer(pc)
    connector = aiohttp.UnixConnector(path=str(server.data_dir / "run" / f"http-{worker}.sock"))
    try:
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post("http://worker/whep/live/cam", data=offer, headers=SDP) as answer,
        ):
            assert answer.status == 201, await answer.text()
            location = answer.headers["Location"]
            await pc.setRemoteDescription(RTCSessionDescription(await answer.text(), "answer"))
        assert await wait_until(lambda: len(received.video) >= 5, 15)
        listed = server.get_json("/api/v1/webrtc/sessions", auth=True)
        assert isinstance(listed, dict) and listed["count"] == 1
        async with aiohttp.ClientSession() as session, session.delete(server.http_url(location)) as deleted:
            assert deleted.status in (200, 204)
        return len(received.video)
    finally:
        await pc.close()


def test_an_hls_connection_that_reaches_the_other_worker_is_served_by_the_holder(workers: ServerProcess) -> None:
    """A kept-alive HLS connection on the shared port that lands in the worker not holding the stream is handed
    to the holder (the socket itself): every request on it, before and after, is answered, in order, by the
    holder's front; nothing is forwarded request by request."""
    publisher = ffmpeg_publish(workers.rtmp_url("live/cam"), 60, gop=25)
    try:
        wait_for_stream(workers, "live", "cam", timeout=15)
        holder = owner(workers, "live", "cam")
        other = 1 - holder
        wait_playlist(workers, "/hls/live/cam/index.m3u8", 2, 30)
        passed = "mediaserver_http_front_requests_total"
        for _ in range(24):  # the kernel spreads connections over the workers
            conn = Connection(workers)
            try:
                status, _, text = conn.get("/hls/live/cam/index.m3u8")
                assert status == 200 and text.startswith(b"#EXTM3U")
                segment = re.findall(r"^(seg-\d+\.m4s)$", text.decode(), re.M)[-1]
                # Pipelined: both answers come back whole and in order, whichever worker has the socket.
                conn.send(f"GET /hls/live/cam/{segment} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * 2)
                for _ in range(2):
                    status, _, data = conn.read()
                    assert status == 200 and data[4:8] in (b"styp", b"moof")
                assert conn.get("/hls/live/cam/index.m3u8")[0] == 200
            finally:
                conn.close()
            if metric(workers, passed, worker=str(other), path="passed_to_worker") >= 1:
                break
        else:
            pytest.fail("no HLS connection reached the worker that does not hold the stream")
        assert metric(workers, "mediaserver_http_front_adopted_connections_total", worker=str(holder)) >= 1
        assert metric(workers, passed, worker=str(other), path="answered") == 0
        assert metric(workers, "mediaserver_worker_forwarded_requests_total", worker=str(other)) == 0
    finally:
        publisher.kill()
        publisher.wait()


def test_killed_worker_restarts_and_only_its_streams_stop(workers: ServerProcess) -> None:
    publishers = {}
    try:
        # Streams until each worker holds one (the kernel spreads the connections).
        held: dict[int, str] = {}
        for index in range(12):
            name = f"s{index}"
            publishers[name] = ffmpeg_publish(workers.rtmp_url(f"live/{name}"), 90, size="320x240", rate=15, gop=15)
            wait_for_stream(workers, "live", name, timeout=15)
            held.setdefault(owner(workers, "live", name) or 0, name)
            if len(held) == 2:
                break
        assert len(held) == 2, "every stream landed on one worker"
        pids = worker_pids(workers)
        victim = 0
        victim_stream, survivor_stream = held[victim], held[1]
        before = _bytes_in(workers, survivor_stream)
        os.kill(pids[victim], signal.SIGKILL)

        # Only the victim's publishers are cut (ffmpeg exits when its connection goes) ...
        publishers[victim_stream].wait(timeout=15)
        # ... the other worker's stream goes on ...
        time.sleep(1.5)
        assert _bytes_in(workers, survivor_stream) > before
        assert publishers[survivor_stream].poll() is None
        # ... and the parent starts a new worker 0, which takes the republished stream.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and worker_pids(workers).get(victim) in (None, pids[victim]):
            time.sleep(0.2)
        assert worker_pids(workers).get(victim) not in (None, pids[victim])
        assert "event=worker_exited worker=0" in workers.log()
        publishers[victim_stream] = ffmpeg_publish(workers.rtmp_url(f"live/{victim_stream}"), 60, size="320x240")
        wait_for_stream(workers, "live", victim_stream, timeout=20)
        assert ffprobe_codecs(workers.rtmp_url(f"live/{victim_stream}")) == ["h264", "aac"]
        assert _bytes_in(workers, survivor_stream) > before
    finally:
        for process in publishers.values():
            process.kill()
            process.wait()


def _bytes_in(server: ServerProcess, name: str) -> int:
    data = server.get_json("/api/v1/streams")
    assert isinstance(data, dict)
    return sum(int(s["bytes_in"]) for s in data["streams"] if s["name"] == name)


def test_a_camera_is_managed_from_any_worker(tmp_path: Path) -> None:
    server = start_workers(
        tmp_path, 2, {"MEDIASERVER_AUTH_PUBLISH_MODE": "database", "MEDIASERVER_EVENTS_DASHBOARD_INTERVAL": "0.5"}
    )
    publisher = None
    try:
        token = server.admin_token()
        status, camera = api_call(server, "POST", "/cameras", token, {"name": "Loading dock"})
        assert status == 201, camera
        camera_id = camera["id"]
        publisher = ffmpeg_publish(camera["publish_url"], 60, gop=25)
        wait_for_stream(server, "live", camera_id, timeout=15)
        holder = owner(server, "live", camera_id)
        assert holder in (0, 1)
        # Its live status and snapshot, the camera list's live figures and the system's count of live streams,
        # whichever worker answers (each request on a connection of its own).
        time.sleep(2.5)  # a bitrate measured, and the holder's summary passed to the other worker
        for _ in range(6):
            status, live = api_call(server, "GET", f"/cameras/{camera_id}/status", token)
            assert status == 200 and live["live"] and live["stream"]["video"]["codec"] == "h264", live
            status, listed = api_call(server, "GET", "/cameras", token)
            (row,) = listed["items"]
            assert row["live"] and row["bitrate_bps"] > 0, row
            status, system = api_call(server, "GET", "/system", token)
            assert system["live_streams"] == 1, system
        # An HLS viewer (served by the holder, whichever worker the request reached) is on both workers'
        # dashboards: their figures are the machine's.
        status, playback = api_call(server, "GET", f"/streaming/hls/{camera_id}", token)
        assert status == 200, playback
        path = urllib.parse.urlsplit(playback["url"])
        with urllib.request.urlopen(server.http_url(f"{path.path}?{path.query}"), timeout=20) as answer:
            assert answer.status == 200
        for worker in (0, 1):
            figures = asyncio.run(_dashboard_through(server, worker, token, camera_id))
            assert figures["viewers"]["by_protocol"].get("hls") == 1, (worker, figures)
            assert figures["cameras_live"][camera_id]["viewers"] == 1, (worker, figures)
        request = urllib.request.Request(
            server.http_url(f"/api/v1/cameras/{camera_id}/snapshot.jpg"), headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=20) as answer:
            assert answer.read(3) == b"\xff\xd8\xff"  # a JPEG
        # A bulk disable answered by the worker that does not hold the stream still cuts its publisher.
        status, body = asyncio.run(_bulk_disable_through(server, 1 - holder, token, camera_id))
        assert status == 200 and body["affected"] == 1, body
        assert publisher.wait(timeout=10) is not None
        assert "reason=camera_disabled" in server.log()
    finally:
        if publisher is not None:
            publisher.kill()
            publisher.wait()
        server.stop()


async def _get_through(server: ServerProcess, worker: int, token: str, path: str) -> Any:
    """GET an API path from one worker's own socket (so the path is certain)."""
    connector = aiohttp.UnixConnector(path=str(server.data_dir / "run" / f"http-{worker}.sock"))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"http://worker/api/v1{path}", headers={"Authorization": f"Bearer {token}"}) as answer,
    ):
        assert answer.status == 200, await answer.text()
        return await answer.json()


async def _dashboard_through(server: ServerProcess, worker: int, token: str, camera_id: str) -> Any:
    """The dashboard figures one worker answers with, once they count the camera's HLS viewer (or after 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        figures = await _get_through(server, worker, token, "/analytics/dashboard")
        if figures["viewers"]["by_protocol"].get("hls") or time.monotonic() > deadline:
            return figures
        await asyncio.sleep(0.5)


def test_a_pulled_cameras_state_is_the_same_from_every_worker(tmp_path: Path) -> None:
    """An always-on pulled camera is read by one worker; while it is not live, its status asked of the other
    worker is the reader's (not "elsewhere")."""
    server = start_workers(tmp_path, 2, {})
    try:
        token = server.admin_token()
        # Nothing listens there: the reader keeps trying, and says so.
        status, camera = api_call(
            server, "POST", "/cameras", token, {"name": "Gate", "source_url": "rtsp://127.0.0.1:9/x"}
        )
        assert status == 201, camera
        path = f"/cameras/{camera['id']}/status"
        deadline = time.monotonic() + 15
        while True:
            states = [asyncio.run(_get_through(server, worker, token, path))["source_state"] for worker in (0, 1)]
            if (states[0] == states[1] and states[0] not in (None, "connecting")) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "elsewhere" not in states and states[0] == states[1], states
    finally:
        server.stop()


async def _bulk_disable_through(server: ServerProcess, worker: int, token: str, camera_id: str) -> tuple[int, Any]:
    connector = aiohttp.UnixConnector(path=str(server.data_dir / "run" / f"http-{worker}.sock"))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            "http://worker/api/v1/cameras/bulk",
            json={"action": "disable", "ids": [camera_id]},
            headers={"Authorization": f"Bearer {token}"},
        ) as answer,
    ):
        return answer.status, await answer.json()


def test_workers_stop_when_their_parent_dies(tmp_path: Path) -> None:
    server = start_workers(tmp_path, 2)
    try:
        pids = worker_pids(server)
        assert len(pids) == 2
        server.process.kill()  # SIGKILL: no chance to stop them
        server.process.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(psutil.pid_exists(pid) for pid in pids.values()):
            time.sleep(0.1)
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids.values())
    finally:
        server.stop()


# One rung, small and cheap: the ladder of the tests below.
RUNG_LADDER = {
    "MEDIASERVER_TRANSCODE_STREAMS": '["live/*"]',
    "MEDIASERVER_TRANSCODE_LADDER": '["180p:320x180:200k"]',
    "MEDIASERVER_TRANSCODE_THREADS": "1",
}


@pytest.mark.parametrize("protocol", ["hls", "rtmp"])
def test_an_abr_rung_asked_for_in_the_other_worker_is_made_by_the_holders_ladder(tmp_path: Path, protocol: str) -> None:
    """A rung that is not live yet, asked for through the worker that does not hold the source, is transcoded by
    the holder's ladder, not by a second ladder over an edge copy of the source: an HLS request is forwarded to
    the holder; an RTMP player gets an edge copy of the rung itself from the holder."""
    server = start_workers(tmp_path, 2, RUNG_LADDER)
    publisher = ffmpeg_publish(server.rtmp_url("live/cam"), 60, size="426x240", gop=25)
    try:
        wait_for_stream(server, "live", "cam", timeout=15)
        holder = owner(server, "live", "cam")
        other = 1 - holder
        if protocol == "hls":
            playlist = asyncio.run(_fetch_through(server, other, "/hls/live/cam_180p/index.m3u8"))
            assert "#EXTINF" in playlist
        else:
            assert asyncio.run(_first_video_through(server, other, "cam_180p")) == 320  # the rung's picture
        assert metric(server, "mediaserver_transcode_workers", worker=str(holder)) == 1
        assert metric(server, "mediaserver_transcode_workers", worker=str(other)) == 0
        copies = 0 if protocol == "hls" else 1
        assert metric(server, "mediaserver_edge_copies_opened_total", worker=str(other)) == copies
        assert owner(server, "live", "cam_180p") == holder
    finally:
        publisher.kill()
        publisher.wait()
        server.stop()
    assert "Traceback" not in server.log(), server.log()[-5000:]


async def _first_video_through(server: ServerProcess, worker: int, name: str) -> int:
    """Play `live/<name>` on one worker's internal RTMP socket (so the path is certain) until its AVC sequence
    header arrives; the picture width it declares."""
    headers: asyncio.Queue[bytes] = asyncio.Queue()

    def on_message(message: Message) -> None:
        payload = bytes(message.payload)
        if message.type_id == chunk.VIDEO and len(payload) > 5 and payload[0] & 0x0F == 7 and payload[1] == 0:
            headers.put_nowait(payload[5:])

    client = RtmpClient(on_message)
    try:
        await client.connect(
            "localhost", 0, "live", timeout=20, path=str(server.data_dir / "run" / f"rtmp-{worker}.sock")
        )
        await client.play(name)
        record = await asyncio.wait_for(headers.get(), 20)
    finally:
        client.close()
    return resolution(record)[0]


async def _fetch_through(server: ServerProcess, worker: int, path: str) -> str:
    """GET a media path from one worker's own socket, until it answers 200 (a rung takes a moment to start)."""
    connector = aiohttp.UnixConnector(path=str(server.data_dir / "run" / f"http-{worker}.sock"))
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession(connector=connector) as session:
        while True:
            async with session.get(f"http://worker{path}") as answer:
                text = await answer.text()
                if answer.status == 200 or time.monotonic() > deadline:
                    assert answer.status == 200, text
                    return text
            await asyncio.sleep(0.5)


def test_an_on_demand_camera_asked_for_in_both_workers_at_once_is_started_once(tmp_path: Path) -> None:
    """Two players ask for a stopped on-demand camera at the same moment, one through each worker: one worker
    claims the stream and opens the camera, the other plays it from there, so the camera sees one session and no
    publisher is refused (before, both opened it and the later one was kicked)."""
    (tmp_path / "camera").mkdir()
    camera = start_server(tmp_path / "camera")
    publisher = ffmpeg_publish(camera.rtmp_url("live/src"), 60, size="426x240", gop=25)
    (tmp_path / "machine").mkdir()
    server: ServerProcess | None = None
    try:
        wait_for_stream(camera, "live", "src", timeout=15)
        server = start_workers(
            tmp_path / "machine",
            2,
            {
                "MEDIASERVER_PULL_SOURCES": f"live/door={camera.rtmp_url('live/src')}",
                "MEDIASERVER_PULL_ALLOW_LOOPBACK": "true",
                "MEDIASERVER_PULL_ON_DEMAND": '["live/*"]',
            },
        )

        async def both() -> list[str]:
            return list(
                await asyncio.gather(
                    *(_fetch_through(server, worker, "/hls/live/door/index.m3u8") for worker in (0, 1))  # type: ignore[arg-type]
                )
            )

        playlists = asyncio.run(both())
        assert all("#EXTINF" in text for text in playlists), playlists
        assert metric(server, "mediaserver_pull_sessions_total") == 1
        # The other worker played it through an edge copy, or (when the camera was live before its request came
        # through) had its request forwarded to the holder.
        assert metric(server, "mediaserver_edge_copies_opened_total") <= 1
        assert "publish_refused_elsewhere" not in server.log()
    finally:
        publisher.kill()
        publisher.wait()
        if server is not None:
            server.stop()
        camera.stop()
    assert "Traceback" not in server.log(), server.log()[-5000:]
