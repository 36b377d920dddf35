"""SQL storage of quotas per user and per team.

await SqlQuotaRepo(sessions).set({"memory": 8 * GiB, "servers": 3}, user_id=7)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub.db.engine import writing
from hub.db.schema import MembershipRow, QuotaRow, ServerRow, TeamRow, UserRow
from hub.domain.quota_admin import QUOTA_FIELDS, QuotaAmounts, QuotaOverview, QuotaStanding
from hub.domain.quotas import Limits, Usage
from hub.domain.records import ACTIVE_STATES
from hub.domain.storage import StorageLimits, TeamStorage

FIELDS = QUOTA_FIELDS


class StorageFigures(Protocol):
    """Measured storage (``hub.domain.storage.StorageMeter``); ``None``: not measured yet."""

    def used_by(self, user_ids: Iterable[int], team_id: int | None = None) -> int | None: ...


class SqlQuotaRepo:
    """Quotas: one row per user or team; ``None`` in a field means no limit of its own."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        storage: StorageFigures | None = None,
    ) -> None:
        self._sessions = sessions
        self._storage = storage

    async def set(
        self,
        limits: Mapping[str, float | int | None],
        *,
        user_id: int | None = None,
        team_id: int | None = None,
        defaults: Mapping[str, float | int | None] | None = None,
    ) -> None:
        """Change the named fields, creating the row if needed.

        A new row starts from ``defaults`` (the hub's default quota, for a user), so
        that setting one limit does not silently lift the others.
        """
        owner = QuotaRow.user_id == user_id if user_id is not None else QuotaRow.team_id == team_id
        for _ in range(2):
            try:
                async with writing(self._sessions) as s:
                    row = await s.scalar(select(QuotaRow).where(owner))
                    if row is None:
                        row = QuotaRow(user_id=user_id, team_id=team_id)
                        for name, value in (defaults or {}).items():
                            setattr(row, name, value)
                        s.add(row)
                    for name, value in limits.items():
                        if name not in FIELDS:
                            raise ValueError(f"unknown quota field {name}")
                        setattr(row, name, value)
                    await s.flush()
                    return
            except IntegrityError:
                continue  # created concurrently; update it on the second pass
        raise RuntimeError("the quota row could not be written")

    async def limits_of(
        self, *, user_id: int | None = None, team_id: int | None = None
    ) -> Limits | None:
        owner = QuotaRow.user_id == user_id if user_id is not None else QuotaRow.team_id == team_id
        async with self._sessions() as s:
            row = await s.scalar(select(QuotaRow).where(owner))
            if row is None:
                return None
            return Limits(cpus=row.cpus, memory=row.memory, gpus=row.gpus, servers=row.servers)

    async def _usage(self, s: AsyncSession, user_ids: list[int]) -> Usage:
        active = [st.value for st in ACTIVE_STATES]
        row = (
            await s.execute(
                select(
                    func.coalesce(func.sum(ServerRow.cpus), 0),
                    func.coalesce(func.sum(ServerRow.memory), 0),
                    func.coalesce(func.sum(ServerRow.gpus), 0),
                    func.count(ServerRow.id),
                ).where(ServerRow.user_id.in_(user_ids), ServerRow.state.in_(active))
            )
        ).one()
        return Usage(cpus=float(row[0]), memory=int(row[1]), gpus=int(row[2]), servers=int(row[3]))

    async def describe(
        self, *, user_id: int | None = None, team_id: int | None = None
    ) -> QuotaStanding:
        """A quota's limits (``None``: none of its own) beside what is used now."""
        owner = QuotaRow.user_id == user_id if user_id is not None else QuotaRow.team_id == team_id
        async with self._sessions() as s:
            row = await s.scalar(select(QuotaRow).where(owner))
            if user_id is not None:
                members = [user_id]
            else:
                members = list(
                    await s.scalars(
                        select(MembershipRow.user_id).where(MembershipRow.team_id == team_id)
                    )
                )
            usage = await self._usage(s, members)
        storage = self._storage.used_by(members, team_id) if self._storage is not None else None
        limits = (
            QuotaAmounts(
                cpus=row.cpus,
                memory=row.memory,
                gpus=row.gpus,
                servers=row.servers,
                storage=row.storage,
            )
            if row is not None
            else QuotaAmounts()
        )
        used = QuotaAmounts(
            cpus=usage.cpus,
            memory=usage.memory,
            gpus=usage.gpus,
            servers=usage.servers,
            storage=storage,
        )
        return QuotaStanding(limits=limits, used=used)

    async def storage_limits(self, user_id: int, *, default: int | None) -> StorageLimits:
        """The user's storage limit (``default`` without a quota row) and their teams'."""
        async with self._sessions() as s:
            row = await s.scalar(select(QuotaRow).where(QuotaRow.user_id == user_id))
            teams = (
                await s.execute(
                    select(TeamRow.id, TeamRow.name, QuotaRow.storage)
                    .join(MembershipRow, MembershipRow.team_id == TeamRow.id)
                    .outerjoin(QuotaRow, QuotaRow.team_id == TeamRow.id)
                    .where(MembershipRow.user_id == user_id)
                    .order_by(TeamRow.name)
                )
            ).all()
            members: dict[int, set[int]] = {team_id: set() for team_id, _, _ in teams}
            for team_id, member in await s.execute(
                select(MembershipRow.team_id, MembershipRow.user_id).where(
                    MembershipRow.team_id.in_(list(members))
                )
            ):
                members[team_id].add(member)
        return StorageLimits(
            user=row.storage if row is not None else default,
            teams=tuple(
                TeamStorage(team_id, name, limit, frozenset(members[team_id]))
                for team_id, name, limit in teams
            ),
        )

    async def overview(self) -> QuotaOverview:
        """Every user's and every team's quota and use, for the admin console."""
        async with self._sessions() as s:
            users = list(
                (await s.execute(select(UserRow.id, UserRow.name).order_by(UserRow.name))).all()
            )
            teams = list(
                (await s.execute(select(TeamRow.id, TeamRow.name).order_by(TeamRow.name))).all()
            )
        return QuotaOverview(
            users={name: await self.describe(user_id=uid) for uid, name in users},
            teams={name: await self.describe(team_id=tid) for tid, name in teams},
        )
