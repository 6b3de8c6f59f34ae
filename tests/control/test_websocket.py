"""WebSocket /api/v1/ws against the real control plane (SQLite and MariaDB): authentication, rooms, what each role
sees, camera-control with RBAC and audit, bad input, resume after a reconnect, slow clients dropped."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from control.events import EventName
from control.rbac import Permission, Role
from tests.control.conftest import Api, ApiFactory, FakePublisher

WS = "/api/v1/ws"


async def connect(api: Api, token: str, **query: str) -> aiohttp.ClientWebSocketResponse:
    """A client that authenticates with its first message (the token stays out of the URL) and joins `all`."""
    ws = await api.client.ws_connect(WS, params=query or None)
    await ws.send_json({"type": "auth", "token": token})
    welcome = await receive(ws)
    assert welcome["type"] == "welcome", welcome
    await ws.send_json({"type": "join-room", "room": "all"})
    assert (await receive(ws)) == {"type": "joined", "room": "all"}
    return ws


async def receive(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    message = await ws.receive(timeout=timeout)
    assert message.type == aiohttp.WSMsgType.TEXT, (message.type, message.data, message.extra)
    body = json.loads(message.data)
    assert isinstance(body, dict)
    return body


async def next_event(ws: aiohttp.ClientWebSocketResponse, name: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next event called `name` (dashboard updates and other events on the way are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            body = await receive(ws, timeout)
            if body.get("type") == "event" and body["event"] == name:
                return body


async def nothing_called(ws: aiohttp.ClientWebSocketResponse, name: str, wait: float = 0.3) -> bool:
    try:
        await next_event(ws, name, wait)
    except TimeoutError:
        return True
    return False


async def test_authentication(api: Api, admin: str) -> None:
    # In the URL, or as the first message.
    ws = await api.client.ws_connect(WS, params={"token": admin})
    assert (await receive(ws))["type"] == "welcome"
    await ws.close()
    for token in ("not-a-token", admin + "x", "msk_" + "0" * 40):
        ws = await api.client.ws_connect(WS)
        await ws.send_json({"type": "auth", "token": token})
        message = await ws.receive(timeout=5)
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1008, (token[:8], message)
        assert token not in (message.extra or "")
    # Something else first: closed with the same policy code.
    ws = await api.client.ws_connect(WS)
    await ws.send_json({"type": "join-room", "room": "all"})
    message = await ws.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1008


async def test_signed_out_token_is_refused(api: Api) -> None:
    await api.add_user(Role.OPERATOR, "leaver")
    tokens = await api.login("leaver")
    assert (await api.call("POST", "/auth/logout", tokens["access_token"], json={}))[0] in (200, 204)
    ws = await api.client.ws_connect(WS, params={"token": tokens["access_token"]})
    message = await ws.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1008 and message.extra == "token_revoked"


async def test_events_reach_rooms_and_roles(api: Api, admin: str) -> None:
    viewer = await api.token(Role.VIEWER)
    watching_all = await connect(api, admin)
    as_viewer = await connect(api, viewer)
    camera = await api.camera(admin, name="Door")
    other = await api.camera(admin, name="Yard")
    created = await next_event(watching_all, "camera-updated")
    assert created["camera_id"] == camera["id"] and created["data"]["camera"]["name"] == "Door"
    # Keys never travel in events, not even to admins.
    assert camera["stream_key"] not in json.dumps(created) and "stream_key" not in json.dumps(created["data"])
    # A client in one camera's room hears that camera only.
    one_room = await api.client.ws_connect(WS, params={"token": admin})
    await receive(one_room)
    await one_room.send_json({"type": "join-room", "room": f"camera:{other['id']}"})
    assert (await receive(one_room))["type"] == "joined"

    stream = api.hub.publish("live", camera["id"], FakePublisher())
    await api.plane.live.idle()
    for ws in (watching_all, as_viewer):
        # The stream starts at once; the status follows once the database has it.
        started = await next_event(ws, "stream-started")
        assert started["data"] == {"app": "live", "name": camera["id"], "protocol": "rtmp"}
        status = await next_event(ws, "camera-status")
        assert status["camera_id"] == camera["id"] and status["data"]["status"] == "online"
        assert status["id"] > started["id"]
    assert await nothing_called(one_room, "camera-status")
    api.hub.unpublish(stream)
    await api.plane.live.idle()
    assert (await next_event(watching_all, "camera-status"))["data"]["status"] == "offline"

    # A system alert (disk, loop lag, recorder) is for system:read; camera alerts for every camera reader.
    api.plane.events.publish(EventName.SYSTEM_ALERT, {"kind": "loop-lag"}, None, Permission.SYSTEM_READ)
    api.plane.events.publish(EventName.SYSTEM_ALERT, {"kind": "camera-offline"}, other["id"])
    assert (await next_event(watching_all, "system-alert"))["data"]["kind"] == "loop-lag"
    assert (await next_event(as_viewer, "system-alert"))["data"]["kind"] == "camera-offline"
    assert (await next_event(one_room, "system-alert"))["data"]["kind"] == "camera-offline"
    for ws in (watching_all, as_viewer, one_room):
        await ws.close()


async def test_camera_control(api: Api, admin: str) -> None:
    camera = await api.camera(admin)
    operator = await connect(api, await api.token(Role.OPERATOR))
    viewer = await connect(api, await api.token(Role.VIEWER))
    publisher = FakePublisher()
    api.hub.publish("live", camera["id"], publisher)

    await viewer.send_json({"type": "camera-control", "id": 1, "camera_id": camera["id"], "action": "disable"})
    refused = await receive(viewer)
    while refused["type"] == "event":
        refused = await receive(viewer)
    assert refused == {
        "type": "error",
        "id": 1,
        "code": "forbidden",
        "message": "this needs the cameras:write permission",
    }
    denied = await api.audit(admin, action="camera.disable", resource_id=camera["id"])
    assert len(denied) == 1 and denied[0]["success"] is False

    await operator.send_json({"type": "camera-control", "id": "a", "camera_id": camera["id"], "action": "disable"})
    result = await receive(operator)
    while result["type"] == "event":
        result = await receive(operator)
    assert result["type"] == "control-result" and result["id"] == "a" and result["camera"]["enabled"] is False
    assert publisher.stopped == ["camera_disabled"]
    updated = await next_event(viewer, "camera-updated")
    assert updated["data"]["camera"]["enabled"] is False and "stream_key" not in json.dumps(updated)
    await operator.send_json({"type": "camera-control", "id": 2, "camera_id": camera["id"], "action": "rotate-key"})
    rotated = await receive(operator)
    while rotated["type"] == "event":
        rotated = await receive(operator)
    assert rotated["camera"]["stream_key"] != camera["stream_key"]
    # This server does not record: a clear error, not a crash.
    await operator.send_json(
        {"type": "camera-control", "id": 3, "camera_id": camera["id"], "action": "start-recording"}
    )
    answer = await receive(operator)
    while answer["type"] == "event":
        answer = await receive(operator)
    assert answer["type"] == "error" and answer["code"] == "recorder_unavailable"
    await operator.send_json({"type": "camera-control", "id": 4, "camera_id": "0" * 32, "action": "enable"})
    answer = await receive(operator)
    while answer["type"] == "event":
        answer = await receive(operator)
    assert answer["code"] == "camera_not_found"
    actions = {(e["action"], e["success"]) for e in await api.audit(admin, resource_id=camera["id"])}
    assert {("camera.disable", True), ("camera.disable", False), ("camera.rotate_key", True)} <= actions
    await operator.close()
    await viewer.close()


@pytest.mark.parametrize("bad", ["unknown", "too_large", "binary", "not_json"])
async def test_bad_messages_get_an_error_then_close(api: Api, admin: str, bad: str) -> None:
    ws = await connect(api, admin)

    async def send_bad() -> None:
        if bad == "unknown":
            await ws.send_json({"type": "make-coffee"})
        elif bad == "too_large":
            await ws.send_str(json.dumps({"type": "ping", "pad": "x" * 5000}))
        elif bad == "binary":
            await ws.send_bytes(b"\x00\x01")
        else:
            await ws.send_str("{not json")

    await send_bad()
    error = await receive(ws)
    assert error["type"] == "error" and error["code"] in ("unknown_type", "too_large", "bad_message")
    # A good message in between still works.
    await ws.send_json({"type": "ping"})
    assert (await receive(ws)) == {"type": "pong"}
    await send_bad()
    message = await ws.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data in (1003, 1009)


async def test_resume_after_reconnect(api_factory: ApiFactory) -> None:
    api = await api_factory(events={"replay_events": 5})
    admin = await api.token(Role.ADMIN)
    ws = await connect(api, admin)
    first = await api.camera(admin, name="one")
    seen = (await next_event(ws, "camera-updated"))["id"]
    await ws.close()
    missed = [await api.camera(admin, name=f"missed-{i}") for i in range(3)]
    ws = await api.client.ws_connect(WS, params={"token": admin})
    await receive(ws)
    await ws.send_json({"type": "join-room", "room": "all", "since": seen})
    assert (await receive(ws))["type"] == "joined"
    replayed = [await receive(ws) for _ in missed]
    assert [e["camera_id"] for e in replayed] == [c["id"] for c in missed]
    assert all(e["id"] > seen for e in replayed) and [e["id"] for e in replayed] == sorted(e["id"] for e in replayed)
    await ws.close()
    # Too far back (the window holds 5 events) or an id this process never gave out: resync.
    for _ in range(6):
        await api.camera(admin)
    for since in (seen, seen * 10, 1):
        ws = await api.client.ws_connect(WS, params={"token": admin})
        await receive(ws)
        await ws.send_json({"type": "join-room", "room": "all", "since": since})
        assert (await receive(ws))["type"] == "joined"
        assert (await receive(ws)) == {"type": "resync", "room": "all"}
        await ws.close()
    assert first["id"]


async def test_a_slow_client_is_dropped_not_buffered(api_factory: ApiFactory) -> None:
    api = await api_factory(events={"ws_queue_events": 20})
    admin = await api.token(Role.ADMIN)
    reader = await connect(api, admin)
    # This one never reads: once the socket buffers are full its backlog grows and the server lets it go.
    stalled = await connect(api, admin)
    stalled_transport = stalled._response.connection.transport  # type: ignore[union-attr]
    assert stalled_transport is not None
    stalled_transport.pause_reading()
    pad = "x" * 60_000
    deadline = asyncio.get_running_loop().time() + 20
    while api.plane.websocket.client_count > 1 and asyncio.get_running_loop().time() < deadline:
        for _ in range(20):
            api.plane.events.publish(EventName.SYSTEM_ALERT, {"pad": pad}, None, Permission.SYSTEM_READ)
        await asyncio.sleep(0.05)
        while True:  # the healthy client keeps up
            try:
                await reader.receive(timeout=0.01)
            except TimeoutError:
                break
    assert api.plane.websocket.client_count == 1
    stalled_transport.abort()
    await reader.send_json({"type": "ping"})
    async with asyncio.timeout(5):
        while (await receive(reader)).get("type") != "pong":
            pass
    await reader.close()


async def test_batched_clients_get_one_message_per_tick(api: Api, admin: str) -> None:
    ws = await connect(api, admin, batch="1")
    for index in range(5):
        api.plane.events.publish(EventName.SYSTEM_ALERT, {"n": index}, None, Permission.SYSTEM_READ)
    batch = await receive(ws)
    assert batch["type"] == "batch"
    assert [e["data"]["n"] for e in batch["events"]] == [0, 1, 2, 3, 4]
    assert [e["id"] for e in batch["events"]] == sorted(e["id"] for e in batch["events"])
    await ws.close()
