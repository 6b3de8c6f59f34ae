"""API tokens: shown once, stored hashed, scoped, expiring, revocable, IP-restricted."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from control.rbac import Role
from control.store import ApiToken
from tests.control.conftest import Api


async def test_create_use_list_revoke(api: Api) -> None:
    operator = await api.token(Role.OPERATOR)
    status, created = await api.call(
        "POST",
        "/tokens",
        operator,
        json={"name": "ci", "scopes": ["cameras:read", "cameras:write"], "expires_in_days": 7},
    )
    assert status == 201
    secret = created["token"]
    assert secret.startswith("msk_") and created["prefix"] == secret[:12]
    assert created["scopes"] == ["cameras:read", "cameras:write"] and not created["revoked"]
    expires = datetime.fromisoformat(created["expires_at"])
    assert timedelta(days=6, hours=23) < expires - datetime.now(UTC) <= timedelta(days=7)
    async with api.plane.store.sessions() as session:
        row = await session.scalar(select(ApiToken).where(ApiToken.id == created["id"]))
    assert row is not None and row.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert row.last_used_at is None

    status, me = await api.call("GET", "/auth/me", secret)
    assert status == 200 and me["via"] == "api_token" and me["permissions"] == ["cameras:read", "cameras:write"]
    assert (await api.call("POST", "/cameras", secret, json={"name": "by token"}))[0] == 201
    # Outside its scope although the owner (an operator) could.
    assert (await api.call("GET", "/tokens", secret))[0] == 403

    status, listing = await api.call("GET", "/tokens", operator)
    assert listing["total"] == 1 and "token" not in listing["items"][0]
    assert listing["items"][0]["last_used_at"] is not None

    assert (await api.call("DELETE", f"/tokens/{created['id']}", operator))[0] == 204
    status, body = await api.call("GET", "/cameras", secret)
    assert status == 401 and body["error"]["code"] == "token_revoked"
    status, listing = await api.call("GET", "/tokens", operator)
    assert listing["items"][0]["revoked"] is True
    admin = await api.token(Role.ADMIN)
    actions = [e["action"] for e in await api.audit(admin, resource_type="api_token")]
    assert actions == ["token.revoke", "token.create"]


async def test_expired_token(api: Api) -> None:
    admin = await api.token(Role.ADMIN)
    status, created = await api.call("POST", "/tokens", admin, json={"name": "old", "scopes": ["cameras:read"]})
    async with api.plane.store.sessions.begin() as session:
        await session.execute(
            update(ApiToken)
            .where(ApiToken.id == created["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    status, body = await api.call("GET", "/cameras", created["token"])
    assert status == 401 and body["error"]["code"] == "token_expired"
    assert (await api.call("GET", "/cameras", "msk_" + "A" * 43))[0] == 401


async def test_ip_allowlist(api: Api) -> None:
    admin = await api.token(Role.ADMIN)
    status, inside = await api.call(
        "POST", "/tokens", admin, json={"name": "lan", "scopes": ["cameras:read"], "ip_allowlist": ["127.0.0.0/8"]}
    )
    status, outside = await api.call(
        "POST",
        "/tokens",
        admin,
        json={"name": "far", "scopes": ["cameras:read"], "ip_allowlist": ["203.0.113.0/24", "2001:db8::/32"]},
    )
    assert status == 201 and outside["ip_allowlist"] == ["203.0.113.0/24", "2001:db8::/32"]
    assert (await api.call("GET", "/cameras", inside["token"]))[0] == 200
    status, body = await api.call("GET", "/cameras", outside["token"])
    assert status == 403 and body["error"]["code"] == "ip_not_allowed"
    assert (
        await api.call(
            "POST", "/tokens", admin, json={"name": "x", "scopes": ["cameras:read"], "ip_allowlist": ["nope"]}
        )
    )[0] == 422


async def test_ownership(api: Api) -> None:
    admin = await api.token(Role.ADMIN)
    first, second = await api.token(Role.OPERATOR), await api.token(Role.OPERATOR)
    status, mine = await api.call("POST", "/tokens", first, json={"name": "a", "scopes": ["cameras:read"]})
    # Another operator neither sees nor revokes it, nor mints tokens for others or beyond its role.
    status, listing = await api.call("GET", "/tokens", second)
    assert listing["total"] == 0
    assert (await api.call("DELETE", f"/tokens/{mine['id']}", second))[0] == 404
    assert (await api.call("GET", "/tokens", second, params={"user_id": mine["user_id"]}))[0] == 403
    status, body = await api.call(
        "POST", "/tokens", second, json={"name": "b", "scopes": ["cameras:read"], "user_id": mine["user_id"]}
    )
    assert status == 403
    status, body = await api.call("POST", "/tokens", second, json={"name": "b", "scopes": ["users:manage"]})
    assert status == 403 and body["error"]["code"] == "scope_not_allowed"
    # Admins see everyone's and can revoke them.
    status, listing = await api.call("GET", "/tokens", admin, params={"user_id": mine["user_id"]})
    assert listing["total"] == 1
    assert (await api.call("DELETE", f"/tokens/{mine['id']}", admin))[0] == 204
    for bad in (
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": ["root"]},
        {"name": "", "scopes": ["cameras:read"]},
        {"name": "x", "scopes": ["cameras:read"], "expires_in_days": 0},
    ):
        assert (await api.call("POST", "/tokens", admin, json=bad))[0] == 422, bad


async def test_disabled_owner_disables_tokens(api: Api) -> None:
    admin = await api.token(Role.ADMIN)
    service = await api.add_user(Role.API_ONLY)
    _status, created = await api.call(
        "POST", "/tokens", admin, json={"name": "s", "scopes": ["cameras:read"], "user_id": service}
    )
    assert (await api.call("GET", "/cameras", created["token"]))[0] == 200
    await api.call("PUT", f"/users/{service}", admin, json={"disabled": True})
    assert (await api.call("GET", "/cameras", created["token"]))[0] == 401
