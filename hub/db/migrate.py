"""Schema migrations with Alembic, run by the hub at start and by ``labdock db upgrade``.

    revision = upgrade("sqlite:///data/labdock.sqlite")   # applies what is pending

A database migrated by a newer labdock carries a revision this code does not
know: it is refused with ``SchemaTooNew`` rather than used and damaged.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError as SAOperationalError

from hub.db.engine import make_sync_engine, parse_url, redact
from hub.domain.errors import ConfigError, SchemaTooNew

MIGRATIONS = Path(__file__).parent / "migrations"


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def _check_known(connection: Connection, url: str) -> str | None:
    current = MigrationContext.configure(connection).get_current_revision()
    if current is None:
        return None
    script = ScriptDirectory.from_config(_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if current not in known:
        raise SchemaTooNew(
            f"the database at {redact(url)} has schema revision {current}, which this "
            f"labdock does not know (newest known: {head_revision()}); it was upgraded by a "
            "newer labdock. Upgrade labdock, or point --db-url at another database."
        )
    return current


def _ensure_sqlite_folder(url: str) -> None:
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def upgrade(url: str) -> str:
    """Apply pending migrations; return the revision now in place.

    Raises ``ConfigError`` if the database cannot be reached, ``SchemaTooNew``
    if it is ahead of this code.
    """
    _ensure_sqlite_folder(url)
    engine = make_sync_engine(url)
    try:
        with engine.begin() as connection:
            _check_known(connection, url)
            command.upgrade(_config(connection), "head")
        return head_revision()
    except SAOperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise ConfigError(f"db.url: cannot connect to {redact(url)}: {reason}") from None
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    """The revision the database is at, or ``None`` for an empty one."""
    engine = make_sync_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
