"""Live stats and launch limits through the REST API, on the real engine with busybox."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import docker
import pytest
import pytest_asyncio

from hub.app import build_hub
from hub.config import Settings
from hub.domain.resources import GiB, MiB, Resources
from tests.browser_support import busybox_environment
from tests.busybox_image import ensure_test_image
from tests.conftest import RunningHub, listening
from tests.test_servers_api import Api, user_api


@pytest.fixture(scope="module")
def busybox_image() -> str:
    client = docker.from_env()
    try:
        return ensure_test_image(client)
    finally:
        client.close()


async def _serve(settings: Settings, image: str) -> AsyncIterator[RunningHub]:
    async with build_hub(settings) as built:
        await built.deps.catalog.add(busybox_environment(image))  # type: ignore[attr-defined]
        await built.deps.catalog.add(  # type: ignore[attr-defined]
            busybox_environment(image, "wide", maximum=Resources(cpus=8, memory=8 * GiB))
        )
        async with listening(built) as running:
            yield running


@pytest_asyncio.fixture
async def hub(with_settings: Any, busybox_image: str) -> AsyncIterator[RunningHub]:
    # A roomy host, so that the quotas under test are what bounds the offers.
    settings = with_settings(capacity={"cpus": 16.0, "memory": 64 * GiB, "gpus": ""})
    async for running in _serve(settings, busybox_image):
        yield running


def body(response: Any) -> Any:
    return json.loads(response.body)


def offer(limits: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in limits["environments"] if e["name"] == name)


async def test_stats_of_a_running_server_show_use_against_its_limits(hub: RunningHub) -> None:
    alice = await user_api(hub, "alice")
    launched = await alice.call(
        "POST", "/users/alice/servers/web", {"environment": "busybox", "memory": "256M"}
    )
    assert launched.code == 201, launched.body
    response = await alice.call("GET", "/users/alice/servers/web/stats")
    assert response.code == 200, response.body
    stats = body(response)
    assert stats["memory_limit"] == 256 * MiB and stats["cpus_limit"] == 0.5
    assert 0 < stats["memory_bytes"] < 64 * MiB
    assert stats["memory_fraction"] < 0.9 and stats["memory_warning"] is False
    assert 0 <= stats["cpu_cores"] <= 0.6
    assert stats["uptime_s"] >= 0 and stats["started"].endswith("Z")
    assert stats["idle_s"] is not None and stats["last_activity"]
    assert response.headers["Cache-Control"] == "no-store"


async def test_stats_of_a_stopped_server_are_a_409_with_a_reason(hub: RunningHub) -> None:
    alice = await user_api(hub, "alice")
    await alice.call("POST", "/users/alice/server", {"environment": "busybox"})
    assert (await alice.call("DELETE", "/users/alice/server")).code == 204
    response = await alice.call("GET", "/users/alice/server/stats")
    assert response.code == 409
    assert body(response)["message"] == "the server is not running"
    missing = await alice.call("GET", "/users/alice/servers/nope/stats")
    assert missing.code == 404


async def test_only_the_owner_and_admins_see_a_servers_stats(hub: RunningHub) -> None:
    alice = await user_api(hub, "alice")
    bob = await user_api(hub, "bob")
    root = await user_api(hub, "root", admin=True)
    await alice.call("POST", "/users/alice/servers/web", {"environment": "busybox"})
    assert (await bob.call("GET", "/users/alice/servers/web/stats")).code == 403
    assert (await root.call("GET", "/users/alice/servers/web/stats")).code == 200
    assert (await bob.call("GET", "/stats")).code == 403
    every = await root.call("GET", "/stats")
    assert every.code == 200
    [entry] = body(every)
    assert entry["user"] == "alice" and entry["server"] == "web"
    assert entry["environment"] == "busybox" and entry["memory_limit"] == 128 * MiB
    assert (await hub.fetch("/hub/api/stats")).code == 401


async def test_limits_offer_the_tightest_headroom_and_say_which_quota_bounds_it(
    hub: RunningHub,
) -> None:
    quotas = hub.hub.deps.quotas
    accounts = hub.hub.deps.accounts
    alice = await user_api(hub, "alice")
    user = await accounts.get("alice")
    await hub.hub.deps.teams.join(user.id, "risk")
    await quotas.set({"memory": 3 * GiB, "cpus": 6.0}, user_id=user.id)
    team_id = await hub.hub.deps.teams.find("risk")
    await quotas.set({"memory": 2 * GiB}, team_id=team_id)

    limits = body(await alice.call("GET", "/users/alice/limits"))
    wide = offer(limits, "wide")
    assert wide["launchable"] and wide["reason"] is None
    assert wide["allowed"]["memory"] == 2 * GiB
    assert wide["limited_by"] == {"memory": "team 'risk' quota", "cpus": "your quota"}
    assert wide["allowed"]["cpus"] == 6.0 and max(wide["choices"]["cpus"]) == 6.0
    assert max(wide["choices"]["memory"]) == 2 * GiB
    assert offer(limits, "busybox")["allowed"]["memory"] == 1 * GiB  # its own maximum
    assert limits["quota"]["user"]["memory"] == {"used": 0, "limit": 3 * GiB}
    assert limits["quota"]["teams"][0]["name"] == "risk"
    assert limits["quota"]["teams"][0]["memory"]["limit"] == 2 * GiB

    # The offered maximum is admitted; one byte more is refused by the quota named.
    one_more = await alice.call(
        "POST", "/users/alice/servers/big", {"environment": "wide", "memory": 2 * GiB + MiB}
    )
    assert one_more.code == 403 and "team 'risk' quota" in body(one_more)["message"]
    exact = await alice.call(
        "POST", "/users/alice/servers/big", {"environment": "wide", "memory": 2 * GiB}
    )
    assert exact.code == 201, exact.body
    after = body(await alice.call("GET", "/users/alice/limits"))
    assert offer(after, "wide")["launchable"] is False
    assert "team 'risk' quota" in offer(after, "wide")["reason"]
    assert after["quota"]["teams"][0]["memory"]["used"] == 2 * GiB


async def test_limits_run_out_when_the_server_quota_is_full(hub: RunningHub) -> None:
    alice = await user_api(hub, "alice")
    user = await hub.hub.deps.accounts.get("alice")
    await hub.hub.deps.quotas.set({"servers": 1}, user_id=user.id)
    await alice.call("POST", "/users/alice/servers/one", {"environment": "busybox"})
    limits = body(await alice.call("GET", "/users/alice/limits"))
    busybox = offer(limits, "busybox")
    assert busybox["launchable"] is False
    assert "allows 1 server at once" in busybox["reason"]
    assert limits["quota"]["user"]["servers"] == {"used": 1, "limit": 1}


async def test_the_host_capacity_bounds_the_offer(with_settings: Any, busybox_image: str) -> None:
    settings = with_settings(capacity={"memory": 640 * MiB, "cpus": 1.5, "gpus": ""})
    async for hub in _serve(settings, busybox_image):
        alice = await user_api(hub, "alice")
        wide = offer(body(await alice.call("GET", "/users/alice/limits")), "wide")
        assert wide["allowed"]["memory"] == 640 * MiB and wide["allowed"]["cpus"] == 1.5
        assert wide["limited_by"]["memory"] == "this host's capacity"


async def test_limits_are_the_owners_or_an_admins_to_read(hub: RunningHub) -> None:
    await user_api(hub, "alice")
    bob: Api = await user_api(hub, "bob")
    assert (await bob.call("GET", "/users/alice/limits")).code == 403
    assert (await hub.fetch("/hub/api/users/alice/limits")).code == 401
