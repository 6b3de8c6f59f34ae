"""Camera CRUD, filters and pages, bulk operations, stream keys, live status from the hub."""

from __future__ import annotations

import asyncio

from control.rbac import Role
from tests.control.conftest import PASSWORD, Api, FakePublisher


async def test_create_get_update_delete(api: Api, admin: str) -> None:
    camera = await api.camera(
        admin,
        name="Gate",
        company="Acme Security",
        vendor="Axis",
        model="P1448",
        serial_number="ACCC8E000001",
        location="north",
    )
    assert camera["company"] == "Acme Security"
    assert camera["status"] == "offline" and camera["enabled"] and not camera["recording_enabled"]
    assert camera["private"] is True and camera["live"] is False and camera["bitrate_bps"] == 0
    assert len(camera["stream_key"]) >= 32
    port = api.config.rtmp.port
    assert camera["publish_url"].endswith(f":{port}/live/{camera['stream_key']}")
    assert camera["publish_url"].startswith("rtmp://127.0.0.1:")
    status, got = await api.call("GET", f"/cameras/{camera['id']}", admin)
    assert status == 200 and got == camera
    status, updated = await api.call(
        "PUT", f"/cameras/{camera['id']}", admin, json={"location": "south", "recording_enabled": True}
    )
    assert status == 200 and updated["location"] == "south" and updated["recording_enabled"]
    assert updated["vendor"] == "Axis" and updated["updated_at"] >= camera["updated_at"]
    status, moved = await api.call("PUT", f"/cameras/{camera['id']}", admin, json={"company": "Other Ltd"})
    assert status == 200 and moved["company"] == "Other Ltd"
    assert (await api.call("DELETE", f"/cameras/{camera['id']}", admin))[0] == 204
    status, body = await api.call("GET", f"/cameras/{camera['id']}", admin)
    assert status == 404 and body["error"]["code"] == "camera_not_found"
    assert (await api.call("DELETE", f"/cameras/{camera['id']}", admin))[0] == 404
    assert (await api.call("GET", "/cameras/not-an-id", admin))[0] == 404
    actions = [e["action"] for e in await api.audit(admin, resource_id=camera["id"])]
    assert actions == ["camera.delete", "camera.update", "camera.update", "camera.create"]


async def test_validation(api: Api, admin: str) -> None:
    for body in (
        {},
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 129},
        {"name": "a", "status": "online"},
        {"name": "a", "enabled": "maybe"},
        {"name": 5},
    ):
        status, answer = await api.call("POST", "/cameras", admin, json=body)
        assert status == 422, body
        assert answer["error"]["code"] == "validation_failed" and answer["error"]["details"]
    status, answer = await api.call(
        "POST", "/cameras", admin, data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert status == 400 and answer["error"]["code"] == "bad_json"
    status, answer = await api.call("POST", "/cameras", admin, data=b"name=x", headers={"Content-Type": "text/plain"})
    assert status == 415


async def test_filters_and_pages(api: Api, admin: str) -> None:
    names = [f"Lobby {i:02d}" for i in range(7)] + ["Parking A", "parking B", "Roof"]
    status, result = await api.call(
        "POST", "/cameras/bulk", admin, json={"action": "create", "items": [{"name": n} for n in names]}
    )
    assert status == 200 and result["affected"] == 10
    ids = {c["name"]: c["id"] for c in result["items"]}
    await api.call("PUT", f"/cameras/{ids['Roof']}", admin, json={"enabled": False})

    status, page = await api.call("GET", "/cameras", admin, params={"limit": 3, "offset": 0})
    assert page["total"] == 10 and [c["name"] for c in page["items"]] == names[:3]
    status, page = await api.call("GET", "/cameras", admin, params={"limit": 3, "offset": 9})
    assert [c["name"] for c in page["items"]] == ["Roof"]
    # A page's entries are encoded without models: each is exactly what the camera's own route answers.
    for entry in page["items"]:
        assert (await api.call("GET", f"/cameras/{entry['id']}", admin))[1] == entry
    status, page = await api.call("GET", "/cameras", admin, params={"limit": 3, "offset": 12})
    assert status == 200 and page["items"] == [] and page["total"] == 10  # past the end: the total still counts
    # The sort key follows a rename (the database keeps it).
    await api.call("PUT", f"/cameras/{ids['Roof']}", admin, json={"name": "attic"})
    status, page = await api.call("GET", "/cameras", admin, params={"limit": 1})
    assert [c["name"] for c in page["items"]] == ["attic"]
    await api.call("PUT", f"/cameras/{ids['Roof']}", admin, json={"name": "Roof"})
    status, page = await api.call("GET", "/cameras", admin, params={"q": "PARKING"})
    assert page["total"] == 2
    status, page = await api.call("GET", "/cameras", admin, params={"q": "%"})
    assert page["total"] == 0  # LIKE wildcards are searched literally
    status, page = await api.call("GET", "/cameras", admin, params={"enabled": "false"})
    assert [c["name"] for c in page["items"]] == ["Roof"]
    status, page = await api.call("GET", "/cameras", admin, params={"status": "offline", "enabled": "true"})
    assert page["total"] == 9
    for bad in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"status": "sleeping"}, {"bogus": 1}):
        assert (await api.call("GET", "/cameras", admin, params=bad))[0] == 422, bad


async def test_bulk_enable_disable_delete(api: Api, admin: str) -> None:
    created = [await api.camera(admin, name=f"c{i}") for i in range(4)]
    ids = [c["id"] for c in created]
    missing = "f" * 32
    status, result = await api.call(
        "POST", "/cameras/bulk", admin, json={"action": "disable", "ids": [*ids[:2], missing]}
    )
    assert status == 200 and result["affected"] == 2 and result["not_found"] == [missing]
    status, page = await api.call("GET", "/cameras", admin, params={"enabled": "false"})
    assert {c["id"] for c in page["items"]} == set(ids[:2])
    status, result = await api.call("POST", "/cameras/bulk", admin, json={"action": "enable", "ids": ids[:1]})
    assert result["affected"] == 1
    status, result = await api.call("POST", "/cameras/bulk", admin, json={"action": "delete", "ids": ids[2:]})
    assert result["affected"] == 2
    status, page = await api.call("GET", "/cameras", admin)
    assert page["total"] == 2
    for bad in (
        {"action": "explode", "ids": ids},
        {"action": "delete", "ids": []},
        {"action": "create", "ids": ids},
        {"action": "delete", "ids": ["nothex"]},
    ):
        assert (await api.call("POST", "/cameras/bulk", admin, json=bad))[0] == 422, bad


async def test_stream_key_only_for_writers(api: Api, admin: str) -> None:
    camera = await api.camera(admin)
    viewer = await api.token(Role.VIEWER)
    status, seen = await api.call("GET", f"/cameras/{camera['id']}", viewer)
    assert status == 200 and seen["stream_key"] is None and seen["publish_url"] is None
    status, page = await api.call("GET", "/cameras", viewer)
    assert page["items"][0]["stream_key"] is None
    operator = await api.token(Role.OPERATOR)
    status, seen = await api.call("GET", f"/cameras/{camera['id']}", operator)
    assert seen["stream_key"] == camera["stream_key"]
    assert (await api.call("POST", f"/cameras/{camera['id']}/rotate-key", viewer))[0] == 403


async def test_rotate_key(api: Api, admin: str) -> None:
    camera = await api.camera(admin)
    publisher = FakePublisher()
    api.hub.publish("live", camera["id"], publisher)
    status, rotated = await api.call("POST", f"/cameras/{camera['id']}/rotate-key", admin)
    assert status == 200 and rotated["stream_key"] != camera["stream_key"]
    assert rotated["publish_url"].endswith(rotated["stream_key"])
    assert publisher.stopped == ["stream_key_rotated"]
    assert [e["action"] for e in await api.audit(admin, action="camera.rotate_key")] == ["camera.rotate_key"]


async def test_status_follows_the_stream(api: Api, admin: str) -> None:
    camera = await api.camera(admin)
    status, answer = await api.call("GET", f"/cameras/{camera['id']}/status", admin)
    assert status == 200 and answer["live"] is False and answer["stream"] is None and answer["status"] == "offline"

    publisher = FakePublisher("10.1.2.3:4000")
    stream = api.hub.publish("live", camera["id"], publisher)
    stream.bitrate = 2_500_000.0
    await api.plane.live.idle()
    status, answer = await api.call("GET", f"/cameras/{camera['id']}/status", admin)
    assert answer["live"] is True and answer["status"] == "online" and answer["bitrate_bps"] == 2_500_000
    assert answer["stream"]["name"] == camera["id"] and "publisher" not in answer["stream"]
    status, got = await api.call("GET", f"/cameras/{camera['id']}", admin)
    assert got["status"] == "online" and got["live"] and got["last_seen"] is not None
    status, page = await api.call("GET", "/cameras", admin, params={"status": "online"})
    assert page["total"] == 1

    api.hub.unpublish(stream)
    await api.plane.live.idle()
    await asyncio.sleep(0.05)
    status, answer = await api.call("GET", f"/cameras/{camera['id']}/status", admin)
    assert answer["live"] is False and answer["status"] == "offline"
    transitions = [e["action"] for e in await api.audit(admin, resource_id=camera["id"], action="camera.o*")]
    assert transitions == ["camera.offline", "camera.online"]
    # Streams that are not cameras are ignored.
    api.hub.publish("live", "someone-else", FakePublisher())
    api.hub.publish("other", camera["id"], FakePublisher())
    await api.plane.live.idle()


async def test_disable_and_delete_disconnect_the_publisher(api: Api, admin: str) -> None:
    first, second = await api.camera(admin), await api.camera(admin)
    p1, p2 = FakePublisher(), FakePublisher()
    api.hub.publish("live", first["id"], p1)
    api.hub.publish("live", second["id"], p2)
    await api.call("PUT", f"/cameras/{first['id']}", admin, json={"enabled": False})
    await api.call("DELETE", f"/cameras/{second['id']}", admin)
    assert p1.stopped == ["camera_disabled"] and p2.stopped == ["camera_deleted"]
    assert [e["action"] for e in await api.audit(admin, action="camera.disable")] == ["camera.disable"]


async def test_concurrent_writes_neither_deadlock_nor_fail(api: Api, admin: str) -> None:
    camera = await api.camera(admin)
    await api.add_user(Role.VIEWER, "crowd")

    async def login() -> int:
        return (await api.call("POST", "/auth/login", json={"username": "crowd", "password": PASSWORD}))[0]

    async def edit(i: int) -> int:
        if i % 5 == 0:
            return (await api.call("POST", f"/cameras/{camera['id']}/rotate-key", admin))[0]
        return (await api.call("PUT", f"/cameras/{camera['id']}", admin, json={"location": f"spot {i}"}))[0]

    statuses = await asyncio.gather(*(login() for _ in range(8)), *(edit(i) for i in range(20)))
    assert set(statuses) == {200}
