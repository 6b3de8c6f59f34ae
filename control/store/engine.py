"""The async engine, sessions and programmatic Alembic migrations."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from mediaserver.config import Config

log = logging.getLogger("control.store")

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
T = TypeVar("T")


class StoreError(RuntimeError):
    pass


def database_url(config: Config) -> str:
    """The configured URL, or the embedded SQLite file in the data directory."""
    if config.database.url:
        return config.database.url
    path = Path(config.server.data_dir).resolve() / "mediaserver.db"
    return f"sqlite+aiosqlite:///{path}"


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    # The driver must not open transactions itself: `_sqlite_begin` does, the way each engine needs.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_begin_immediate(conn: Connection) -> None:
    # A write transaction takes SQLite's write lock when it begins, so it never has to upgrade a
    # read snapshot that another writer has meanwhile made stale (SQLITE_BUSY with no retry).
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _alembic_config(connection: Connection) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


class Store:
    def __init__(
        self, url: str, *, pool_size: int = 10, max_overflow: int = 20, pool_recycle: int = 3600, echo: bool = False
    ) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise StoreError(f"database.url is not a valid URL: {exc}") from exc
        self.backend = parsed.get_backend_name()
        if self.backend not in ("sqlite", "mysql", "mariadb"):
            raise StoreError(f"unsupported database backend {self.backend!r} (sqlite or mysql)")
        self.is_sqlite = self.backend == "sqlite"
        # Statement parameters carry stream keys and hashes: never in logs or error messages.
        kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
        for noisy in ("sqlalchemy.engine", "aiosqlite", "asyncmy"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # SQLite too: a connection beyond the pool is opened (a new aiosqlite thread, four PRAGMAs) and closed
        # again for each request that needs it, which cost more than the request's own query.
        kwargs.update(pool_size=pool_size, max_overflow=max_overflow)
        if not self.is_sqlite:
            kwargs.update(pool_recycle=pool_recycle, pool_pre_ping=True)
        self.url = parsed
        self.engine: AsyncEngine = create_async_engine(parsed, **kwargs)
        # Reads go through `reader`; on SQLite it is a second pool whose transactions do not lock out
        # writers. `sessions` is for anything that writes.
        self.read_engine = self.engine
        if self.is_sqlite:
            # Reads run without BEGIN (each statement sees one consistent snapshot) and their connections are
            # not rolled back again when they return to the pool: each aiosqlite call is a thread round trip,
            # and these two would double the cost of a one-statement read.
            self.read_engine = create_async_engine(parsed, pool_reset_on_return=None, **kwargs)
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin_immediate)
            event.listen(self.read_engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(self.engine, expire_on_commit=False)
        self.reader: async_sessionmaker[AsyncSession] = async_sessionmaker(self.read_engine, expire_on_commit=False)

    @classmethod
    def from_config(cls, config: Config) -> Store:
        db = config.database
        return cls(
            database_url(config), pool_size=db.pool_size, max_overflow=db.max_overflow, pool_recycle=db.pool_recycle
        )

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs."""
        return self.url.render_as_string(hide_password=True)

    async def _run_sync(self, fn: Callable[[Connection], T]) -> T:
        async with self.engine.begin() as conn:
            return await conn.run_sync(fn)

    @staticmethod
    def head_revision() -> str:
        script = ScriptDirectory(str(MIGRATIONS))
        head = script.get_current_head()
        assert head is not None
        return head

    async def current_revision(self) -> str | None:
        def current(conn: Connection) -> str | None:
            return MigrationContext.configure(conn).get_current_revision()

        return await self._run_sync(current)

    async def migrate(self, revision: str = "head") -> str:
        """Upgrade the schema; returns the revision now in place."""

        def upgrade(conn: Connection) -> None:
            command.upgrade(_alembic_config(conn), revision)

        database = self.url.database
        if self.is_sqlite and database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)

        before = await self.current_revision()
        await self._run_sync(upgrade)
        after = await self.current_revision()
        if before != after:
            log.info("event=migrated database=%s from=%s to=%s", self.safe_url, before, after)
        return after or ""

    async def check_schema(self) -> None:
        current, head = await self.current_revision(), self.head_revision()
        if current != head:
            raise StoreError(
                f"database schema is at {current or 'nothing'}, this version needs {head}: "
                "run `mediaserver migrate` (or set database.auto_migrate = true)"
            )

    async def close(self) -> None:
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()
