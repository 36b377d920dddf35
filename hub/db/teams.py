"""SQL storage of teams and memberships.

await SqlTeamRepo(sessions).join(user_id=7, team="risk")   # creates 'risk' if new
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub.db.engine import writing
from hub.db.schema import MembershipRow, TeamRow, UserRow
from hub.domain.accounts import Membership, TeamSummary


class SqlTeamRepo:
    """Teams and who belongs to them."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def ensure(self, name: str) -> int:
        """The id of team ``name``, created if missing (safe under races)."""
        for _ in range(2):
            async with self._sessions() as s:
                found = await s.scalar(select(TeamRow.id).where(TeamRow.name == name))
                if found is not None:
                    return int(found)
            try:
                async with writing(self._sessions) as s:
                    row = TeamRow(name=name, created=datetime.now(UTC))
                    s.add(row)
                    await s.flush()
                    return row.id
            except IntegrityError:
                continue  # created concurrently: read it on the next pass
        raise RuntimeError(f"team {name!r} could not be created or found")

    async def find(self, name: str) -> int | None:
        """The id of team ``name``, if it exists."""
        async with self._sessions() as s:
            found = await s.scalar(select(TeamRow.id).where(TeamRow.name == name))
            return int(found) if found is not None else None

    async def join(self, user_id: int, team: str, role: str = "member") -> None:
        """Add a user to a team, creating the team if needed."""
        team_id = await self.ensure(team)
        async with writing(self._sessions) as s:
            if await s.get(MembershipRow, (user_id, team_id)) is None:
                s.add(MembershipRow(user_id=user_id, team_id=team_id, role=role))

    async def teams_of(self, user_id: int) -> list[str]:
        """Names of the teams a user belongs to."""
        async with self._sessions() as s:
            rows = await s.scalars(
                select(TeamRow.name)
                .join(MembershipRow, MembershipRow.team_id == TeamRow.id)
                .where(MembershipRow.user_id == user_id)
                .order_by(TeamRow.name)
            )
            return list(rows)

    async def team_ids_of(self, user_id: int) -> frozenset[int]:
        """Ids of the teams a user belongs to."""
        async with self._sessions() as s:
            rows = await s.scalars(
                select(MembershipRow.team_id).where(MembershipRow.user_id == user_id)
            )
            return frozenset(rows)

    async def memberships(self, user_id: int) -> list[Membership]:
        """The user's teams, with whether they may write the team volume."""
        async with self._sessions() as s:
            rows = await s.execute(
                select(TeamRow.id, TeamRow.name, MembershipRow.role)
                .join(MembershipRow, MembershipRow.team_id == TeamRow.id)
                .where(MembershipRow.user_id == user_id)
                .order_by(TeamRow.name)
            )
            return [Membership(team_id=i, team=n, writer=r == "writer") for i, n, r in rows]

    async def leave(self, user_id: int, team: str) -> None:
        """Take a user out of a team (the team and its quota stay)."""
        async with writing(self._sessions) as s:
            team_id = await s.scalar(select(TeamRow.id).where(TeamRow.name == team))
            if team_id is not None:
                await s.execute(
                    delete(MembershipRow).where(
                        MembershipRow.user_id == user_id, MembershipRow.team_id == team_id
                    )
                )

    async def all_teams(self) -> list[TeamSummary]:
        """Every team by name, with its members' names."""
        async with self._sessions() as s:
            teams = (await s.execute(select(TeamRow.id, TeamRow.name).order_by(TeamRow.name))).all()
            pairs = (
                await s.execute(
                    select(MembershipRow.team_id, UserRow.name)
                    .join(UserRow, UserRow.id == MembershipRow.user_id)
                    .order_by(UserRow.name)
                )
            ).all()
        members: dict[int, list[str]] = {}
        for team_id, name in pairs:
            members.setdefault(team_id, []).append(name)
        return [TeamSummary(id=i, name=n, members=tuple(members.get(i, ()))) for i, n in teams]
