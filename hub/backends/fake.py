"""The ``Backend`` port in memory: servers that start, fail and die on cue, with no engine.

    import asyncio
    from hub.backends.fake import FakeBackend
    from hub.domain.resources import GiB, Resources
    from hub.domain.servers import ServerSpec

    async def main() -> None:
        backend = FakeBackend(hub_id="h1")
        events = backend.events()                 # subscribed from this call on
        spec = ServerSpec(hub_id="h1", user_id=7, server_id=42, image="fake/oom:0.1",
                          command=(), port=8888, prefix="/user/alice/lab/", secret="s",
                          resources=Resources(cpus=1, memory=GiB))
        print(await backend.start(spec, progress=print))   # Endpoint(host="192.0.2.2", ...)
        print([(await anext(events)).action for _ in range(3)])   # start, oom, die (137)
        print(await backend.list())                        # Observed(running=False, ...)

    asyncio.run(main())

What a server does is chosen by its image, as JupyterHub's mock spawners are
chosen by class:

- any image outside ``fake/``: it answers at once and runs until stopped;
- ``fake/slow:S``: it answers ``S`` seconds after it started (past the spec's
  ``start_timeout`` it behaves as never-ready);
- ``fake/never-ready``: it runs but never answers; at ``start_timeout`` the
  launch fails with "was not ready after", and the container is stopped but
  kept, with its logs;
- ``fake/crash[:C]``: it exits with code ``C`` (default 1) before it answers:
  ``LaunchFailed`` carrying its last lines of output;
- ``fake/oom[:S]``: it answers, then ``S`` seconds later (default 0.1) the
  kernel kills it for its memory: ``oom`` then ``die`` (exit code 137) on the
  event stream, and ``Observed.oom_killed`` in ``list()``;
- any other ``fake/NAME``: an image that is not built, refused as the Docker
  backend refuses it ("run `labdock images build NAME`").

The engine itself: ``disconnect()`` makes it unreachable (``ping``, ``start``,
``stop``, ``list`` and ``logs`` raise ``BackendUnavailable``, and open event
streams break as the Docker engine's do) while its containers keep running;
``reconnect()`` brings it back. ``kill(server_id, exit_code, oom=...)`` makes a
running server die at any moment, told through ``events()`` like an engine event.

It mirrors ``DockerBackend``: the same progress messages and errors, a start
that adopts a running container of the same spec and refuses one of another
(``Conflict``), a stop that keeps the container unless asked to remove it,
home and team volumes that outlive their containers, and the same labels
(``labdock.spec`` aside: the fake compares the specs themselves). ``calls``
records what the hub asked the engine to change, in order.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import ipaddress
import secrets
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field, replace

from hub.backends.docker_names import container_name, home_volume_name, team_volume_name
from hub.domain.errors import BackendUnavailable, Conflict, InvalidInput, LaunchFailed, NotFound
from hub.domain.resources import format_memory
from hub.domain.servers import (
    Endpoint,
    EngineEvent,
    Observed,
    ProgressEvent,
    ProgressSink,
    ServerSpec,
    emit,
)

PREFIX = "fake/"


def _name(spec: ServerSpec) -> str:
    """The fake names its containers and volumes as the Docker backend does."""
    return container_name(spec.hub_id, spec.server_id)


LOG_LINES = 20
# The exit code of an app stopped by SIGTERM that it does not catch (under an init).
STOPPED_EXIT_CODE = 143
OOM_EXIT_CODE = 137
DEFAULT_OOM_AFTER = 0.1
# TEST-NET-1 (RFC 5737): an address nothing answers on, should anything try.
FIRST_ADDRESS = ipaddress.IPv4Address("192.0.2.2")


@dataclass(frozen=True)
class Behaviour:
    """What a fake server does, read from its image name (see the module docstring)."""

    built: bool = True
    ready_after: float | None = 0.0  # None: never answers
    crash_code: int | None = None
    oom_after: float | None = None


def behaviour(image: str) -> Behaviour:
    """The behaviour an image name asks for; ``InvalidInput`` for a malformed argument."""
    if not image.startswith(PREFIX):
        return Behaviour()
    kind, _, arg = image[len(PREFIX) :].partition(":")
    try:
        if kind == "slow":
            return Behaviour(ready_after=float(arg or 1))
        if kind == "never-ready":
            return Behaviour(ready_after=None)
        if kind == "crash":
            return Behaviour(crash_code=int(arg or 1))
        if kind == "oom":
            return Behaviour(oom_after=float(arg or DEFAULT_OOM_AFTER))
    except ValueError:
        raise InvalidInput(f"fake image {image}: {arg!r} is not a number") from None
    return Behaviour(built=False)


@dataclass(frozen=True)
class FakeContainer:
    """A container as the fake engine holds it, for tests to read."""

    id: str
    name: str
    server_id: int
    user_id: int
    image: str
    labels: Mapping[str, str]
    status: str  # "running" or "exited"
    ready: bool
    exit_code: int | None
    oom_killed: bool
    logs: tuple[str, ...]


@dataclass
class _Container:
    id: str
    spec: ServerSpec
    labels: dict[str, str]
    host: str
    how: Behaviour
    status: str = "running"
    exit_code: int | None = None
    oom_killed: bool = False
    lines: list[str] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    life: asyncio.Task[None] | None = None

    def say(self, line: str) -> None:
        self.lines.append(line)

    def snapshot(self) -> FakeContainer:
        return FakeContainer(
            id=self.id,
            name=_name(self.spec),
            server_id=self.spec.server_id,
            user_id=self.spec.user_id,
            image=self.spec.image,
            labels=dict(self.labels),
            status=self.status,
            ready=self.ready.is_set(),
            exit_code=self.exit_code,
            oom_killed=self.oom_killed,
            logs=tuple(self.lines),
        )


@dataclass(frozen=True)
class _End:
    """The end of an event stream: ``broken`` when the engine went away."""

    broken: bool


def _same_server(a: ServerSpec, b: ServerSpec) -> bool:
    """What ``labdock.spec`` compares in the Docker backend: everything but the timeout."""
    return replace(a, start_timeout=0.0) == replace(b, start_timeout=0.0)


class FakeBackend:
    """The ``Backend`` port with no engine: containers live in a dict, for tests."""

    def __init__(
        self,
        *,
        hub_id: str,
        extra_labels: Mapping[str, str] | None = None,
        reachable: bool = True,
    ) -> None:
        self._hub_id = hub_id
        self._extra_labels = dict(extra_labels or {})
        self._reachable = reachable
        self._containers: dict[int, _Container] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._subscribers: builtins.list[asyncio.Queue[EngineEvent | _End]] = []
        self._volumes: set[str] = set()
        self._addresses = 0
        # What the hub asked the engine to change, in order: ("start" | "stop" | "remove", id).
        self.calls: builtins.list[tuple[str, int]] = []
        # The images ``prepare_runtime`` was asked about, in order.
        self.prepared: builtins.list[str] = []

    @property
    def hub_id(self) -> str:
        """The id this backend's names and labels carry."""
        return self._hub_id

    # -- the engine, for tests --------------------------------------------------------------

    def disconnect(self) -> None:
        """The engine becomes unreachable; its containers keep running, its streams break."""
        self._reachable = False
        self._end_streams(broken=True)

    def reconnect(self) -> None:
        """The engine answers again, with the containers it had."""
        self._reachable = True

    def kill(self, server_id: int, *, exit_code: int = OOM_EXIT_CODE, oom: bool = False) -> None:
        """The server dies now (a crash, or the OOM killer): told as ``oom``/``die`` events."""
        container = self._containers.get(server_id)
        if container is None or container.status != "running":
            raise NotFound(f"server {server_id} has no running container")
        self._die(container, exit_code, oom=oom)

    def container(self, server_id: int) -> FakeContainer | None:
        """The server's container as it is now, or ``None``."""
        found = self._containers.get(server_id)
        return found.snapshot() if found is not None else None

    @property
    def volumes(self) -> frozenset[str]:
        """The named volumes made for servers (homes and team volumes); removal keeps them."""
        return frozenset(self._volumes)

    async def remove_volume(self, user_id: int) -> None:
        """Delete a user's home volume (an explicit admin action). Missing is fine."""
        self._check()
        self._volumes.discard(home_volume_name(self._hub_id, user_id))

    async def prepare_runtime(self, images: Iterable[str], *, only_copied: bool = False) -> None:
        """Nothing to prepare: fake servers start from nothing. Records what was asked."""
        self._check()
        self.prepared.extend(images)

    async def close(self) -> None:
        """Stop every scripted behaviour and end the event streams (containers stay)."""
        lives = [c.life for c in self._containers.values() if c.life is not None]
        for life in lives:
            life.cancel()
        await asyncio.gather(*lives, return_exceptions=True)
        self._end_streams(broken=False)

    # -- the port ------------------------------------------------------------------------------

    def _check(self) -> None:
        if not self._reachable:
            raise BackendUnavailable("cannot reach the fake engine: it was disconnected")

    async def ping(self) -> None:
        """Raise ``BackendUnavailable`` when the engine is disconnected."""
        self._check()

    async def start(self, spec: ServerSpec, progress: ProgressSink) -> Endpoint:
        """Start the server's container; return once it answers (as its image says).

        Progress goes image ready → creating → starting → waiting → ready, as in
        ``DockerBackend``; failures raise and are not reported through ``progress``.
        """
        if spec.hub_id != self._hub_id:
            raise InvalidInput(
                f"spec is for hub {spec.hub_id!r}; this backend runs {self._hub_id!r}"
            )
        self._check()
        deadline = asyncio.get_running_loop().time() + spec.start_timeout
        lock = self._locks.setdefault(_name(spec), asyncio.Lock())
        async with lock:
            return await self._start_locked(spec, progress, deadline)

    async def _start_locked(
        self, spec: ServerSpec, progress: ProgressSink, deadline: float
    ) -> Endpoint:
        how = behaviour(spec.image)
        if not how.built:
            name = spec.image[len(PREFIX) :].split(":")[0]
            raise LaunchFailed(
                f"image {spec.image} is not built; run `labdock images build {name}`"
            )
        await emit(progress, ProgressEvent(10, f"image {spec.image} is ready"))
        await emit(progress, ProgressEvent(20, "creating the container"))
        self._check()
        self.calls.append(("start", spec.server_id))
        self._volumes.add(home_volume_name(spec.hub_id, spec.user_id))
        self._volumes.update(team_volume_name(spec.hub_id, m.team_id) for m in spec.mounts)
        container = self._existing(spec)
        if container is not None:
            await emit(progress, ProgressEvent(40, "the container is already running"))
        else:
            await emit(progress, ProgressEvent(40, "starting the container"))
            container = self._run(spec, how)
        await emit(progress, ProgressEvent(60, "waiting for the app to answer"))
        endpoint = await self._wait_ready(container, deadline)
        await emit(progress, ProgressEvent(100, f"ready at {endpoint.url}", ready=True))
        return endpoint

    def _existing(self, spec: ServerSpec) -> _Container | None:
        """The running container to adopt, or None after clearing a stopped one."""
        found = self._containers.get(spec.server_id)
        if found is None:
            return None
        if found.status == "running":
            if not _same_server(found.spec, spec):
                raise Conflict(
                    f"server {spec.server_id} is already running with another configuration; "
                    "stop it first"
                )
            return found
        self._forget(found)
        return None

    def _run(self, spec: ServerSpec, how: Behaviour) -> _Container:
        self._addresses += 1
        container = _Container(
            id=secrets.token_hex(32),
            spec=spec,
            labels={
                **spec.labels,
                **self._extra_labels,
                "labdock.hub": spec.hub_id,
                "labdock.user": str(spec.user_id),
                "labdock.server": str(spec.server_id),
                "labdock.port": str(spec.port),
            },
            host=str(FIRST_ADDRESS + (self._addresses - 1) % 250),
            how=how,
        )
        container.say(f"fake: {spec.image} starting as server {spec.server_id}")
        self._containers[spec.server_id] = container
        container.life = asyncio.get_running_loop().create_task(
            self._live(container), name=f"fake-server-{spec.server_id}"
        )
        self._publish(EngineEvent("start", spec.server_id, container.id))
        return container

    async def _live(self, container: _Container) -> None:
        """What the app in the container does, as its image says."""
        how, spec = container.how, container.spec
        await asyncio.sleep(0)  # the app runs after the start call has returned
        if how.crash_code is not None:
            container.say("Traceback (most recent call last):")
            container.say('  File "/app/start", line 1, in <module>')
            container.say(f"SystemExit: the fake app crashed with exit code {how.crash_code}")
            self._die(container, how.crash_code)
            return
        if how.ready_after is None:
            container.say("fake: warming up, and never done")
            return
        await asyncio.sleep(how.ready_after)
        container.say(f"fake: listening on {container.host}:{spec.port}{spec.prefix}")
        container.ready.set()
        if how.oom_after is not None:
            await asyncio.sleep(how.oom_after)
            container.say(f"fake: allocating past {format_memory(spec.resources.memory)}")
            self._die(container, OOM_EXIT_CODE, oom=True)

    async def _wait_ready(self, container: _Container, deadline: float) -> Endpoint:
        spec = container.spec
        ready = asyncio.ensure_future(container.ready.wait())
        exited = asyncio.ensure_future(container.gone.wait())
        waiters = {ready, exited}
        try:
            done, _ = await asyncio.wait(
                waiters,
                timeout=max(0.0, deadline - asyncio.get_running_loop().time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for task in waiters:
                task.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        logs = tuple(container.lines[-LOG_LINES:])
        if ready in done:  # the app answered, even if it exited right after
            return Endpoint(container.host, spec.port, container.id, _name(spec))
        if exited in done:
            if self._containers.get(spec.server_id) is not container:
                raise LaunchFailed(f"server {spec.server_id} was removed before it was ready")
            if container.oom_killed:
                raise LaunchFailed(
                    f"server {spec.server_id} was killed for using more than its memory limit "
                    f"({format_memory(spec.resources.memory)}) before it was ready",
                    logs=logs,
                )
            raise LaunchFailed(
                f"server {spec.server_id} exited with code {container.exit_code} "
                "before it was ready",
                logs=logs,
            )
        self._halt(container)  # stopped, kept for inspection
        raise LaunchFailed(
            f"server {spec.server_id} was not ready after {spec.start_timeout:g} s",
            logs=tuple(container.lines[-LOG_LINES:]),
        )

    def _die(self, container: _Container, exit_code: int, *, oom: bool = False) -> None:
        """The container stops: state, log line, then ``oom`` and ``die`` events."""
        if container.status != "running":
            return
        container.status, container.exit_code, container.oom_killed = "exited", exit_code, oom
        container.ready.clear()
        container.gone.set()
        if container.life is not None and container.life is not asyncio.current_task():
            container.life.cancel()
        sid = container.spec.server_id
        if oom:
            container.say("Killed")
            self._publish(EngineEvent("oom", sid, container.id))
        self._publish(EngineEvent("die", sid, container.id, exit_code=exit_code))

    def _halt(self, container: _Container) -> None:
        """SIGTERM, which the fake app obeys at once."""
        if container.status == "running":
            container.say("fake: SIGTERM received, exiting")
            self._die(container, STOPPED_EXIT_CODE)

    def _forget(self, container: _Container) -> None:
        self._halt(container)
        if self._containers.get(container.spec.server_id) is container:
            del self._containers[container.spec.server_id]

    async def stop(self, server_id: int, *, remove: bool = False, grace: float = 10.0) -> None:
        """SIGTERM (the fake app obeys at once); ``remove`` deletes the container.

        The home volume is never removed here. A missing container is not an error.
        """
        self._check()
        self.calls.append(("remove" if remove else "stop", server_id))
        container = self._containers.get(server_id)
        if container is None:
            return
        self._halt(container)
        if remove:
            self._forget(container)

    async def list(self) -> builtins.list[Observed]:
        """Every container of this hub, as ``DockerBackend.list`` reports them."""
        self._check()
        found = []
        for c in self._containers.values():
            running = c.status == "running"
            endpoint = Endpoint(c.host, c.spec.port, c.id, _name(c.spec))
            found.append(
                Observed(
                    server_id=c.spec.server_id,
                    user_id=c.spec.user_id,
                    container_id=c.id,
                    container_name=_name(c.spec),
                    running=running,
                    endpoint=endpoint if running else None,
                    exit_code=None if running else c.exit_code,
                    oom_killed=c.oom_killed,
                )
            )
        return found

    async def logs(self, server_id: int, tail: int = LOG_LINES) -> builtins.list[str]:
        """The last ``tail`` lines of a server's output."""
        self._check()
        container = self._containers.get(server_id)
        if container is None:
            raise NotFound(f"server {server_id} has no container")
        return container.lines[-tail:] if tail > 0 else []

    # -- events --------------------------------------------------------------------------------

    def events(self) -> AsyncGenerator[EngineEvent, None]:
        """``start``, ``die`` (with exit code) and ``oom`` events, from this call on.

        Close it with ``aclose()``. It raises ``BackendUnavailable`` when the engine
        is disconnected (at once, if it already is); reconcile with ``list()`` and
        subscribe again, as with ``DockerBackend.events``.
        """
        queue: asyncio.Queue[EngineEvent | _End] = asyncio.Queue()
        if self._reachable:
            self._subscribers.append(queue)
        else:
            queue.put_nowait(_End(broken=True))
        return self._follow(queue)

    async def _follow(
        self, queue: asyncio.Queue[EngineEvent | _End]
    ) -> AsyncGenerator[EngineEvent, None]:
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    if item.broken:
                        raise BackendUnavailable(
                            "lost the fake engine's event stream; "
                            "reconcile with list() and subscribe again"
                        )
                    return
                yield item
        finally:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(queue)

    def _publish(self, event: EngineEvent) -> None:
        for queue in self._subscribers:
            queue.put_nowait(event)

    def _end_streams(self, *, broken: bool) -> None:
        subscribers, self._subscribers = self._subscribers, []
        for queue in subscribers:
            queue.put_nowait(_End(broken=broken))
