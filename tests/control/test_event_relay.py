"""Two real server processes sharing the real Redis: an event raised on one reaches a WebSocket client of the
other (the stream is published with ffmpeg to the first, the client listens on the second)."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import aiohttp

from tests.conftest import ServerProcess, ffmpeg_publish, start_server

REDIS_URL = "redis://127.0.0.1:6379/0"


async def events_until(ws: aiohttp.ClientWebSocketResponse, name: str, timeout: float) -> dict[str, object]:
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.TEXT, (message.type, message.data)
            body = json.loads(message.data)
            if body.get("type") == "event" and body["event"] == name:
                return dict(body)


async def test_an_event_on_one_node_reaches_a_client_of_the_other(tmp_path: Path) -> None:
    # A prefix of their own: other runs on the same Redis do not hear these nodes.
    env = {"MEDIASERVER_REDIS_URL": REDIS_URL, "MEDIASERVER_REDIS_KEY_PREFIX": f"test-{secrets.token_hex(4)}:"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    node_a = start_server(tmp_path / "a", env)
    node_b = start_server(tmp_path / "b", env)
    publisher = None
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(node_b.http_url("/api/v1/ws"))
            await ws.send_json({"type": "auth", "token": node_b.admin_token()})
            assert json.loads((await ws.receive(timeout=10)).data)["type"] == "welcome"
            await ws.send_json({"type": "join-room", "room": "all"})
            assert json.loads((await ws.receive(timeout=10)).data)["type"] == "joined"
            await wait_subscribed(node_a)
            await wait_subscribed(node_b)
            publisher = ffmpeg_publish(node_a.rtmp_url("live/relayed"), 8, size="320x240")
            started = await events_until(ws, "stream-started", 15)
            assert started["data"] == {"app": "live", "name": "relayed", "protocol": "rtmp"}
            # Node B holds no such stream: the event came through Redis.
            streams = node_b.get_json("/api/v1/streams")
            assert "relayed" not in json.dumps(streams)
            publisher.wait(timeout=20)
            stopped = await events_until(ws, "stream-stopped", 20)
            assert stopped["data"]["name"] == "relayed"  # type: ignore[index]
            await ws.close()
    finally:
        if publisher is not None and publisher.poll() is None:
            publisher.kill()
        node_a.stop()
        node_b.stop()


async def wait_subscribed(node: ServerProcess) -> None:
    """Until the node's Redis subscription is up (an event sent before it would not reach it)."""
    async with asyncio.timeout(10):
        while "mediaserver_events_relay_connected 1.0" not in node.get_text("/metrics"):
            await asyncio.sleep(0.1)
