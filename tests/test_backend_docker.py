"""DockerBackend against the real engine: limits, isolation, idempotence, failure modes.

Every container, volume and network a test creates carries ``labdock.test=1``
and a random hub id, and the ``hub_id`` fixture removes them (containers, then
volumes, then the network) even when the test fails. Without a reachable
engine these tests fail; they never skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import docker
import docker.errors
import pytest
import pytest_asyncio
from docker.models.containers import Container

from hub.backends.docker import DockerBackend
from hub.backends.docker_config import check_mounts, create_args, team_volume_labels
from hub.backends.docker_events import ExitWatcher
from hub.backends.docker_names import container_name, home_volume_name
from hub.backends.readiness import probe
from hub.domain.errors import BackendUnavailable, Conflict, InvalidInput, LaunchFailed
from hub.domain.resources import MiB, Resources
from hub.domain.servers import Endpoint, EngineEvent, Mount, ProgressEvent, ServerSpec
from tests.busybox_image import ensure_test_image

pytestmark = [pytest.mark.asyncio, pytest.mark.docker]

TEST_LABELS = {"labdock.test": "1"}
PORT = 8888


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def client() -> Iterator[docker.DockerClient]:
    try:
        engine = docker.from_env()
        engine.ping()
    except Exception as exc:
        pytest.fail(f"these tests need a reachable Docker engine: {exc}")
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def image(client: docker.DockerClient) -> str:
    return ensure_test_image(client)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="test-docker")
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


def purge(client: docker.DockerClient, hub_id: str) -> None:
    """Remove what a hub id left behind: containers, then volumes, then networks."""
    label: dict[str, str | list[str] | bool] = {"label": f"labdock.hub={hub_id}"}
    errors: list[Exception] = []

    def attempt(remove: Any, **kw: Any) -> None:
        try:
            remove(**kw)
        except docker.errors.NotFound:
            pass
        except Exception as exc:  # keep cleaning; report the first problem at the end
            errors.append(exc)

    for container in client.containers.list(all=True, filters=label):
        attempt(container.remove, force=True)
    for volume in client.volumes.list(filters=label):
        attempt(volume.remove, force=True)
    for network in client.networks.list(filters=label):
        attempt(network.remove)
    if errors:
        raise errors[0]


@pytest.fixture
def hub_id(client: docker.DockerClient) -> Iterator[str]:
    hub = "t" + secrets.token_hex(4)
    yield hub
    purge(client, hub)


@pytest_asyncio.fixture
async def backend(
    client: docker.DockerClient, hub_id: str, executor: ThreadPoolExecutor
) -> AsyncIterator[DockerBackend]:
    made = DockerBackend(client, hub_id=hub_id, executor=executor, extra_labels=TEST_LABELS)
    yield made
    await made.close()


def name_of(spec: ServerSpec) -> str:
    """The name the backend gives the spec's container."""
    return container_name(spec.hub_id, spec.server_id)


def home_of(spec: ServerSpec) -> str:
    """The name of the spec's user's home volume."""
    return home_volume_name(spec.hub_id, spec.user_id)


def make_spec(
    image: str,
    hub_id: str,
    *,
    server_id: int = 1,
    user_id: int = 1,
    mode: str = "serve",
    memory: int = 64 * MiB,
    timeout: float = 15.0,
    env: dict[str, str] | None = None,
    **kw: Any,
) -> ServerSpec:
    return ServerSpec(
        hub_id=hub_id,
        user_id=user_id,
        server_id=server_id,
        image=image,
        command=(),
        port=PORT,
        prefix=f"/user/u{user_id}/s{server_id}/",
        secret=secrets.token_hex(16),
        resources=Resources(cpus=0.5, memory=memory),
        pids_limit=kw.pop("pids_limit", 64),
        shm_size=kw.pop("shm_size", 16 * MiB),
        env={"LABDOCK_TEST_MODE": mode, **(env or {})},
        labels={"labdock.environment": "busybox"},
        start_timeout=timeout,
        **kw,
    )


def quiet(_: ProgressEvent) -> None:
    pass


async def run_in(client: docker.DockerClient, container_id: str, script: str) -> tuple[int, str]:
    """Run a shell script inside a container, as its user; return (exit code, output)."""

    def run() -> tuple[int, str]:
        result = client.containers.get(container_id).exec_run(["sh", "-c", script])
        assert isinstance(result.output, bytes) and result.exit_code is not None
        return result.exit_code, result.output.decode(errors="replace")

    return await asyncio.to_thread(run)


async def inspect(client: docker.DockerClient, name: str) -> dict[str, Any]:
    attrs: dict[str, Any] = await asyncio.to_thread(client.api.inspect_container, name)
    return attrs


# -- reading limits from inside ----------------------------------------------------------------

# Reads the limits from the cgroup files: the unified (v2) layout when
# cgroup.controllers is there, else the v1 controllers' folders. CG and MOUNTS
# point it at other files, so that the v2 branch is tested on a v1 machine too.
CGROUP_SCRIPT = r"""
CG=${CG:-/sys/fs/cgroup}
MOUNTS=${MOUNTS:-/proc/mounts}
if [ -f $CG/cgroup.controllers ]; then
    echo version=2
    echo memory=$(cat $CG/memory.max)
    echo swap=$(cat $CG/memory.swap.max 2>/dev/null)
    set -- $(cat $CG/cpu.max)
    echo quota=$1
    echo period=$2
    echo pids=$(cat $CG/pids.max)
else
    echo version=1
    echo memory=$(cat $CG/memory/memory.limit_in_bytes)
    echo memsw=$(cat $CG/memory/memory.memsw.limit_in_bytes 2>/dev/null)
    echo quota=$(cat $CG/cpu/cpu.cfs_quota_us)
    echo period=$(cat $CG/cpu/cpu.cfs_period_us)
    echo pids=$(cat $CG/pids/pids.max)
fi
echo shm=$(grep ' /dev/shm ' $MOUNTS | sed -n 's/.*size=\([0-9]*k\).*/\1/p')
"""

# What a container limited to 96 MiB, no swap, 0.5 CPU, 77 processes and a 32 MiB
# /dev/shm sees under cgroup v2 (Docker 20.10+ on a unified hierarchy).
FAKE_CGROUP_V2 = {
    "cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma",
    "memory.max": str(96 * MiB),
    "memory.swap.max": "0",
    "cpu.max": "50000 100000",
    "pids.max": "77",
}
FAKE_MOUNTS = "shm /dev/shm tmpfs rw,nosuid,nodev,noexec,relatime,size=32768k 0 0\n"


@dataclass(frozen=True)
class Limits:
    """Limits as the container's own cgroup files (v1 or v2) report them."""

    cgroup_version: int
    memory: int
    memory_and_swap: int | None  # v1 memsw, when swap accounting is on
    swap: str | None  # v2 memory.swap.max, when present
    cpus: float
    pids: int
    shm_kib: int


async def read_limits(
    client: docker.DockerClient, container_id: str, *, prelude: str = ""
) -> Limits:
    code, out = await run_in(client, container_id, prelude + CGROUP_SCRIPT)
    assert code == 0, out
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    memsw = values.get("memsw", "")
    return Limits(
        cgroup_version=int(values["version"]),
        memory=int(values["memory"]),
        memory_and_swap=int(memsw) if memsw.isdigit() else None,
        swap=values.get("swap") or None,
        cpus=int(values["quota"]) / int(values["period"]),
        pids=int(values["pids"]),
        shm_kib=int(values["shm"].rstrip("k")),
    )


# -- limits, hardening, labels -----------------------------------------------------------------


async def test_limits_are_enforced_by_the_cgroup_inside_the_container(
    backend: DockerBackend, client: docker.DockerClient, image: str, hub_id: str
) -> None:
    spec = make_spec(image, hub_id, memory=96 * MiB, pids_limit=77, shm_size=32 * MiB)
    endpoint = await backend.start(spec, quiet)

    limits = await read_limits(client, endpoint.container_id)

    assert limits.memory == 96 * MiB
    # No swap beyond the memory limit. The files exist when swap accounting is on
    # (it is on this machine); the engine's own view is checked either way.
    if limits.cgroup_version == 1 and limits.memory_and_swap is not None:
        assert limits.memory_and_swap == 96 * MiB
    if limits.cgroup_version == 2 and limits.swap is not None:
        assert limits.swap == "0"
    host = (await inspect(client, endpoint.container_id))["HostConfig"]
    assert host["Memory"] == host["MemorySwap"] == 96 * MiB
    assert limits.cpus == pytest.approx(0.5)
    assert limits.pids == 77
    assert limits.shm_kib == 32 * 1024


async def test_limit_reader_understands_the_cgroup_v2_layout(
    backend: DockerBackend, client: docker.DockerClient, image: str, hub_id: str
) -> None:
    # This machine has cgroup v1; the reader runs against v2 files written in /tmp.
    endpoint = await backend.start(make_spec(image, hub_id), quiet)
    files = "".join(
        f"printf '%s' '{text}' > /tmp/cg/{name}\n" for name, text in FAKE_CGROUP_V2.items()
    )
    prelude = (
        f"mkdir -p /tmp/cg\n{files}printf '{FAKE_MOUNTS}' > /tmp/mounts\n"
        "export CG=/tmp/cg MOUNTS=/tmp/mounts\n"
    )

    limits = await read_limits(client, endpoint.container_id, prelude=prelude)

    assert limits == Limits(
        cgroup_version=2,
        memory=96 * MiB,
        memory_and_swap=None,
        swap="0",
        cpus=0.5,
        pids=77,
        shm_kib=32 * 1024,
    )


async def test_server_runs_unprivileged_without_capabilities_or_docker_socket(
    backend: DockerBackend, client: docker.DockerClient, image: str, hub_id: str
) -> None:
    endpoint = await backend.start(make_spec(image, hub_id), quiet)

    code, out = await run_in(
        client,
        endpoint.container_id,
        "for p in 1 self; do grep -E '^(CapEff|CapPrm|NoNewPrivs)' /proc/$p/status; done;"
        "echo uid=$(id -u); ls /var/run/docker.sock /run/docker.sock 2>&1 | grep -c 'No such'",
    )

    assert code == 0, out
    assert re.findall(r"CapEff:\s*(\w+)", out) == ["0000000000000000"] * 2
    assert re.findall(r"CapPrm:\s*(\w+)", out) == ["0000000000000000"] * 2
    assert re.findall(r"NoNewPrivs:\s*(\d)", out) == ["1"] * 2
    assert "uid=1000" in out
    assert out.strip().endswith("2")  # neither socket path exists


async def test_container_config_publishes_nothing_and_mounts_only_volumes(
    backend: DockerBackend, client: docker.DockerClient, image: str, hub_id: str
) -> None:
    spec = make_spec(image, hub_id, server_id=5)
    await backend.start(spec, quiet)

    attrs = await inspect(client, name_of(spec))
    host = attrs["HostConfig"]

    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["Memory"] == host["MemorySwap"] == 64 * MiB
    assert host["NanoCpus"] == 500_000_000
    assert host["Init"] is backend.uses_init is True
    assert host["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-file": "3", "max-size": "10m"},
    }
    assert not host.get("PortBindings")
    assert not host.get("Binds")
    assert not host.get("DeviceRequests")
    assert [(m["Type"], m["Source"], m["Target"]) for m in host["Mounts"]] == [
        ("volume", home_of(spec), "/home/analyst")
    ]
    assert list(attrs["NetworkSettings"]["Networks"]) == [backend.network]
    assert attrs["Config"]["User"] == "1000:1000"
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert env["LABDOCK_PREFIX"] == spec.prefix
    assert env["LABDOCK_SERVER_SECRET"] == spec.secret
    assert env["LABDOCK_PORT"] == str(PORT)
    assert (env["LABDOCK_USER_ID"], env["LABDOCK_SERVER_ID"]) == ("1", "5")


async def test_container_and_volume_carry_labels_and_names_hold_only_ids(
    backend: DockerBackend, client: docker.DockerClient, image: str, hub_id: str
) -> None:
    spec = make_spec(image, hub_id, server_id=42, user_id=7)
    endpoint = await backend.start(spec, quiet)

    labels = (await inspect(client, endpoint.container_id))["Config"]["Labels"]
    volume = await asyncio.to_thread(client.volumes.get, home_of(spec))

    assert endpoint.container_name == f"labdock-{hub_id}-s42"
    assert re.fullmatch(rf"labdock-{hub_id}-u7-home", volume.name)
    assert labels["labdock.hub"] == hub_id
    assert (labels["labdock.user"], labels["labdock.server"]) == ("7", "42")
    assert labels["labdock.test"] == "1"
    assert labels["labdock.environment"] == "busybox"
    assert volume.attrs["Labels"] == {"labdock.hub": hub_id, "labdock.user": "7", **TEST_LABELS}


async def test_team_volumes_are_named_and_labelled_by_the_backend_from_the_team_id() -> None:
    spec = replace(
        make_spec("img", "h1", server_id=42, user_id=7),
        mounts=(Mount(team_id=3, target="/home/analyst/teams/risk", read_only=True),),
    )
    args = create_args(spec, network="n", image_user="", init=True)
    assert args["name"] == "labdock-h1-s42"
    assert [(m["Source"], m["Target"], m["ReadOnly"]) for m in args["mounts"]] == [
        ("labdock-h1-u7-home", "/home/analyst", False),
        ("labdock-h1-t3-shared", "/home/analyst/teams/risk", True),
    ]
    labels = team_volume_labels("h1", spec.mounts[0], TEST_LABELS)
    assert labels == {**TEST_LABELS, "labdock.hub": "h1", "labdock.team": "3"}
    relative = replace(spec, mounts=(Mount(team_id=3, target="teams/risk"),))
    with pytest.raises(InvalidInput, match="absolute paths"):
        check_mounts(relative)


async def test_gpu_device_ids_become_an_nvidia_device_request(
    backend: DockerBackend, client: docker.DockerClient, image: str, hub_id: str
) -> None:
    # Fake ids: creation succeeds on any engine, starting fails without those GPUs.
    spec = make_spec(image, hub_id, gpu_device_ids=("GPU-test-0", "1"))

    with pytest.raises(LaunchFailed) as failure:
        await backend.start(spec, quiet)

    requests = (await inspect(client, name_of(spec)))["HostConfig"]["DeviceRequests"]
    assert requests == [
        {
            "Driver": "nvidia",
            "Count": 0,
            "DeviceIDs": ["GPU-test-0", "1"],
            "Capabilities": [["gpu"]],
            "Options": {},
        }
    ]
    assert f"could not start server {spec.server_id}" in failure.value.message


# -- network isolation -------------------------------------------------------------------------


async def test_servers_cannot_reach_each_other_but_the_hub_reaches_both(
    backend: DockerBackend, client: docker.DockerClient, image: str, hub_id: str
) -> None:
    first, second = await asyncio.gather(
        backend.start(make_spec(image, hub_id, server_id=1, user_id=1), quiet),
        backend.start(make_spec(image, hub_id, server_id=2, user_id=2), quiet),
    )

    for endpoint in (first, second):
        assert await probe(endpoint.host, endpoint.port, "/", secret="x") is not None
    to_self = await run_in(client, first.container_id, f"nc -w 2 {first.host} {PORT} </dev/null")
    to_other = await run_in(client, first.container_id, f"nc -w 1 {second.host} {PORT} </dev/null")
    assert to_self[0] == 0, to_self  # the method works: the container reaches its own app
    assert to_other[0] != 0, to_other


async def test_network_is_internal_without_inter_container_traffic_and_idempotent(
    backend: DockerBackend, client: docker.DockerClient, hub_id: str
) -> None:
    await asyncio.gather(backend.ensure_network(), backend.ensure_network())
    await backend.ensure_network()

    networks = client.networks.list(names=[backend.network])
    assert len(networks) == 1
    attrs = networks[0].attrs
    assert attrs["Internal"] is True
    assert attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    assert attrs["Labels"] == {"labdock.hub": hub_id, **TEST_LABELS}


async def test_network_removed_behind_the_backends_back_is_made_again(
    backend: DockerBackend, client: docker.DockerClient, image: str, hub_id: str
) -> None:
    spec = make_spec(image, hub_id)
    await backend.start(spec, quiet)
    await backend.stop(spec.server_id, remove=True, grace=0)
    client.networks.get(backend.network).remove()

    endpoint = await backend.start(spec, quiet)

    assert await probe(endpoint.host, endpoint.port, spec.prefix, secret=spec.secret) == 200
    assert client.networks.get(backend.network).attrs["Options"] == {
        "com.docker.network.bridge.enable_icc": "false",
        "com.docker.network.bridge.name": backend.bridge,
    }


async def test_a_foreign_network_with_the_hub_network_name_is_refused(
    client: docker.DockerClient, hub_id: str, executor: ThreadPoolExecutor
) -> None:
    name = f"labdock-{hub_id}-foreign"
    foreign = client.networks.create(name, labels=TEST_LABELS)
    try:
        backend = DockerBackend(client, hub_id=hub_id, executor=executor, network=name)
        with pytest.raises(Conflict, match="not this hub's"):
            await backend.ensure_network()
    finally:
        foreign.remove()


# -- idempotence and volumes -------------------------------------------------------------------


async def test_second_start_adopts_the_running_container(
    backend: DockerBackend, image: str, hub_id: str
) -> None:
    spec = make_spec(image, hub_id)

    first = await backend.start(spec, quiet)
    second = await backend.start(spec, quiet)

    assert first == second
    assert [o.container_id for o in await backend.list()] == [first.container_id]


async def test_concurrent_starts_of_one_spec_make_one_container(
    backend: DockerBackend, image: str, hub_id: str
) -> None:
    spec = make_spec(image, hub_id)

    first, second = await asyncio.gather(backend.start(spec, quiet), backend.start(spec, quiet))

    assert first == second
    assert len(await backend.list()) == 1


async def test_start_with_another_config_while_running_is_a_conflict(
    backend: DockerBackend, image: str, hub_id: str
) -> None:
    await backend.start(make_spec(image, hub_id), quiet)

    with pytest.raises(Conflict, match="already running with another configuration"):
        await backend.start(make_spec(image, hub_id), quiet)  # another secret


async def test_start_after_stop_recreates_the_container(
    backend: DockerBackend, image: str, hub_id: str
) -> None:
    spec = make_spec(image, hub_id)
    first = await backend.start(spec, quiet)
    await backend.stop(spec.server_id)

    second = await backend.start(spec, quiet)

    assert second.container_id != first.container_id
    assert [o.container_id for o in await backend.list()] == [second.container_id]


async def test_home_survives_remove_and_recreate_and_only_the_admin_deletes_it(
    backend: DockerBackend, client: docker.DockerClient, image: str, hub_id: str
) -> None:
    spec = make_spec(image, hub_id, user_id=3)
    first = await backend.start(spec, quiet)
    assert (await run_in(client, first.container_id, "echo kept > $HOME/notes.txt"))[0] == 0

    await backend.stop(spec.server_id, remove=True, grace=1)
    assert await backend.list() == []
    assert client.volumes.get(home_of(spec)).name == home_of(spec)
    second = await backend.start(spec, quiet)

    assert await run_in(client, second.container_id, "cat $HOME/notes.txt") == (0, "kept\n")
    with pytest.raises(Conflict, match="still used"):
        await backend.remove_volume(3)
    await backend.stop(spec.server_id, remove=True, grace=1)
    await backend.remove_volume(3)
    await backend.remove_volume(3)  # missing is fine
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get(home_volume_name(hub_id, 3))


# -- failures ----------------------------------------------------------------------------------


async def test_never_ready_app_fails_after_the_timeout_and_is_left_stopped(
    backend: DockerBackend, client: docker.DockerClient, image: str, hub_id: str
) -> None:
    spec = make_spec(image, hub_id, mode="never-ready", timeout=1.0)
    began = time.monotonic()

    with pytest.raises(LaunchFailed) as failure:
        await backend.start(spec, quiet)

    assert time.monotonic() - began < 8
    assert failure.value.message == "server 1 was not ready after 1 s"
    assert "not listening on purpose" in failure.value.logs
    assert (await inspect(client, name_of(spec)))["State"]["Running"] is False


async def test_app_that_exits_fails_fast_with_its_last_log_lines(
    backend: DockerBackend, image: str, hub_id: str
) -> None:
    spec = make_spec(image, hub_id, mode="exit", timeout=30.0, env={"LABDOCK_TEST_EXIT_CODE": "4"})
    began = time.monotonic()

    with pytest.raises(LaunchFailed) as failure:
        await backend.start(spec, quiet)

    assert time.monotonic() - began < 10
    assert failure.value.message == "server 1 exited with code 4 before it was ready"
    assert failure.value.logs == tuple(f"line {i}" for i in range(11, 31))
    assert (await backend.logs(spec.server_id, tail=2)) == ["line 29", "line 30"]


async def test_missing_image_names_the_build_command(backend: DockerBackend, hub_id: str) -> None:
    spec = make_spec("labdock/python:notbuilt0000", hub_id)

    with pytest.raises(LaunchFailed, match=r"run `labdock images build python`"):
        await backend.start(spec, quiet)


async def test_unreachable_engine_is_backend_unavailable(executor: ThreadPoolExecutor) -> None:
    nowhere = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    backend = DockerBackend(nowhere, hub_id="tnowhere", executor=executor)

    with pytest.raises(BackendUnavailable, match="cannot reach the Docker engine"):
        await backend.ping()
    with pytest.raises(BackendUnavailable):
        await backend.list()


async def test_oom_kill_is_reported_by_the_event_stream(
    backend: DockerBackend, image: str, hub_id: str
) -> None:
    spec = make_spec(image, hub_id, mode="oom", memory=32 * MiB, env={"LABDOCK_TEST_OOM_MB": "128"})
    events = backend.events()
    seen: list[EngineEvent] = []

    async def collect() -> None:
        # Until the die event, and the oom event if it comes later than die.
        deadline = None
        async for event in events:
            seen.append(event)
            actions = {e.action for e in seen}
            if {"die", "oom"} <= actions:
                return
            if "die" in actions:
                deadline = deadline or time.monotonic() + 2
            if deadline and time.monotonic() > deadline:
                return

    collector = asyncio.ensure_future(collect())
    await asyncio.sleep(0.2)  # let the subscription reach the engine
    try:
        with pytest.raises(LaunchFailed) as failure:
            await backend.start(spec, quiet)
        await asyncio.wait({collector}, timeout=10)
    finally:
        collector.cancel()
        await events.aclose()

    assert "memory limit (32 MiB)" in failure.value.message
    die = [e for e in seen if e.action == "die"]
    assert [(e.server_id, e.exit_code) for e in die] == [(1, 137)]
    assert any(e.action == "oom" for e in seen), seen
    observed = await backend.list()
    assert [(o.running, o.exit_code, o.oom_killed) for o in observed] == [(False, 137, True)]


# -- stop, list, events ------------------------------------------------------------------------


async def test_stop_sends_sigterm_which_the_app_honours(
    backend: DockerBackend, client: docker.DockerClient, image: str, hub_id: str
) -> None:
    spec = make_spec(image, hub_id)
    await backend.start(spec, quiet)
    began = time.monotonic()

    await backend.stop(spec.server_id, grace=10)

    assert time.monotonic() - began < 5
    state = (await inspect(client, name_of(spec)))["State"]
    assert (state["Running"], state["ExitCode"]) == (False, 0)
    assert "got SIGTERM, exiting" in await backend.logs(spec.server_id)


async def test_stop_kills_an_app_that_ignores_sigterm_after_the_grace(
    backend: DockerBackend, client: docker.DockerClient, image: str, hub_id: str
) -> None:
    spec = make_spec(image, hub_id, mode="ignore-term")
    await backend.start(spec, quiet)
    began = time.monotonic()

    await backend.stop(spec.server_id, grace=1)

    assert time.monotonic() - began >= 1
    assert (await inspect(client, name_of(spec)))["State"]["ExitCode"] == 137
    await backend.stop(spec.server_id, remove=True)
    await backend.stop(spec.server_id, remove=True)  # missing is fine
    assert await backend.list() == []


async def test_list_reports_running_and_stopped_servers(
    backend: DockerBackend, image: str, hub_id: str
) -> None:
    running = await backend.start(make_spec(image, hub_id, server_id=1, user_id=1), quiet)
    await backend.start(make_spec(image, hub_id, server_id=2, user_id=2), quiet)
    await backend.stop(2, grace=2)

    observed = {o.server_id: o for o in await backend.list()}

    assert observed[1].running and observed[1].endpoint == running
    assert (observed[2].running, observed[2].endpoint, observed[2].exit_code) == (False, None, 0)
    assert observed[2].user_id == 2


async def test_start_reports_progress_and_is_ready_quickly(
    backend: DockerBackend, image: str, hub_id: str
) -> None:
    steps: list[ProgressEvent] = []

    async def record(event: ProgressEvent) -> None:
        steps.append(event)

    began = time.monotonic()
    endpoint = await backend.start(make_spec(image, hub_id), record)

    assert time.monotonic() - began < 10
    assert isinstance(endpoint, Endpoint)
    assert [s.progress for s in steps] == sorted(s.progress for s in steps)
    assert steps[-1].ready and steps[-1].progress == 100
    assert [s.message.split()[0] for s in steps] == [
        "image",
        "creating",
        "starting",
        "waiting",
        "ready",
    ]
    assert await probe(endpoint.host, endpoint.port, "/user/u1/s1/", secret="x") == 200


async def test_without_init_the_app_is_pid_1(
    client: docker.DockerClient, image: str, hub_id: str, executor: ThreadPoolExecutor
) -> None:
    backend = DockerBackend(
        client, hub_id=hub_id, executor=executor, extra_labels=TEST_LABELS, init=False
    )
    endpoint = await backend.start(make_spec(image, hub_id), quiet)

    _, out = await run_in(client, endpoint.container_id, "tr '\\0' ' ' < /proc/1/cmdline")

    assert out.startswith("/bin/sh /app/start")


async def test_missing_init_binary_falls_back_to_running_without_init(
    backend: DockerBackend,
    client: docker.DockerClient,
    image: str,
    hub_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Simulate an engine without docker-init: starting a container that asks for
    # init fails the way Docker 20.10 does when the binary is missing.
    real_start = Container.start

    def start_without_init(self: Container, **kw: Any) -> Any:
        if self.attrs["HostConfig"].get("Init"):
            raise docker.errors.APIError(
                "500 Server Error",
                explanation='exec: "docker-init": executable file not found in $PATH',
            )
        return real_start(self, **kw)

    monkeypatch.setattr(Container, "start", start_without_init)

    first = await backend.start(make_spec(image, hub_id, server_id=1), quiet)
    second = await backend.start(make_spec(image, hub_id, server_id=2), quiet)

    assert backend.uses_init is False
    for endpoint in (first, second):
        assert (await inspect(client, endpoint.container_id))["HostConfig"]["Init"] is False
    assert len(await backend.list()) == 2


async def test_event_stream_closes_and_its_thread_ends(backend: DockerBackend, hub_id: str) -> None:
    events = backend.events()
    pending = asyncio.ensure_future(events.__anext__())
    await asyncio.sleep(0.2)
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)
    await events.aclose()

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
        t.name == f"labdock-events-{hub_id}" for t in threading.enumerate()
    ):
        await asyncio.sleep(0.05)
    assert not any(t.name == f"labdock-events-{hub_id}" for t in threading.enumerate())


# -- what a launch costs the engine --------------------------------------------------------------


async def test_waiting_for_the_app_does_not_poll_the_engine(
    backend: DockerBackend, image: str, hub_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A crash is learned from the engine's die event; asking `inspect` every few
    # hundred ms per starting server would cost two CPUs dearly in a burst.
    inspected: list[str] = []
    real = docker.APIClient.inspect_container

    def counting(self: docker.APIClient, container: str) -> Any:
        inspected.append(container)
        return real(self, container)

    monkeypatch.setattr(docker.APIClient, "inspect_container", counting)
    spec = make_spec(image, hub_id, mode="never-ready", timeout=2.0)

    with pytest.raises(LaunchFailed, match="not ready after 2 s"):
        await backend.start(spec, quiet)

    # After create, after start (for the address), and when reading the last log lines.
    assert len(inspected) <= 3, inspected


async def test_without_the_event_stream_a_crash_is_still_noticed_quickly(
    backend: DockerBackend, image: str, hub_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unavailable(self: ExitWatcher) -> None:
        raise BackendUnavailable("no event stream today")

    monkeypatch.setattr(ExitWatcher, "subscribe", unavailable)
    spec = make_spec(image, hub_id, mode="exit", timeout=30.0, env={"LABDOCK_TEST_EXIT_CODE": "4"})
    began = time.monotonic()

    with pytest.raises(LaunchFailed, match="exited with code 4 before it was ready"):
        await backend.start(spec, quiet)

    assert time.monotonic() - began < 10


async def test_engine_calls_never_run_on_the_event_loop(
    backend: DockerBackend, image: str, hub_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.current_thread()
    callers: list[threading.Thread] = []
    real_send = docker.APIClient.send

    def send(self: docker.APIClient, request: Any, **kw: Any) -> Any:
        callers.append(threading.current_thread())
        return real_send(self, request, **kw)

    monkeypatch.setattr(docker.APIClient, "send", send)
    spec = make_spec(image, hub_id)

    await backend.start(spec, quiet)
    await backend.list()
    await backend.logs(spec.server_id)
    await backend.stop(spec.server_id, remove=True, grace=1)
    await backend.remove_volume(spec.user_id)
    monkeypatch.undo()

    assert len(callers) >= 8
    assert loop_thread not in callers
    assert {t.name.split("_")[0] for t in callers} <= {"test-docker", f"labdock-events-{hub_id}"}


async def test_a_broken_event_stream_falls_back_to_asking_the_engine(
    backend: DockerBackend, client: docker.DockerClient, image: str, hub_id: str
) -> None:
    spec = make_spec(image, hub_id, mode="never-ready", timeout=30.0)
    launch = asyncio.ensure_future(backend.start(spec, quiet))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(docker.errors.NotFound):
            if (await inspect(client, name_of(spec)))["State"]["Running"]:
                break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # the launch now waits for "answers" or "died"

    await backend.close()  # the die subscription ends, as when the engine drops it
    await asyncio.to_thread(client.containers.get(name_of(spec)).kill)

    with pytest.raises(LaunchFailed, match="exited with code 137 before it was ready"):
        await asyncio.wait_for(launch, 10)


async def test_the_docker_engine_implements_every_port_the_hub_asks_of_an_engine() -> None:
    from hub.backends.docker_stats import DockerStats
    from hub.backends.docker_storage import DockerVolumeMeter
    from hub.domain.catalog import ImageStore
    from hub.domain.servers import Backend
    from hub.domain.stats import StatsReader
    from hub.domain.storage import VolumeMeter
    from hub.images.store import EngineImages

    for port, implementation in [
        (Backend, DockerBackend),
        (StatsReader, DockerStats),
        (VolumeMeter, DockerVolumeMeter),
        (ImageStore, EngineImages),
    ]:
        needed = {name for name in vars(port) if not name.startswith("_")}
        missing = needed - set(dir(implementation))
        assert not missing, f"{implementation.__name__} lacks {missing} of {port.__name__}"
