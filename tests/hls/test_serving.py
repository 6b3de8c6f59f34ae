"""Serving cost: a playlist is rendered (and compressed) once per change whatever the number of requests, blocked
LL-HLS reloads all wake on one change and share one render, and the bytes served are the segmenter's own.

An in-process `HlsService` behind a real aiohttp server on 127.0.0.1, fed a real H.264/AAC clip made by ffmpeg
through the hub (faster than real time); read with a real aiohttp client, and the media checked with ffprobe.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, generate_latest

from mediaserver.formats.flv import parse_audio, parse_video
from mediaserver.hls import playlist
from mediaserver.hls.responses import SEPARATE_HEADERS_FROM, Buffers, ServeStats
from mediaserver.hls.segmenter import HlsSettings, HlsStream
from mediaserver.hls.service import HlsService
from mediaserver.hub import Hub, Stream
from mediaserver.media import Packet, TrackKind
from tests.hls.media import decoded_frames, make_clip
from tests.hls.test_memory import Capture, _Publisher, flv_tags

CLIP_SECONDS = 14
BASE = "/hls/live/srv/"


@pytest.fixture(scope="module")
def packets(tmp_path_factory: pytest.TempPathFactory) -> list[Packet]:
    """14 s of 640x360 H.264 (1 s GOP, 25 fps) and AAC, as the packets the RTMP reader would make."""
    path = make_clip(tmp_path_factory.mktemp("clip") / "clip.flv", CLIP_SECONDS)
    out: list[Packet] = []
    for kind, timestamp, body in flv_tags(path):
        packet = parse_video(body, timestamp) if kind == 9 else parse_audio(body, timestamp) if kind == 8 else None
        if packet is not None:
            out.append(packet)
    return out


class Live:
    """The service, its HTTP server, one published stream and the clip's packets still to push."""

    def __init__(
        self,
        service: HlsService,
        registry: CollectorRegistry,
        server: TestServer,
        stream: Stream,
        packets: list[Packet],
    ) -> None:
        self.service = service
        self.registry = registry
        self.server = server
        self.stream = stream
        self._packets: Iterator[Packet] = iter(packets)
        self.capture = Capture()

    @property
    def hls(self) -> HlsStream:
        return self.service.streams["live/srv"]

    def push_until(self, done: Callable[[HlsStream], bool]) -> None:
        """Push packets (no awaiting in between: nothing else runs) until `done` holds; fails if the clip ends."""
        for packet in self._packets:
            self.stream.push(packet)
            if done(self.hls):
                return
        raise AssertionError("the clip ended first")

    async def push_all(self) -> None:
        for packet in self._packets:
            self.stream.push(packet)
            if packet.keyframe and packet.kind is TrackKind.VIDEO:
                # Let finished spill writes hand their segments over, as the event loop does between packets.
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)

    def url(self, path: str) -> str:
        return str(self.server.make_url(BASE + path))


async def start_live(packets: list[Packet], settings: HlsSettings, spill_dir: Path | None) -> Live:
    hub = Hub()
    if spill_dir is not None:
        settings.spill_dir = str(spill_dir)
    registry = CollectorRegistry()
    service = HlsService(hub, settings, registry, grace_seconds=5.0)
    app = web.Application()
    app.router.add_routes(service.routes())
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    stream = hub.publish("live", "srv", _Publisher())
    live = Live(service, registry, server, stream, packets)
    service.fragment_listeners.append(live.capture)
    return live


@pytest.fixture
async def live(packets: list[Packet], tmp_path: Path) -> AsyncIterator[Live]:
    running = await start_live(packets, HlsSettings(2.0, 0.333, 6), tmp_path)
    try:
        yield running
    finally:
        await running.server.close()
        await running.service.stop()


def _session(**kwargs: object) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), **kwargs)  # type: ignore[arg-type]


async def test_a_playlist_is_rendered_and_compressed_once_for_many_requests(live: Live) -> None:
    live.push_until(lambda hls: len(hls.segments) >= 2)
    playlists = live.service.playlists
    renders, compressions = playlists.renders, playlists.compressions
    # Raw bodies: the client must not decompress them, so that the gzip'd bytes themselves are checked.
    async with _session(auto_decompress=False) as session:

        async def get(encoding: str) -> tuple[int, dict[str, str], bytes]:
            async with session.get(live.url("index.m3u8"), headers={"Accept-Encoding": encoding}) as response:
                return response.status, dict(response.headers), await response.read()

        answers = await asyncio.gather(*(get("identity" if i % 2 else "gzip, deflate") for i in range(300)))
    plain = [a for a in answers if "Content-Encoding" not in a[1]]
    zipped = [a for a in answers if a[1].get("Content-Encoding") == "gzip"]
    assert len(plain) == len(zipped) == 150 and all(a[0] == 200 for a in answers)
    # 300 requests, one render and one compression of the one state they all saw.
    assert playlists.renders - renders == 1 and playlists.compressions - compressions == 1
    expected = playlist.render(live.hls).encode()
    for _, headers, body in plain:
        assert body == expected and headers["Content-Length"] == str(len(body))
        assert headers["Content-Type"] == "application/vnd.apple.mpegurl; charset=utf-8"
        assert headers["Cache-Control"] == "no-cache" and headers["Vary"] == "Accept-Encoding"
    for _, headers, body in zipped:
        assert gzip.decompress(body) == expected and headers["Content-Length"] == str(len(body))
    # A change renders again, once.
    version = live.hls.version
    live.push_until(lambda hls: hls.version != version)
    async with _session() as session:
        bodies = await asyncio.gather(*(_read(session, live.url("index.m3u8")) for _ in range(50)))
    assert playlists.renders - renders == 2 and len(set(bodies)) == 1
    assert bodies[0] == playlist.render(live.hls).encode()
    metrics = generate_latest(live.registry).decode()
    assert f"mediaserver_hls_playlist_renders_total {float(playlists.renders)}" in metrics
    assert 'mediaserver_hls_playlist_requests_total{blocking="no"} 350.0' in metrics


async def _read(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.read()


async def test_blocked_reloads_wake_together_on_one_render(live: Live) -> None:
    live.push_until(lambda hls: len(hls.segments) >= 2 and hls.current is not None and len(hls.current.parts) >= 1)
    hls = live.hls
    assert hls.current is not None
    msn, part = hls.current.msn, len(hls.current.parts)  # the preload hint: the part that does not exist yet
    assert f'PRELOAD-HINT:TYPE=PART,URI="part-{msn}-{part}.m4s"' in playlist.render(hls)
    service = live.service
    blocked = 120
    async with _session() as session:
        query = f"index.m3u8?_HLS_msn={msn}&_HLS_part={part}"
        tasks = [
            asyncio.ensure_future(_read(session, live.url(query + ("&_HLS_skip=YES" if i % 3 == 0 else ""))))
            for i in range(blocked)
        ]
        # The requests of the next part too: they wait for it the same way.
        part_tasks = [asyncio.ensure_future(_read(session, live.url(f"part-{msn}-{part}.m4s"))) for _ in range(30)]
        for _ in range(200):
            if service.playlist_requests["yes"] >= blocked:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert service.playlist_requests["yes"] == blocked
        assert not any(t.done() for t in tasks + part_tasks), "they must wait for the part"
        renders = service.playlists.renders
        live.push_until(lambda s: s.has_part(msn, part))
        bodies = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        parts = await asyncio.wait_for(asyncio.gather(*part_tasks), 10)
    # One render per variant (with and without the delta update) for all the waiters.
    assert service.playlists.renders - renders == 2
    full, delta = playlist.render(hls).encode(), playlist.render(hls, skip=True).encode()
    assert bodies == [delta if i % 3 == 0 else full for i in range(blocked)]
    for body in bodies:
        assert f'URI="part-{msn}-{part}.m4s"'.encode() in body
    # The part itself, as the segmenter built it.
    segment = hls.find_segment(msn)
    assert segment is not None
    chunks = segment.parts[part].chunks
    assert chunks is not None and all(p == b"".join(chunks) for p in parts)


@pytest.mark.parametrize("spill", [True, False], ids=["spilled", "in-memory"])
async def test_served_bytes_are_the_segmenters(packets: list[Packet], tmp_path: Path, spill: bool) -> None:
    live = await start_live(packets, HlsSettings(2.0, 0.333, 6, spill=spill), tmp_path)
    try:
        await live.push_all()
        hls = live.hls
        assert len(hls.segments) == 6
        assert all((s.spilled is not None) == spill for s in hls.segments)
        # Each fragment the segmenter built, by (msn, part index); the window's are the newest ones.
        fragments = list(live.capture.fragments)
        built: dict[tuple[int, int], bytes] = {}
        window = [*hls.segments, *([hls.current] if hls.current is not None else [])]
        at = len(fragments) - sum(len(s.parts) for s in window)
        for segment in window:
            for p in segment.parts:
                built[(segment.msn, p.index)] = fragments[at].data
                at += 1
        async with _session() as session:
            text = (await _read(session, live.url("index.m3u8"))).decode()
            init_uri = re.search(r'#EXT-X-MAP:URI="([^"]+)"', text)
            assert init_uri is not None
            init = await _read(session, live.url(init_uri.group(1)))
            assert init == hls.inits[hls.init_id]
            listed = [int(m) for m in re.findall(r"^seg-(\d+)\.m4s$", text, re.M)]
            assert listed == [s.msn for s in hls.segments]
            for segment in hls.segments:
                whole = b"".join(built[(segment.msn, i)] for i in range(len(segment.parts)))
                async with session.get(live.url(f"seg-{segment.msn}.m4s")) as response:
                    assert response.status == 200 and response.headers["Content-Type"] == "video/iso.segment"
                    assert response.headers["Content-Length"] == str(len(whole))
                    assert await response.read() == whole
                for p in segment.parts:
                    assert (
                        await _read(session, live.url(f"part-{segment.msn}-{p.index}.m4s"))
                        == built[(segment.msn, p.index)]
                    )
                middle = len(whole) // 2
                async with session.get(
                    live.url(f"seg-{segment.msn}.m4s"), headers={"Range": f"bytes={middle}-{middle + 70_000}"}
                ) as response:
                    assert response.status == 206
                    assert response.headers["Content-Range"] == f"bytes {middle}-{middle + 70_000}/{len(whole)}"
                    assert await response.read() == whole[middle : middle + 70_001]
            newest = hls.segments[-1]
            served = await _read(session, live.url(f"seg-{newest.msn}.m4s"))
        # Written-out segments went from their files with sendfile (the socket took them), the others from memory.
        assert (live.service.serve_stats.sendfile_bytes > 0) == spill
        # A real decoder reads init + segment: a 2 s segment of 25 fps video and 44.1/48 kHz AAC.
        media = tmp_path / "served.mp4"
        media.write_bytes(init + served)
        video, audio = decoded_frames(media)
        assert video[0] == "h264" and int(video[1]) >= 45
        assert audio[0] == "aac" and int(audio[1]) >= 80
    finally:
        await live.server.close()
        await live.service.stop()


class _RecordingWriter:
    """Stands in for aiohttp's writer: what it was given, the objects themselves."""

    def __init__(self) -> None:
        self.headers_sent_first = False
        self.written: list[bytes | memoryview] = []
        self.transport: _FakeTransport | None = None

    def send_headers(self) -> None:
        self.headers_sent_first = not self.written

    async def write(self, chunk: bytes | memoryview) -> None:
        self.written.append(chunk)


async def test_a_large_body_goes_out_as_its_own_buffers(live: Live) -> None:
    live.push_until(lambda hls: len(hls.segments) >= 1)
    segment = live.hls.segments[0]
    chunks = segment.chunks()
    assert segment.size >= SEPARATE_HEADERS_FROM and len(chunks) >= 2
    body = Buffers(chunks, segment.size)
    writer = _RecordingWriter()
    await body.write(writer)  # type: ignore[arg-type]
    # Headers first on their own, then the parts' own buffers (boxes and the packets' payloads): no joined copy.
    assert writer.headers_sent_first
    assert len(writer.written) == len(chunks)
    assert all(w is c for w, c in zip(writer.written, chunks, strict=True))


async def test_a_slow_reader_gets_the_rest_of_a_sendfile_from_memory(packets: list[Packet], tmp_path: Path) -> None:
    """A client that asks for a segment many times over one connection before it reads anything: the socket takes
    the first answers whole from the file, then part of one, and the rest goes through the transport from the copy
    read back into memory, every answer complete and in order."""
    live = await start_live(packets, HlsSettings(2.0, 0.333, 6), tmp_path)
    try:
        live.push_until(lambda hls: len(hls.segments) >= 2)
        await asyncio.sleep(0.2)  # the spill writes land
        segment = live.hls.segments[0]
        assert segment.spilled is not None
        whole = b"".join(await live.hls.read(segment, 0, segment.size))
        url = live.server.make_url(BASE + f"seg-{segment.msn}.m4s")
        # More than the kernel buffers between the two sockets hold (the send side's is the larger one).
        wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
        asks = min(wmem_max // len(whole) + 8, 400)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", url.port or 80))
        ask = f"GET {url.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        last = f"GET {url.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        await loop.sock_sendall(sock, ask * (asks - 1) + last)
        await asyncio.sleep(0.3)  # the server writes what the sockets take and leaves the rest to the transport
        received = bytearray()
        deadline = loop.time() + 20
        while loop.time() < deadline:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
            if not chunk:
                break
            received += chunk
        sock.close()
        data = bytes(received)
        for _ in range(asks):
            head, _, data = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(whole)}".encode() in head, head
            assert data[: len(whole)] == whole
            data = data[len(whole) :]
        assert data == b""
        sent = live.service.serve_stats.sendfile_bytes
        assert len(whole) <= sent < asks * len(whole), sent
    finally:
        await live.server.close()
        await live.service.stop()


class _FakeTransport:
    """What `Buffers` asks of a transport: how much it still holds, and its socket."""

    def __init__(self, sock: socket.socket, buffered: int) -> None:
        self._sock = sock
        self.buffered = buffered

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str) -> object:
        return self._sock if name == "socket" else None


async def test_sendfile_only_follows_what_the_transport_has_sent(live: Live) -> None:
    """Bytes go straight from the file only when the transport holds nothing more (the headers have left):
    otherwise they would overtake what it holds."""
    live.push_until(lambda hls: len(hls.segments) >= 2)
    await asyncio.sleep(0.2)
    segment = live.hls.segments[0]
    assert segment.spilled is not None
    part = segment.parts[1]
    data = b"".join(await live.hls.read(segment, part.offset, part.offset + part.size))
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    try:
        for buffered in (0, 5):
            writer = _RecordingWriter()
            writer.transport = _FakeTransport(ours, buffered)
            stats = ServeStats()
            await Buffers([data], len(data), segment.spilled, part.offset, stats).write(writer)  # type: ignore[arg-type]
            assert writer.headers_sent_first
            if buffered:
                assert stats.sendfile_bytes == 0 and b"".join(writer.written) == data
            else:
                received = b""
                while len(received) < stats.sendfile_bytes:
                    received += theirs.recv(1 << 20)
                # What the socket took came from the file, the rest (if any) through the writer, in order.
                assert stats.sendfile_bytes > 0 and received + b"".join(writer.written) == data
    finally:
        ours.close()
        theirs.close()
