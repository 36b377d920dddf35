"""Migrations: applied at start, idempotent, and a newer schema is refused."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import inspect, text

from hub.db.engine import make_sync_engine
from hub.db.migrate import current_revision, head_revision, upgrade
from hub.domain.errors import ConfigError, SchemaTooNew

TABLES = {
    "users",
    "teams",
    "memberships",
    "sessions",
    "environments",
    "servers",
    "quotas",
    "api_tokens",
    "audit_log",
    "meta",
}


def test_upgrade_creates_every_table_and_is_idempotent(db_url: str) -> None:
    assert current_revision(db_url) is None
    assert upgrade(db_url) == head_revision()
    assert upgrade(db_url) == head_revision()
    engine = make_sync_engine(db_url)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()


def _stamp(db_url: str, revision: str) -> None:
    engine = make_sync_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()


def test_database_from_a_newer_labdock_is_refused_and_left_untouched(db_url: str) -> None:
    upgrade(db_url)
    _stamp(db_url, "9999future")
    with pytest.raises(SchemaTooNew, match="revision 9999future, which this labdock does not know"):
        upgrade(db_url)
    assert current_revision(db_url) == "9999future"


def test_cli_db_upgrade_on_a_newer_database_exits_2_with_one_line(db_url: str) -> None:
    upgrade(db_url)
    _stamp(db_url, "9999future")
    done = subprocess.run(
        [sys.executable, "-m", "hub.cli", "db", "upgrade", "--db-url", db_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "newer labdock" in done.stderr


def test_unreachable_postgres_is_a_config_error_with_the_password_hidden() -> None:
    url = "postgresql+psycopg://bob:hunter2@127.0.0.1:1/nothing"
    with pytest.raises(ConfigError) as caught:
        upgrade(url)
    assert caught.value.message.startswith(
        "db.url: cannot connect to postgresql+psycopg://bob:***@"
    )
    assert "hunter2" not in caught.value.message


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    upgrade(url)
    engine = make_sync_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert int(conn.execute(text("PRAGMA busy_timeout")).scalar() or 0) >= 5000
    finally:
        engine.dispose()


def test_migrations_produce_exactly_the_models_schema(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from hub.db.schema import Base

    upgrade(db_url)
    engine = make_sync_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_migration_0004_keeps_every_token_and_stops_sqlite_reusing_token_ids(
    db_url: str,
) -> None:
    from datetime import UTC, datetime

    from alembic import command

    from hub.db.migrate import _config

    engine = make_sync_engine(db_url)
    try:
        with engine.begin() as conn:
            command.upgrade(_config(conn), "0003")
            now = datetime.now(UTC)
            conn.execute(
                text(
                    "INSERT INTO users (name, is_admin, disabled, must_change_password, created) "
                    "VALUES ('alice', false, false, false, :c)"
                ),
                {"c": now},
            )
            for n in (1, 2):
                conn.execute(
                    text(
                        "INSERT INTO api_tokens (user_id, prefix, token_hash, scopes, note, "
                        "created) VALUES (1, :p, :h, 'servers', :n, :c)"
                    ),
                    {"p": f"prefix{n}", "h": f"hash{n}", "n": f"note {n}", "c": now},
                )
        upgrade(db_url)
        assert current_revision(db_url) == head_revision()
        with engine.begin() as conn:
            rows = conn.execute(text("SELECT id, prefix, note FROM api_tokens ORDER BY id")).all()
            assert [tuple(r) for r in rows] == [(1, "prefix1", "note 1"), (2, "prefix2", "note 2")]
            # The newest token revoked: its id must not come back.
            conn.execute(text("DELETE FROM api_tokens WHERE id = 2"))
            conn.execute(
                text(
                    "INSERT INTO api_tokens (user_id, prefix, token_hash, scopes, note, created) "
                    "VALUES (1, 'prefix3', 'hash3', 'servers', '', :c)"
                ),
                {"c": datetime.now(UTC)},
            )
            new_id = conn.execute(
                text("SELECT id FROM api_tokens WHERE prefix = 'prefix3'")
            ).scalar_one()
            assert new_id == 3
    finally:
        engine.dispose()
