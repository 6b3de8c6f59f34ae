"""The async engine, sessions and programmatic Alembic migrations."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

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


# SQLite VM steps between two looks at an inline read's deadline (a look costs about a microsecond).
_PROGRESS_STEPS = 1000


class _InlineReads:
    """SQLite reads run on the calling (event loop) thread, each within a time budget.

    A one-page read is a tenth of a millisecond of SQLite work, while each aiosqlite call is a round trip to a
    connection thread (four per statement through SQLAlchemy's adapter) and a contest for the GIL with the loop:
    those cost more than the read. A read that is still running when its budget is spent is interrupted by
    SQLite's progress handler (OperationalError "interrupted") and runs again on a connection thread, so the loop
    is never held longer than the budget, whatever the tables grow to."""

    def __init__(self, url: Any, budget: float, kwargs: dict[str, Any]) -> None:
        self.budget = budget
        self._deadline = float("inf")
        # One caller at a time (the loop thread, which does not yield inside a read): a connection or two suffice.
        self.engine = create_engine(
            url.set(drivername="sqlite+pysqlite"), pool_size=2, max_overflow=2, pool_reset_on_return=None, **kwargs
        )
        event.listen(self.engine, "connect", self._on_connect)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _on_connect(self, dbapi_connection: Any, connection_record: Any) -> None:
        _sqlite_pragmas(dbapi_connection, connection_record)
        dbapi_connection.set_progress_handler(self._over_budget, _PROGRESS_STEPS)

    def _over_budget(self) -> bool:
        return time.perf_counter() > self._deadline

    def run(self, fn: Callable[[Session], T]) -> T:
        self._deadline = time.perf_counter() + self.budget
        try:
            with self.sessions() as session:
                return fn(session)
        finally:
            self._deadline = float("inf")


def _interrupted(exc: OperationalError) -> bool:
    return isinstance(exc.orig, sqlite3.OperationalError) and "interrupted" in str(exc.orig)


class Store:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        max_overflow: int = 20,
        pool_recycle: int = 3600,
        inline_read_budget: float = 0.002,
        echo: bool = False,
        registry: CollectorRegistry | None = None,
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
        self._inline = (
            _InlineReads(parsed, inline_read_budget, {"hide_parameters": True})
            if self.is_sqlite and inline_read_budget > 0
            else None
        )
        self._reads = Counter(
            "mediaserver_db_reads",
            "Short reads (pages, look-ups) by where they ran: inline on the event loop (SQLite), on a database "
            "connection's thread or task, or moved there after their inline budget ran out",
            ["path"],
            registry=registry if registry is not None else CollectorRegistry(),
        )
        self._reads_inline = self._reads.labels("inline")
        self._reads_async = self._reads.labels("async")
        self._reads_moved = self._reads.labels("over_budget")

    @classmethod
    def from_config(cls, config: Config, registry: CollectorRegistry | None = None) -> Store:
        db = config.database
        return cls(
            database_url(config),
            pool_size=db.pool_size,
            max_overflow=db.max_overflow,
            pool_recycle=db.pool_recycle,
            inline_read_budget=db.inline_read_budget_ms / 1000,
            registry=registry,
        )

    async def read(self, fn: Callable[[Session], T]) -> T:
        """Run `fn`, a read that only reads (it may run twice), with a synchronous session.

        On SQLite it runs inline on the calling thread within the configured budget (see `_InlineReads`); over
        budget, or on MySQL/MariaDB, it runs through the async reader (`AsyncSession.run_sync`)."""
        if self._inline is not None:
            try:
                result = self._inline.run(fn)
            except OperationalError as exc:
                if not _interrupted(exc):
                    raise
                self._reads_moved.inc()
                log.debug("event=inline_read_over_budget budget_ms=%.1f", self._inline.budget * 1000)
            else:
                self._reads_inline.inc()
                return result
        else:
            self._reads_async.inc()
        async with self.reader() as session:
            return await session.run_sync(fn)

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
        if self._inline is not None:
            self._inline.engine.dispose()
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()
