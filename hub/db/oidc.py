"""SQL storage of OpenID Connect identities: implements ``hub.domain.oidc.IdentityRepo``.

repo = SqlIdentityRepo(sessions)
user = await repo.user_of("https://id.example.org", "248289761001")
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub.db.accounts import _user
from hub.db.engine import writing
from hub.db.schema import OidcIdentityRow, UserRow
from hub.domain.accounts import User
from hub.domain.errors import Conflict


class SqlIdentityRepo:
    """(issuer, subject) → user links; each call is one short transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def user_of(self, issuer: str, subject: str) -> User | None:
        async with self._sessions() as s:
            row = await s.scalar(
                select(UserRow)
                .join(OidcIdentityRow, OidcIdentityRow.user_id == UserRow.id)
                .where(OidcIdentityRow.issuer == issuer, OidcIdentityRow.subject == subject)
            )
            return _user(row) if row is not None else None

    async def create_linked_user(
        self, name: str, issuer: str, subject: str, *, is_admin: bool, at: datetime
    ) -> User:
        try:
            async with writing(self._sessions) as s:
                # No password: this user signs in only through the provider.
                user = UserRow(
                    name=name,
                    password_hash=None,
                    is_admin=is_admin,
                    disabled=False,
                    must_change_password=False,
                    created=at,
                    last_login=at,
                )
                s.add(user)
                await s.flush()
                s.add(OidcIdentityRow(user_id=user.id, issuer=issuer, subject=subject, created=at))
                await s.flush()
                return _user(user)
        except IntegrityError:
            raise Conflict(f"user {name!r} already exists, or this sign-in is linked") from None

    async def link(
        self, issuer: str, subject: str, user_id: int, *, linked_by: int | None, at: datetime
    ) -> None:
        try:
            async with writing(self._sessions) as s:
                s.add(
                    OidcIdentityRow(
                        user_id=user_id,
                        issuer=issuer,
                        subject=subject,
                        linked_by=linked_by,
                        created=at,
                    )
                )
        except IntegrityError:
            raise Conflict("this sign-in is already linked to an account") from None

    async def touch(self, issuer: str, subject: str, at: datetime) -> None:
        async with writing(self._sessions) as s:
            row = await s.scalar(
                select(OidcIdentityRow).where(
                    OidcIdentityRow.issuer == issuer, OidcIdentityRow.subject == subject
                )
            )
            if row is not None:
                row.last_login = at
                await s.execute(
                    update(UserRow).where(UserRow.id == row.user_id).values(last_login=at)
                )
