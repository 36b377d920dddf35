"""SQL storage of servers; implements ``hub.domain.records.WorkspaceRepo``.

    repo = SqlServerRepo(sessions)
    record, fresh = await repo.claim(claim, decide)   # admission runs inside

``claim`` serializes admissions: on SQLite with ``BEGIN IMMEDIATE`` (one
writer at a time, across processes), on PostgreSQL with a transaction-scoped
advisory lock. Usage is summed inside that transaction, so twenty racing
launches with room for three give exactly three servers.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub.db.engine import IMMEDIATE, writing
from hub.db.schema import EnvironmentRow, MembershipRow, QuotaRow, ServerRow, TeamRow, UserRow
from hub.domain.quotas import Limits, Usage
from hub.domain.records import (
    ACTIVE_STATES,
    AdmissionView,
    Claim,
    Decide,
    ServerRecord,
    TeamUse,
)
from hub.domain.resources import Resources
from hub.domain.servers import Endpoint, ServerState, allowed_from, can_move

log = logging.getLogger(__name__)

ADMISSION_LOCK = 0x1ABD0C  # advisory lock key for PostgreSQL
_ACTIVE = [s.value for s in ACTIVE_STATES]


def _record(row: ServerRow, user_name: str, env_name: str | None) -> ServerRecord:
    return ServerRecord(
        id=row.id,
        user_id=row.user_id,
        user_name=user_name,
        name=row.name,
        environment=env_name or "",
        environment_id=row.environment_id,
        state=ServerState(row.state),
        resources=Resources(cpus=row.cpus or 1.0, memory=row.memory or 1, gpus=row.gpus),
        gpu_ids=tuple(g for g in row.gpu_ids.split(",") if g),
        container_id=row.container_id,
        container_name=row.container_name,
        host=row.host,
        port=row.port,
        secret=row.secret,
        image_digest=row.image_digest,
        user_options=dict(row.user_options or {}),
        stopped_reason=row.stopped_reason,
        created=row.created,
        started=row.started,
        last_activity=row.last_activity,
    )


def _values(states: frozenset[ServerState]) -> list[str]:
    return sorted(s.value for s in states)


def _limits(row: QuotaRow | None) -> Limits | None:
    if row is None:
        return None
    return Limits(cpus=row.cpus, memory=row.memory, gpus=row.gpus, servers=row.servers)


def _usage(rows: list[ServerRow]) -> Usage:
    return Usage(
        cpus=sum(r.cpus for r in rows),
        memory=sum(r.memory for r in rows),
        gpus=sum(r.gpus for r in rows),
        servers=len(rows),
    )


class SqlServerRepo:
    """Servers in SQLAlchemy; short transactions, one serialized path for admission."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    def _select(self) -> Any:  # Select's generic form differs between SQLAlchemy 2.0 and 2.1
        return (
            select(ServerRow, UserRow.name, EnvironmentRow.name)
            .join(UserRow, UserRow.id == ServerRow.user_id)
            .outerjoin(EnvironmentRow, EnvironmentRow.id == ServerRow.environment_id)
        )

    async def _view(self, s: AsyncSession, user_id: int) -> AdmissionView:
        active = list(
            (await s.scalars(select(ServerRow).where(ServerRow.state.in_(_ACTIVE)))).all()
        )
        quota = await s.scalar(select(QuotaRow).where(QuotaRow.user_id == user_id))
        teams = (
            await s.execute(
                select(TeamRow.id, TeamRow.name)
                .join(MembershipRow, MembershipRow.team_id == TeamRow.id)
                .where(MembershipRow.user_id == user_id)
            )
        ).all()
        team_uses = []
        for team_id, team_name in teams:
            members = set(
                (
                    await s.scalars(
                        select(MembershipRow.user_id).where(MembershipRow.team_id == team_id)
                    )
                ).all()
            )
            team_quota = await s.scalar(select(QuotaRow).where(QuotaRow.team_id == team_id))
            team_uses.append(
                TeamUse(
                    name=team_name,
                    limits=_limits(team_quota),
                    usage=_usage([r for r in active if r.user_id in members]),
                )
            )
        gpus: Counter[str] = Counter()
        for row in active:
            gpus.update(g for g in row.gpu_ids.split(",") if g)
        return AdmissionView(
            user_limits=_limits(quota),
            user_usage=_usage([r for r in active if r.user_id == user_id]),
            teams=tuple(team_uses),
            host_usage=_usage(active),
            gpus_in_use=dict(gpus),
        )

    async def admission_view(self, user_id: int) -> AdmissionView:
        async with self._sessions() as s:
            return await self._view(s, user_id)

    async def claim(self, claim: Claim, decide: Decide) -> tuple[ServerRecord, bool]:
        async with self._sessions() as s, s.begin():
            # The transaction's first connection: these options shape its BEGIN.
            conn = await s.connection(execution_options=IMMEDIATE)
            if conn.dialect.name == "postgresql":
                await s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADMISSION_LOCK})
            row = await s.scalar(
                select(ServerRow).where(
                    ServerRow.user_id == claim.user_id, ServerRow.name == claim.name
                )
            )
            # Launched only from a state the transitions allow (stopped or failed).
            fresh = row is None or (
                row.state != ServerState.STARTING.value
                and can_move(ServerState(row.state), ServerState.STARTING)
            )
            if fresh:
                gpu_ids = decide(await self._view(s, claim.user_id))
                if row is None:
                    row = ServerRow(
                        user_id=claim.user_id, name=claim.name, created=datetime.now(UTC)
                    )
                    s.add(row)
                row.environment_id = claim.environment_id
                row.image_digest = claim.image_digest
                row.state = ServerState.STARTING.value
                row.cpus = claim.resources.cpus
                row.memory = claim.resources.memory
                row.gpus = claim.resources.gpus
                row.gpu_ids = ",".join(gpu_ids)
                row.secret = claim.secret
                row.user_options = dict(claim.user_options)
                row.stopped_reason = None
                row.started = None
                row.host = row.port = None
            assert row is not None
            await s.flush()
            server_id = row.id
        record = await self.by_id(server_id)
        assert record is not None
        return record, fresh

    async def _one(self, *where: ColumnElement[bool]) -> ServerRecord | None:
        async with self._sessions() as s:
            found = (await s.execute(self._select().where(*where))).first()
            return _record(found[0], found[1], found[2]) if found else None

    async def get(self, user_id: int, name: str) -> ServerRecord | None:
        return await self._one(ServerRow.user_id == user_id, ServerRow.name == name)

    async def by_id(self, server_id: int) -> ServerRecord | None:
        return await self._one(ServerRow.id == server_id)

    async def _many(self, *where: ColumnElement[bool]) -> list[ServerRecord]:
        async with self._sessions() as s:
            query = self._select().where(*where).order_by(ServerRow.user_id, ServerRow.name)
            return [_record(r[0], r[1], r[2]) for r in (await s.execute(query)).all()]

    async def of_user(self, user_id: int) -> list[ServerRecord]:
        return await self._many(ServerRow.user_id == user_id)

    async def all(self) -> list[ServerRecord]:
        return await self._many()

    async def mark_running(self, server_id: int, endpoint: Endpoint, at: datetime) -> None:
        """Running at ``endpoint``, if ``TRANSITIONS`` allow it from the current state."""
        async with self._sessions.begin() as s:
            result = await s.execute(
                update(ServerRow)
                .where(ServerRow.id == server_id)
                .where(ServerRow.state.in_(_values(allowed_from(ServerState.RUNNING))))
                .values(
                    state=ServerState.RUNNING.value,
                    container_id=endpoint.container_id,
                    container_name=endpoint.container_name,
                    host=endpoint.host,
                    port=endpoint.port,
                    started=at,
                    last_activity=at,
                    stopped_reason=None,
                )
            )
        if not getattr(result, "rowcount", 0):
            log.warning("server %s was not marked running: it has moved on", server_id)

    async def mark(
        self,
        server_id: int,
        state: ServerState,
        *,
        reason: str | None = None,
        forget_container: bool = False,
        expect: frozenset[ServerState] | None = None,
    ) -> bool:
        values: dict[str, object] = {"state": state.value}
        if reason is not None or state in (ServerState.STARTING, ServerState.RUNNING):
            values["stopped_reason"] = reason
        if state not in ACTIVE_STATES:
            values["host"] = None
            values["port"] = None
            values["gpu_ids"] = ""
        if forget_container:
            values["container_id"] = None
            values["container_name"] = None
        allowed = allowed_from(state) if expect is None else allowed_from(state) & expect
        query = (
            update(ServerRow)
            .where(ServerRow.id == server_id)
            .where(ServerRow.state.in_(_values(allowed)))
        )
        async with self._sessions.begin() as s:
            result = await s.execute(query.values(**values))
            moved = bool(getattr(result, "rowcount", 0))
        if not moved and expect is None:
            log.info("server %s was not marked %s: not allowed from its state", server_id, state)
        return moved

    async def record_activity(self, seen: Mapping[int, datetime]) -> None:
        if not seen:
            return
        async with self._sessions.begin() as s:
            for server_id, at in seen.items():
                await s.execute(
                    update(ServerRow)
                    .where(ServerRow.id == server_id)
                    .where((ServerRow.last_activity.is_(None)) | (ServerRow.last_activity < at))
                    .values(last_activity=at)
                )

    async def delete(self, server_id: int) -> None:
        async with writing(self._sessions) as s:
            row = await s.get(ServerRow, server_id)
            if row is not None:
                await s.delete(row)

    async def count_active(self) -> int:
        async with self._sessions() as s:
            n = await s.scalar(
                select(func.count()).select_from(ServerRow).where(ServerRow.state.in_(_ACTIVE))
            )
            return int(n or 0)
