"""Storage quotas: volumes measured on the real engine, warnings at 90%, refusals over quota."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import docker
import pytest
import pytest_asyncio

from hub.app import build_hub
from hub.backends.docker_names import home_volume_name, team_volume_name
from hub.backends.docker_storage import DockerVolumeMeter, parse_du
from hub.config import Settings
from hub.domain.accounts import SCOPES, User
from hub.domain.errors import BackendUnavailable, QuotaExceeded
from hub.domain.resources import GiB, MiB
from hub.domain.storage import (
    Snapshot,
    StorageLimits,
    StorageMeter,
    StorageQuota,
    TeamStorage,
    VolumeUse,
    judge,
)
from tests.busybox_image import ensure_test_image
from tests.conftest import RunningHub, listening
from tests.test_servers_api import Api, busybox_env, user_api

NOW = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)


class FixedClock:
    def now(self) -> datetime:
        return NOW


def snapshot(*volumes: VolumeUse) -> Snapshot:
    return Snapshot(volumes=volumes, measured=NOW, attempted=NOW)


# Rules ---------------------------------------------------------------------------------------


def test_over_the_user_quota_the_refusal_names_both_sizes() -> None:
    report = judge(snapshot(VolumeUse("h", 21 * GiB, user_id=7)), 7, StorageLimits(user=20 * GiB))
    assert report.refusal == (
        "home volume uses 21 GiB of your 20 GiB storage quota; free space or ask an admin"
    )
    assert report.user.fraction == pytest.approx(1.05)


def test_at_ninety_percent_the_user_is_warned_but_not_refused() -> None:
    report = judge(snapshot(VolumeUse("h", 18 * GiB, user_id=7)), 7, StorageLimits(user=20 * GiB))
    assert report.refusal is None
    assert report.user.warning == (
        "your home volume uses 18 GiB of your 20 GiB storage quota (90%); free space soon: "
        "over the quota, new servers cannot be launched"
    )
    below = judge(snapshot(VolumeUse("h", 17 * GiB, user_id=7)), 7, StorageLimits(user=20 * GiB))
    assert below.user.warning is None and below.refusal is None


def test_team_storage_is_members_homes_plus_team_volumes() -> None:
    figures = snapshot(
        VolumeUse("a", 3 * GiB, user_id=1),
        VolumeUse("b", 4 * GiB, user_id=2),
        VolumeUse("other", 50 * GiB, user_id=3),
        VolumeUse("shared", 2 * GiB, team_id=9),
        VolumeUse("elsewhere", 50 * GiB, team_id=10),
    )
    limits = StorageLimits(user=None, teams=(TeamStorage(9, "risk", 8 * GiB, frozenset({1, 2})),))
    report = judge(figures, 1, limits)
    assert report.teams[0][1].used == 9 * GiB
    assert report.refusal == (
        "team 'risk' volumes (members' homes and team volumes) use 9 GiB of the team's 8 GiB "
        "storage quota; free space or ask an admin"
    )
    assert report.user.used == 3 * GiB and report.user.quota is None


class FlakyMeter:
    def __init__(self) -> None:
        self.fail = False

    async def measure(self) -> list[VolumeUse]:
        if self.fail:
            raise BackendUnavailable("cannot reach the Docker engine")
        return [VolumeUse("h", 30 * GiB, user_id=7)]


class Limits:
    async def storage_limits(self, user_id: int, *, default: int | None) -> StorageLimits:
        return StorageLimits(user=default)


async def test_nobody_is_refused_before_the_first_measurement_and_failures_keep_figures() -> None:
    flaky = FlakyMeter()
    meter = StorageMeter(flaky, clock=FixedClock())
    quota = StorageQuota(meter, limits=Limits(), default_limit=20 * GiB)
    alice = User(id=7, name="alice")
    await quota.admit(alice)  # nothing measured yet
    assert (await quota.report(alice)).measured is None
    await meter.measure()
    flaky.fail = True
    failed = await meter.measure()
    assert failed.error == "cannot reach the Docker engine"
    assert failed.measured == NOW and failed.volumes[0].used == 30 * GiB
    with pytest.raises(QuotaExceeded, match="home volume uses 30 GiB of your 20 GiB"):
        await quota.admit(alice)


def test_du_output_maps_back_to_volume_names() -> None:
    names = {"/v/labdock-h-u1-home": "labdock-h-u1-home", "/v/x": "x"}
    out = "25604\t/v/labdock-h-u1-home\ndu: cannot read\n4\t/v/x\n"
    assert parse_du(out, names) == {"labdock-h-u1-home": 25604 * 1024, "x": 4096}


# The real engine -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_image() -> str:
    client = docker.from_env()
    try:
        return ensure_test_image(client)
    finally:
        client.close()


def write_mib(client: docker.DockerClient, image: str, volume: str, mib: int) -> None:
    """Write ``mib`` MiB of zeros into a volume from a container (so it is really allocated)."""
    client.containers.run(
        image,
        entrypoint=["dd"],
        command=["if=/dev/zero", "of=/data/blob", "bs=1048576", f"count={mib}"],
        user="0",
        network_mode="none",
        volumes={volume: {"bind": "/data", "mode": "rw"}},
        labels={"labdock.test": "1"},
        remove=True,
    )


def make_volume(client: docker.DockerClient, name: str, hub_id: str, **labels: str) -> None:
    client.volumes.create(name, labels={"labdock.hub": hub_id, "labdock.test": "1", **labels})


async def test_meter_sees_what_a_container_wrote_and_only_this_hubs_volumes(
    docker_client: docker.DockerClient, hub_id: str, test_image: str, settings: Settings
) -> None:
    home = home_volume_name(hub_id, 7)
    shared = team_volume_name(hub_id, 3)
    stranger = f"labdock-x{hub_id}-u7-home"
    make_volume(docker_client, home, hub_id, **{"labdock.user": "7"})
    make_volume(docker_client, shared, hub_id, **{"labdock.team": "3"})
    make_volume(docker_client, stranger, "x" + hub_id, **{"labdock.user": "7"})
    try:
        write_mib(docker_client, test_image, home, 30)
        write_mib(docker_client, test_image, shared, 5)
        with ThreadPoolExecutor(2) as pool:
            meter = DockerVolumeMeter(
                docker_client,
                hub_id=hub_id,
                executor=pool,
                image=test_image,
                extra_labels={"labdock.test": "1"},
            )
            started = time.perf_counter()
            found = {v.name: v for v in await meter.measure()}
            took = time.perf_counter() - started
        assert set(found) == {home, shared}
        assert 30 * MiB <= found[home].used < 31 * MiB
        assert found[home].user_id == 7 and found[home].team_id is None
        assert 5 * MiB <= found[shared].used < 6 * MiB and found[shared].team_id == 3
        assert took < 30, f"measuring two volumes took {took:.1f} s"
        helpers = docker_client.containers.list(
            all=True, filters={"label": f"labdock.hub={hub_id}"}
        )
        assert helpers == []  # the one-shot helper is gone
    finally:
        docker_client.volumes.get(stranger).remove(force=True)


async def test_a_missing_helper_image_fails_with_a_reason_and_keeps_last_figures(
    docker_client: docker.DockerClient, hub_id: str, test_image: str, settings: Settings
) -> None:
    make_volume(docker_client, home_volume_name(hub_id, 1), hub_id, **{"labdock.user": "1"})
    with ThreadPoolExecutor(2) as pool:
        good = DockerVolumeMeter(docker_client, hub_id=hub_id, executor=pool, image=test_image)
        meter = StorageMeter(good, clock=FixedClock())
        first = await meter.measure()
        assert first.error is None and first.volumes
        meter._meter = DockerVolumeMeter(  # the image was removed, say
            docker_client, hub_id=hub_id, executor=pool, image="labdock/none:missing"
        )
        later = await meter.measure()
    assert later.error and "labdock/none" in later.error
    assert later.volumes == first.volumes and later.measured == first.measured


# Through the hub -----------------------------------------------------------------------------


@pytest_asyncio.fixture
async def hub(with_settings: Any, test_image: str) -> AsyncIterator[RunningHub]:
    settings = with_settings(quota={"storage_image": test_image, "storage_interval": 3600.0})
    async with build_hub(settings) as built:
        await built.deps.catalog.add(busybox_env(test_image))  # type: ignore[attr-defined]
        async with listening(built) as running:
            yield running


async def admin_api(hub: RunningHub) -> Api:
    accounts = hub.hub.deps.accounts
    boss, _ = await accounts.create_user("boss", "correct horse", is_admin=True)
    return Api(hub, await accounts.create_token(boss, scopes=SCOPES))


async def measure(hub: RunningHub) -> None:
    storage = hub.hub.deps.storage
    assert storage is not None
    snap = await storage.meter.measure()
    assert snap.error is None, snap.error


async def fill_home(
    hub: RunningHub, client: docker.DockerClient, image: str, name: str, mib: int
) -> None:
    user = await hub.hub.deps.accounts.get(name)
    volume = home_volume_name(hub.hub.hub_id, user.id)
    make_volume(client, volume, hub.hub.hub_id, **{"labdock.user": str(user.id)})
    await asyncio.to_thread(write_mib, client, image, volume, mib)


async def test_over_quota_launch_is_refused_with_the_reason_and_ninety_percent_warns(
    hub: RunningHub, docker_client: docker.DockerClient, test_image: str
) -> None:
    boss = await admin_api(hub)
    alice = await user_api(hub, "alice")
    await fill_home(hub, docker_client, test_image, "alice", 25)
    set_quota = await boss.call("PUT", "/quotas/users/alice", {"storage": "20M", "servers": 3})
    assert set_quota.code == 200, set_quota.body
    await measure(hub)

    shown = json.loads((await alice.call("GET", "/users/alice/storage")).body)
    assert shown["quota"] == 20 * MiB and 25 * MiB <= shown["used"] < 26 * MiB
    assert shown["fraction"] > 1.2 and shown["measured"].endswith("Z")
    assert shown["warning"].startswith("home volume uses 25 MiB of your 20 MiB storage quota")

    refused = await alice.call("POST", "/users/alice/server", {"environment": "busybox"})
    assert refused.code == 403
    assert json.loads(refused.body)["message"] == (
        "home volume uses 25 MiB of your 20 MiB storage quota; free space or ask an admin"
    )

    await boss.call("PUT", "/quotas/users/alice", {"storage": "27M"})
    near = json.loads((await alice.call("GET", "/users/alice/storage")).body)
    assert near["warning"].startswith(
        "your home volume uses 25 MiB of your 27 MiB storage quota (93%); free space soon"
    )
    launched = await alice.call("POST", "/users/alice/server", {"environment": "busybox"})
    assert launched.code in (201, 202), launched.body

    overview = json.loads((await boss.call("GET", "/quotas")).body)
    assert overview["users"]["alice"]["used"]["storage"] == shown["used"]
    assert overview["users"]["alice"]["limits"]["storage"] == 27 * MiB


async def test_team_over_its_storage_quota_refuses_every_member(
    hub: RunningHub, docker_client: docker.DockerClient, test_image: str
) -> None:
    boss = await admin_api(hub)
    ann, bob = await user_api(hub, "ann"), await user_api(hub, "bob")
    teams = hub.hub.deps.teams
    for name in ("ann", "bob"):
        await teams.join((await hub.hub.deps.accounts.get(name)).id, "risk")
    team_id = await teams.find("risk")
    await fill_home(hub, docker_client, test_image, "ann", 6)
    shared = team_volume_name(hub.hub.hub_id, team_id)
    make_volume(docker_client, shared, hub.hub.hub_id, **{"labdock.team": str(team_id)})
    await asyncio.to_thread(write_mib, docker_client, test_image, shared, 6)
    await boss.call("PUT", "/quotas/teams/risk", {"storage": "10M"})
    await measure(hub)

    refused = await bob.call("POST", "/users/bob/server", {"environment": "busybox"})
    assert refused.code == 403
    assert json.loads(refused.body)["message"].startswith(
        "team 'risk' volumes (members' homes and team volumes) use 12 MiB of the team's 10 MiB"
    )
    shown = json.loads((await ann.call("GET", "/users/ann/storage")).body)
    assert shown["teams"][0]["name"] == "risk" and shown["teams"][0]["quota"] == 10 * MiB
    team = json.loads((await boss.call("GET", "/quotas/teams/risk")).body)
    assert 12 * MiB <= team["used"]["storage"] < 13 * MiB


async def test_storage_is_shown_to_the_owner_and_admins_only(hub: RunningHub) -> None:
    boss = await admin_api(hub)
    alice, eve = await user_api(hub, "alice"), await user_api(hub, "eve")
    assert (await eve.call("GET", "/users/alice/storage")).code == 403
    assert (await Api(hub, "ldk_" + "x" * 40).call("GET", "/users/alice/storage")).code == 401
    for api in (alice, boss):
        response = await api.call("GET", "/users/alice/storage")
        assert response.code == 200
        body = json.loads(response.body)
        assert body["quota"] == 20 * GiB  # the configured default
        assert set(body) == {"used", "quota", "fraction", "warning", "measured", "error", "teams"}
