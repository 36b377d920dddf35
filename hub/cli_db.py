"""Database work behind CLI subcommands, wired the same way the hub wires it.

name, password = asyncio.run(add_user(settings, "alice", None, is_admin=False, team="risk"))
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import async_sessionmaker

from hub.config import Settings
from hub.db.accounts import SqlAccountRepo
from hub.db.audit import SqlAuditLog
from hub.db.engine import make_engine
from hub.db.migrate import upgrade
from hub.db.quotas import SqlQuotaRepo
from hub.db.teams import SqlTeamRepo
from hub.domain.accounts import Accounts, TokenInfo, check_scopes, check_team_name
from hub.domain.clock import SystemClock
from hub.domain.quota_admin import QuotaAdmin, QuotaKind
from hub.passwords import Argon2Hasher


async def add_user(
    settings: Settings, name: str, password: str | None, *, is_admin: bool, team: str | None
) -> tuple[str, str | None]:
    """Create a user (and join a team); return the name and any one-time password."""
    if team is not None:
        check_team_name(team)
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        accounts = Accounts(SqlAccountRepo(sessions), Argon2Hasher(), SystemClock())
        user, generated = await accounts.create_user(name, password, is_admin=is_admin)
        if team is not None:
            await SqlTeamRepo(sessions).join(user.id, team)
        return user.name, generated
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def _accounts(settings: Settings) -> AsyncIterator[Accounts]:
    """The hub's account rules over its migrated database, as the hub wires them."""
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        yield Accounts(
            SqlAccountRepo(sessions),
            Argon2Hasher(),
            SystemClock(),
            token_expiry_days=settings.hub.token_expiry_days,
        )
    finally:
        await engine.dispose()


async def create_token(
    settings: Settings, name: str, scopes: str | None, expires_in: float | None
) -> tuple[str, TokenInfo]:
    """Issue an API token for ``name``; it is returned once and only its hash is kept.

    Without ``expires_in``, ``hub.token_expiry_days`` applies.
    """
    async with _accounts(settings) as accounts:
        user = await accounts.get(name)
        return await accounts.issue_token(
            user,
            scopes=check_scopes(scopes),
            expires_in_days=expires_in,
            note="labdock token create",
        )


async def list_tokens(settings: Settings, name: str) -> list[TokenInfo]:
    """``name``'s API tokens, oldest first."""
    async with _accounts(settings) as accounts:
        return await accounts.tokens_of(await accounts.get(name))


async def revoke_tokens(settings: Settings, name: str, token_id: int | None) -> int:
    """Revoke ``name``'s token ``token_id`` (``None``: all of them); how many went."""
    async with _accounts(settings) as accounts:
        user = await accounts.get(name)
        if token_id is None:
            return await accounts.revoke_tokens(user)
        await accounts.revoke_token(user, token_id)
        return 1


async def reset_password(settings: Settings, name: str, *, revoke_tokens: bool) -> str:
    """Give ``name`` a one-time password; their sessions end (and tokens, if asked)."""
    async with _accounts(settings) as accounts:
        return await accounts.reset_password(await accounts.get(name), revoke_tokens=revoke_tokens)


async def set_quota(
    settings: Settings, *, user: str | None, team: str | None, limits: dict[str, float | int | None]
) -> str:
    """Set the given limits on a user's or a team's quota; return what it now says."""
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        admin = QuotaAdmin(
            store=SqlQuotaRepo(sessions),
            accounts=Accounts(SqlAccountRepo(sessions), Argon2Hasher(), SystemClock()),
            teams=SqlTeamRepo(sessions),
            audit=SqlAuditLog(sessions),
            user_default=settings.quota.amounts(),
        )
        kind: QuotaKind = "users" if user is not None else "teams"
        name = user if user is not None else team
        assert name is not None
        standing = await admin.set(None, kind, name, limits)
        return f"quota of {kind[:-1]} {name}: {standing.limits.describe()}"
    finally:
        await engine.dispose()
