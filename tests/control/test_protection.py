"""Rate limits (in process and on the real Redis), body limits, security headers, CORS."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from redis.asyncio import Redis

from control.ratelimit import MemoryRateLimiter, RedisRateLimiter
from control.rbac import Role
from tests.control.conftest import PASSWORD, Api

REDIS_URL = "redis://127.0.0.1:6379/0"


async def test_login_rate_per_ip_and_username(api_factory: Any) -> None:
    api: Api = await api_factory(api={"login_rate_per_ip": 6, "login_rate_per_username": 3})
    await api.add_user(Role.VIEWER, "target")
    statuses = []
    for _ in range(4):
        status, body = await api.call("POST", "/auth/login", json={"username": "target", "password": "bad guess!!"})
        statuses.append(status)
    assert statuses == [401, 401, 401, 429]
    assert body["error"]["code"] == "rate_limited"
    # The right password is refused too while the username is locked.
    assert (await api.call("POST", "/auth/login", json={"username": "target", "password": PASSWORD}))[0] == 429
    # Other usernames from the same IP until the per-IP budget is gone.
    await api.add_user(Role.VIEWER, "other")
    assert (await api.call("POST", "/auth/login", json={"username": "other", "password": PASSWORD}))[0] == 200
    assert (await api.call("POST", "/auth/login", json={"username": "other", "password": PASSWORD}))[0] == 429
    response = await api.client.post("/api/v1/auth/login", json={"username": "x", "password": "y"})
    assert response.status == 429 and int(response.headers["Retry-After"]) >= 1


async def test_api_rate_per_token(api_factory: Any) -> None:
    api: Api = await api_factory(api={"rate_per_token": 5})
    token = await api.token(Role.VIEWER)
    statuses = [(await api.call("GET", "/cameras", token))[0] for _ in range(7)]
    assert statuses == [200] * 5 + [429] * 2
    # Another caller has its own budget.
    assert (await api.call("GET", "/cameras", await api.token(Role.VIEWER)))[0] == 200
    # The unauthenticated nginx-rtmp callback is bounded per caller address.
    form = {"call": "publish", "app": "live", "name": "guess"}
    codes = []
    for _ in range(7):
        response = await api.client.post("/api/v1/streaming/auth", data=form)
        codes.append(response.status)
    assert codes == [403] * 5 + [429] * 2


async def test_memory_limiter_windows() -> None:
    limiter = MemoryRateLimiter()
    results = [await limiter.hit("k", 3, 60) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.remaining for r in results[:3]] == [2, 1, 0] and 0 < results[3].retry_after <= 60
    assert (await limiter.hit("other", 3, 60)).allowed


async def test_redis_limiter_on_real_redis() -> None:
    prefix = f"mstest:{secrets.token_hex(4)}:"
    first = RedisRateLimiter.from_url(REDIS_URL, prefix)
    second = RedisRateLimiter.from_url(REDIS_URL, prefix)  # another node
    try:
        assert [(await first.hit("login:ip:1.2.3.4", 4, 30)).allowed for _ in range(3)] == [True] * 3
        # The second node sees the same count.
        assert (await second.hit("login:ip:1.2.3.4", 4, 30)).allowed
        denied = await second.hit("login:ip:1.2.3.4", 4, 30)
        assert not denied.allowed and 0 < denied.retry_after <= 30
        client = Redis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        assert len(keys) == 1 and 0 < await client.pttl(keys[0]) <= 31_000
        await client.delete(*keys)
        await client.aclose()
    finally:
        await first.close()
        await second.close()


async def test_redis_backed_api_limits(api_factory: Any) -> None:
    prefix = f"mstest:{secrets.token_hex(4)}:"
    api: Api = await api_factory(redis={"url": REDIS_URL, "key_prefix": prefix}, api={"login_rate_per_username": 2})
    assert isinstance(api.plane.limiter, RedisRateLimiter)
    await api.add_user(Role.VIEWER, "redisuser")
    statuses = [
        (await api.call("POST", "/auth/login", json={"username": "redisuser", "password": PASSWORD}))[0]
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    client = Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    assert any(b"login:user:redisuser" in k for k in keys)
    await client.delete(*keys)
    await client.aclose()


async def test_body_limit(api_factory: Any) -> None:
    api: Api = await api_factory(api={"max_body_bytes": 1024})
    admin = await api.token(Role.ADMIN)
    status, body = await api.call("POST", "/cameras", admin, json={"name": "x" * 2000})
    assert status == 413 and body["error"]["code"] == "body_too_large"

    async def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 500

    response = await api.client.post(
        "/api/v1/cameras",
        data=chunks(),
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
    )
    assert response.status == 413


async def test_security_headers(api: Api) -> None:
    for path in ("/api/v1/openapi.json", "/api/v1/cameras", "/api/v1/nope"):
        response = await api.client.get(path)
        await response.read()
        assert response.headers["X-Content-Type-Options"] == "nosniff", path
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Cache-Control"] == "no-store"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    response = await api.client.get("/healthz")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("origins", [["https://console.example.com"], ["*"]])
async def test_cors(api_factory: Any, origins: list[str]) -> None:
    api: Api = await api_factory(api={"cors_origins": origins})
    allowed = "https://console.example.com"
    response = await api.client.options(
        "/api/v1/cameras",
        headers={
            "Origin": allowed,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] in (allowed, "*")
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    response = await api.client.get("/api/v1/cameras", headers={"Origin": allowed})
    assert response.status == 401 and response.headers["Access-Control-Allow-Origin"] in (allowed, "*")
    response = await api.client.get("/api/v1/cameras", headers={"Origin": "https://evil.example"})
    if origins == ["*"]:
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    else:
        assert "Access-Control-Allow-Origin" not in response.headers
