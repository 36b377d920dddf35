"""Launch, stop, reconcile: the one place that keeps rows, containers and routes in agreement.

    workspaces = Workspaces(repo=repo, backend=backend, routes=routes, catalog=catalog,
                            policy=policy, clock=SystemClock())
    record, fresh = await workspaces.launch(owner, "lab", LaunchRequest("jupyter", memory=4 * GiB))
    record = await workspaces.wait_ready(record.id, timeout=10)
    await workspaces.stop(record.id, remove=True)      # the home volume stays

Order matters and is the same everywhere: the database row changes state
first, then the engine is asked, then the route table follows; a crash between
any two steps is repaired by ``reconcile`` at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from hub.domain.accounts import TeamDirectory, User
from hub.domain.audit import AuditLog
from hub.domain.catalog import (
    Catalog,
    Environment,
    LaunchRequest,
    check_server_name,
    choose_resources,
    launch_request,
    launch_target,
)
from hub.domain.clock import Clock
from hub.domain.errors import (
    BackendUnavailable,
    LabdockError,
    LaunchFailed,
    NotFound,
    TooManyRequests,
)
from hub.domain.gpus import allocate
from hub.domain.progress import ProgressBoard
from hub.domain.quotas import Limits, Scope, Usage, admit
from hub.domain.records import ACTIVE_STATES, AdmissionView, Claim, ServerRecord, WorkspaceRepo
from hub.domain.resources import Resources, check_floor, format_memory
from hub.domain.routes import Route, RouteTable
from hub.domain.servers import (
    Backend,
    EngineEvent,
    Mount,
    ProgressEvent,
    ServerSpec,
    ServerState,
)

log = logging.getLogger(__name__)


class StorageGate(Protocol):
    """Refuses launches of users over a storage quota (``hub.domain.storage.StorageQuota``)."""

    async def admit(self, user: User) -> None: ...


OOM_WINDOW_S = 30.0
UNKNOWN_REASON = "the Docker engine cannot be reached; labdock does not know if it still runs"


@dataclass(frozen=True)
class Policy:
    """Limits and knobs the service applies; built from settings by ``hub.app``."""

    hub_id: str
    default_quota: Limits
    host_capacity: Limits
    gpu_inventory: tuple[str, ...] = ()
    max_concurrent_launches: int = 8
    launch_timeout: float = 120.0
    stop_grace: float = 10.0
    labels: Mapping[str, str] = field(default_factory=dict)


def admission_scopes(view: AdmissionView, policy: Policy) -> tuple[Scope, list[Scope], Scope]:
    """The user's, the teams' (those with a quota) and the host's scopes, as admission checks."""
    user = Scope("your quota", view.user_limits or policy.default_quota, view.user_usage)
    teams = [Scope(f"team '{t.name}' quota", t.limits, t.usage) for t in view.teams if t.limits]
    host = Scope("this host's capacity", policy.host_capacity, view.host_usage)
    return user, teams, host


@dataclass(frozen=True)
class Notice:
    """What the owner of a still-running server should know: the kernel killed one of its
    processes (a child over the memory limit; the server itself lives on)."""

    message: str
    at: datetime


def oom_notice(server_name: str, memory: int) -> str:
    """``a process in lab was killed: over the 2 GiB memory limit``."""
    where = server_name or "your default server"
    return f"a process in {where} was killed: over the {format_memory(memory)} memory limit"


def stopped_reason(event: EngineEvent, memory: int, oom_seen: bool) -> str:
    """The plain-words reason a server stopped, from what the engine said."""
    if oom_seen:
        return f"stopped: exceeded its {format_memory(memory)} memory limit"
    if event.exit_code in (None, 0):
        return "stopped: the app exited"
    if event.exit_code == 137:
        return "stopped: it was killed (exit code 137)"
    return f"stopped: the app exited with code {event.exit_code}"


class Workspaces:
    """The lifecycle of user servers."""

    def __init__(
        self,
        *,
        repo: WorkspaceRepo,
        backend: Backend,
        routes: RouteTable,
        catalog: Catalog,
        policy: Policy,
        clock: Clock,
        teams: TeamDirectory | None = None,
        audit: AuditLog | None = None,
        progress: ProgressBoard | None = None,
        storage: StorageGate | None = None,
    ) -> None:
        self._storage = storage
        self._repo = repo
        self._backend = backend
        self._routes = routes
        self._catalog = catalog
        self._policy = policy
        self._clock = clock
        self._teams = teams
        self._audit = audit
        self.progress = progress or ProgressBoard()
        self._launches: dict[int, asyncio.Task[None]] = {}
        self._oom: dict[int, float] = {}
        self._stops: set[asyncio.Task[None]] = set()
        self._notices: dict[int, Notice] = {}

    # Launching --------------------------------------------------------------

    async def environment(
        self, name: str, version: str | None = None, owner: User | None = None
    ) -> Environment:
        """The environment (at ``version``, default its current one) ``owner`` may launch,
        or a refusal that says why (``hub.domain.catalog.launch_target``)."""
        team_ids: frozenset[int] = frozenset()
        if owner is not None and self._teams is not None:
            team_ids = await self._teams.team_ids_of(owner.id)
        admin = owner is None or owner.is_admin
        return await launch_target(self._catalog, name, version, admin=admin, team_ids=team_ids)

    def _decide(
        self, resources: Resources, env: Environment
    ) -> Callable[[AdmissionView], tuple[str, ...]]:
        def decide(view: AdmissionView) -> tuple[str, ...]:
            user, teams, host = admission_scopes(view, self._policy)
            admit(resources, user=user, teams=teams, host=host)
            return allocate(
                self._policy.gpu_inventory,
                view.gpus_in_use,
                resources.gpus,
                shareable=env.gpu_shareable,
            )

        return decide

    async def launch(
        self, owner: User, server_name: str, request: LaunchRequest
    ) -> tuple[ServerRecord, bool]:
        """Admit and start a server; ``False`` when it was already starting or running.

        Every refusal (quota, environment, bad input, too busy) goes to the audit log.
        """
        try:
            return await self._launch(owner, server_name, request)
        except LabdockError as exc:
            await self.refused(owner, server_name, exc)
            raise

    async def refused(self, owner: User, server_name: str, error: LabdockError) -> None:
        """Write a refused launch to the audit log: one refused here, or a request refused
        where it was read (``hub.domain.catalog.launch_request``)."""
        target = f"{owner.name}/{server_name}"
        await self._record(owner.id, "server.launch", target, "refused", error.message)

    async def _launch(
        self, owner: User, server_name: str, request: LaunchRequest
    ) -> tuple[ServerRecord, bool]:
        check_server_name(server_name)
        env = await self.environment(request.environment, request.version, owner)
        resources = choose_resources(env, request)
        check_floor(resources, maximum=env.maximum, who=env.name)
        existing = await self._repo.get(owner.id, server_name)
        if existing is not None and existing.state in (ServerState.STARTING, ServerState.RUNNING):
            return existing, False
        if len(self._launches) >= self._policy.max_concurrent_launches:
            raise TooManyRequests(
                f"{len(self._launches)} servers are starting right now; try again in a few seconds",
                retry_after=2,
            )
        claim = Claim(
            user_id=owner.id,
            name=server_name,
            environment_id=env.id,
            image_digest=env.image,
            resources=resources,
            secret=secrets.token_urlsafe(32),
            user_options=dict(request.options),
        )
        if self._storage is not None:  # measured, not reserved: no need for the claim lock
            await self._storage.admit(owner)
        record, fresh = await self._repo.claim(claim, self._decide(resources, env))
        if fresh:
            self._start_task(record, env)
        return record, fresh

    async def _record(
        self, actor_id: int | None, action: str, target: str, outcome: str, message: str
    ) -> None:
        if self._audit is not None:
            await self._audit.record(
                actor_id=actor_id,
                action=action,
                target=target,
                outcome=outcome,
                detail={"message": message},
            )

    def _start_task(self, record: ServerRecord, env: Environment) -> None:
        self._notices.pop(record.id, None)
        self.progress.begin(record.id)
        self.progress.publish(record.id, ProgressEvent(0, "queued"))
        task = asyncio.create_task(self._run_launch(record, env), name=f"launch-{record.id}")
        self._launches[record.id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._launches.get(record.id) is done:
                del self._launches[record.id]

        task.add_done_callback(forget)

    async def team_mounts(self, user_id: int, home: str) -> tuple[Mount, ...]:
        """Each of the user's teams' shared volume, at ~/teams/<team>, writable by writers."""
        if self._teams is None:
            return ()
        return tuple(
            Mount(
                team_id=m.team_id,
                target=f"{home.rstrip('/')}/teams/{m.team}",
                read_only=not m.writer,
            )
            for m in await self._teams.memberships(user_id)
        )

    def spec(
        self, record: ServerRecord, env: Environment, mounts: tuple[Mount, ...] = ()
    ) -> ServerSpec:
        """What the backend is asked to run for this record."""
        return ServerSpec(
            hub_id=self._policy.hub_id,
            user_id=record.user_id,
            server_id=record.id,
            image=env.image,
            command=env.command,
            port=env.port,
            prefix=record.prefix,
            secret=record.secret,
            resources=record.resources,
            pids_limit=env.pids_limit,
            shm_size=env.shm_size,
            gpu_device_ids=record.gpu_ids,
            home=env.home,
            mounts=mounts,
            env={"LABDOCK_USER": record.user_name, "LABDOCK_SERVER_NAME": record.name},
            labels=dict(self._policy.labels),
            readiness_path=env.readiness_path,
            start_timeout=self._policy.launch_timeout,
        )

    def route(self, record: ServerRecord, env: Environment | None, host: str, port: int) -> Route:
        return Route(
            user=record.user_name,
            server=record.name,
            user_id=record.user_id,
            server_id=record.id,
            target=f"http://{host}:{port}",
            secret=record.secret,
            keep_prefix=env.keep_prefix if env else True,
        )

    async def _run_launch(self, record: ServerRecord, env: Environment) -> None:
        sid = record.id

        def report(event: ProgressEvent) -> None:
            if not (event.ready or event.failed):
                self.progress.publish(sid, event)

        try:
            mounts = await self.team_mounts(record.user_id, env.home)
            endpoint = await self._backend.start(self.spec(record, env, mounts), report)
        except asyncio.CancelledError:
            raise
        except LabdockError as exc:
            logs = exc.logs if isinstance(exc, LaunchFailed) else ()
            await self._repo.mark(sid, ServerState.FAILED, reason=f"failed to start: {exc.message}")
            self.progress.publish(
                sid, ProgressEvent(100, _with_logs(exc.message, logs), failed=True)
            )
            return
        except Exception as exc:
            log.exception("launch of server %s failed", sid)
            await self._repo.mark(sid, ServerState.FAILED, reason="failed to start: internal error")
            self.progress.publish(
                sid, ProgressEvent(100, f"labdock hit an internal error: {exc}", failed=True)
            )
            return
        await self._repo.mark_running(sid, endpoint, self._clock.now())
        self._routes.add(self.route(record, env, endpoint.host, endpoint.port))
        self.progress.publish(sid, ProgressEvent(100, "ready", ready=True))

    async def wait_ready(self, server_id: int, within: float) -> ServerRecord:
        """The record once its launch ends, or as it is after ``within`` seconds."""
        task = self._launches.get(server_id)
        if task is not None:
            await asyncio.wait({task}, timeout=within)
        record = await self._repo.by_id(server_id)
        if record is None:
            raise NotFound("the server was deleted")
        return record

    # Stopping ---------------------------------------------------------------

    async def stop(
        self, server_id: int, *, remove: bool = False, reason: str | None = None
    ) -> None:
        """SIGTERM, then kill after the grace period; ``remove`` deletes the container too."""
        record = await self._repo.by_id(server_id)
        if record is None:
            raise NotFound("no such server")
        task = self._launches.get(server_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.progress.publish(server_id, ProgressEvent(100, "launch cancelled", failed=True))
        await self._repo.mark(server_id, ServerState.STOPPING)
        self._notices.pop(server_id, None)
        self._routes.remove(server_id)
        try:
            await self._backend.stop(server_id, remove=remove, grace=self._policy.stop_grace)
        except BackendUnavailable:
            await self._repo.mark(server_id, ServerState.UNKNOWN, reason=UNKNOWN_REASON)
            raise
        await self._repo.mark(
            server_id, ServerState.STOPPED, reason=reason, forget_container=remove
        )

    async def stop_all_of(self, user_id: int, *, reason: str) -> int:
        """Cut every path to ``user_id``'s servers now, and stop them in the background.

        For a user who was disabled: their routes leave the table at once (so the
        proxy refuses and closes what is open), and each container gets its usual
        grace period without holding up the caller. Returns how many were active.
        """
        active = [r for r in await self._repo.of_user(user_id) if r.state in ACTIVE_STATES]
        for record in active:
            self._routes.remove(record.id)
            task = asyncio.get_running_loop().create_task(self._stop_quietly(record.id, reason))
            self._stops.add(task)
            task.add_done_callback(self._stops.discard)
        return len(active)

    async def _stop_quietly(self, server_id: int, reason: str) -> None:
        try:
            await self.stop(server_id, reason=reason)
        except (NotFound, BackendUnavailable) as exc:
            # Gone already, or the engine is away: reconcile settles it at the next start.
            log.warning("could not stop server %s: %s", server_id, exc)

    async def remove(self, server_id: int) -> None:
        """Stop the server, delete its container and forget it; the home volume stays.

        The name is free again afterwards: launching it starts a new server.
        """
        await self.stop(server_id, remove=True)
        await self._repo.delete(server_id)

    async def restart(
        self, owner: User, server_name: str, version: str | None = None
    ) -> tuple[ServerRecord, bool]:
        """Stop a server (keeping its container's volume) and launch it again as it was:
        the same choices and the same image digest, unless ``version`` names another."""
        record = await self._repo.get(owner.id, server_name)
        if record is None:
            raise NotFound(f"{owner.name} has no server {server_name!r}")
        env = await self._catalog.by_id(record.environment_id or 0)
        if env is None:
            raise NotFound("the environment of this server is no longer in the catalog")
        options = {**record.user_options}
        if version is not None:
            options["version"] = version
        elif record.image_digest.startswith("sha256:"):
            options["version"] = record.image_digest
        # The same choices, read as they were at the first launch (stored as it gave them).
        request = launch_request({"environment": env.name, **options})
        await self.environment(env.name, request.version, owner)  # refuse before stopping
        if record.state not in (ServerState.STOPPED, ServerState.FAILED):
            await self.stop(record.id, remove=True)
        return await self.launch(owner, server_name, request)

    # Engine events and recovery ---------------------------------------------

    async def on_engine_event(self, event: EngineEvent) -> None:
        """Learn crashes and OOM kills from the engine, and say so in plain words."""
        now = time.monotonic()
        if event.action == "oom":
            self._oom[event.server_id] = now
            await self._note_oom(event.server_id)
            return
        if event.action != "die":
            return
        record = await self._repo.by_id(event.server_id)
        if record is None or record.state != ServerState.RUNNING:
            return  # our own stop, or a launch the backend is already handling
        self._notices.pop(event.server_id, None)  # the stopped reason says it now
        oom_at = self._oom.pop(event.server_id, None)
        oom = oom_at is not None and now - oom_at < OOM_WINDOW_S
        reason = stopped_reason(event, record.resources.memory, oom)
        if await self._repo.mark(
            event.server_id,
            ServerState.STOPPED,
            reason=reason,
            expect=frozenset({ServerState.RUNNING}),
        ):
            self._routes.remove(event.server_id)
            log.info("server %s %s", event.server_id, reason)

    async def _note_oom(self, server_id: int) -> None:
        # The engine reports every OOM kill in the container; if its main process
        # survives no ``die`` follows, so only this notice tells the owner.
        record = await self._repo.by_id(server_id)
        if record is None or record.state not in (ServerState.RUNNING, ServerState.STARTING):
            return
        message = oom_notice(record.name, record.resources.memory)
        self._notices[server_id] = Notice(message, self._clock.now())
        log.info("server %s: %s", server_id, message)

    def notice(self, server_id: int) -> Notice | None:
        """The latest notice about a server that still runs (an OOM-killed child), if any."""
        return self._notices.get(server_id)

    async def follow_engine(self, events: AsyncIterable[EngineEvent]) -> None:
        """Consume an async iterator of ``EngineEvent`` until it ends or is cancelled."""
        async for event in events:
            try:
                await self.on_engine_event(event)
            except Exception:
                log.exception("could not handle engine event %s", event)

    async def watch_engine(self) -> None:
        """Follow the backend's events for ever; after a break, reconcile and follow again."""
        delay = 1.0
        while True:
            try:
                await self.follow_engine(self._backend.events())
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("engine event stream broke (%s); retrying in %.0f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            with contextlib.suppress(Exception):
                await self.reconcile()

    async def reconcile(self) -> None:
        """Bring rows, containers and routes into agreement after a (re)start.

        Running containers of running rows are adopted, rows whose container
        vanished are marked stopped, interrupted launches are resumed, and
        containers of this hub that no row claims are removed. If the engine
        cannot be asked, active rows become ``unknown`` (keeping what they hold),
        routes are rebuilt from the rows, and nothing is marked stopped or
        deleted; the next reconcile, once the engine answers, settles them.
        """
        records = await self._repo.all()
        try:
            observed = {o.server_id: o for o in await self._backend.list()}
        except BackendUnavailable:
            log.warning("engine unreachable at start: server states are unknown")
            for record in records:
                if record.state in (ServerState.RUNNING, ServerState.STARTING):
                    # It may well still run: keep its resources, GPUs and route, and say so.
                    await self._repo.mark(record.id, ServerState.UNKNOWN, reason=UNKNOWN_REASON)
                elif record.state != ServerState.UNKNOWN:
                    continue
                if record.host and record.port:
                    env = await self._catalog.by_id(record.environment_id or 0, record.image_digest)
                    self._routes.add(self.route(record, env, record.host, record.port))
            return
        for record in records:
            seen = observed.pop(record.id, None)
            env = await self._catalog.by_id(record.environment_id or 0, record.image_digest)
            if record.state in (ServerState.RUNNING, ServerState.UNKNOWN):
                if seen is not None and seen.running and seen.endpoint is not None:
                    await self._repo.mark_running(
                        record.id, seen.endpoint, record.started or self._clock.now()
                    )
                    self._routes.add(
                        self.route(record, env, seen.endpoint.host, seen.endpoint.port)
                    )
                else:
                    why = "stopped while the hub was away"
                    if seen is not None and seen.oom_killed:
                        limit = format_memory(record.resources.memory)
                        why = f"stopped: exceeded its {limit} memory limit"
                    elif seen is not None and seen.exit_code not in (None, 0):
                        why = f"stopped while the hub was away (exit code {seen.exit_code})"
                    await self._repo.mark(record.id, ServerState.STOPPED, reason=why)
            elif record.state == ServerState.STARTING:
                if env is not None and env.launchable:
                    self._start_task(record, env)
                else:
                    await self._repo.mark(
                        record.id,
                        ServerState.FAILED,
                        reason="failed to start: its environment is no longer available",
                    )
            elif record.state == ServerState.STOPPING:
                await self._backend.stop(record.id, grace=self._policy.stop_grace)
                await self._repo.mark(record.id, ServerState.STOPPED)
            elif seen is not None and seen.running:
                await self._backend.stop(record.id, grace=self._policy.stop_grace)
        for orphan in observed.values():
            log.info("removing container %s: no server of this hub owns it", orphan.container_name)
            await self._backend.stop(orphan.server_id, remove=True, grace=0)

    async def close(self) -> None:
        """Cancel launches in flight; their rows are resumed by the next ``reconcile``."""
        tasks = list(self._launches.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Stops already asked for finish: a disabled user's server must not be left running.
        await asyncio.gather(*list(self._stops), return_exceptions=True)

    @property
    def launching(self) -> int:
        return len(self._launches)


def _with_logs(message: str, logs: tuple[str, ...]) -> str:
    if not logs:
        return message
    return message + "\n\nLast lines of its output:\n" + "\n".join(logs)


def usage_of(records: list[ServerRecord]) -> Usage:
    """What a list of servers holds (for display)."""
    active = [r for r in records if r.state in (ServerState.STARTING, ServerState.RUNNING)]
    return Usage(
        cpus=sum(r.resources.cpus for r in active),
        memory=sum(r.resources.memory for r in active),
        gpus=sum(r.resources.gpus for r in active),
        servers=len(active),
    )
