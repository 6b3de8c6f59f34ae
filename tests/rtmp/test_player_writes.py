"""What an RTMP player hands its transport: one encoding of each packet, shared by all players; a live packet is
one write of it; the join burst is one write; a full backlog skips to the next keyframe.

Real hub, stream, connection and player; the transport records the calls (the socket boundary).
"""

from __future__ import annotations

from typing import Any

from mediaserver.auth import AllowAll
from mediaserver.config import RtmpConfig
from mediaserver.hub import Hub, Stream
from mediaserver.media import Codec, Packet, TrackKind
from mediaserver.metrics import Metrics
from mediaserver.rtmp import chunk
from mediaserver.rtmp.chunk import ChunkReader, Message
from mediaserver.rtmp.connection import RtmpConnection
from mediaserver.rtmp.context import RtmpContext
from mediaserver.rtmp.player import RtmpPlayer

AVC_SEQ = bytes.fromhex("1700000000") + bytes.fromhex("0164000dffe1000467640d0a01000268eb")
AAC_SEQ = bytes.fromhex("af001210")


def video(ts: int, key: bool = False, size: int = 9000) -> Packet:
    body = bytes([0x17 if key else 0x27, 1, 0, 0, 0]) + bytes([ts % 251]) * size
    return Packet(TrackKind.VIDEO, Codec.H264, ts, ts, key, body, 5)


def audio(ts: int) -> Packet:
    return Packet(TrackKind.AUDIO, Codec.AAC, ts, ts, True, bytes([0xAF, 1]) + bytes([ts % 253]) * 300, 2)


class RecordingTransport:
    """Records each write call; `buffered` plays the bytes the kernel would not take."""

    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []
        self.buffered = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append([data])

    def writelines(self, data: list[bytes]) -> None:
        self.calls.append(list(data))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def messages(self) -> list[Message]:
        """Everything written, parsed at our chunk size, in order."""
        reader = ChunkReader()
        reader.set_chunk_size(RtmpConfig().out_chunk_size)
        return [m for call in self.calls for part in call for m in reader.feed(part)]


class Publisher:
    peer = "127.0.0.1:1"
    protocol = "rtmp"

    def stop(self, reason: str) -> None:
        pass


class Setup:
    def __init__(self) -> None:
        self.hub = Hub(idle_timeout=0)
        self.ctx = RtmpContext(RtmpConfig(), self.hub, AllowAll(), Metrics(self.hub))
        self.stream: Stream = self.hub.publish("live", "cam", Publisher())

    def player(self) -> tuple[RtmpPlayer, RecordingTransport]:
        """A player joined the way `play` joins one: the burst, then live packets."""
        transport = RecordingTransport()
        conn = RtmpConnection(self.ctx)
        conn.transport = transport  # type: ignore[assignment]
        player = RtmpPlayer(conn, transport, self.stream, 1)  # type: ignore[arg-type]
        player.send_join_burst()
        conn.player = player
        self.stream.subscribe(player)
        return player, transport


def kinds(call: list[bytes]) -> list[int]:
    reader = ChunkReader()
    reader.set_chunk_size(RtmpConfig().out_chunk_size)
    return [m.type_id for part in call for m in reader.feed(part)]


async def test_each_live_packet_is_one_write_in_the_order_it_came() -> None:
    setup = Setup()
    stream = setup.stream
    stream.push(Packet(TrackKind.VIDEO, Codec.H264, 0, 0, True, AVC_SEQ, 5, True))
    stream.push(video(0, key=True))
    _, transport = setup.player()
    transport.calls.clear()
    for packet in (audio(10), audio(33), video(40), audio(56), video(80)):
        stream.push(packet)
    assert [kinds(c) for c in transport.calls] == [
        [chunk.AUDIO],
        [chunk.AUDIO],
        [chunk.VIDEO],
        [chunk.AUDIO],
        [chunk.VIDEO],
    ]
    assert [m.timestamp for m in transport.messages()] == [10, 33, 40, 56, 80]


async def test_players_share_one_encoding_of_each_packet() -> None:
    setup = Setup()
    setup.stream.push(Packet(TrackKind.VIDEO, Codec.H264, 0, 0, True, AVC_SEQ, 5, True))
    (_, one), (_, two) = setup.player(), setup.player()
    one.calls.clear()
    two.calls.clear()
    frame = video(0, key=True)
    setup.stream.push(frame)
    assert frame.wire is not None and len(frame.wire) > len(frame.flv)  # several chunks
    assert one.calls[0][0] is frame.wire and two.calls[0][0] is frame.wire


async def test_the_join_burst_is_one_write_from_a_keyframe() -> None:
    setup = Setup()
    stream = setup.stream
    stream.push(Packet(TrackKind.VIDEO, Codec.H264, 0, 0, True, AVC_SEQ, 5, True))
    stream.push(Packet(TrackKind.AUDIO, Codec.AAC, 0, 0, True, AAC_SEQ, 2, True))
    stream.push(video(0, key=True))
    stream.push(audio(20))
    stream.push(video(1000, key=True))
    for ts in range(1010, 1400, 40):
        stream.push(audio(ts))
        stream.push(video(ts + 30))
    stream.push(audio(1420))
    _, transport = setup.player()
    (burst,) = transport.calls
    messages = transport.messages()
    # The sequence headers stamped with the burst's start, then the current GOP as it came, the last audio too.
    assert [(m.type_id, m.timestamp) for m in messages[:2]] == [(chunk.VIDEO, 1000), (chunk.AUDIO, 1000)]
    assert [m.timestamp for m in messages[2:]] == [p.dts for p in stream.gop]
    assert messages[-1].type_id == chunk.AUDIO
    assert len(burst) == len(messages)
    # The GOP's own encodings, the ones live players got, not copies.
    assert all(part is packet.wire for part, packet in zip(burst[2:], stream.gop, strict=True))


async def test_a_full_backlog_skips_to_the_next_keyframe() -> None:
    setup = Setup()
    stream = setup.stream
    stream.push(Packet(TrackKind.VIDEO, Codec.H264, 0, 0, True, AVC_SEQ, 5, True))
    stream.push(video(0, key=True))
    _, transport = setup.player()
    transport.calls.clear()
    transport.buffered = setup.ctx.config.player_max_buffer + 1
    stream.push(audio(10))
    stream.push(video(40))
    transport.buffered = 0
    stream.push(audio(56))
    stream.push(video(80))
    stream.push(video(1000, key=True))
    stream.push(audio(1010))
    assert [m.timestamp for m in transport.messages()] == [1000, 1010]
    assert setup.hub.drops.by_reason["slow_player"] == 4
