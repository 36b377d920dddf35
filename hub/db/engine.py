"""Database engines: one async engine for the hub, sync ones for migrations.

    engine = make_engine("sqlite:///data/labdock.sqlite")
    sessions = async_sessionmaker(engine, expire_on_commit=False)

SQLite runs in WAL mode with a busy timeout, so the hub's reads never wait on
its writes and a second process (the CLI) waits instead of failing at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from hub.domain.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 10_000
# Execution options that make SQLite's BEGIN take the write lock first (see below).
IMMEDIATE = {"labdock_immediate": True}


def parse_url(url: str) -> URL:
    """Parse a database URL, or raise ``ConfigError`` naming ``db.url``."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"db.url: not a database URL: {url!r}") from None
    if parsed.get_backend_name() not in {"sqlite", "postgresql"}:
        raise ConfigError(
            f"db.url: labdock supports sqlite and postgresql, got {parsed.drivername!r}"
        )
    return parsed


def redact(url: str) -> str:
    """The URL with any password hidden, for messages."""
    return parse_url(url).render_as_string(hide_password=True)


def sync_url(url: str) -> URL:
    """The URL for a blocking driver (migrations, CLI checks)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite")
    return parsed.set(drivername="postgresql+psycopg")


def async_url(url: str) -> URL:
    """The URL for an asyncio driver (the hub)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    return parsed.set(drivername="postgresql+psycopg")


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _on_sqlite_begin(conn: Any) -> None:
    # pysqlite's own BEGIN is deferred, which lets two admissions read the same
    # usage and both write. Admission asks for IMMEDIATE: the write lock first.
    if conn.get_execution_options().get("labdock_immediate"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def _take_over_sqlite_transactions(engine: Engine) -> None:
    def no_driver_begin(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    event.listen(engine, "connect", no_driver_begin)
    event.listen(engine, "begin", _on_sqlite_begin)


def _is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def make_sync_engine(url: str) -> Engine:
    """A blocking engine, for migrations and one-shot checks."""
    target = sync_url(url)
    engine = create_engine(target, poolclass=NullPool)
    if _is_sqlite(target):
        event.listen(engine, "connect", _on_sqlite_connect)
    return engine


def make_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """The hub's async engine, with SQLite tuned for one writer and many readers."""
    target = async_url(url)
    if _is_sqlite(target):
        engine = create_async_engine(
            target, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        )
        event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
        _take_over_sqlite_transactions(engine.sync_engine)
        return engine
    return create_async_engine(target, echo=echo, pool_size=10, max_overflow=10, pool_pre_ping=True)


@contextlib.asynccontextmanager
async def writing(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A transaction that reads, then writes: ``async with writing(sessions) as s: ...``.

    SQLite's deferred BEGIN takes a read snapshot first; if another connection commits
    before this one writes, the upgrade fails at once with "database is locked" (the busy
    timeout cannot help a stale snapshot). BEGIN IMMEDIATE takes the write lock first
    and waits its turn. PostgreSQL ignores the option.
    """
    async with sessions() as s, s.begin():
        await s.connection(execution_options=IMMEDIATE)
        yield s


async def ping(engine: AsyncEngine) -> None:
    """Raise when the database does not answer a trivial query (the health check)."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
