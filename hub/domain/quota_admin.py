"""Admins' changes to quotas, and quotas as they are shown: limits beside what is used.

    admin = QuotaAdmin(store=quotas, accounts=accounts, teams=teams, audit=audit,
                       user_default=QuotaAmounts(cpus=4, memory=16 * GiB, servers=3))
    standing = await admin.set(root, "teams", "risk", {"memory": 8 * GiB, "servers": 6})
    standing.limits.memory, standing.used.servers        # 8 GiB, 0

A user's quota row starts from the hub's default quota, so setting one limit of
a user does not lift the others; a team's starts with no limits. Every change
goes to the audit log. The API and the admin console both come through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

from hub.domain.accounts import Accounts, TeamDirectory, User
from hub.domain.audit import AuditLog
from hub.domain.errors import NotFound
from hub.domain.quotas import Limits
from hub.domain.resources import format_memory

QUOTA_FIELDS = ("cpus", "memory", "gpus", "servers", "storage")
_SIZES = frozenset({"memory", "storage"})
QuotaKind = Literal["users", "teams"]


def quota_kind(kind: str) -> QuotaKind:
    """``users`` or ``teams``, as a path names whose quota it is; else ``NotFound``."""
    if kind == "users":
        return "users"
    if kind == "teams":
        return "teams"
    raise NotFound(f"no quota kind {kind[:20]!r}: users or teams")


@dataclass(frozen=True)
class QuotaAmounts:
    """One figure per quota field: CPUs in cores, memory and storage in bytes.

    As limits, ``None`` is no limit of its own; as use, storage ``None`` is not
    measured yet.
    """

    cpus: float | None = None
    memory: int | None = None
    gpus: int | None = None
    servers: int | None = None
    storage: int | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        """``{"cpus": ..., "memory": ..., ...}`` in field order."""
        return asdict(self)

    def describe(self) -> str:
        """``cpus 4, memory 16 GiB, servers 3`` (unset figures are left out)."""
        parts = []
        for name, value in self.as_dict().items():
            if value is not None:
                shown = format_memory(int(value)) if name in _SIZES else f"{value:g}"
                parts.append(f"{name} {shown}")
        return ", ".join(parts) or "no limits of its own"


@dataclass(frozen=True)
class QuotaStanding:
    """A user's or team's own limits beside what they hold now."""

    limits: QuotaAmounts
    used: QuotaAmounts


@dataclass(frozen=True)
class QuotaOverview:
    """Every user's and every team's standing, by name."""

    users: Mapping[str, QuotaStanding] = field(default_factory=dict)
    teams: Mapping[str, QuotaStanding] = field(default_factory=dict)


class QuotaStore(Protocol):
    """Where quotas are kept (``hub.db.quotas.SqlQuotaRepo``)."""

    async def set(
        self,
        limits: Mapping[str, float | int | None],
        *,
        user_id: int | None = None,
        team_id: int | None = None,
        defaults: Mapping[str, float | int | None] | None = None,
    ) -> None:
        """Change the named fields; a new row starts from ``defaults``."""

    async def describe(
        self, *, user_id: int | None = None, team_id: int | None = None
    ) -> QuotaStanding: ...

    async def overview(self) -> QuotaOverview: ...

    async def limits_of(
        self, *, user_id: int | None = None, team_id: int | None = None
    ) -> Limits | None: ...


class QuotaAdmin:
    """Reads and changes quotas by owner name, applying the default and auditing."""

    def __init__(
        self,
        *,
        store: QuotaStore,
        accounts: Accounts,
        teams: TeamDirectory,
        audit: AuditLog,
        user_default: QuotaAmounts,
    ) -> None:
        self._store = store
        self._accounts = accounts
        self._teams = teams
        self._audit = audit
        self.user_default = user_default

    async def _owner(self, kind: QuotaKind, name: str) -> dict[str, int]:
        if kind == "users":
            return {"user_id": (await self._accounts.get(name)).id}
        team_id = await self._teams.find(name)
        if team_id is None:
            raise NotFound(f"no team {name!r}")
        return {"team_id": team_id}

    async def describe(self, kind: QuotaKind, name: str) -> QuotaStanding:
        """The named user's or team's standing, or ``NotFound``."""
        return await self._store.describe(**await self._owner(kind, name))

    async def overview(self) -> QuotaOverview:
        """Everyone's standing, for the console and ``GET /hub/api/quotas``."""
        return await self._store.overview()

    async def set(
        self,
        actor: User | None,
        kind: QuotaKind,
        name: str,
        limits: Mapping[str, float | int | None],
    ) -> QuotaStanding:
        """Change some limits of a user or team (already checked); audited.

        ``actor`` is ``None`` for the operator at the command line.
        """
        owner = await self._owner(kind, name)
        defaults = self.user_default.as_dict() if kind == "users" else None
        await self._store.set(limits, defaults=defaults, **owner)
        await self._audit.record(
            actor_id=actor.id if actor else None,
            action="quota.set",
            target=f"{kind[:-1]}:{name}",
            detail=dict(limits),
        )
        return await self._store.describe(**owner)
