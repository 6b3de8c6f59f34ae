"""GET /api/v1/cameras/{id}/snapshot.jpg through the real API: RBAC, live state, JPEG answers, JSON errors."""

from __future__ import annotations

import io

import av

from control.rbac import Role
from mediaserver.formats.flv import avc_frame, parse_video
from tests.control.conftest import Api, FakePublisher
from tests.snapshot.media import coded


def publish(api: Api, camera_id: str, packets: int = 3) -> None:
    stream = api.hub.publish("live", camera_id, FakePublisher())
    for packet in coded("h264", 1280, 720)[: packets + 1]:
        stream.push(packet)


async def get_snapshot(api: Api, camera_id: str, token: str | None) -> tuple[int, bytes, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await api.client.get(f"/api/v1/cameras/{camera_id}/snapshot.jpg", headers=headers)
    return response.status, await response.read(), dict(response.headers)


async def test_a_viewer_gets_the_live_picture(api: Api, admin: str) -> None:
    camera = await api.camera(admin)
    viewer = await api.token(Role.VIEWER)
    publish(api, camera["id"])
    status, body, headers = await get_snapshot(api, camera["id"], viewer)
    assert status == 200, body
    assert headers["Content-Type"] == "image/jpeg"
    assert headers["Cache-Control"] == "private, max-age=5"
    with av.open(io.BytesIO(body), "r") as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (640, 360)
    # Again: the cached picture, byte for byte.
    again = await get_snapshot(api, camera["id"], viewer)
    assert again[0] == 200 and again[1] == body
    metrics = await (await api.client.get("/metrics")).text()
    assert "mediaserver_snapshots_made_total 1.0" in metrics
    assert "mediaserver_snapshot_cache_hits_total 1.0" in metrics


async def test_missing_camera_and_offline_camera_are_json_404s(api: Api, admin: str) -> None:
    camera = await api.camera(admin)
    status, body = await api.call("GET", f"/cameras/{camera['id']}/snapshot.jpg", admin)
    assert status == 404 and body["error"]["code"] == "stream_not_live"
    status, body = await api.call("GET", f"/cameras/{'0' * 32}/snapshot.jpg", admin)
    assert status == 404 and body["error"]["code"] == "camera_not_found"
    status, body = await api.call("GET", "/cameras/not-an-id/snapshot.jpg", admin)
    assert status == 404 and body["error"]["code"] == "camera_not_found"


async def test_live_without_a_decodable_keyframe_is_a_json_503(api: Api, admin: str) -> None:
    camera = await api.camera(admin)
    publish(api, camera["id"], packets=0)  # the sequence header only
    status, body = await api.call("GET", f"/cameras/{camera['id']}/snapshot.jpg", admin)
    assert status == 503 and body["error"]["code"] == "snapshot_unavailable"
    stream = api.hub.get("live", camera["id"])
    assert stream is not None
    noise = parse_video(avc_frame(b"\x00\x00\x00\x04\x65\x00\x00\x00", True), 40)
    assert noise is not None
    stream.push(noise)
    response = await api.client.get(
        f"/api/v1/cameras/{camera['id']}/snapshot.jpg", headers={"Authorization": f"Bearer {admin}"}
    )
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    assert (await response.json())["error"]["code"] == "snapshot_failed"


async def test_credentials_and_scope(api: Api, admin: str) -> None:
    camera = await api.camera(admin)
    publish(api, camera["id"])
    status, body = await api.call("GET", f"/cameras/{camera['id']}/snapshot.jpg")
    assert status == 401 and "error" in body
    status, made = await api.call("POST", "/tokens", admin, json={"name": "streams only", "scopes": ["streams:read"]})
    assert status == 201, made
    status, body = await api.call("GET", f"/cameras/{camera['id']}/snapshot.jpg", made["token"])
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, made = await api.call("POST", "/tokens", admin, json={"name": "reader", "scopes": ["cameras:read"]})
    assert status == 201, made
    status, _, headers = await get_snapshot(api, camera["id"], made["token"])
    assert status == 200 and headers["Content-Type"] == "image/jpeg"


async def test_the_openapi_document_says_jpeg(api: Api) -> None:
    doc = await (await api.client.get("/api/v1/openapi.json")).json()
    operation = doc["paths"]["/api/v1/cameras/{camera_id}/snapshot.jpg"]["get"]
    assert operation["x-permission"] == "cameras:read"
    assert list(operation["responses"]["200"]["content"]) == ["image/jpeg"]
    for code in ("401", "403", "404", "503"):
        assert "application/json" in operation["responses"][code]["content"]
