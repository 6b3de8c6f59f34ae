"""Every route of the application `serve` assembles (data plane and control plane together) x every kind of
caller, against one table of who may do what. A route the table does not know fails the test."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from control.api.base import ApiRoute
from control.rbac import Role
from mediaserver.app import MediaServer
from tests.control.conftest import Api, clean, make_config
from tests.control.test_rbac import EXPECTED
from tests.webrtc.helpers import loopback_offer, loopback_pc

# Data-plane routes and how each is guarded; control-plane routes declare their permission (test_rbac checks
# every /api/v1 route declares one), so this table lists only what the data plane serves.
PUBLIC = "public"  # anyone: health, metrics, pages, CORS preflights, the public stream list
PLAY = "play"  # the authorizer's play decision (a play token for a private camera), never an API token
PUBLISH = "publish"  # the authorizer's publish decision (a camera's stream key)
SESSION = "session"  # addressed by an unguessable session id: an unknown id is 404 for everyone
# The WebSocket authenticates after the upgrade (tests/control/test_websocket.py); a plain GET is a 400 for all.
WEBSOCKET = "websocket"
DATA_PLANE: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/api/v1/streams"): PUBLIC,
    ("GET", "/api/v1/streams/{app}/{name}"): PUBLIC,
    ("GET", "/hls/{app}/{name}/index.m3u8"): PLAY,
    ("GET", "/hls/{app}/{name}/master.m3u8"): PLAY,
    ("GET", "/hls/{app}/{name}/{file}"): PLAY,
    ("OPTIONS", "/hls/{app}/{name}/{file}"): PUBLIC,
    ("POST", "/whep/{app}/{name}"): PLAY,
    ("OPTIONS", "/whep/{app}/{name}"): PUBLIC,
    ("DELETE", "/whep/{app}/{name}/{session}"): SESSION,
    ("PATCH", "/whep/{app}/{name}/{session}"): PUBLIC,
    ("OPTIONS", "/whep/{app}/{name}/{session}"): PUBLIC,
    ("POST", "/whip/{app}/{name}"): PUBLISH,
    ("OPTIONS", "/whip/{app}/{name}"): PUBLIC,
    ("DELETE", "/whip/{app}/{name}/{session}"): SESSION,
    ("PATCH", "/whip/{app}/{name}/{session}"): PUBLIC,
    ("OPTIONS", "/whip/{app}/{name}/{session}"): PUBLIC,
    ("GET", "/api/v1/webrtc/sessions"): "system:read",
    ("GET", "/"): PUBLIC,
    ("GET", "/play/{app}/{name}"): PUBLIC,
    ("GET", "/webrtc/{app}/{name}"): PUBLIC,
    ("GET", "/static"): PUBLIC,
    ("GET", "/api/v1/ws"): WEBSOCKET,
}
# Control-plane routes whose access is pinned here as well as declared (a changed declaration fails the test):
# recording thumbnails are read like coverage, by whoever may read recordings.
PINNED: dict[tuple[str, str], str] = {
    ("GET", "/api/v1/cameras/{camera_id}/thumbnails"): "recordings:read",
    ("GET", "/api/v1/cameras/{camera_id}/thumbnail.jpg"): "recordings:read",
}
CALLERS: tuple[Role | None, ...] = (None, Role.VIEWER, Role.OPERATOR, Role.ADMIN, Role.API_ONLY)


@dataclass
class Assembled:
    server: MediaServer
    api: Api


@pytest.fixture
async def assembled(tmp_path: Path) -> AsyncIterator[Assembled]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'control.db'}"
    config = make_config(url, tmp_path / "data", webrtc={"host_addresses": ["127.0.0.1"]})
    server = MediaServer(config)
    assert server.control is not None
    await server.control.start()
    await clean(server.control.store)
    client: TestClient[Any, Any] = TestClient(TestServer(server.http_app))
    await client.start_server()
    try:
        yield Assembled(server, Api(client, server.control, server.hub, config))
    finally:
        await client.close()
        if server.webrtc is not None:
            await server.webrtc.stop()
        await server.control.stop()


def route_table(server: MediaServer) -> dict[tuple[str, str], str]:
    """(method, path) -> who may call it, for every route the application serves (HEAD goes with GET)."""
    assert server.control is not None
    declared: dict[tuple[str, str], ApiRoute] = {(r.method, r.full_path): r for r in server.control.routes}
    table: dict[tuple[str, str], str] = {}
    for route in server.http_app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = str(info.get("formatter") or info.get("path") or info.get("prefix") or "")
        if route.method == "HEAD":
            continue
        key = (route.method, path)
        if key in DATA_PLANE:
            table[key] = DATA_PLANE[key]
        elif key in declared:
            api_route = declared[key]
            if not api_route.authenticated:
                table[key] = PUBLIC
            else:
                table[key] = api_route.permission.value if api_route.permission is not None else "authenticated"
        else:
            raise AssertionError(f"{route.method} {path} is in no access table")
        if key in PINNED:
            assert table[key] == PINNED[key], (key, table[key])
    assert set(PINNED) <= set(table), set(PINNED) - set(table)
    return table


def expected_status_ok(access: str, role: Role | None, status: int) -> bool:
    if access == PUBLIC:
        return status not in (401, 403)
    if access in (PLAY, PUBLISH):
        # An API token is no play token and no stream key: refused whoever holds it.
        return status == 403
    if access == SESSION:
        return status == 404
    if access == WEBSOCKET:
        return status == 400
    if role is None:
        return status == 401
    if access == "authenticated":
        return status not in (401, 403)
    allowed = access in {str(p) for p in EXPECTED[role]}
    return status not in (401, 403) if allowed else status == 403


async def test_every_route_for_every_caller(assembled: Assembled) -> None:
    api = assembled.api
    table = route_table(assembled.server)
    admin = await api.token(Role.ADMIN)
    tokens: dict[Role | None, str | None] = {None: None}
    for role in CALLERS[1:]:
        assert role is not None
        tokens[role] = await api.token(role)
    pc = loopback_pc()
    pc.addTransceiver("video", direction="recvonly")
    offer = await loopback_offer(pc)
    await pc.close()
    checked = 0
    # Logout last: it ends the session the other calls use.
    for (method, path), access in sorted(table.items(), key=lambda item: item[0][1] == "/api/v1/auth/logout"):
        for role in CALLERS:
            camera = await api.camera(admin)
            victim = await api.add_user(Role.VIEWER)
            _, made = await api.call("POST", "/tokens", admin, json={"name": "t", "scopes": ["cameras:read"]})
            values = {
                "app": "live",
                "name": camera["id"],
                "camera_id": camera["id"],
                "user_id": str(victim),
                "token_id": str(made["id"]),
                "recording_id": "1",
                "file": "index.m3u8",
                "session": "0" * 24,
            }
            url = re.sub(r"{(\w+)}", lambda m, v=values: v[m.group(1)], path)  # type: ignore[misc]
            if path == "/static":
                url = "/static/player.css"  # a prefix route: ask for a file under it
            headers = {"Authorization": f"Bearer {tokens[role]}"} if tokens[role] else {}
            kwargs: dict[str, Any] = {}
            if method == "POST" and path.startswith(("/whep", "/whip")):
                kwargs["data"] = offer
                headers["Content-Type"] = "application/sdp"
            elif method in ("POST", "PUT"):
                kwargs["json"] = {}
            response = await api.client.request(method, url, headers=headers, **kwargs)
            body = await response.read()
            assert response.status != 500, (method, path, role, body)
            assert expected_status_ok(access, role, response.status), (method, path, access, role, response.status)
            if response.status >= 400 and path.startswith("/api/"):
                assert response.content_type == "application/json", (method, path, body)
            checked += 1
    assert checked == len(table) * len(CALLERS)
    assert len(table) >= 45
