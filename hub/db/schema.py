"""labdock's tables, as SQLAlchemy 2 typed mappings.

    async with sessions() as s:
        user = (await s.execute(select(UserRow).where(UserRow.name == "alice"))).scalar_one()

Rows stay inside ``hub.db``: repositories turn them into domain values, so no
handler ever holds a live ORM object. Containers, volumes and routes are keyed
by these integer ids, never by names a person typed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import false
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every engine (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use an aware UTC one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""

    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
    }


class MetaRow(Base):
    """Key/value facts about this installation (its hub id)."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


# Ids key containers and volumes, so they must never be reused: SQLite without
# AUTOINCREMENT hands a deleted row's id to the next insert (PostgreSQL never does).
NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


class UserRow(Base):
    __tablename__ = "users"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(32), unique=True)
    password_hash: Mapped[str | None] = mapped_column(Text)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime]
    last_login: Mapped[datetime | None]


class TeamRow(Base):
    __tablename__ = "teams"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[datetime]


class MembershipRow(Base):
    __tablename__ = "memberships"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    team_id: Mapped[int] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    # "member" may read the team volume; "writer" may also write it.
    role: Mapped[str] = mapped_column(String(16), default="member")


class SessionRow(Base):
    """A browser login. The cookie holds the signed id; the row lets logout revoke it."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created: Mapped[datetime]
    expires: Mapped[datetime]


class EnvironmentRow(Base):
    __tablename__ = "environments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # Unused since 0002, which copied it into environment_teams. Dropping it would
    # rebuild this table on SQLite, and with foreign keys on that nulls servers' links.
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    # The current version: its image reference, digest and label (environment_versions).
    image: Mapped[str] = mapped_column(String(255))
    image_digest: Mapped[str] = mapped_column(String(128), default="")
    version: Mapped[str] = mapped_column(String(255), default="")
    # The admins' policy: {"default": {...}, "maximum": {...}} resources.
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    retired: Mapped[bool] = mapped_column(Boolean, default=False)
    # "manifest": seeded from images/<name>/; "admin": created through the API.
    source: Mapped[str] = mapped_column(String(16), default="manifest", server_default="manifest")
    # An admin edited its policy: seeding no longer overwrites it from the manifest.
    customized: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created: Mapped[datetime]


class EnvironmentVersionRow(Base):
    """One image an environment has had, pinned by digest; never deleted."""

    __tablename__ = "environment_versions"
    __table_args__ = (
        UniqueConstraint("environment_id", "label", name="uq_environment_versions_label"),
        UniqueConstraint("environment_id", "digest", name="uq_environment_versions_digest"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    environment_id: Mapped[int] = mapped_column(
        ForeignKey("environments.id", ondelete="CASCADE"), index=True
    )
    label: Mapped[str] = mapped_column(String(64))
    image: Mapped[str] = mapped_column(String(255))
    digest: Mapped[str] = mapped_column(String(128))
    # How to run this image: port, command, prefix, readiness, limits (a manifest snapshot).
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created: Mapped[datetime]


class EnvironmentTeamRow(Base):
    """Teams an environment is offered to; none listed means every user."""

    __tablename__ = "environment_teams"

    environment_id: Mapped[int] = mapped_column(
        ForeignKey("environments.id", ondelete="CASCADE"), primary_key=True
    )
    team_id: Mapped[int] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class ServerRow(Base):
    __tablename__ = "servers"
    __table_args__ = (
        UniqueConstraint("user_id", "name", name="uq_servers_user_name"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # "" is the default server, at /user/<name>/.
    name: Mapped[str] = mapped_column(String(64), default="")
    environment_id: Mapped[int | None] = mapped_column(
        ForeignKey("environments.id", ondelete="SET NULL")
    )
    image_digest: Mapped[str] = mapped_column(String(128), default="")
    state: Mapped[str] = mapped_column(String(16), default="stopped")
    container_id: Mapped[str | None] = mapped_column(String(80))
    container_name: Mapped[str | None] = mapped_column(String(128))
    host: Mapped[str | None] = mapped_column(String(255))
    port: Mapped[int | None] = mapped_column(Integer)
    cpus: Mapped[float] = mapped_column(Float, default=0.0)
    memory: Mapped[int] = mapped_column(BigInteger, default=0)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    gpu_ids: Mapped[str] = mapped_column(String(255), default="")
    user_options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The per-server secret the proxy adds upstream; the app must require it.
    secret: Mapped[str] = mapped_column(String(128), default="")
    stopped_reason: Mapped[str | None] = mapped_column(Text)
    created: Mapped[datetime]
    started: Mapped[datetime | None]
    last_activity: Mapped[datetime | None]


class QuotaRow(Base):
    __tablename__ = "quotas"
    __table_args__ = (
        CheckConstraint("(user_id IS NULL) <> (team_id IS NULL)", name="ck_quotas_one_owner"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), unique=True
    )
    team_id: Mapped[int | None] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), unique=True
    )
    # NULL: no limit of its own on that resource.
    cpus: Mapped[float | None] = mapped_column(Float)
    memory: Mapped[int | None] = mapped_column(BigInteger)
    gpus: Mapped[int | None] = mapped_column(Integer)
    servers: Mapped[int | None] = mapped_column(Integer)
    storage: Mapped[int | None] = mapped_column(BigInteger)


class ApiTokenRow(Base):
    """An API token's hash and what it may do. Ids name tokens in the API: never reused."""

    __tablename__ = "api_tokens"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # The first characters of the token, to find the row; the rest is only hashed.
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    token_hash: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[str] = mapped_column(Text, default="")
    note: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[datetime]
    expires: Mapped[datetime | None]
    last_used: Mapped[datetime | None]


class AuditRow(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime]
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255), default="")
    outcome: Mapped[str] = mapped_column(String(16), default="ok")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class OidcIdentityRow(Base):
    """A person at an OpenID Connect provider (issuer + subject) and the user they log in as."""

    __tablename__ = "oidc_identities"
    __table_args__ = (
        UniqueConstraint("issuer", "subject", name="uq_oidc_identities_issuer_subject"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    issuer: Mapped[str] = mapped_column(String(512))
    # The provider's stable id of the person ("sub"), never the name, which can change.
    subject: Mapped[str] = mapped_column(String(255))
    # Who made the link: NULL when the first login created the account.
    linked_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created: Mapped[datetime]
    last_login: Mapped[datetime | None]
