"""RTMP play follows the authorizer's grant: a real RTMP player gets the stream the grant names."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from mediaserver.auth import AuthResult, Denied, StreamGrant
from mediaserver.config import RtmpConfig
from mediaserver.hub import Hub
from mediaserver.metrics import Metrics
from mediaserver.rtmp import chunk
from mediaserver.rtmp.chunk import Message
from mediaserver.rtmp.client import RtmpClient, RtmpClientError
from mediaserver.rtmp.context import RtmpContext
from mediaserver.rtmp.server import start_rtmp

# An avcC built from the SPS/PPS that x264 wrote for a 352x288 picture.
_SPS = bytes.fromhex("6764000dacd941609684000003000400000300c83c50a658")
_PPS = bytes.fromhex("68ebe3cb22c0")
_AVCC = bytes([1, 0x64, 0x00, 0x0D, 0xFF, 0xE1]) + len(_SPS).to_bytes(2, "big") + _SPS + b"\x01"
_AVCC += len(_PPS).to_bytes(2, "big") + _PPS
AVC_SEQ = bytes.fromhex("1700000000") + _AVCC
KEYFRAME = bytes([0x17, 1, 0, 0, 0]) + b"\x00\x00\x00\x02\x65\x88"
INTER = bytes([0x27, 1, 0, 0, 0]) + b"\x00\x00\x00\x02\x41\x9a"

SECRET = "s3cret-play-key-0042"
CAMERA = "camera-7"


class MappingAuthorizer:
    """Playing by a secret key finds the camera's stream, as a database authorizer would."""

    def __init__(self) -> None:
        self.play_requests: list[str] = []

    async def authorize_publish(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult:
        return StreamGrant(app, name)

    async def authorize_play(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult:
        self.play_requests.append(name)
        await asyncio.sleep(0)  # answer later, like a database lookup
        if name == SECRET:
            return StreamGrant(app, CAMERA, camera_id=CAMERA)
        if name == "refused":
            return Denied("bad_play_key")
        return StreamGrant(app, name)


@pytest.fixture
async def rtmp_server() -> AsyncIterator[tuple[int, Hub, MappingAuthorizer]]:
    hub = Hub(idle_timeout=0)
    authorizer = MappingAuthorizer()
    ctx = RtmpContext(RtmpConfig(), hub, authorizer, Metrics(hub))
    server = await start_rtmp(ctx, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        yield port, hub, authorizer
    finally:
        server.close()
        await server.wait_closed()


async def read_video(player: RtmpClient, count: int) -> list[Message]:
    found: list[Message] = []
    async with asyncio.timeout(5):
        while len(found) < count:
            message = await player.read_message()
            assert message is not None, "the server closed the player"
            if message.type_id == chunk.VIDEO:
                found.append(message)
    return found


async def test_play_looks_up_the_stream_the_grant_names(
    rtmp_server: tuple[int, Hub, MappingAuthorizer], caplog: pytest.LogCaptureFixture
) -> None:
    port, hub, authorizer = rtmp_server
    caplog.set_level(logging.DEBUG, logger="mediaserver")
    async with RtmpClient() as publisher, RtmpClient() as player:
        await publisher.connect("127.0.0.1", port, "live")
        await publisher.publish(CAMERA)
        publisher.write_message(chunk.VIDEO, 0, AVC_SEQ)
        publisher.write_message(chunk.VIDEO, 40, KEYFRAME)
        async with asyncio.timeout(5):
            while (stream := hub.get("live", CAMERA)) is None or not stream.gop:
                await asyncio.sleep(0.01)
        # No stream is named after the key: only the grant can lead the player to the camera.
        assert hub.get("live", SECRET) is None

        await player.connect("127.0.0.1", port, "live")
        await player.play(f"{SECRET}?token=abc")
        assert authorizer.play_requests == [SECRET]
        # The join burst: the sequence header at the GOP's start, then the cached keyframe.
        burst = await read_video(player, 2)
        assert [(m.timestamp, bytes(m.payload)) for m in burst] == [(40, AVC_SEQ), (40, KEYFRAME)]
        # Then live packets of the camera's stream.
        publisher.write_message(chunk.VIDEO, 80, INTER)
        (live,) = await read_video(player, 1)
        assert (live.timestamp, bytes(live.payload)) == (80, INTER)
        assert stream.subscriber_counts() == {"rtmp": 1}

    assert "event=play_start" in caplog.text
    # The requested name is a key: logs show it redacted, never whole.
    assert SECRET not in caplog.text
    assert f"live/{SECRET[:3]}***" in caplog.text


async def test_play_of_a_name_whose_grant_names_no_live_stream_is_not_found(
    rtmp_server: tuple[int, Hub, MappingAuthorizer],
) -> None:
    port, _hub, _authorizer = rtmp_server
    async with RtmpClient() as player:
        await player.connect("127.0.0.1", port, "live")
        # The grant names camera-7, which is not publishing.
        with pytest.raises(RtmpClientError) as raised:
            await player.play(SECRET)
        assert raised.value.code == "NetStream.Play.StreamNotFound"
    async with RtmpClient() as player:
        await player.connect("127.0.0.1", port, "live")
        with pytest.raises(RtmpClientError) as raised:
            await player.play("refused")
        assert raised.value.code == "NetStream.Play.Failed"
