"""The audit log API: admins only, filters and pages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from control.audit import Actor
from control.rbac import Role
from tests.control.conftest import Api


async def test_filters_and_pages(api: Api) -> None:
    admin_id = await api.add_user(Role.ADMIN, "auditor")
    admin = (await api.login("auditor"))["access_token"]
    base = datetime(2024, 5, 1, tzinfo=UTC)
    async with api.plane.store.sessions.begin() as session:
        for i in range(30):
            entry_actor = Actor(admin_id if i % 2 else 99, "auditor" if i % 2 else "someone", "192.0.2.5")
            api.plane.audit.add(session, "camera.update" if i % 3 else "user.update", entry_actor, "camera", str(i))
        await session.flush()
    # Give them distinct times.
    from sqlalchemy import update

    from control.store import AuditLog

    async with api.plane.store.sessions.begin() as session:
        for i in range(30):
            await session.execute(
                update(AuditLog)
                .where(AuditLog.resource_id == str(i), AuditLog.resource_type == "camera")
                .values(at=base + timedelta(minutes=i))
            )
    status, page = await api.call("GET", "/audit-logs", admin, params={"limit": 5, "until": "2024-05-02T00:00:00Z"})
    assert status == 200 and page["total"] == 30 and len(page["items"]) == 5
    assert [e["resource_id"] for e in page["items"]] == ["29", "28", "27", "26", "25"]  # newest first
    status, page = await api.call("GET", "/audit-logs", admin, params={"offset": 28, "until": "2024-05-02T00:00:00Z"})
    assert [e["resource_id"] for e in page["items"]] == ["1", "0"]
    status, page = await api.call("GET", "/audit-logs", admin, params={"user_id": 99})
    assert page["total"] == 15
    status, page = await api.call("GET", "/audit-logs", admin, params={"action": "user.update"})
    assert page["total"] == 10
    status, page = await api.call("GET", "/audit-logs", admin, params={"action": "camera.*", "user_id": admin_id})
    assert page["total"] == 10  # odd i, not divisible by 3
    status, page = await api.call(
        "GET", "/audit-logs", admin, params={"since": "2024-05-01T00:10:00+00:00", "until": "2024-05-01T00:20:00"}
    )
    assert sorted(int(e["resource_id"]) for e in page["items"]) == list(range(10, 20))
    for bad in ({"since": "yesterday"}, {"limit": 1000}, {"user_id": "me"}):
        assert (await api.call("GET", "/audit-logs", admin, params=bad))[0] == 422, bad


async def test_entries_carry_actor_ip_resource_and_time(api: Api) -> None:
    admin = await api.token(Role.ADMIN)
    before = datetime.now(UTC) - timedelta(seconds=1)
    camera = await api.camera(admin, name="Dock")
    [entry] = await api.audit(admin, action="camera.create")
    assert entry["actor"].startswith("admin-") and entry["user_id"] is not None and entry["ip"] == "127.0.0.1"
    assert entry["resource_type"] == "camera" and entry["resource_id"] == camera["id"]
    assert datetime.fromisoformat(entry["at"]) >= before and entry["details"] == {"name": "Dock"}
