"""The audit log: every admin action and every refusal, with who, what and why.

await audit.record(actor_id=1, action="quota.set", target="team:risk",
                   detail={"memory": 8 * GiB})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class AuditEntry:
    """One recorded event."""

    at: datetime
    actor: str | None
    action: str
    target: str
    outcome: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    id: int = 0


class AuditLog(Protocol):
    """Where audit entries go (the database)."""

    async def record(
        self,
        *,
        actor_id: int | None,
        action: str,
        target: str = "",
        outcome: str = "ok",
        detail: Mapping[str, Any] | None = None,
    ) -> None: ...

    async def recent(self, limit: int = 100) -> list[AuditEntry]: ...

    async def page(
        self,
        *,
        action: str | None = None,
        actor: str | None = None,
        outcome: str | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[AuditEntry]:
        """Entries newest first, older than id ``before``, matching the filters given."""

    async def actions(self) -> list[str]:
        """The distinct actions recorded so far, for a filter menu."""
