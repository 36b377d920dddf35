"""The engine a hub runs servers on, chosen from settings: a backend and its companions.

    bundle = open_backend(settings, hub_id="h3f9a2c1", executor=pool)
    await bundle.backend.ping()
    usage = await bundle.stats.read(container_id)
    ...
    bundle.release()       # once every engine call has finished (the executor is drained)

``backend.kind`` picks the implementation, here and nowhere else: ``docker``
(one engine) or ``fake`` (in memory, nothing runs: for tests and demos). Each
part sits behind its port in ``hub.domain`` (``Backend``, ``StatsReader``,
``VolumeMeter``, ``ImageStore``), so another kind (Swarm, next) is one more
function here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import docker
import docker.errors

from hub.backends.docker import DockerBackend
from hub.backends.docker_events import CGROUP_ROOT, OomCounters, oom_counter_events
from hub.backends.docker_network import bridge_name
from hub.backends.docker_stats import DockerStats
from hub.backends.docker_storage import DockerVolumeMeter
from hub.backends.fake import FakeBackend
from hub.backends.fake_ports import FakeImages, FakeStats, FakeVolumes
from hub.backends.firewall import HostFirewall, HostGuard
from hub.config import BACKEND_KINDS, Settings
from hub.domain.catalog import ImageStore
from hub.domain.errors import ConfigError
from hub.domain.servers import Backend, EngineEvent
from hub.domain.services import Service
from hub.domain.stats import StatsReader
from hub.domain.storage import VolumeMeter
from hub.images.store import EngineImages

log = logging.getLogger(__name__)

EventSource = Callable[[], AsyncIterator[EngineEvent]]


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class BackendBundle:
    """Everything the hub uses of one engine, each part behind its port."""

    backend: Backend
    stats: StatsReader
    volumes: VolumeMeter
    images: ImageStore
    # The engine's own background work, started before the hub's and closed after it.
    services: tuple[Service, ...] = ()
    # Event streams to follow beside ``backend.events()`` (OOM kills read from cgroups).
    extra_events: tuple[EventSource, ...] = ()
    # The rules that keep workspaces off host services, when this engine has them.
    firewall: HostFirewall | None = None
    # Closes the engine connection; call it once no engine call is under way.
    release: Callable[[], None] = field(default=_nothing)


class EngineDrain:
    """A service that, at close, waits for engine calls under way and then releases the
    engine's connection (``BackendBundle.release``).

    A container being created for a launch that was just cancelled is finished, so
    that whatever it leaves is on the engine for the next start's reconcile, not
    created after the hub has gone.
    """

    name = "engine-calls"

    def __init__(
        self, executor: Executor, *, release: Callable[[], None], wait: float = 30.0
    ) -> None:
        self._executor = executor
        self._release = release
        self._wait = wait

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        drain = functools.partial(self._executor.shutdown, wait=True, cancel_futures=True)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(None, drain), self._wait
            )
        except TimeoutError:
            log.warning("engine calls still running after %.0f s", self._wait)
        self._release()


def open_backend(settings: Settings, *, hub_id: str, executor: Executor) -> BackendBundle:
    """The bundle of ``settings.backend.kind``; blocking calls go to ``executor``."""
    kind = settings.backend.kind
    if kind == "docker":
        return docker_bundle(settings, hub_id=hub_id, executor=executor)
    if kind == "fake":
        return fake_bundle(settings, hub_id=hub_id)
    accepted = ", ".join(repr(k) for k in BACKEND_KINDS)
    raise ConfigError(f"backend.kind: {kind!r} is not available; accepted kinds: {accepted}")


def fake_bundle(settings: Settings, *, hub_id: str) -> BackendBundle:
    """An in-memory engine: servers start and stop, nothing runs, nothing is measured."""
    return BackendBundle(
        backend=FakeBackend(hub_id=hub_id, extra_labels=settings.labels),
        stats=FakeStats(),
        volumes=FakeVolumes(),
        images=FakeImages(hub_id),
    )


def docker_bundle(settings: Settings, *, hub_id: str, executor: Executor) -> BackendBundle:
    """One Docker engine (``backend.docker_host``), and the host firewall where it is local."""
    client = docker_client(settings)
    try:
        backend = DockerBackend(
            client,
            hub_id=hub_id,
            executor=executor,
            extra_labels=settings.labels,
            runtime_volumes=settings.backend.runtime_volumes,
        )
    except BaseException:
        client.close()
        raise
    local = engine_is_local(settings)
    guard = host_guard(settings, hub_id=hub_id, executor=executor, local=local)
    extra: tuple[EventSource, ...] = ()
    if local and CGROUP_ROOT.is_dir():
        # Children OOM-killed where the engine sends no oom event (cgroup v2 engines).
        counters = OomCounters(client, hub_id=hub_id)
        extra = (lambda: oom_counter_events(counters, executor),)
    return BackendBundle(
        backend=backend,
        stats=DockerStats(client, executor),
        volumes=DockerVolumeMeter(
            client,
            hub_id=hub_id,
            executor=executor,
            image=settings.quota.storage_image,
            extra_labels=settings.labels,
        ),
        images=EngineImages(client, executor, hub_id=hub_id),
        services=(guard,),
        extra_events=extra,
        firewall=guard.firewall,
        release=client.close,
    )


def host_guard(settings: Settings, *, hub_id: str, executor: Executor, local: bool) -> HostGuard:
    """The rules that keep workspaces off host services (``backend.host_firewall``), or a
    guard that only warns when they cannot be installed from here."""
    if not settings.backend.host_firewall:
        off = "backend.host_firewall is off: workspaces can reach host services on 0.0.0.0"
        return HostGuard(None, executor=executor, off_because=off)
    if not local:
        off = (
            f"backend.host_firewall: the engine ({settings.backend.docker_host}) may run on "
            "another machine; install its rules there: workspaces can reach that machine's "
            "services on 0.0.0.0"
        )
        return HostGuard(None, executor=executor, off_because=off)
    firewall = HostFirewall(hub_id=hub_id, interface=bridge_name(hub_id))
    return HostGuard(firewall, executor=executor)


def engine_is_local(settings: Settings) -> bool:
    """Whether the engine runs on this machine (its socket, not TCP or SSH)."""
    host = settings.backend.docker_host
    return not host or host.startswith("unix://")


# Used only when the engine is down at start, so that the hub still starts and
# reports the engine as down; 1.41 is Docker 20.10's API, the oldest we support.
FALLBACK_API_VERSION = "1.41"


def docker_client(settings: Settings) -> docker.DockerClient:
    """A client for the configured engine; never fails because the engine is down."""
    base_url = settings.backend.docker_host or None
    # A connection per executor thread, plus the two event streams: none is thrown away.
    pool = settings.backend.threads + 2
    try:
        if base_url:
            return docker.DockerClient(base_url=base_url, version="auto", max_pool_size=pool)
        return docker.DockerClient.from_env(version="auto", max_pool_size=pool)
    except docker.errors.DockerException:
        if base_url:
            return docker.DockerClient(
                base_url=base_url, version=FALLBACK_API_VERSION, max_pool_size=pool
            )
        return docker.DockerClient.from_env(version=FALLBACK_API_VERSION, max_pool_size=pool)
