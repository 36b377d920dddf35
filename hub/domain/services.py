"""The hub's background work: services started in order and closed in reverse order.

    services = Services([
        Step("catalog-seed", begin=seed),             # runs once, at start
        Loop("activity", lambda: flush_forever(...)),  # a task from start to close
    ])
    await services.start()     # each in turn; if one fails, those started are closed
    ...
    await services.close()     # the last one started is the first one closed

Everything a running hub does besides answering requests is one of these, so
that the order of start and close is written once (``hub.app``), not spread over
ad-hoc tasks and ``finally`` clauses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)

Action = Callable[[], Awaitable[None]]


class Service(Protocol):
    """Something the hub starts once and closes once; ``name`` is for logs and tests."""

    @property
    def name(self) -> str:
        """A short name: ``engine-events``, ``storage-meter``."""

    async def start(self) -> None:
        """Begin; return once the service is under way (a loop runs on as a task)."""

    async def close(self) -> None:
        """End what ``start`` began; called only after ``start`` returned."""


class Step:
    """A service made of two actions: ``begin`` at start, ``end`` at close (either may be none)."""

    def __init__(
        self, name: str, *, begin: Action | None = None, end: Action | None = None
    ) -> None:
        self._name = name
        self._begin = begin
        self._end = end

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        if self._begin is not None:
            await self._begin()

    async def close(self) -> None:
        if self._end is not None:
            await self._end()


class Loop:
    """A service that runs ``work()`` as a task from start until close cancels it;
    ``after`` runs once the task has ended."""

    def __init__(
        self,
        name: str,
        work: Callable[[], Coroutine[Any, Any, None]],
        *,
        after: Action | None = None,
    ) -> None:
        self._name = name
        self._work = work
        self._after = after
        self.task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        self.task = asyncio.create_task(self._work(), name=self._name)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self._after is not None:
            await self._after()


class Services:
    """Services started in the order given and closed in reverse order."""

    def __init__(self, services: Sequence[Service] = ()) -> None:
        self._services = list(services)
        self._started: list[Service] = []

    def add(self, service: Service) -> None:
        """Append a service, to be started after the ones already given."""
        self._services.append(service)

    @property
    def names(self) -> list[str]:
        """Every service's name, in start order."""
        return [s.name for s in self._services]

    @property
    def running(self) -> list[str]:
        """The names of the services started and not yet closed, in start order."""
        return [s.name for s in self._started]

    async def start(self) -> None:
        """Start each service in turn; if one fails, close those started and raise."""
        for service in self._services:
            try:
                await service.start()
            except BaseException:
                await self.close()
                raise
            self._started.append(service)

    async def close(self) -> None:
        """Close the started services, last first; one that fails to close is logged."""
        while self._started:
            service = self._started.pop()
            try:
                await service.close()
            except Exception:
                log.exception("service %s did not close cleanly", service.name)
