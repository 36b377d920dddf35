"""One mapping of engine failures to domain errors, for every backend module."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

import docker
import docker.errors
import pytest
import requests

from hub.backends.engine_calls import (
    REFUSALS,
    EngineCalls,
    engine_error,
    missing_image,
    reason,
)
from hub.domain.errors import BackendUnavailable, Conflict, EngineRefused, NotFound


def api_error(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("engine said no", response=response, explanation=explanation)


def test_each_engine_failure_maps_to_one_domain_error_that_keeps_the_engines_words() -> None:
    unreachable = engine_error(requests.exceptions.ConnectionError("refused"), "unix://x")
    assert isinstance(unreachable, BackendUnavailable)
    assert not isinstance(unreachable, EngineRefused)
    assert unreachable.message == "cannot reach the Docker engine at unix://x: refused"
    late = engine_error(requests.exceptions.ReadTimeout("slow"), "unix://x")
    assert isinstance(late, BackendUnavailable) and not isinstance(late, EngineRefused)

    missing = engine_error(api_error(404, "No such container: abc"), "unix://x")
    assert isinstance(missing, NotFound) and missing.message == "No such container: abc"
    taken = engine_error(api_error(409, "name in use"), "unix://x")
    assert isinstance(taken, Conflict) and taken.message == "name in use"
    refused = engine_error(api_error(500, "no space left on device"), "unix://x")
    assert isinstance(refused, EngineRefused)
    assert refused.message == "the Docker engine refused: no space left on device"
    sdk = engine_error(docker.errors.InvalidArgument("bad mount"), "unix://x")
    assert isinstance(sdk, EngineRefused) and "bad mount" in sdk.message

    assert engine_error(ValueError("a bug"), "unix://x") is None
    assert all(issubclass(cls, NotFound | Conflict | EngineRefused) for cls in REFUSALS)


async def test_a_mapped_error_keeps_its_cause_so_a_missing_image_is_told_apart() -> None:
    nowhere = docker.DockerClient(base_url="unix:///nonexistent.sock", version="1.41")
    calls = EngineCalls(nowhere, _pool())

    def no_image() -> None:
        raise docker.errors.ImageNotFound("No such image: x:1", explanation="No such image: x:1")

    def no_network() -> None:
        raise docker.errors.NotFound("gone", explanation="network labdock-h1 not found")

    with pytest.raises(NotFound) as image:
        await calls(no_image)
    with pytest.raises(NotFound) as network:
        await calls(no_network)
    assert missing_image(image.value) and not missing_image(network.value)
    assert reason(network.value) == "network labdock-h1 not found"
    with pytest.raises(ValueError, match="a bug"):  # not an engine failure: as it was
        await calls(_bug)


def _bug() -> None:
    raise ValueError("a bug")


def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-engine-calls")


async def test_on_the_real_engine_an_absent_container_is_not_found_and_no_engine_unavailable(
    docker_client: docker.DockerClient,
) -> None:
    client = docker_client
    calls = EngineCalls(client, _pool())
    with pytest.raises(NotFound, match="No such container"):
        await calls(client.containers.get, "labdock-absent-" + secrets.token_hex(6))
    nowhere = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    with pytest.raises(BackendUnavailable, match="cannot reach the Docker engine at"):
        await EngineCalls(nowhere, _pool())(nowhere.ping)
