"""The Docker engine's event stream, as an async iterator of ``EngineEvent``.

    events = container_events(client, hub_id="h1")
    async for event in events:          # EngineEvent(action="die", server_id=42, exit_code=137)
        ...
    await events.aclose()               # closes the HTTP stream; the reader thread ends

The SDK's ``client.events()`` blocks on a long-lived HTTP response, so it is
read by one dedicated daemon thread per subscription, not by the bounded
executor: a subscription lives as long as the hub, and would otherwise hold
one of the executor's workers forever. Items reach the event loop through
``loop.call_soon_threadsafe``. Closing the generator closes the response's
socket, which ends the thread's blocking read promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import docker

from hub.domain.errors import BackendUnavailable
from hub.domain.servers import EngineEvent

log = logging.getLogger(__name__)

ACTIONS = ("start", "die", "oom")
HUB_LABEL = "labdock.hub"
SERVER_LABEL = "labdock.server"
ROLE_LABEL = "labdock.role"
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Where a container's memory cgroup lies, for cgroup v2 and v1, cgroupfs and systemd drivers.
_OOM_FILES = (
    "docker/{id}/memory.events",
    "system.slice/docker-{id}.scope/memory.events",
    "memory/docker/{id}/memory.oom_control",
    "memory/system.slice/docker-{id}.scope/memory.oom_control",
)


class _Stream(Protocol):
    def __iter__(self) -> Iterator[Mapping[str, Any]]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class _End:
    """The reader thread stopped; ``error`` says why, unless it was asked to."""

    error: BaseException | None


def parse_event(raw: Mapping[str, Any]) -> EngineEvent | None:
    """An ``EngineEvent`` from one decoded engine event, or ``None`` if not ours."""
    action = str(raw.get("Action") or raw.get("status") or "")
    actor = raw.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    server = attributes.get(SERVER_LABEL, "")
    if action not in ACTIONS or not str(server).isdigit():
        return None
    exit_code = str(attributes.get("exitCode", ""))
    return EngineEvent(
        action=action,
        server_id=int(server),
        container_id=str(actor.get("ID") or raw.get("id") or ""),
        exit_code=int(exit_code) if action == "die" and exit_code.isdigit() else None,
    )


async def container_events(
    client: docker.DockerClient,
    *,
    hub_id: str,
    actions: tuple[str, ...] = ACTIONS,
    subscribed: asyncio.Event | None = None,
) -> AsyncGenerator[EngineEvent, None]:
    """Yield ``start``, ``die`` and ``oom`` events (or only ``actions``) of this hub's containers.

    ``subscribed`` is set once the engine has accepted the subscription: every
    event after that moment is delivered. Raises ``BackendUnavailable`` if the
    stream breaks (engine restarted or unreachable): events may have been
    missed, so the caller should reconcile with ``Backend.list()`` and
    subscribe again.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[EngineEvent | _End] = asyncio.Queue()
    lock = threading.Lock()
    state: dict[str, Any] = {"stream": None, "closed": False}
    filters = {"type": ["container"], "label": [f"labdock.hub={hub_id}"], "event": list(actions)}

    def hand_over(item: EngineEvent | _End) -> None:
        # A closed loop means nobody listens any more; the thread just ends.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def read() -> None:
        error: BaseException | None = None
        try:
            stream: _Stream = client.events(decode=True, filters=filters)
            with lock:
                state["stream"] = stream
                closed = state["closed"]
            if closed:
                stream.close()
                return
            if subscribed is not None:  # the engine answered: the subscription is live
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(subscribed.set)
            for raw in stream:
                event = parse_event(raw)
                if event is not None:
                    hand_over(event)
        except Exception as exc:  # reported to the consumer, not lost in the thread
            error = exc
        with lock:
            asked_to_stop = state["closed"]
        hand_over(_End(None if asked_to_stop else error or EOFError("stream ended")))

    thread = threading.Thread(target=read, name=f"labdock-events-{hub_id}", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise BackendUnavailable(
                        "lost the Docker engine's event stream "
                        f"({item.error.__class__.__name__}: {item.error}); "
                        "reconcile with list() and subscribe again"
                    ) from item.error
                return
            yield item
    finally:
        with lock:
            state["closed"] = True
            stream = state["stream"]
        if stream is not None:
            try:
                stream.close()
            except Exception:  # best effort: the socket may already be gone
                log.debug("closing the event stream failed", exc_info=True)


class ExitWatcher:
    """Tells launches when their container dies, from one shared ``die`` subscription.

        watcher = ExitWatcher(client, hub_id="h1")
        await watcher.subscribe()            # before starting a container: no die is missed
        died = watcher.died(container.id)    # a future: resolves with the exit code
        ...
        watcher.forget(container.id, died)
        await watcher.close()

    A launch waits for "the app answers or the container dies"; asking the engine
    (``inspect``) over and over for the second costs CPU on both sides, which a
    burst of launches on a small machine cannot spare. The subscription is opened
    on demand and closed after ``linger`` seconds without waiters. If the stream
    breaks, pending futures fail with ``BackendUnavailable`` and the caller falls
    back to asking the engine.
    """

    def __init__(self, client: docker.DockerClient, *, hub_id: str, linger: float = 30.0) -> None:
        self._client = client
        self._hub_id = hub_id
        self._linger = linger
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._waiters: dict[str, set[asyncio.Future[int | None]]] = {}
        # Deaths seen recently, so that a waiter registered just after one still learns it.
        self._dead: OrderedDict[str, int | None] = OrderedDict()
        self._idle: asyncio.TimerHandle | None = None
        self._error = BackendUnavailable("the engine's event stream ended")

    async def subscribe(self) -> None:
        """Open the subscription unless it is open; return once the engine accepted it."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests): start afresh
            self._loop, self._task, self._waiters = loop, None, {}
        if self._task is None or self._task.done():
            self._subscribed = asyncio.Event()
            self._task = loop.create_task(self._follow(self._subscribed), name="labdock-exits")
        self._keep_alive()
        task, subscribed = self._task, self._subscribed
        if subscribed.is_set():
            return
        waiting = asyncio.ensure_future(subscribed.wait())
        try:
            await asyncio.wait({waiting, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
        if not subscribed.is_set():
            raise self._error

    def died(self, container_id: str) -> asyncio.Future[int | None]:
        """A future resolved with the exit code once the container dies (after ``subscribe``)."""
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        if container_id in self._dead:
            future.set_result(self._dead[container_id])
        elif self._task is None or self._task.done() or not self._subscribed.is_set():
            future.set_exception(BackendUnavailable("not subscribed to the engine's events"))
        else:
            self._waiters.setdefault(container_id, set()).add(future)
        return future

    def forget(self, container_id: str, future: asyncio.Future[int | None]) -> None:
        """Stop waiting (the app answered, or the launch gave up)."""
        waiters = self._waiters.get(container_id)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[container_id]
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()  # retrieved: asyncio need not warn about it
        self._keep_alive()

    async def close(self) -> None:
        """Close the subscription; its reader thread ends."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _keep_alive(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self._loop is not None:
            self._idle = self._loop.call_later(self._linger, self._close_if_idle)

    def _close_if_idle(self) -> None:
        self._idle = None
        if self._waiters:
            self._keep_alive()
        elif self._task is not None and not self._task.done():
            self._task.cancel()

    async def _follow(self, subscribed: asyncio.Event) -> None:
        events = container_events(
            self._client, hub_id=self._hub_id, actions=("die",), subscribed=subscribed
        )
        error = BackendUnavailable("the engine's event stream ended")
        try:
            async for event in events:
                self._dead[event.container_id] = event.exit_code
                while len(self._dead) > 512:
                    self._dead.popitem(last=False)
                for future in self._waiters.pop(event.container_id, ()):
                    if not future.done():
                        future.set_result(event.exit_code)
        except BackendUnavailable as exc:  # told to the waiters; the next subscribe retries
            log.debug("exit watcher: %s", exc.message)
            error = exc
        finally:
            # Unless a newer subscription took over (after close()), its waiters are ours.
            if self._task in (None, asyncio.current_task()):
                self._error = error
                for waiters in self._waiters.values():
                    for future in waiters:
                        if not future.done():
                            future.set_exception(error)
                self._waiters = {}
            await events.aclose()


def oom_kill_count(container_id: str, root: Path = CGROUP_ROOT) -> int | None:
    """How many processes the kernel OOM-killed in a container (``oom_kill`` in
    ``memory.events`` on cgroup v2, in ``memory.oom_control`` on v1), read on the
    engine's own machine; ``None`` when its cgroup is not found there."""
    for pattern in _OOM_FILES:
        try:
            text = (root / pattern.format(id=container_id)).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    return None


class OomCounters:
    """The fallback for engines that report no ``oom`` event when a process other than a
    container's main one is OOM-killed: each rise of a server's cgroup OOM counter
    becomes an ``oom`` ``EngineEvent``.

        counters = OomCounters(client, hub_id="h1")
        counters.poll()      # blocking: [EngineEvent(action="oom", server_id=42, ...)]

    Only where the hub runs on the engine's machine and can read its cgroups.
    """

    def __init__(
        self, client: docker.DockerClient, *, hub_id: str, root: Path = CGROUP_ROOT
    ) -> None:
        self._client = client
        self._hub_id = hub_id
        self._root = root
        self._counts: dict[str, int] = {}
        self._first = True

    def poll(self) -> list[EngineEvent]:
        """The servers whose counter rose since the last poll (blocking: one engine call)."""
        running = self._client.api.containers(
            filters={"label": [f"{HUB_LABEL}={self._hub_id}"], "status": "running"}
        )
        counts: dict[str, int] = {}
        events = []
        for found in running:
            labels = found.get("Labels") or {}
            server = str(labels.get(SERVER_LABEL, ""))
            if not server.isdigit() or ROLE_LABEL in labels:
                continue
            container_id = str(found.get("Id", ""))
            count = oom_kill_count(container_id, self._root)
            if count is None:
                continue
            before = self._counts.get(container_id)
            if before is None:  # first seen after the first poll: it started since
                before = count if self._first else 0
            if count > before:
                events.append(EngineEvent("oom", int(server), container_id))
            counts[container_id] = count
        self._counts, self._first = counts, False
        return events


async def oom_counter_events(
    counters: OomCounters, executor: Executor, every: float = 10.0
) -> AsyncGenerator[EngineEvent, None]:
    """Poll ``counters`` every ``every`` seconds, for ever; engine errors are logged."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            for event in await loop.run_in_executor(executor, counters.poll):
                yield event
        except Exception as exc:  # engine down: the event stream's reconcile repairs state
            log.debug("OOM counters unreadable: %s", exc)
        await asyncio.sleep(every)
