"""The least CPU and memory a server may get, so that no limit rounds to "no limit".

Docker turns cpus into a CFS quota per 100 ms period. 1e-9 CPU became ``NanoCpus=1``,
which the kernel took as no quota at all (``cpu.cfs_quota_us = -1``): two busy loops used
a whole CPU while admission counted about 0. 1e-5 to 0.01 failed the launch with a 502.
"""

from __future__ import annotations

import asyncio
import json

import docker
import pytest

from hub.backends.docker_config import create_args
from hub.domain.errors import InvalidInput
from hub.domain.offers import offer_for
from hub.domain.quotas import Limits, Scope, Usage, admit
from hub.domain.resources import GiB, MiB, Resources, check_floor
from hub.domain.servers import ServerSpec
from tests.conftest import RunningHub
from tests.test_servers_api import busybox_env, hub, test_image, user_api  # noqa: F401

ANY = Scope("your quota", Limits(), Usage())


@pytest.mark.parametrize("cpus", [1e-9, 1e-5, 0.005, 0.0099])
def test_admission_refuses_less_than_a_hundredth_of_a_cpu_with_the_range(cpus: float) -> None:
    with pytest.raises(InvalidInput) as refused:
        admit(Resources(cpus=cpus, memory=GiB), user=ANY, teams=[], host=ANY)
    assert "0.01" in refused.value.message and f"got {cpus:g}" in refused.value.message


def test_the_floor_names_the_environment_and_its_maximum() -> None:
    with pytest.raises(InvalidInput) as refused:
        check_floor(Resources(cpus=1e-9, memory=GiB), maximum=Resources(4, 8 * GiB), who="py")
    assert refused.value.message == "cpus: py takes 0.01 to 4 CPUs, got 1e-09"
    with pytest.raises(InvalidInput) as refused:
        check_floor(Resources(cpus=1, memory=MiB), maximum=Resources(4, 8 * GiB), who="py")
    assert refused.value.message == "memory: py takes 64 MiB to 8 GiB, got 1 MiB"
    check_floor(Resources(cpus=0.01, memory=64 * MiB))


def test_the_form_offers_nothing_under_the_floor(test_image: str) -> None:  # noqa: F811
    env = busybox_env(test_image)
    offer = offer_for(env, user=ANY, teams=[], host=ANY, free_gpus=0)
    assert offer.launchable and min(offer.choices["cpus"]) >= 0.01
    nearly_full = Scope("your quota", Limits(cpus=1), Usage(cpus=0.995, servers=1))
    offer = offer_for(env, user=nearly_full, teams=[], host=ANY, free_gpus=0)
    assert not offer.launchable and offer.reason and "0.01" in offer.reason
    tiny = busybox_env(test_image, maximum=Resources(cpus=0.001, memory=GiB))
    assert not offer_for(tiny, user=ANY, teams=[], host=ANY, free_gpus=0).launchable


def _spec(**changes: object) -> ServerSpec:
    values: dict[str, object] = dict(
        hub_id="h1",
        user_id=1,
        server_id=1,
        image="img",
        command=(),
        port=8080,
        prefix="/user/a/",
        secret="s",
        resources=Resources(cpus=0.01, memory=64 * MiB),
    )
    values.update(changes)
    return ServerSpec(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"resources": Resources(cpus=1e-9, memory=64 * MiB)}, "cpus: at least 0.01"),
        ({"resources": Resources(cpus=1, memory=5 * MiB)}, "memory: at least 6 MiB"),
        ({"pids_limit": 0}, "pids_limit: at least 1"),
        ({"pids_limit": -1}, "pids_limit: at least 1"),
        ({"shm_size": -1}, "shm_size: must not be negative"),
    ],
)
def test_limits_the_engine_reads_as_unlimited_never_reach_it(
    changes: dict[str, object], says: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        create_args(_spec(**changes), network="n", image_user="", init=True)
    assert says in refused.value.message
    assert create_args(_spec(), network="n", image_user="", init=True)["nano_cpus"] == 10**7


@pytest.mark.parametrize(("cpus", "shown"), [(1e-9, "1e-09"), (1e-5, "1e-05"), (0.005, "0.005")])
async def test_launch_under_a_hundredth_of_a_cpu_is_refused_with_the_range(
    hub: RunningHub,  # noqa: F811
    docker_client: docker.DockerClient,
    hub_id: str,
    cpus: float,
    shown: str,
) -> None:
    alice = await user_api(hub, "alice")
    response = await alice.call(
        "POST", "/users/alice/server", {"environment": "busybox", "cpus": cpus}
    )
    assert response.code == 400, response.body
    assert (
        json.loads(response.body)["message"] == f"cpus: busybox takes 0.01 to 2 CPUs, got {shown}"
    )
    assert not docker_client.containers.list(all=True, filters={"label": f"labdock.hub={hub_id}"})


async def test_launch_with_one_mebibyte_is_refused_with_the_range(hub: RunningHub) -> None:  # noqa: F811
    alice = await user_api(hub, "alice")
    response = await alice.call(
        "POST", "/users/alice/server", {"environment": "busybox", "memory": "1M"}
    )
    assert response.code == 400, response.body
    assert (
        json.loads(response.body)["message"] == "memory: busybox takes 64 MiB to 1 GiB, got 1 MiB"
    )


def cfs_quota_us(container: docker.models.containers.Container) -> int:
    """The container's CPU quota per period, read inside it (cgroup v1 or v2)."""
    script = (
        "if [ -f /sys/fs/cgroup/cpu.max ]; then cat /sys/fs/cgroup/cpu.max; "
        "elif [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; "
        "then cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us; "
        "else cat /sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us; fi"
    )
    code, out = container.exec_run(["sh", "-c", script])
    assert code == 0, out
    first = out.decode().split()[0]
    return -1 if first == "max" else int(first)


async def test_a_hundredth_of_a_cpu_launches_with_a_real_cgroup_quota(
    hub: RunningHub,  # noqa: F811
    docker_client: docker.DockerClient,
    hub_id: str,
) -> None:
    alice = await user_api(hub, "alice")
    response = await alice.call(
        "POST", "/users/alice/server", {"environment": "busybox", "cpus": 0.01}
    )
    assert response.code == 201, response.body
    [container] = docker_client.containers.list(filters={"label": f"labdock.hub={hub_id}"})
    assert container.attrs["HostConfig"]["NanoCpus"] == 10**7
    quota = await asyncio.get_running_loop().run_in_executor(None, cfs_quota_us, container)
    assert quota == 1000  # 1 ms of every 100 ms period: limited, not -1 (unlimited)
