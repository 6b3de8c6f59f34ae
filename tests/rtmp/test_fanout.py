"""Several players of one live stream, real clients: the same bytes for each, correctly chunked.

A real H.264/AAC clip (made by ffmpeg) is published into an in-process server by our RtmpClient. Players:
one from the first frame and one that joins late (the join burst from the GOP cache), both recording every byte
the server sends; one that stops reading until it overflows (it must skip to a keyframe); our RtmpClient; and
rtmpdump and ffmpeg reading the stream back into FLV files. Each media message must reach the raw players as
exactly the chunks RTMP 1.0 section 5.3 makes of it (rebuilt by hand here, not by the module under test), so
every player that got a message got the same bytes, and the real clients must get the published payloads.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks.lib.flvfile import TAG_AUDIO, TAG_VIDEO, FlvTag, parse_flv
from mediaserver.auth import AllowAll
from mediaserver.config import RtmpConfig
from mediaserver.hub import Hub
from mediaserver.metrics import Metrics
from mediaserver.rtmp import chunk
from mediaserver.rtmp.amf import decode_amf0, encode_amf0
from mediaserver.rtmp.chunk import ChunkReader, Message, encode_message
from mediaserver.rtmp.client import RtmpClient
from mediaserver.rtmp.context import RtmpContext
from mediaserver.rtmp.handshake import HANDSHAKE_SIZE, client_c0c1, client_c2
from mediaserver.rtmp.player import RtmpPlayer
from mediaserver.rtmp.server import start_rtmp
from tests.conftest import require

CHUNK_SIZE = RtmpConfig().out_chunk_size
# A player that stops reading overflows this within about a second of the clip at twice real time; a join
# burst (two GOPs) fits in it.
MAX_BUFFER = 512 * 1024
# The GOP is 1 s (25 frames): a player joining mid-GOP gets the GOP before too.
JOIN_MIN_VIDEO_FRAMES = 30
PACE = 2.0  # the clip is published at twice real time


# ----------------------------------------------------------------------------- reference chunking


def ref_chunks(csid: int, type_id: int, stream_id: int, timestamp: int, payload: bytes, size: int) -> bytes:
    """RTMP 1.0 5.3.1: a type-0 chunk (absolute timestamp), then type-3 chunks of at most `size` bytes each.
    Written from the spec for chunk stream ids 2..63 and timestamps below the extended range."""
    assert 2 <= csid <= 63 and timestamp < 0xFFFFFF
    header = bytes([csid]) + timestamp.to_bytes(3, "big") + len(payload).to_bytes(3, "big") + bytes([type_id])
    out = bytearray(header + stream_id.to_bytes(4, "little") + payload[:size])
    for start in range(size, len(payload), size):
        out += bytes([0xC0 | csid]) + payload[start : start + size]
    return bytes(out)


@dataclass(frozen=True)
class Media:
    type_id: int
    timestamp: int
    body: bytes

    @property
    def is_config(self) -> bool:
        # AVC sequence header (packet type 0) or AAC sequence header (packet type 0).
        return len(self.body) > 1 and self.body[1] == 0

    @property
    def is_keyframe(self) -> bool:
        return self.type_id == chunk.VIDEO and self.body[0] >> 4 == 1 and not self.is_config


def media_of(messages: list[Message]) -> list[Media]:
    return [
        Media(m.type_id, m.timestamp, bytes(m.payload)) for m in messages if m.type_id in (chunk.AUDIO, chunk.VIDEO)
    ]


def check_chunked_exactly(raw: bytes, messages: list[Message]) -> None:
    """Every media message is in `raw`, in order, as exactly the reference chunks at our chunk size on stream 1."""
    pos = 0
    for message in messages:
        if message.type_id not in (chunk.AUDIO, chunk.VIDEO):
            continue
        assert message.stream_id == 1
        expected = ref_chunks(message.csid, message.type_id, 1, message.timestamp, bytes(message.payload), CHUNK_SIZE)
        found = raw.find(expected, pos)
        assert found >= 0, f"message type {message.type_id} at {message.timestamp} ms is not chunked as expected"
        pos = found + len(expected)


def runs(indexes: list[int]) -> list[list[int]]:
    """Maximal runs of consecutive values."""
    out: list[list[int]] = []
    for index in indexes:
        if out and index == out[-1][-1] + 1:
            out[-1].append(index)
        else:
            out.append([index])
    return out


# ----------------------------------------------------------------------------- a player that records bytes


class RecordingPlayer(asyncio.Protocol):
    """A minimal RTMP player that keeps every byte after the handshake; it can stop and resume reading."""

    def __init__(self, receive_buffer: int | None = None) -> None:
        self.receive_buffer = receive_buffer
        self.raw = bytearray()
        self.messages: list[Message] = []
        self.transport: asyncio.Transport | None = None
        self._reader = ChunkReader(16 * 1024 * 1024)
        self._c0c1 = client_c0c1()
        self._handshake = bytearray()
        self._open = False
        self._statuses: dict[str, asyncio.Event] = {}
        self.closed = asyncio.Event()

    async def play(self, port: int, name: str) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.receive_buffer is not None:
            # Before connecting, so the window the kernel offers stays this small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.create_connection(lambda: self, sock=sock)
        started = self._status("NetStream.Play.Start")
        async with asyncio.timeout(10):
            while not self._open:
                await asyncio.sleep(0.01)
            self._command(0, 3, "connect", 1.0, {"app": "live", "tcUrl": f"rtmp://127.0.0.1:{port}/live"})
            self._command(0, 3, "createStream", 2.0, None)
            self._command(1, 8, "play", 0.0, None, name, -2000.0)
            await started.wait()

    def _status(self, code: str) -> asyncio.Event:
        return self._statuses.setdefault(code, asyncio.Event())

    def _command(self, stream_id: int, csid: int, *values: Any) -> None:
        assert self.transport is not None
        self.transport.write(
            encode_message(csid, chunk.COMMAND_AMF0, stream_id, 0, encode_amf0(*values), chunk.DEFAULT_CHUNK_SIZE)
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._c0c1)

    def data_received(self, data: bytes) -> None:
        if not self._open:
            self._handshake += data
            if len(self._handshake) < 1 + 2 * HANDSHAKE_SIZE:
                return
            reply = bytes(self._handshake[: 1 + 2 * HANDSHAKE_SIZE])
            data = bytes(self._handshake[1 + 2 * HANDSHAKE_SIZE :])
            assert self.transport is not None
            self.transport.write(client_c2(reply, self._c0c1))
            self._open = True
        self.raw += data
        for message in self._reader.feed(data):
            self.messages.append(message)
            if message.type_id == chunk.COMMAND_AMF0:
                values = decode_amf0(message.payload)
                if values and values[0] == "onStatus" and isinstance(values[3], dict):
                    self._status(str(values[3].get("code"))).set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> list[FlvTag]:
    """10 s of 640x360 H.264 at 25 fps (a keyframe each second) and AAC, as FLV tags; frames span several chunks."""
    path = tmp_path_factory.mktemp("clip") / "clip.flv"
    subprocess.run(
        [require("ffmpeg"), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=size=640x360:rate=25", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
         "-t", "10", "-c:v", "libx264", "-preset", "veryfast", "-g", "25", "-keyint_min", "25",
         "-sc_threshold", "0", "-b:v", "2M", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k",
         "-f", "flv", str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    # The AVC end-of-sequence tag ffmpeg writes last is not media: the server does not forward it.
    tags = [
        t
        for t in parse_flv(path.read_bytes())
        if t.type == TAG_AUDIO or (t.type == TAG_VIDEO and not (len(t.body) > 1 and t.body[1] == 2))
    ]
    assert any(t.type == TAG_VIDEO and len(t.body) > 3 * CHUNK_SIZE for t in tags)
    return tags


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, Hub]]:
    hub = Hub(idle_timeout=0, join_min_video_frames=JOIN_MIN_VIDEO_FRAMES)
    ctx = RtmpContext(RtmpConfig(player_max_buffer=MAX_BUFFER), hub, AllowAll(), Metrics(hub))
    rtmp = await start_rtmp(ctx, "127.0.0.1", 0)
    try:
        yield int(rtmp.sockets[0].getsockname()[1]), hub
    finally:
        rtmp.close()
        await rtmp.wait_closed()


class Publisher:
    """Our RtmpClient publishing `tags` at PACE times real time once `go` is set; `written` is the clip time
    (ms) of the last tag sent, and `reached[t]` is set once the clip reaches `t` ms."""

    def __init__(self, port: int, tags: list[FlvTag], reached: list[int]) -> None:
        self.port = port
        self.tags = tags
        self.live = asyncio.Event()
        self.go = asyncio.Event()
        self.written = -1
        self.reached = {t: asyncio.Event() for t in reached}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        async with RtmpClient() as client:
            await client.connect("127.0.0.1", self.port, "live")
            await client.publish("shared")
            client.set_chunk_size(65536)
            self.live.set()
            await self.go.wait()
            start = loop.time()
            for tag in self.tags:
                delay = start + tag.timestamp / 1000 / PACE - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                client.write_message(tag.type, tag.timestamp, tag.body)
                self.written = tag.timestamp
                for at, event in self.reached.items():
                    if tag.timestamp >= at:
                        event.set()
            client.unpublish("shared")


async def wait_process(process: asyncio.subprocess.Process, timeout: float = 30) -> str:
    try:
        async with asyncio.timeout(timeout):
            _, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return err.decode(errors="replace")


def bodies_from(tags: list[FlvTag], type_id: int, header: int) -> list[bytes]:
    """The codec payloads (the FLV tag header of `header` bytes cut off) of a track's coded frames (AVC NALU or
    raw AAC packets: no sequence headers, no end of sequence)."""
    return [t.body[header:] for t in tags if t.type == type_id and len(t.body) > 1 and t.body[1] == 1]


def assert_suffix(got: list[bytes], published: list[bytes], what: str) -> None:
    assert got, f"{what}: nothing received"
    assert published[len(published) - len(got) :] == got, f"{what}: not the published run up to the end"


# ----------------------------------------------------------------------------- the test


async def test_players_of_one_stream_get_the_same_correctly_chunked_bytes(
    server: tuple[int, Hub], clip: list[FlvTag], tmp_path: Path
) -> None:
    port, hub = server
    url = f"rtmp://127.0.0.1:{port}/live/shared"
    publisher = Publisher(port, clip, reached=[4500])
    publishing = asyncio.create_task(publisher.run())
    first, slow, late = RecordingPlayer(), RecordingPlayer(receive_buffer=4096), RecordingPlayer()
    ours = RtmpClient()
    ours_got: list[Message] = []
    ours.on_message = ours_got.append
    rtmpdump_out, ffmpeg_out = tmp_path / "rtmpdump.flv", tmp_path / "ffmpeg.flv"
    processes: list[asyncio.subprocess.Process] = []
    try:
        await asyncio.wait_for(publisher.live.wait(), 10)
        # These three play before the first tag: they get the whole stream live.
        await first.play(port, "shared")
        await slow.play(port, "shared")
        assert slow.transport is not None
        slow.transport.pause_reading()
        # The kernel would take ~3 MB for a reader that stalls (the send buffer grows to tcp_wmem's maximum):
        # a small send buffer on the server's side of this one connection makes it overflow within the clip.
        slow_peer = "127.0.0.1:{}".format(slow.transport.get_extra_info("sockname")[1])
        stream = hub.get("live", "shared")
        assert stream is not None
        (slow_server_side,) = [s for s in stream.subscribers if isinstance(s, RtmpPlayer) and s.peer == slow_peer]
        slow_server_side._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        await ours.connect("127.0.0.1", port, "live")
        await ours.play("shared")
        publisher.go.set()
        # The real clients join once media flows (through the join burst, as any player does).
        processes.append(
            await asyncio.create_subprocess_exec(
                require("rtmpdump"), "-q", "--live", "-r", url, "-o", str(rtmpdump_out),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )
        )  # fmt: skip
        processes.append(
            await asyncio.create_subprocess_exec(
                require("ffmpeg"), "-hide_banner", "-loglevel", "error", "-i", url, "-c", "copy", "-f", "flv",
                str(ffmpeg_out), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )
        )  # fmt: skip
        # Mid-GOP, 4.5 s into the clip: the late player starts from the cache.
        await asyncio.wait_for(publisher.reached[4500].wait(), 10)
        await late.play(port, "shared")
        late_joined_at = publisher.written
        # The stalled player overflows its 512 KiB; then it reads again.
        async with asyncio.timeout(10):
            while not hub.drops.by_reason.get("slow_player"):
                await asyncio.sleep(0.05)
        slow.transport.resume_reading()
        await asyncio.wait_for(publishing, 30)
        for player in (first, late, slow):
            await asyncio.wait_for(player.closed.wait(), 10)
        await asyncio.wait_for(ours.wait_closed(), 10)
        errors = [await wait_process(p) for p in processes]
        assert [p.returncode for p in processes] == [0, 0], errors
    finally:
        publishing.cancel()
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        for player in (first, late, slow):
            if player.transport is not None:
                player.transport.abort()
        ours.abort()

    published = [Media(t.type, t.timestamp, t.body) for t in clip]
    live = [m for m in published if not m.is_config]

    # Byte for byte: each recorded media message is exactly the reference chunks, so every player that got a
    # message got the same bytes.
    for player in (first, late, slow):
        check_chunked_exactly(bytes(player.raw), player.messages)

    # From the first frame: everything, in order, with the publisher's timestamps; our client saw the same.
    assert media_of(first.messages) == published
    assert media_of(ours_got) == published

    # The late player: the sequence headers stamped with the burst's start, then the stream from a keyframe to
    # the end; the burst reaches back to the GOP before the current one (the current is under 30 frames).
    late_media = media_of(late.messages)
    configs = [m for m in late_media if m.is_config]
    rest = [m for m in late_media if not m.is_config]
    assert rest[0].is_keyframe and rest == live[len(live) - len(rest) :]
    assert rest[0].timestamp <= late_joined_at - 1000
    assert [c.body for c in configs] == [m.body for m in published if m.is_config]
    assert {c.timestamp for c in configs} == {rest[0].timestamp}

    # The slow player skipped, and resumed each time on a keyframe; all it got is the stream's own, in order.
    position = {(m.type_id, m.timestamp, m.body): i for i, m in enumerate(live)}
    indexes = [position[(m.type_id, m.timestamp, m.body)] for m in media_of(slow.messages) if not m.is_config]
    got_runs = runs(indexes)
    assert len(got_runs) > 1, "the slow player never skipped"
    assert indexes[0] == 0 and all(live[run[0]].is_keyframe for run in got_runs[1:])

    # The real clients read the published payloads to the end: rtmpdump's FLV tags are the messages as sent,
    # ffmpeg's are remuxed (its own tag headers: compared from the codec payload on).
    for path, name in ((rtmpdump_out, "rtmpdump"), (ffmpeg_out, "ffmpeg")):
        tags = parse_flv(path.read_bytes())
        assert_suffix(bodies_from(tags, TAG_VIDEO, 5), bodies_from(clip, TAG_VIDEO, 5), f"{name} video")
        assert_suffix(bodies_from(tags, TAG_AUDIO, 2), bodies_from(clip, TAG_AUDIO, 2), f"{name} audio")
