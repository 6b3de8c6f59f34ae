"""The schema: migrations are the source of truth and match the models; the CLI migrates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from prometheus_client import CollectorRegistry
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from control.store import Base, Store, StoreError, database_url
from mediaserver.config import Config
from tests.control.conftest import _mysql


async def test_migrations_match_the_models(database_url: str) -> None:
    store = Store(database_url)
    try:
        assert await store.current_revision() == Store.head_revision()
        await store.check_schema()
        assert await store.migrate() == Store.head_revision()  # idempotent

        def diff(conn: Connection) -> list[Any]:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))

        def indexes(conn: Connection) -> dict[str, set[tuple[str, ...]]]:
            inspector = inspect(conn)
            return {
                table: {tuple(ix["column_names"]) for ix in inspector.get_indexes(table)}  # type: ignore[misc]
                for table in ("cameras", "recordings", "audit_logs", "refresh_tokens")
            }

        async with store.engine.connect() as conn:
            assert await conn.run_sync(diff) == []
            found = await conn.run_sync(indexes)
        assert ("status",) in found["cameras"]
        assert ("camera_id", "started_at") in found["recordings"]
        assert ("user_id", "at") in found["audit_logs"]
        assert ("family_id",) in found["refresh_tokens"]
    finally:
        await store.close()


def test_embedded_default_lives_in_the_data_dir(tmp_path: Path) -> None:
    config = Config()
    config.server.data_dir = str(tmp_path / "d")
    assert database_url(config) == f"sqlite+aiosqlite:///{tmp_path / 'd' / 'mediaserver.db'}"
    config.database.url = "mysql+asyncmy://u:p@db:3306/ms"
    assert database_url(config) == "mysql+asyncmy://u:p@db:3306/ms"
    assert Store(database_url(config)).safe_url == "mysql+asyncmy://u:***@db:3306/ms"
    with pytest.raises(StoreError):
        Store("postgresql+asyncpg://x/y")


async def test_unmigrated_database_is_refused(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(StoreError, match="mediaserver migrate"):
            await store.check_schema()
    finally:
        await store.close()


def test_migrate_command(tmp_path: Path, database_url: str) -> None:
    env = dict(os.environ)
    env["MEDIASERVER_SERVER_DATA_DIR"] = str(tmp_path / "data")
    if database_url.startswith("mysql"):
        import asyncio

        name = f"test_ms_cli_{os.getpid()}"
        asyncio.run(_mysql(f"CREATE DATABASE `{name}`"))
        env["MEDIASERVER_DATABASE_URL"] = database_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "mediaserver", "migrate"], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert f"is at revision {Store.head_revision()}" in result.stdout
        if not database_url.startswith("mysql"):
            assert (tmp_path / "data" / "mediaserver.db").exists()
    finally:
        if database_url.startswith("mysql"):
            asyncio.run(_mysql(f"DROP DATABASE IF EXISTS `{name}`"))


async def test_sqlite_readers_keep_their_connections_under_load(tmp_path: Path) -> None:
    """Eight reads at once, twice over: each connection is opened once and kept (a connection beyond the pool
    would be opened and closed again per use, with its own thread and PRAGMAs each time)."""
    import asyncio

    from sqlalchemy import event, text

    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'pool.db'}", pool_size=8, max_overflow=4)
    opened: list[object] = []
    event.listen(store.read_engine.sync_engine, "connect", lambda conn, record: opened.append(conn))
    try:
        await store.migrate()

        async def read() -> int:
            async with store.reader() as session:
                value = (await session.execute(text("SELECT 1"))).scalar_one()
                await asyncio.sleep(0.01)  # all eight are out at once
                return int(value)

        for _ in range(2):
            assert await asyncio.gather(*(read() for _ in range(8))) == [1] * 8
        assert len(opened) == 8
        assert store.read_engine.sync_engine.pool.checkedin() == 8  # type: ignore[attr-defined]
    finally:
        await store.close()


def _reads(registry: CollectorRegistry, path: str) -> float | None:
    return registry.get_sample_value("mediaserver_db_reads_total", {"path": path})


async def test_short_reads_run_inline_on_sqlite_and_move_to_a_thread_over_budget(tmp_path: Path) -> None:
    """A page-sized read runs on the calling thread; one that outlasts its budget is interrupted by SQLite and
    run again on a connection thread (same answer); a read that fails for any other reason fails as it is."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    registry = CollectorRegistry()
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}", inline_read_budget=0.005, registry=registry)
    drivers: list[str] = []  # pysqlite: on the calling thread; aiosqlite: on a connection thread
    # About a second of SQLite work on this machine: far over the 5 ms budget.
    heavy = text(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000000) SELECT count(*) FROM n"
    )

    def light(session: Session) -> int:
        drivers.append(session.get_bind().dialect.driver)
        return int(session.execute(text("SELECT 41 + 1")).scalar_one())

    def long(session: Session) -> int:
        drivers.append(session.get_bind().dialect.driver)
        return int(session.execute(heavy).scalar_one())

    try:
        await store.migrate()
        assert await store.read(light) == 42
        assert drivers == ["pysqlite"]
        assert _reads(registry, "inline") == 1
        drivers.clear()
        assert await store.read(long) == 3_000_000
        assert drivers == ["pysqlite", "aiosqlite"]
        assert _reads(registry, "over_budget") == 1
        with pytest.raises(OperationalError, match="no such table"):
            await store.read(lambda session: session.execute(text("SELECT * FROM missing")).all())
        assert await store.read(light) == 42  # the inline connection is still good
    finally:
        await store.close()


async def test_short_reads_on_every_backend(database_url: str) -> None:
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from control.store import Camera

    registry = CollectorRegistry()
    store = Store(database_url, registry=registry)

    def count(session: Session) -> int:
        return int(session.execute(select(func.count()).select_from(Camera)).scalar_one())

    try:
        assert await store.read(count) >= 0
        assert _reads(registry, "inline" if database_url.startswith("sqlite") else "async") == 1
    finally:
        await store.close()
