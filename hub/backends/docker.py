"""Servers as containers on one Docker engine.

    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="docker")
    backend = DockerBackend(docker.from_env(), hub_id="h1", executor=pool)
    await backend.ping()
    endpoint = await backend.start(spec, progress=print)   # Endpoint(host="172.18.0.2", ...)
    await backend.stop(spec.server_id, remove=True)         # the home volume stays

Every blocking SDK call runs on the executor that is passed in, through
``engine_calls`` (which also maps engine failures to domain errors); keep it at
or below the client's connection pool (``max_pool_size``, 10 by default) so that
connections are reused.

Decisions worth knowing:

- **Network.** One bridge network per hub, ``internal`` (nothing is forwarded
  beyond it: no egress) with inter-container traffic off (``enable_icc=false``).
  No port is published. The hub on the host reaches container addresses
  directly, because the bridge holds the gateway address (Docker 20.10-24 and
  25.0.4+; 25.0.0-25.0.3 left internal bridges without one). The reverse also
  holds: a container reaches every *host* address, so host services listening
  on 0.0.0.0 are exposed to workspaces. Bind them to 127.0.0.1, or drop input
  from the bridge interface, which is named ``ld-<hub_id>`` for that purpose.
- **Idempotent start.** The container is named from ids only. A running
  container with the same name and the same spec fingerprint is adopted; one
  with another fingerprint is a ``Conflict``. A stopped one is removed and
  created again, so that it always matches the spec (user data lives in the
  home volume, not in the container).
- **User.** The image's ``USER`` when it names someone other than root, else
  ``1000:1000``. The image must own ``spec.home`` by that user: a new volume
  copies the owner of the image's directory, and no capability is left to chown.
- **Init.** ``init=True`` reaps zombies and forwards signals. With ``init=None``
  (the default) the backend tries it, and if the engine's init binary is
  missing it logs a warning, stops asking for it, and retries the launch once.
- **Failures.** On timeout the container is stopped (not removed) so its
  state and logs can be inspected; the next ``start`` replaces it.
- **Few engine calls per launch.** The image's user and the volumes are looked
  up once per backend, the network once; the container is created without a
  lookup first (a name conflict means one is left over). While the app starts,
  the hub probes it directly and learns a crash from the engine's ``die`` event
  (``ExitWatcher``: one subscription shared by all launches), not by polling
  ``inspect``. A launch costs what ``containers.create`` + ``start`` + one
  ``inspect`` (for the address) cost, and nothing while it waits.
- **Runtime volumes.** Where the storage driver gives each container cold
  caches (``fuse-overlayfs``), the directories an image lists in its
  ``labdock.runtime-paths`` label are mounted read-only from volume copies that
  the hub makes once per image (``docker_runtime``): a jupyter_server then
  starts in 0.49 s instead of 0.80 s (``bench/runtime.py``). Until a copy is ready, servers start
  from the image alone.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import math
import re
import time
import weakref
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import LogConfig
from docker.types import Mount as DockerMount

from hub.backends.docker_config import (
    HUB_LABEL,
    SERVER_LABEL,
    SPEC_LABEL,
    check_mounts,
    create_args,
    environment_name,
    spec_fingerprint,
)
from hub.backends.docker_events import ExitWatcher, container_events
from hub.backends.docker_names import container_name, network_name
from hub.backends.docker_network import bridge_name, ensure_network
from hub.backends.docker_observe import observe
from hub.backends.docker_runtime import Mode, RuntimeImage, RuntimeVolumes, runtime_paths
from hub.backends.docker_volumes import HubVolumes
from hub.backends.engine_calls import REFUSALS, EngineCalls, missing_image, reason
from hub.backends.readiness import readiness_path, wait_until_ready
from hub.domain.errors import (
    BackendUnavailable,
    ConfigError,
    Conflict,
    EngineRefused,
    InvalidInput,
    LaunchFailed,
    NotFound,
)
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

log = logging.getLogger(__name__)

LOG_LINES = 20
# How long a launch waits for the die-event subscription before it falls back to polling.
SUBSCRIBE_WAIT = 5.0
FAILED_STOP_GRACE = 3
_HUB_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
_GONE = {"exited", "dead", "removing"}


@dataclass(frozen=True)
class _Image:
    """What a launch needs of an image, looked up once: its ``USER`` and shareable trees."""

    user: str
    runtime: RuntimeImage


class DockerBackend:
    """The ``Backend`` port on one Docker engine: a container per server."""

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        hub_id: str,
        executor: Executor,
        network: str | None = None,
        extra_labels: Mapping[str, str] | None = None,
        log_max_size: str = "10m",
        log_max_files: int = 3,
        internal: bool = True,
        init: bool | None = None,
        runtime_volumes: Mode = "auto",
    ) -> None:
        if not _HUB_ID.match(hub_id):
            raise ConfigError(
                f"hub_id: expected up to 31 lowercase letters, digits or '-', got {hub_id!r}"
            )
        self._client = client
        self._hub_id = hub_id
        self._call = EngineCalls(client, executor)
        self._network = network or network_name(hub_id)
        self._extra_labels = dict(extra_labels or {})
        self._log_config = LogConfig(
            type="json-file", config={"max-size": log_max_size, "max-file": str(log_max_files)}
        )
        self._internal = internal
        self._init_forced = init is not None
        self._use_init = init is not False
        self._network_ready = False
        self._network_lock = asyncio.Lock()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._images: dict[str, _Image] = {}
        self._volumes = HubVolumes(
            client, hub_id=hub_id, call=self._call, extra_labels=self._extra_labels
        )
        self._runtime = RuntimeVolumes(
            client,
            hub_id=hub_id,
            call=self._call,
            extra_labels=self._extra_labels,
            mode=runtime_volumes,
        )
        self._exits = ExitWatcher(client, hub_id=hub_id)

    @property
    def hub_id(self) -> str:
        """The id this backend's names and labels carry."""
        return self._hub_id

    @property
    def network(self) -> str:
        """The name of the hub's container network."""
        return self._network

    @property
    def bridge(self) -> str:
        """The host interface of the network, named so that a firewall rule can match it."""
        return bridge_name(self._hub_id)

    @property
    def uses_init(self) -> bool:
        """Whether new containers get an init process (false after a fallback)."""
        return self._use_init

    # -- engine access -------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise ``BackendUnavailable`` when the engine cannot be reached."""
        try:
            await self._call(self._client.ping)
        except REFUSALS as exc:
            raise BackendUnavailable(f"the Docker engine is not healthy: {reason(exc)}") from exc

    # -- network and volumes -------------------------------------------------------------------

    async def ensure_network(self) -> None:
        """Create the hub's network unless it exists; refuse one that is not ours."""
        async with self._network_lock:
            if not self._network_ready:
                await self._call(
                    ensure_network,
                    self._client,
                    name=self._network,
                    hub_id=self._hub_id,
                    internal=self._internal,
                    labels=self._extra_labels,
                )
                self._network_ready = True

    async def remove_volume(self, user_id: int) -> None:
        """Delete a user's home volume (an explicit admin action). Missing is fine."""
        await self._volumes.remove_home(user_id)

    async def prepare_runtime(self, images: Iterable[str], *, only_copied: bool = False) -> None:
        """Drop runtime volumes of vanished images, then make those of ``images`` (in turn);
        ``only_copied``: only check those made before (what a hub does at start).

        Launches do not wait for this: until an image's copies are complete its
        servers start from the image itself (``docker_runtime``). Nothing is asked
        of the engine when runtime volumes are off.
        """
        try:
            if not await self._runtime.enabled():
                return
            await self._runtime.prune()
            found = []
            for image in images:
                try:
                    found.append((await self._image(image)).runtime)
                except LaunchFailed as exc:
                    log.info("no runtime volumes for %s: %s", image, exc.message)
            await self._runtime.prepare(found, only_copied=only_copied)
        except BackendUnavailable as exc:  # the first launch after the engine returns copies
            log.warning("runtime volumes not checked: %s", exc.message)

    def runtime_ready(self, image: str) -> bool:
        """Whether servers of ``image`` (as launched: its id or tag) mount runtime volumes."""
        known = self._images.get(image)
        return known is not None and self._runtime.ready(known.runtime.id)

    async def close(self) -> None:
        """Close the engine event subscription, and stop making runtime volumes."""
        await self._runtime.close()
        await self._exits.close()

    # -- start ---------------------------------------------------------------------------------

    async def start(self, spec: ServerSpec, progress: ProgressSink) -> Endpoint:
        """Create and start the container; return once the app answers readiness.

        Progress goes image ready → creating → starting → waiting → ready. Failures
        raise (``LaunchFailed`` with the last log lines, ``Conflict``,
        ``BackendUnavailable``) and are not reported through ``progress``.
        """
        if spec.hub_id != self._hub_id:
            raise InvalidInput(
                f"spec is for hub {spec.hub_id!r}; this backend runs {self._hub_id!r}"
            )
        check_mounts(spec)
        deadline = time.monotonic() + spec.start_timeout
        name = container_name(spec.hub_id, spec.server_id)
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        async with lock:
            return await self._start_locked(spec, progress, deadline)

    async def _start_locked(
        self, spec: ServerSpec, progress: ProgressSink, deadline: float
    ) -> Endpoint:
        # Follow die events from before the container starts, so that a crash is
        # learned at once without asking the engine again and again.
        subscribed = asyncio.ensure_future(self._exits.subscribe())
        try:
            image = await self._image(spec.image)
            image_user = image.user
            await emit(progress, ProgressEvent(10, f"image {spec.image} is ready"))
            await emit(progress, ProgressEvent(20, "creating the container"))
            avoid = (spec.home, *(m.target for m in spec.mounts))
            _, _, runtime = await asyncio.gather(
                self.ensure_network(),
                self._volumes.ensure_home(spec),
                self._runtime.mounts(image.runtime, avoid),
            )
            await self._volumes.ensure_mounts(spec, image_user)
            container, adopted = await self._create_or_adopt(spec, image_user, runtime)
            if adopted:
                await emit(progress, ProgressEvent(40, "the container is already running"))
                await asyncio.wait({subscribed}, timeout=SUBSCRIBE_WAIT)
                await self._call(container.reload)  # a death before the subscription shows
            else:
                await emit(progress, ProgressEvent(40, "starting the container"))
                await asyncio.wait({subscribed}, timeout=SUBSCRIBE_WAIT)
                container = await self._start_container(container, spec, image_user, runtime)
            await emit(progress, ProgressEvent(60, "waiting for the app to answer"))
            endpoint = await self._wait_ready(container, spec, deadline)
        finally:
            if not subscribed.done():
                subscribed.cancel()
            # A failed subscription only means polling instead: see _until_exit.
            await asyncio.gather(subscribed, return_exceptions=True)
        await emit(progress, ProgressEvent(100, f"ready at {endpoint.url}", ready=True))
        return endpoint

    async def _image(self, image: str) -> _Image:
        """The image's ``USER`` and runtime paths; remembered, as an image (pinned by id)
        never changes."""
        known = self._images.get(image)
        if known is not None:
            return known
        try:
            found = await self._call(self._client.images.get, image)
        except REFUSALS as exc:
            if missing_image(exc):
                raise LaunchFailed(
                    f"image {image} is not built; "
                    f"run `labdock images build {environment_name(image)}`"
                ) from exc
            raise LaunchFailed(f"could not inspect image {image}: {reason(exc)}") from exc
        config = found.attrs.get("Config") or {}
        facts = _Image(
            user=str(config.get("User") or ""),
            runtime=RuntimeImage(str(found.id), runtime_paths(config.get("Labels"))),
        )
        self._images[image] = facts
        return facts

    async def _create_or_adopt(
        self, spec: ServerSpec, image_user: str, runtime: Sequence[DockerMount] = ()
    ) -> tuple[Container, bool]:
        """A new container, or the running one to adopt (``True``).

        Creating first saves a lookup on the usual path; the name is taken only
        when a container of this server is left over or already running.
        """
        try:
            return await self._create(spec, image_user, runtime), False
        except Conflict:
            existing = await self._existing(spec)  # removes a stopped one
            if existing is not None:
                return existing, True
            return await self._create(spec, image_user, runtime), False

    async def _existing(self, spec: ServerSpec) -> Container | None:
        """The running container to adopt, or None after clearing a stopped one."""
        name = container_name(spec.hub_id, spec.server_id)
        try:
            container = await self._call(self._client.containers.get, name)
        except NotFound:
            return None
        labels = container.labels
        if labels.get(HUB_LABEL) != self._hub_id:
            raise Conflict(f"a container named {name} exists and is not this hub's; remove it")
        if container.status == "running":
            if labels.get(SPEC_LABEL) != spec_fingerprint(spec) or not self._address(container):
                raise Conflict(
                    f"server {spec.server_id} is already running with another configuration; "
                    "stop it first"
                )
            return container
        await self._remove(container)
        return None

    async def _create(
        self, spec: ServerSpec, image_user: str, runtime: Sequence[DockerMount] = ()
    ) -> Container:
        args = create_args(
            spec,
            network=self._network,
            image_user=image_user,
            init=self._use_init,
            extra_labels=self._extra_labels,
            log_config=self._log_config,
            runtime_mounts=runtime,
        )
        try:
            try:
                return await self._call(self._client.containers.create, **args)
            except NotFound as exc:
                if missing_image(exc) or "network" not in reason(exc):
                    raise
                self._network_ready = False  # removed behind our back: make it again, once
                await self.ensure_network()
                return await self._call(self._client.containers.create, **args)
        except Conflict as exc:
            raise Conflict(
                f"server {spec.server_id} is being started by another request; try again"
            ) from exc
        except (NotFound, EngineRefused) as exc:
            if missing_image(exc):
                self._images.pop(spec.image, None)
                raise LaunchFailed(
                    f"image {spec.image} is not built; "
                    f"run `labdock images build {environment_name(spec.image)}`"
                ) from exc
            raise LaunchFailed(
                f"the Docker engine refused to create server {spec.server_id}: {reason(exc)}"
            ) from exc

    async def _start_container(
        self,
        container: Container,
        spec: ServerSpec,
        image_user: str,
        runtime: Sequence[DockerMount] = (),
        retries: int = 2,
    ) -> Container:
        try:
            await self._call(container.start)
        except REFUSALS as exc:
            why = reason(exc)
            if retries and await self._recoverable(why):
                await self._remove(container)
                container = await self._create(spec, image_user, runtime)
                return await self._start_container(
                    container, spec, image_user, runtime, retries - 1
                )
            if spec.gpu_device_ids and "device driver" in why:
                why = (
                    f"GPUs {', '.join(spec.gpu_device_ids)} were requested but the engine "
                    f"cannot provide them (is the NVIDIA container toolkit installed?): {why}"
                )
            raise LaunchFailed(
                f"the Docker engine could not start server {spec.server_id}: {why}",
                logs=tuple(await self._tail(container)),
            ) from exc
        await self._call(container.reload)
        return container

    async def _recoverable(self, why: str) -> bool:
        """Fix what a start failure says is missing, if we can: the network, or init."""
        if f"network {self._network} not found" in why:
            self._network_ready = False  # removed behind our back: make it again
            await self.ensure_network()
            return True
        if self._use_init and not self._init_forced and await self._is_init_missing(why):
            log.warning("the Docker engine has no init binary (%s); running without it", why)
            self._use_init = False
            return True
        return False

    async def _is_init_missing(self, why: str) -> bool:
        binary = "docker-init"
        with contextlib.suppress(*REFUSALS):
            binary = str((await self._call(self._client.info)).get("InitBinary") or binary)
        return binary in why and ("not found" in why or "no such file" in why.lower())

    # -- readiness -----------------------------------------------------------------------------

    def _address(self, container: Container) -> str:
        networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
        return str((networks.get(self._network) or {}).get("IPAddress") or "")

    async def _wait_ready(
        self, container: Container, spec: ServerSpec, deadline: float
    ) -> Endpoint:
        host = self._address(container)
        path = readiness_path(spec.prefix, spec.readiness_path)
        exited = asyncio.ensure_future(self._until_exit(container))
        ready = asyncio.ensure_future(
            wait_until_ready(host, spec.port, path, secret=spec.secret)
            if host  # no address: it exited already, let the watcher tell
            else asyncio.Event().wait()
        )
        waiters: set[asyncio.Future[Any]] = {exited, ready}
        try:
            done, _ = await asyncio.wait(
                waiters,
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for task in waiters:
                task.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        if ready in done:  # the app answered, even if it exited right after
            ready.result()
            return Endpoint(host, spec.port, str(container.id), str(container.name))
        if exited in done:
            raise LaunchFailed(
                self._exit_reason(spec, exited.result()), logs=tuple(await self._tail(container))
            )
        await self._halt(container)
        raise LaunchFailed(
            f"server {spec.server_id} was not ready after {spec.start_timeout:g} s",
            logs=tuple(await self._tail(container)),
        )

    async def _until_exit(self, container: Container) -> dict[str, Any]:
        """The container's state once it has stopped: told by a die event, else polled."""
        cid = str(container.id)
        if (container.attrs.get("State") or {}).get("Status") not in _GONE:
            died = self._exits.died(cid)
            try:
                await died
            except BackendUnavailable:  # no event stream: ask the engine instead
                return await self._poll_exit(container)
            finally:
                self._exits.forget(cid, died)
        try:
            await self._call(container.reload)
        except NotFound:  # stopped and removed meanwhile
            return {"Status": "removed"}
        state: dict[str, Any] = container.attrs.get("State") or {}
        return state

    async def _poll_exit(self, container: Container) -> dict[str, Any]:
        delay = 0.05
        while True:
            try:
                await self._call(container.reload)
            except NotFound:  # stopped and removed meanwhile
                return {"Status": "removed"}
            state: dict[str, Any] = container.attrs.get("State") or {}
            if state.get("Status") in _GONE:
                return state
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    @staticmethod
    def _exit_reason(spec: ServerSpec, state: Mapping[str, Any]) -> str:
        code = state.get("ExitCode")
        if state.get("Status") == "removed":
            return f"server {spec.server_id} was removed before it was ready"
        if state.get("OOMKilled"):
            return (
                f"server {spec.server_id} was killed for using more than its memory limit "
                f"({format_memory(spec.resources.memory)}) before it was ready"
            )
        return f"server {spec.server_id} exited with code {code} before it was ready"

    async def _halt(self, container: Container) -> None:
        """Stop a failed launch but keep it for inspection."""
        try:
            await self._call(container.stop, timeout=FAILED_STOP_GRACE)
        except REFUSALS:
            log.warning("could not stop failed container %s", container.name, exc_info=True)

    async def _tail(self, container: Container, tail: int = LOG_LINES) -> list[str]:
        try:
            raw: bytes = await self._call(container.logs, tail=tail)
        except REFUSALS:
            return []
        return raw.decode("utf-8", errors="replace").splitlines()[-tail:]

    # -- stop, list, logs, events --------------------------------------------------------------

    async def _containers_of(self, server_id: int) -> list[Container]:
        filters: dict[str, str | list[str] | bool] = {
            "label": [f"{HUB_LABEL}={self._hub_id}", f"{SERVER_LABEL}={server_id}"]
        }
        try:
            return await self._call(self._client.containers.list, all=True, filters=filters)
        except REFUSALS as exc:
            raise BackendUnavailable(f"could not list containers: {reason(exc)}") from exc

    async def _remove(self, container: Container) -> None:
        try:
            await self._call(container.remove, force=True)
        except (NotFound, Conflict):  # gone, or a removal is already in progress
            pass
        except EngineRefused as exc:
            raise BackendUnavailable(
                f"could not remove container {container.name}: {reason(exc)}"
            ) from exc

    async def stop(self, server_id: int, *, remove: bool = False, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; ``remove`` deletes the container.

        The home volume is never removed here. A missing container is not an error.
        """
        for container in await self._containers_of(server_id):
            try:
                await self._call(container.stop, timeout=math.ceil(max(grace, 0.0)))
            except NotFound:
                continue
            except (Conflict, EngineRefused) as exc:
                raise BackendUnavailable(
                    f"could not stop server {server_id}: {reason(exc)}"
                ) from exc
            if remove:
                await self._remove(container)

    async def logs(self, server_id: int, tail: int = LOG_LINES) -> list[str]:
        """The last ``tail`` lines of a server's output (stdout and stderr)."""
        containers = await self._containers_of(server_id)
        if not containers:
            raise NotFound(f"server {server_id} has no container")
        return await self._tail(containers[0], tail)

    async def list(self) -> builtins.list[Observed]:
        """Every container of this hub, found by label."""
        try:
            return await self._call(observe, self._client, self._hub_id, self._network)
        except REFUSALS as exc:
            raise BackendUnavailable(f"could not list containers: {reason(exc)}") from exc

    def events(self) -> AsyncGenerator[EngineEvent, None]:
        """``start``, ``die`` (with exit code) and ``oom`` events of this hub's containers.

        Close it with ``aclose()``. It raises ``BackendUnavailable`` if the engine's
        stream breaks; reconcile with ``list()`` and subscribe again.
        """
        return container_events(self._client, hub_id=self._hub_id)
