"""SQL storage of users and sessions: implements ``hub.domain.accounts.AccountRepo``.

repo = SqlAccountRepo(async_sessionmaker(engine, expire_on_commit=False))
user = await repo.user_by_name("alice")
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub.db.schema import ApiTokenRow, SessionRow, UserRow
from hub.domain.accounts import TokenInfo, User
from hub.domain.errors import Conflict


def _user(row: UserRow) -> User:
    return User(
        id=row.id,
        name=row.name,
        is_admin=row.is_admin,
        disabled=row.disabled,
        must_change_password=row.must_change_password,
        last_login=row.last_login,
    )


def _token(row: ApiTokenRow) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        user_id=row.user_id,
        note=row.note,
        scopes=frozenset(x for x in row.scopes.split(",") if x),
        created=row.created,
        last_used=row.last_used,
        expires=row.expires,
    )


def _session_key(session_id: str) -> str:
    # Only a hash of the session id is stored: a leaked database opens no session.
    return hashlib.sha256(session_id.encode()).hexdigest()


class SqlAccountRepo:
    """Users and sessions in SQLAlchemy; each call is one short transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def add_user(
        self, name: str, password_hash: str | None, *, is_admin: bool, must_change: bool
    ) -> User:
        row = UserRow(
            name=name,
            password_hash=password_hash,
            is_admin=is_admin,
            disabled=False,
            must_change_password=must_change,
            created=datetime.now(UTC),
        )
        try:
            async with self._sessions.begin() as s:
                s.add(row)
                await s.flush()
                return _user(row)
        except IntegrityError:
            raise Conflict(f"user {name!r} already exists") from None

    async def user_by_name(self, name: str) -> User | None:
        async with self._sessions() as s:
            row = (
                await s.execute(select(UserRow).where(UserRow.name == name))
            ).scalar_one_or_none()
            return _user(row) if row else None

    async def user_by_id(self, user_id: int) -> User | None:
        async with self._sessions() as s:
            row = await s.get(UserRow, user_id)
            return _user(row) if row else None

    async def password_hash(self, user_id: int) -> str | None:
        async with self._sessions() as s:
            row = await s.get(UserRow, user_id)
            return row.password_hash if row else None

    async def set_password(self, user_id: int, password_hash: str, *, must_change: bool) -> None:
        async with self._sessions.begin() as s:
            await s.execute(
                update(UserRow)
                .where(UserRow.id == user_id)
                .values(password_hash=password_hash, must_change_password=must_change)
            )

    async def count_admins(self) -> int:
        async with self._sessions() as s:
            count = await s.scalar(
                select(func.count()).select_from(UserRow).where(UserRow.is_admin.is_(True))
            )
            return int(count or 0)

    async def record_login(self, user_id: int, at: datetime) -> None:
        async with self._sessions.begin() as s:
            await s.execute(update(UserRow).where(UserRow.id == user_id).values(last_login=at))

    async def add_session(
        self, session_id: str, user_id: int, created: datetime, expires: datetime
    ) -> None:
        async with self._sessions.begin() as s:
            # Expired sessions are swept here, on the rare write, not on every read.
            await s.execute(delete(SessionRow).where(SessionRow.expires < created))
            s.add(
                SessionRow(
                    id=_session_key(session_id), user_id=user_id, created=created, expires=expires
                )
            )

    async def session_user(self, session_id: str, now: datetime) -> User | None:
        async with self._sessions() as s:
            row = (
                await s.execute(
                    select(UserRow)
                    .join(SessionRow, SessionRow.user_id == UserRow.id)
                    .where(SessionRow.id == _session_key(session_id), SessionRow.expires > now)
                )
            ).scalar_one_or_none()
            return _user(row) if row else None

    async def delete_session(self, session_id: str) -> None:
        async with self._sessions.begin() as s:
            await s.execute(delete(SessionRow).where(SessionRow.id == _session_key(session_id)))

    async def delete_sessions_of(self, user_id: int, *, keep: str | None = None) -> None:
        query = delete(SessionRow).where(SessionRow.user_id == user_id)
        if keep is not None:
            query = query.where(SessionRow.id != _session_key(keep))
        async with self._sessions.begin() as s:
            await s.execute(query)

    async def add_token(
        self,
        user_id: int,
        prefix: str,
        token_hash: str,
        scopes: frozenset[str],
        note: str,
        created: datetime,
        expires: datetime | None,
    ) -> int:
        row = ApiTokenRow(
            user_id=user_id,
            prefix=prefix,
            token_hash=token_hash,
            scopes=",".join(sorted(scopes)),
            note=note,
            created=created,
            expires=expires,
        )
        async with self._sessions.begin() as s:
            s.add(row)
            await s.flush()
            return row.id

    async def token(self, prefix: str) -> tuple[User, str, TokenInfo] | None:
        async with self._sessions() as s:
            found = (
                await s.execute(
                    select(ApiTokenRow, UserRow)
                    .join(UserRow, UserRow.id == ApiTokenRow.user_id)
                    .where(ApiTokenRow.prefix == prefix)
                )
            ).first()
            if found is None:
                return None
            token, user = found[0], found[1]
            return _user(user), token.token_hash, _token(token)

    async def tokens_of(self, user_id: int) -> list[TokenInfo]:
        async with self._sessions() as s:
            rows = await s.scalars(
                select(ApiTokenRow).where(ApiTokenRow.user_id == user_id).order_by(ApiTokenRow.id)
            )
            return [_token(r) for r in rows]

    async def delete_token(self, user_id: int, token_id: int) -> bool:
        async with self._sessions.begin() as s:
            done = await s.execute(
                delete(ApiTokenRow).where(
                    ApiTokenRow.user_id == user_id, ApiTokenRow.id == token_id
                )
            )
            return bool(getattr(done, "rowcount", 0))

    async def delete_tokens_of(self, user_id: int) -> int:
        async with self._sessions.begin() as s:
            done = await s.execute(delete(ApiTokenRow).where(ApiTokenRow.user_id == user_id))
            return int(getattr(done, "rowcount", 0) or 0)

    async def touch_token(self, prefix: str, at: datetime) -> None:
        async with self._sessions.begin() as s:
            await s.execute(
                update(ApiTokenRow).where(ApiTokenRow.prefix == prefix).values(last_used=at)
            )

    async def all_users(self) -> list[User]:
        async with self._sessions() as s:
            return [_user(r) for r in await s.scalars(select(UserRow).order_by(UserRow.name))]

    async def set_flags(
        self, user_id: int, *, is_admin: bool | None = None, disabled: bool | None = None
    ) -> None:
        values: dict[str, bool] = {}
        if is_admin is not None:
            values["is_admin"] = is_admin
        if disabled is not None:
            values["disabled"] = disabled
        if values:
            async with self._sessions.begin() as s:
                await s.execute(update(UserRow).where(UserRow.id == user_id).values(**values))
