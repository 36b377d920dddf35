"""The hub's domain over a real database with only the engine faked (``hub.backends.fake``).

    async with fake_hub(db_url) as hub:
        alice = await hub.user("alice")
        await hub.environment("slow", "fake/slow:0.2")
        record = await hub.launch(alice, "lab", "slow")       # waits until it ends
        later = hub.restart()                                 # a new hub over the same state

Repositories are the SQL ones ``hub.app`` wires, and the services are the real
``Workspaces``; nothing here needs a Docker engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hub.backends.fake import FakeBackend
from hub.db.accounts import SqlAccountRepo
from hub.db.audit import SqlAuditLog
from hub.db.engine import make_engine
from hub.db.environments import SqlCatalog
from hub.db.migrate import upgrade
from hub.db.quotas import SqlQuotaRepo
from hub.db.servers import SqlServerRepo
from hub.db.teams import SqlTeamRepo
from hub.domain.accounts import User
from hub.domain.catalog import Environment, launch_request
from hub.domain.clock import SystemClock
from hub.domain.quotas import Limits
from hub.domain.records import ServerRecord
from hub.domain.resources import GiB, MiB, Resources
from hub.domain.routes import RouteTable
from hub.domain.workspaces import Policy, Workspaces

HUB_ID = "tfake"
MEMORY = 64 * MiB  # what every environment here asks for by default

POLICY = Policy(
    hub_id=HUB_ID,
    default_quota=Limits(),
    host_capacity=Limits(cpus=64, memory=64 * GiB),
    launch_timeout=5.0,
    stop_grace=0.1,
    labels={"labdock.test": "1"},
)


@dataclass
class FakeHub:
    """A hub's services over one database and one fake engine."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    backend: FakeBackend
    policy: Policy
    routes: RouteTable = field(default_factory=RouteTable)
    workspaces: Workspaces = field(init=False)
    following: asyncio.Task[None] | None = None
    restarted: list[FakeHub] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.repo = SqlServerRepo(self.sessions)
        self.catalog = SqlCatalog(self.sessions)
        self.accounts = SqlAccountRepo(self.sessions)
        self.teams = SqlTeamRepo(self.sessions)
        self.quotas = SqlQuotaRepo(self.sessions)
        self.audit = SqlAuditLog(self.sessions)
        self.workspaces = Workspaces(
            repo=self.repo,
            backend=self.backend,
            routes=self.routes,
            catalog=self.catalog,
            policy=self.policy,
            clock=SystemClock(),
            teams=self.teams,
            audit=self.audit,
        )

    def restart(self, **policy: Any) -> FakeHub:
        """A new hub process over the same database and engine: empty routes, no tasks."""
        later = FakeHub(self.engine, self.sessions, self.backend, replace(self.policy, **policy))
        self.restarted.append(later)
        return later

    def follow_engine(self) -> None:
        """Learn crashes and OOM kills from the engine's events, as ``hub.app`` does."""
        self.following = asyncio.create_task(self.workspaces.follow_engine(self.backend.events()))

    async def close(self) -> None:
        for later in self.restarted:
            await later.close()
        if self.following is not None:
            self.following.cancel()
            await asyncio.gather(self.following, return_exceptions=True)
        await self.workspaces.close()

    async def user(self, name: str) -> User:
        return await self.accounts.add_user(name, None, is_admin=False, must_change=False)

    async def environment(self, name: str, image: str, **fields: Any) -> int:
        values: dict[str, Any] = dict(
            id=0,
            name=name,
            description="a fake app",
            version="1",
            image=image,
            port=8080,
            command=("/app/start",),
            keep_prefix=True,
            readiness_path="",
            default=Resources(cpus=0.5, memory=MEMORY),
            maximum=Resources(cpus=2, memory=1 * GiB),
        )
        values.update(fields)
        return await self.catalog.add(Environment(**values))

    async def launch(
        self, owner: User, server: str, environment: str, within: float = 10.0, **body: Any
    ) -> ServerRecord:
        """Launch and wait until the launch ends (running or failed)."""
        wanted = {"environment": environment, **body}
        record, _ = await self.workspaces.launch(owner, server, launch_request(wanted))
        return await self.workspaces.wait_ready(record.id, within)

    async def record(self, server_id: int) -> ServerRecord:
        found = await self.repo.by_id(server_id)
        assert found is not None, f"server {server_id} has no row"
        return found


async def until(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Wait until ``check()`` holds, polling briefly; fail after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not await check():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def fake_hub(db_url: str, **policy: Any) -> AsyncIterator[FakeHub]:
    """A migrated database, a fake engine and the services over them; closed on exit."""
    await asyncio.get_running_loop().run_in_executor(None, upgrade, db_url)
    engine = make_engine(db_url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    backend = FakeBackend(hub_id=HUB_ID)
    hub = FakeHub(engine, sessions, backend, replace(POLICY, **policy))
    try:
        yield hub
    finally:
        await hub.close()
        await backend.close()
        await engine.dispose()
