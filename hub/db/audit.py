"""SQL storage of the audit log; implements ``hub.domain.audit.AuditLog``.

await SqlAuditLog(sessions).record(actor_id=1, action="user.create", target="alice")
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub.db.schema import AuditRow, UserRow
from hub.domain.audit import AuditEntry


class SqlAuditLog:
    """Audit entries as rows; written in their own short transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def record(
        self,
        *,
        actor_id: int | None,
        action: str,
        target: str = "",
        outcome: str = "ok",
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        async with self._sessions.begin() as s:
            s.add(
                AuditRow(
                    at=datetime.now(UTC),
                    actor_id=actor_id,
                    action=action[:64],
                    target=target[:255],
                    outcome=outcome[:16],
                    detail=dict(detail or {}),
                )
            )

    async def recent(self, limit: int = 100) -> list[AuditEntry]:
        return await self.page(limit=limit)

    async def page(
        self,
        *,
        action: str | None = None,
        actor: str | None = None,
        outcome: str | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[AuditEntry]:
        query = (
            select(AuditRow, UserRow.name)
            .outerjoin(UserRow, UserRow.id == AuditRow.actor_id)
            .order_by(AuditRow.id.desc())
            .limit(limit)
        )
        if action:
            query = query.where(AuditRow.action == action)
        if actor:
            query = query.where(UserRow.name == actor)
        if outcome:
            query = query.where(AuditRow.outcome == outcome)
        if before is not None:
            query = query.where(AuditRow.id < before)
        async with self._sessions() as s:
            rows = await s.execute(query)
            return [
                AuditEntry(
                    at=row.at,
                    actor=name,
                    action=row.action,
                    target=row.target,
                    outcome=row.outcome,
                    detail=dict(row.detail or {}),
                    id=row.id,
                )
                for row, name in rows
            ]

    async def actions(self) -> list[str]:
        async with self._sessions() as s:
            return list(
                await s.scalars(select(AuditRow.action).distinct().order_by(AuditRow.action))
            )
