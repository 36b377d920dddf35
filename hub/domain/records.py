"""What the hub remembers about each server, and the storage port behind it.

record = await repo.get(user_id=7, name="lab")
record.state        # ServerState.RUNNING
record.prefix       # "/user/alice/lab/"
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from hub.domain.quotas import Limits, Usage
from hub.domain.resources import Resources
from hub.domain.servers import Endpoint, ServerState

# UNKNOWN counts: a server the engine could not be asked about may still run, so it
# keeps its quota, its GPUs and its address until the engine answers again.
ACTIVE_STATES = frozenset(
    {ServerState.STARTING, ServerState.RUNNING, ServerState.STOPPING, ServerState.UNKNOWN}
)


@dataclass(frozen=True)
class ServerRecord:
    """One server as stored: its owner, environment, resources and state."""

    id: int
    user_id: int
    user_name: str
    name: str
    environment: str
    environment_id: int | None
    state: ServerState
    resources: Resources
    gpu_ids: tuple[str, ...] = ()
    container_id: str | None = None
    container_name: str | None = None
    host: str | None = None
    port: int | None = None
    secret: str = ""
    image_digest: str = ""
    user_options: Mapping[str, str | float | None] = field(default_factory=dict)
    stopped_reason: str | None = None
    created: datetime | None = None
    started: datetime | None = None
    last_activity: datetime | None = None

    @property
    def prefix(self) -> str:
        return f"/user/{self.user_name}/{self.name}/" if self.name else f"/user/{self.user_name}/"

    @property
    def endpoint(self) -> Endpoint | None:
        if not (self.host and self.port and self.container_id):
            return None
        return Endpoint(self.host, self.port, self.container_id, self.container_name or "")


@dataclass(frozen=True)
class TeamUse:
    """A team's own limits (``None``: no team quota) and what its members hold."""

    name: str
    limits: Limits | None
    usage: Usage


@dataclass(frozen=True)
class AdmissionView:
    """Everything admission needs, read inside the claiming transaction."""

    user_limits: Limits | None
    user_usage: Usage
    teams: Sequence[TeamUse]
    host_usage: Usage
    gpus_in_use: Mapping[str, int]


@dataclass(frozen=True)
class Claim:
    """A request to hold resources for a server and mark it starting."""

    user_id: int
    name: str
    environment_id: int
    image_digest: str
    resources: Resources
    secret: str
    user_options: Mapping[str, str | float | None] = field(default_factory=dict)


# Given the view, raise QuotaExceeded or return the GPU ids to hold.
Decide = Callable[[AdmissionView], tuple[str, ...]]


class WorkspaceRepo(Protocol):
    """Storage of servers. ``claim`` is the one place admission is serialized."""

    async def claim(self, claim: Claim, decide: Decide) -> tuple[ServerRecord, bool]:
        """Mark the server starting if admission allows; ``False`` if it already was active."""

    async def admission_view(self, user_id: int) -> AdmissionView:
        """The view ``claim`` hands admission, read now (for offers, not for claiming)."""

    async def get(self, user_id: int, name: str) -> ServerRecord | None: ...

    async def by_id(self, server_id: int) -> ServerRecord | None: ...

    async def of_user(self, user_id: int) -> list[ServerRecord]: ...

    async def all(self) -> list[ServerRecord]: ...

    async def mark_running(self, server_id: int, endpoint: Endpoint, at: datetime) -> None: ...

    async def mark(
        self,
        server_id: int,
        state: ServerState,
        *,
        reason: str | None = None,
        forget_container: bool = False,
        expect: frozenset[ServerState] | None = None,
    ) -> bool:
        """Move to ``state`` if ``TRANSITIONS`` allow it from the current state (and that is
        in ``expect``, if given); ``False`` when the server was not in such a state."""

    async def record_activity(self, seen: Mapping[int, datetime]) -> None: ...

    async def delete(self, server_id: int) -> None: ...
