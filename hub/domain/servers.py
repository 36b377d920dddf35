"""What the hub asks a backend to run, and what a backend reports back.

spec = ServerSpec(hub_id="h1", user_id=7, server_id=42, image="labdock/python:3f2a",
                  command=("start.sh",), port=8888, prefix="/user/alice/lab/",
                  secret="s3cret", resources=Resources(cpus=1, memory=2 * GiB))
endpoint = await backend.start(spec, progress=print)
"""

from __future__ import annotations

import builtins
import enum
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from hub.domain.catalog import DEFAULT_HOME, DEFAULT_PIDS_LIMIT, DEFAULT_SHM_SIZE
from hub.domain.resources import Resources


class ServerState(enum.Enum):
    """Where a server is in its life. ``UNKNOWN`` means the engine could not be asked."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FAILED = "failed"
    UNKNOWN = "unknown"


# The transitions the hub allows; anything else is a bug or a race to refuse. The
# repository of servers applies them in the same statement that moves a server, so a
# stale decision (a crash reported after the server was stopped) changes nothing.
# Every state may be stopped (``STOPPING``: a stopped or failed server's container is
# removed through it too); only a stopped or failed server is launched (``claim``);
# ``UNKNOWN`` (the engine could not be asked) settles once the engine answers.
TRANSITIONS: Mapping[ServerState, frozenset[ServerState]] = {
    ServerState.STOPPED: frozenset({ServerState.STARTING, ServerState.STOPPING}),
    ServerState.FAILED: frozenset(
        {ServerState.STARTING, ServerState.STOPPING, ServerState.STOPPED}
    ),
    ServerState.STARTING: frozenset(
        {ServerState.RUNNING, ServerState.FAILED, ServerState.STOPPING, ServerState.UNKNOWN}
    ),
    ServerState.RUNNING: frozenset(
        {ServerState.STOPPING, ServerState.FAILED, ServerState.STOPPED, ServerState.UNKNOWN}
    ),
    ServerState.STOPPING: frozenset({ServerState.STOPPED, ServerState.FAILED, ServerState.UNKNOWN}),
    ServerState.UNKNOWN: frozenset(
        {ServerState.RUNNING, ServerState.STOPPED, ServerState.FAILED, ServerState.STOPPING}
    ),
}


def can_move(old: ServerState, new: ServerState) -> bool:
    """Whether the hub may move a server from ``old`` to ``new`` (staying put is allowed)."""
    return old == new or new in TRANSITIONS[old]


def allowed_from(new: ServerState) -> frozenset[ServerState]:
    """The states a server may be moved to ``new`` from, ``new`` itself included."""
    return frozenset(old for old in ServerState if can_move(old, new))


@dataclass(frozen=True)
class Mount:
    """A team's shared volume, mounted into a server at ``target``.

    The backend names the volume from the team's id, creates it when missing and
    gives it to the server's user, since the server itself holds no capability to chown.
    """

    team_id: int
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class ServerSpec:
    """Everything a backend needs to run one server. The backend names what it makes
    (container, volumes) from the ids alone."""

    hub_id: str
    user_id: int
    server_id: int
    image: str
    command: tuple[str, ...]
    port: int
    prefix: str
    secret: str
    resources: Resources
    pids_limit: int = DEFAULT_PIDS_LIMIT
    shm_size: int = DEFAULT_SHM_SIZE
    gpu_device_ids: tuple[str, ...] = ()
    home: str = DEFAULT_HOME
    mounts: tuple[Mount, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    readiness_path: str = "/"
    start_timeout: float = 120.0


@dataclass(frozen=True)
class Endpoint:
    """Where the hub reaches a started server, on the internal network."""

    host: str
    port: int
    container_id: str
    container_name: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Observed:
    """A container the backend found by label, as it is now."""

    server_id: int
    user_id: int
    container_id: str
    container_name: str
    running: bool
    endpoint: Endpoint | None
    exit_code: int | None = None
    oom_killed: bool = False


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a launch, as streamed to the user."""

    progress: int
    message: str
    ready: bool = False
    failed: bool = False


ProgressSink = Callable[[ProgressEvent], Awaitable[None] | None]


async def emit(progress: ProgressSink, event: ProgressEvent) -> None:
    """Tell ``progress`` about ``event``, awaiting it when it is a coroutine function."""
    result = progress(event)
    if inspect.isawaitable(result):
        await result


@dataclass(frozen=True)
class EngineEvent:
    """A container event the engine reported (``die``, ``oom``, ``start``)."""

    action: str
    server_id: int
    container_id: str
    exit_code: int | None = None


class Backend(Protocol):
    """Runs servers as containers: everything the hub asks of an engine.

    Implementations: ``hub.backends.docker`` (one engine) and ``hub.backends.fake``
    (in memory, for tests); a Swarm backend is next. Live statistics, storage
    measurement and images are separate ports (``hub.domain.stats.StatsReader``,
    ``hub.domain.storage.VolumeMeter``, ``hub.domain.catalog.ImageStore``).
    """

    async def ping(self) -> None:
        """Raise ``BackendUnavailable`` when the engine cannot be reached."""

    async def start(self, spec: ServerSpec, progress: ProgressSink) -> Endpoint:
        """Create and start the container; return once the app answers readiness."""

    async def stop(self, server_id: int, *, remove: bool = False, grace: float = 10.0) -> None:
        """SIGTERM, then kill after ``grace`` seconds; ``remove`` deletes the container."""

    async def list(self) -> builtins.list[Observed]:
        """Every container of this hub, found by label."""

    async def logs(self, server_id: int, tail: int = 20) -> builtins.list[str]:
        """The last ``tail`` lines of a server's output."""

    def events(self) -> AsyncIterator[EngineEvent]:
        """``start``, ``die`` (with exit code) and ``oom`` events of this hub's containers.

        The stream raises ``BackendUnavailable`` when it breaks; the hub then
        reconciles with ``list()`` and subscribes again.
        """

    async def prepare_runtime(self, images: Iterable[str], *, only_copied: bool = False) -> None:
        """Make whatever lets servers of ``images`` start faster (Docker: runtime volumes);
        ``only_copied``: only check what was made before. Launches never wait for it."""

    async def close(self) -> None:
        """Stop background work of the backend (event subscriptions, copies under way)."""
