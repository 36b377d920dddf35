"""Storage quotas: what each user's and team's volumes hold, against their limits.

    meter = StorageMeter(volume_meter, clock=SystemClock())
    await meter.measure()                       # on a schedule, see ``StorageMeter.run``
    quota = StorageQuota(meter, limits=quota_repo, default_limit=20 * GiB)
    (await quota.report(alice)).warning
    # 'your home volume uses 18.5 GiB of your 20 GiB storage quota (92%); free space ...'
    await quota.admit(alice)
    # QuotaExceeded: home volume uses 21 GiB of your 20 GiB storage quota; free space or ...

Usage is a measured figure, not a reservation: a launch does not change it, so
the check runs before admission's transaction and reads the latest figures. A
user's storage is their home volume; a team's is its members' home volumes plus
the team's own volumes. A failed measurement keeps the last figures and says
when they were taken; users never measured are not refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from hub.domain.accounts import User
from hub.domain.clock import Clock
from hub.domain.errors import QuotaExceeded
from hub.domain.resources import format_memory

log = logging.getLogger(__name__)

WARN_AT = 0.9


@dataclass(frozen=True)
class VolumeUse:
    """One volume's measured size in bytes, and whom it counts against."""

    name: str
    used: int
    user_id: int | None = None
    team_id: int | None = None


class VolumeMeter(Protocol):
    """Measures every volume of this hub (the Docker backend runs a ``du`` helper)."""

    async def measure(self) -> list[VolumeUse]:
        """Every volume of this hub with its size; raises when the engine cannot tell."""

    async def close(self) -> None:
        """End any measurement under way, and start no more."""


@dataclass(frozen=True)
class Snapshot:
    """The latest figures: ``measured`` is when they were taken (``None``: never).

    ``error`` says why the latest attempt failed, at ``attempted``; the figures
    are then those of the last attempt that worked.
    """

    volumes: tuple[VolumeUse, ...] = ()
    measured: datetime | None = None
    attempted: datetime | None = None
    error: str | None = None

    def used_by(self, user_ids: Iterable[int], team_id: int | None = None) -> int | None:
        """Bytes held by these users' home volumes (plus the team's volumes), if measured."""
        if self.measured is None:
            return None
        users = set(user_ids)
        return sum(
            v.used
            for v in self.volumes
            if (v.user_id is not None and v.user_id in users)
            or (team_id is not None and v.team_id == team_id)
        )


class StorageMeter:
    """Holds the latest volume figures and refreshes them on a schedule."""

    def __init__(self, meter: VolumeMeter, *, clock: Clock) -> None:
        self._meter = meter
        self._clock = clock
        self._lock = asyncio.Lock()
        self.snapshot = Snapshot()

    async def measure(self) -> Snapshot:
        """Measure now; on failure keep the last figures and note the error."""
        async with self._lock:
            started = self._clock.now()
            try:
                volumes = await self._meter.measure()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                log.warning("measuring storage failed: %s", message)
                last = self.snapshot
                self.snapshot = Snapshot(last.volumes, last.measured, started, message)
            else:
                self.snapshot = Snapshot(tuple(volumes), started, started, None)
            return self.snapshot

    async def run(self, interval: float) -> None:
        """Measure every ``interval`` seconds, for ever (cancel the task to stop)."""
        while True:
            await self.measure()
            await asyncio.sleep(interval)

    def used_by(self, user_ids: Iterable[int], team_id: int | None = None) -> int | None:
        """See ``Snapshot.used_by``."""
        return self.snapshot.used_by(user_ids, team_id)


@dataclass(frozen=True)
class TeamStorage:
    """A team's storage limit (``None``: none) and who its members are."""

    team_id: int
    name: str
    limit: int | None
    members: frozenset[int]


@dataclass(frozen=True)
class StorageLimits:
    """The storage limits that apply to one user: their own and their teams'."""

    user: int | None
    teams: tuple[TeamStorage, ...] = ()


class StorageLimitSource(Protocol):
    """Where storage limits are kept (the quotas table)."""

    async def storage_limits(self, user_id: int, *, default: int | None) -> StorageLimits:
        """The user's own limit (``default`` without a quota row) and their teams'."""


@dataclass(frozen=True)
class Standing:
    """Used bytes against a limit, as a report shows them."""

    used: int | None
    quota: int | None
    warning: str | None = None

    @property
    def fraction(self) -> float | None:
        if self.used is None or self.quota is None:
            return None
        return fraction_of(self.used, self.quota)


@dataclass(frozen=True)
class StorageReport:
    """What a user is shown: their home volume, and each of their teams."""

    user: Standing
    teams: tuple[tuple[str, Standing], ...] = ()
    measured: datetime | None = None
    error: str | None = None
    refusal: str | None = None


def fraction_of(used: int, quota: int) -> float:
    """``used / quota``; a zero quota is full as soon as anything is stored."""
    if quota == 0:
        return 0.0 if used == 0 else float("inf")
    return used / quota


def _percent(used: int, quota: int) -> str:
    f = fraction_of(used, quota)
    return "over 100%" if f == float("inf") else f"{f:.0%}"


def user_warning(used: int, quota: int) -> str | None:
    """The warning at 90% of one's own quota (and above it), else ``None``."""
    if used < WARN_AT * quota or (quota == 0 and used == 0):
        return None
    if used > quota:
        return user_refusal(used, quota)
    return (
        f"your home volume uses {format_memory(used)} of your {format_memory(quota)} "
        f"storage quota ({_percent(used, quota)}); free space soon: over the quota, "
        "new servers cannot be launched"
    )


def team_warning(team: str, used: int, quota: int) -> str | None:
    """The warning at 90% of a team's quota (and above it), else ``None``."""
    if used < WARN_AT * quota or (quota == 0 and used == 0):
        return None
    if used > quota:
        return team_refusal(team, used, quota)
    return (
        f"team '{team}' volumes use {format_memory(used)} of the team's "
        f"{format_memory(quota)} storage quota ({_percent(used, quota)}); free space soon: "
        "over the quota, the team's members cannot launch new servers"
    )


def user_refusal(used: int, quota: int) -> str:
    """Why a launch is refused when one's home volume is over one's quota."""
    return (
        f"home volume uses {format_memory(used)} of your {format_memory(quota)} "
        "storage quota; free space or ask an admin"
    )


def team_refusal(team: str, used: int, quota: int) -> str:
    """Why a launch is refused when a team's volumes are over the team's quota."""
    return (
        f"team '{team}' volumes (members' homes and team volumes) use {format_memory(used)} "
        f"of the team's {format_memory(quota)} storage quota; free space or ask an admin"
    )


def judge(snapshot: Snapshot, user_id: int, limits: StorageLimits) -> StorageReport:
    """Compare the figures with the limits: standings, warnings, and a refusal if over."""
    refusals: list[str] = []
    used = snapshot.used_by([user_id])
    warning = None
    if used is not None and limits.user is not None:
        warning = user_warning(used, limits.user)
        if used > limits.user:
            refusals.append(user_refusal(used, limits.user))
    teams: list[tuple[str, Standing]] = []
    for team in limits.teams:
        team_used = snapshot.used_by(team.members, team.team_id)
        team_warn = None
        if team_used is not None and team.limit is not None:
            team_warn = team_warning(team.name, team_used, team.limit)
            if team_used > team.limit:
                refusals.append(team_refusal(team.name, team_used, team.limit))
        teams.append((team.name, Standing(team_used, team.limit, team_warn)))
    return StorageReport(
        user=Standing(used, limits.user, warning),
        teams=tuple(teams),
        measured=snapshot.measured,
        error=snapshot.error,
        refusal=refusals[0] if refusals else None,
    )


class StorageQuota:
    """The storage rules over the meter's figures: reports for people, refusals for launches."""

    def __init__(
        self, meter: StorageMeter, *, limits: StorageLimitSource, default_limit: int | None
    ) -> None:
        self.meter = meter
        self.limits = limits
        self.default_limit = default_limit

    async def report(self, user: User) -> StorageReport:
        """The user's standing (and their teams'), with a warning from 90%."""
        limits = await self.limits.storage_limits(user.id, default=self.default_limit)
        return judge(self.meter.snapshot, user.id, limits)

    async def admit(self, user: User) -> None:
        """Raise ``QuotaExceeded`` when the user's or a team's volumes are over quota."""
        if self.meter.snapshot.measured is None:
            return  # nothing measured yet: no figure to refuse on
        refusal = (await self.report(user)).refusal
        if refusal is not None:
            raise QuotaExceeded(refusal)
