"""Control-plane fixtures: every test runs on the embedded SQLite AND on the real MariaDB.

Each backend gets one fresh database per test run (MariaDB: `test_ms_<random>`, dropped at the
end), migrated once; tables are emptied before each test. The API is driven in process through
aiohttp's test client; end-to-end tests start the real server process.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import delete

from benchmarks.lib.mariadb import MYSQL
from benchmarks.lib.mariadb import execute as _mysql
from control.plane import ControlPlane
from control.rbac import Role
from control.store import ApiToken, AuditLog, Camera, Recording, RefreshToken, Store, User
from mediaserver.config import Config
from mediaserver.http.app import create_app
from mediaserver.hub import Hub
from mediaserver.metrics import Metrics

PASSWORD = "correct horse battery"
JWT_SECRET = "test-secret-" + "x" * 40
TABLES = (AuditLog, RefreshToken, ApiToken, Recording, Camera, User)


async def _migrate(url: str) -> None:
    store = Store(url)
    try:
        await store.migrate()
    finally:
        await store.close()


@pytest.fixture(scope="session", params=["sqlite", "mariadb"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'control.db'}"
        asyncio.run(_migrate(url))
        yield url
        return
    name = f"test_ms_{secrets.token_hex(4)}"
    asyncio.run(_mysql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
    try:
        url = f"mysql+asyncmy://{MYSQL}/{name}"
        asyncio.run(_migrate(url))
        yield url
    finally:
        asyncio.run(_mysql(f"DROP DATABASE IF EXISTS `{name}`"))


def make_config(database_url: str, data_dir: Path, **sections: dict[str, Any]) -> Config:
    config = Config()
    config.server.data_dir = str(data_dir)
    config.database.url = database_url
    config.auth.publish_mode = "database"
    config.auth_api.jwt_secret = JWT_SECRET
    # Cheap hashes keep the suite fast; production defaults are tested in test_security.
    config.auth_api.argon2_time_cost = 1
    config.auth_api.argon2_memory_kib = 1024
    config.auth_api.argon2_parallelism = 1
    config.api.login_rate_per_ip = 10_000
    config.api.login_rate_per_username = 10_000
    config.api.rate_per_token = 10_000
    for section, values in sections.items():
        for key, value in values.items():
            setattr(getattr(config, section), key, value)
    config.validate()
    return config


async def clean(store: Store) -> None:
    async with store.sessions.begin() as session:
        for table in TABLES:
            await session.execute(delete(table))


class FakePublisher:
    protocol = "rtmp"

    def __init__(self, peer: str = "127.0.0.1:50000") -> None:
        self.peer = peer
        self.stopped: list[str] = []

    def stop(self, reason: str) -> None:
        self.stopped.append(reason)


@dataclass
class Api:
    client: TestClient[Any, Any]
    plane: ControlPlane
    hub: Hub
    config: Config

    async def call(
        self, method: str, path: str, token: str | None = None, json: Any = None, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = await self.client.request(method, "/api/v1" + path, json=json, headers=headers, **kwargs)
        text = await response.text()
        body: Any = None
        if text and response.content_type == "application/json":
            body = await response.json()
        return response.status, body

    async def add_user(
        self, role: Role | str = Role.VIEWER, username: str | None = None, password: str = PASSWORD
    ) -> int:
        from control.api.users import create_user

        name = username or f"{Role(role).value}-{secrets.token_hex(3)}"
        async with self.plane.store.sessions.begin() as session:
            user = await create_user(session, self.plane.hasher, name, password, Role(role))
        return user.id

    async def login(self, username: str, password: str = PASSWORD) -> dict[str, Any]:
        status, body = await self.call("POST", "/auth/login", json={"username": username, "password": password})
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    async def token(self, role: Role | str = Role.ADMIN) -> str:
        """An access token of a fresh user with `role` (api_only users get an API token instead)."""
        if Role(role) is Role.API_ONLY:
            from control.rbac import ROLE_PERMISSIONS

            admin = await self.token(Role.ADMIN)
            user_id = await self.add_user(Role.API_ONLY)
            scopes = sorted(p.value for p in ROLE_PERMISSIONS[Role.API_ONLY])
            status, body = await self.call(
                "POST", "/tokens", admin, json={"name": "svc", "scopes": scopes, "user_id": user_id}
            )
            assert status == 201, body
            return str(body["token"])
        name = f"{Role(role).value}-{secrets.token_hex(3)}"
        await self.add_user(role, name)
        return str((await self.login(name))["access_token"])

    async def camera(self, token: str, **fields: Any) -> dict[str, Any]:
        status, body = await self.call("POST", "/cameras", token, json={"name": "cam", **fields})
        assert status == 201, body
        assert isinstance(body, dict)
        return body

    async def audit(self, token: str, **query: Any) -> list[dict[str, Any]]:
        status, body = await self.call("GET", "/audit-logs", token, params={"limit": 500, **query})
        assert status == 200, body
        return list(body["items"])


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def api_factory(database_url: str, tmp_path: Path) -> AsyncIterator[ApiFactory]:
    started: list[tuple[TestClient[Any, Any], ControlPlane]] = []

    async def factory(environ: dict[str, str] | None = None, **sections: dict[str, Any]) -> Api:
        config = make_config(database_url, tmp_path / "data", **sections)
        hub = Hub()
        plane = ControlPlane(config, hub, environ=environ or {})
        await clean(plane.store)
        app = create_app(hub, Metrics(hub), [])
        plane.install(app)
        await plane.start()
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        started.append((client, plane))
        return Api(client, plane, hub, config)

    yield factory
    for client, plane in started:
        await client.close()
        await plane.stop()


@pytest.fixture
async def api(api_factory: ApiFactory) -> Api:
    return await api_factory()


@pytest.fixture
async def admin(api: Api) -> str:
    return await api.token(Role.ADMIN)
