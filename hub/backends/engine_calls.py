"""Blocking Docker SDK calls, run on the bounded executor passed in, with one error mapping.

    call = EngineCalls(client, executor)
    info = await call(client.info)
    try:
        container = await call(client.containers.get, "labdock-h1-s42")
    except NotFound:            # hub.domain.errors, not docker.errors
        container = None

Every backend module reaches the engine through this, so an engine failure means
the same wherever it happens:

- the engine cannot be reached, or did not answer in time (``requests``'
  ``ConnectionError`` and ``Timeout``): ``BackendUnavailable``;
- it answered 404 (``docker.errors.NotFound``, ``ImageNotFound`` included): ``NotFound``;
- it answered 409 (a name taken, a removal already in progress, a volume in use):
  ``Conflict``;
- it refused otherwise (any other ``APIError``, or the SDK's own ``DockerException``):
  ``EngineRefused``, a ``BackendUnavailable`` ("the Docker engine refused: ...").

``REFUSALS`` are the three an engine that answered gives. Each mapped error keeps the
SDK's exception as its ``__cause__``: ``reason`` gives the engine's own words, and
``missing_image`` tells an absent image from another absent thing. A call site that
knows what was asked says so in its own error, such as ``LaunchFailed`` for a container
that could not be created.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import ParamSpec, TypeVar

import docker
import docker.errors as derr
import requests

from hub.domain.errors import (
    BackendUnavailable,
    Conflict,
    EngineRefused,
    LabdockError,
    NotFound,
)

P = ParamSpec("P")
T = TypeVar("T")

# What an engine that answered, but said no, raises through ``EngineCalls``.
REFUSALS: tuple[type[LabdockError], ...] = (NotFound, Conflict, EngineRefused)


def explain(exc: derr.DockerException) -> str:
    """The engine's own words for a refusal (its ``explanation``), else the SDK's."""
    if isinstance(exc, derr.APIError) and exc.explanation:
        return str(exc.explanation)
    return str(exc)


def engine_error(exc: BaseException, where: str) -> LabdockError | None:
    """The domain error an engine failure means, or None when ``exc`` is no engine failure.

    ``where``: the engine's address, named when it cannot be reached.
    """
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return BackendUnavailable(f"cannot reach the Docker engine at {where}: {exc}")
    if isinstance(exc, derr.NotFound) or (
        isinstance(exc, derr.APIError) and exc.status_code == 404
    ):
        return NotFound(explain(exc))
    if isinstance(exc, derr.APIError) and exc.status_code == 409:
        return Conflict(explain(exc))
    if isinstance(exc, derr.DockerException):
        return EngineRefused(f"the Docker engine refused: {explain(exc)}")
    return None


def reason(error: LabdockError) -> str:
    """The engine's own words behind a mapped error (its message when there are none)."""
    cause = error.__cause__
    return explain(cause) if isinstance(cause, derr.DockerException) else error.message


def missing_image(error: LabdockError) -> bool:
    """Whether a mapped ``NotFound`` says that an image, not another object, is absent."""
    return isinstance(error, NotFound) and isinstance(error.__cause__, derr.ImageNotFound)


class EngineCalls:
    """Runs blocking SDK calls on ``executor`` and maps their failures to domain errors."""

    def __init__(self, client: docker.DockerClient, executor: Executor) -> None:
        self._executor = executor
        self._where = str(client.api.base_url)

    async def __call__(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on the executor; engine failures as domain errors."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, functools.partial(fn, *args, **kwargs)
            )
        except Exception as exc:
            mapped = engine_error(exc, self._where)
            if mapped is None:
                raise
            raise mapped from exc
