"""Runtime volumes: read-only copies of an image's software trees that servers share.

The pure parts (which label values qualify, names, overlap) are tested without an
engine. The rest runs on the real engine with a small image of its own, built from
the busybox test image with a ``labdock.runtime-paths`` label and a random label
value, so that each test module starts with an image no copy exists for.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
import tarfile
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import docker.errors
import pytest
import pytest_asyncio
from docker.models.containers import ContainerCollection
from docker.types import Mount

from hub.backends import docker_runtime
from hub.backends.docker import DockerBackend
from hub.backends.docker_config import create_args
from hub.backends.docker_names import home_volume_name, runtime_volume_name
from hub.backends.docker_runtime import (
    IMAGE_LABEL,
    MARKER,
    PATH_LABEL,
    UNSHARED_DRIVERS,
    overlaps,
    runtime_paths,
)
from hub.backends.docker_storage import DockerVolumeMeter
from tests.busybox_image import ensure_test_image
from tests.test_backend_docker import TEST_LABELS, make_spec, purge, quiet, run_in

APP_FILE = "labdock runtime test payload\n"


# -- which label values qualify (no engine) ----------------------------------------------------


def test_label_names_directories_below_the_allowed_roots_only() -> None:
    label = {
        "labdock.runtime-paths": (
            "/opt/labdock/:/usr/lib/python3.11: /usr/local/lib/python3.11 :"
            "/etc/ssl:/home/analyst:/tmp/x:/opt:/usr/sbin:/:relative:/opt/../etc:/opt/a b:"
            "/opt/labdock/lib"  # inside /opt/labdock: the outer copy holds it
        )
    }
    assert runtime_paths(label) == (
        "/opt/labdock",
        "/usr/lib/python3.11",
        "/usr/local/lib/python3.11",
    )
    assert runtime_paths({}) == ()
    assert runtime_paths(None) == ()
    assert runtime_paths({"labdock.runtime-paths": "::"}) == ()


def test_volume_names_hold_only_ids_and_differ_per_image_and_path() -> None:
    image = "sha256:" + "ab" * 32
    name = runtime_volume_name("h1", image, "/opt/labdock")
    assert name.startswith("labdock-h1-rt-abababababab-")
    assert name != runtime_volume_name("h1", image, "/usr/lib/python3.11")
    assert name != runtime_volume_name("h1", "sha256:" + "cd" * 32, "/opt/labdock")
    assert name != runtime_volume_name("h2", image, "/opt/labdock")


def test_overlap_covers_equal_inner_and_outer_paths_not_siblings() -> None:
    assert overlaps("/opt/app", ["/opt/app"])
    assert overlaps("/opt/app", ["/opt/app/home"])
    assert overlaps("/opt/app/lib", ["/opt/app"])
    assert not overlaps("/opt/app", ["/opt/application", "/home/analyst"])


def test_create_args_add_runtime_mounts_read_only_after_the_home() -> None:
    spec = make_spec("img", "h1")
    runtime = [Mount(target="/opt/app", source="labdock-h1-rt-x", type="volume", read_only=True)]
    mounts = create_args(spec, network="n", image_user="", init=True, runtime_mounts=runtime)[
        "mounts"
    ]
    assert mounts[0]["Target"] == spec.home
    assert mounts[-1]["Target"] == "/opt/app" and mounts[-1]["ReadOnly"] is True
    plain = create_args(spec, network="n", image_user="", init=True)["mounts"]
    assert [m["Target"] for m in plain] == [spec.home]


# -- on the engine -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    try:
        engine = docker.from_env()
        engine.ping()
    except Exception as exc:
        pytest.fail(f"these tests need a reachable Docker engine: {exc}")
    yield engine
    engine.close()


def build_image(client: docker.DockerClient, paths: str | None) -> str:
    """The busybox test image plus /opt/app/payload.txt and (if given) the paths label."""
    base = ensure_test_image(client)
    label = f'LABEL labdock.runtime-paths="{paths}"\n' if paths is not None else ""
    dockerfile = (
        f"FROM {base}\nCOPY payload.txt /opt/app/payload.txt\n{label}"
        f"LABEL labdock.test=1 labdock.test.unique={secrets.token_hex(8)}\n"
    ).encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, body in (("Dockerfile", dockerfile), ("payload.txt", APP_FILE.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    image, _ = client.images.build(
        fileobj=io.BytesIO(context.getvalue()), custom_context=True, rm=True, forcerm=True
    )
    return str(image.id)


@pytest.fixture(scope="module")
def labelled(client: docker.DockerClient) -> Iterator[str]:
    """An image whose label lists /opt/app, a missing directory and a refused one."""
    image = build_image(client, "/opt/app:/opt/missing:/etc")
    yield image
    remove_image(client, image)


def remove_image(client: docker.DockerClient, image: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        client.images.remove(image, force=True)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="test-runtime")
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def hub_id(client: docker.DockerClient) -> Iterator[str]:
    hub = "t" + secrets.token_hex(4)
    yield hub
    purge(client, hub)


@pytest_asyncio.fixture
async def backend(
    client: docker.DockerClient, hub_id: str, executor: ThreadPoolExecutor
) -> AsyncIterator[DockerBackend]:
    made = DockerBackend(
        client,
        hub_id=hub_id,
        executor=executor,
        extra_labels=TEST_LABELS,
        runtime_volumes="on",
    )
    yield made
    await made.close()


def runtime_mounts(client: docker.DockerClient, container_id: str) -> dict[str, dict[str, str]]:
    attrs = client.api.inspect_container(container_id)
    return {
        m["Destination"]: m
        for m in attrs["Mounts"]
        if m["Type"] == "volume" and m["Destination"].startswith("/opt/")
    }


def helpers(client: docker.DockerClient, hub_id: str) -> list[str]:
    filters = {"label": [f"labdock.hub={hub_id}", "labdock.role=runtime-filler"]}
    return [c.name for c in client.containers.list(all=True, filters=filters)]


def volume_files(client: docker.DockerClient, image: str, volume: str) -> set[str]:
    """The names at the top of a volume, listed by a throwaway container of ``image``."""
    output = client.containers.run(
        image,
        ["ls", "-A", "/v"],
        entrypoint=[],
        network_mode="none",
        volumes={volume: {"bind": "/v", "mode": "ro"}},
        labels=TEST_LABELS,
        remove=True,
    )
    return set(output.decode().split())


@pytest.mark.docker
async def test_first_launch_starts_the_copy_and_later_ones_mount_it_read_only(
    client: docker.DockerClient, backend: DockerBackend, hub_id: str, labelled: str
) -> None:
    first = await backend.start(make_spec(labelled, hub_id, server_id=1), quiet)
    assert runtime_mounts(client, first.container_id) == {}, "no copy is ready yet"

    await backend.prepare_runtime([labelled])  # waits for the copy the launch began
    assert backend.runtime_ready(labelled)
    assert helpers(client, hub_id) == [], "the filler and probe containers are removed"

    second = await backend.start(make_spec(labelled, hub_id, server_id=2), quiet)
    mounts = runtime_mounts(client, second.container_id)
    assert set(mounts) == {"/opt/app"}, "/opt/missing is absent, /etc is not allowed"
    name = runtime_volume_name(hub_id, labelled, "/opt/app")
    assert mounts["/opt/app"]["Name"] == name and mounts["/opt/app"]["RW"] is False

    code, out = await run_in(client, second.container_id, "cat /opt/app/payload.txt")
    assert (code, out) == (0, APP_FILE)
    code, out = await run_in(client, second.container_id, "touch /opt/app/x 2>&1; echo rc=$?")
    assert "Read-only file system" in out and "rc=1" in out

    labels = client.volumes.get(name).attrs["Labels"]
    assert labels["labdock.hub"] == hub_id and labels["labdock.role"] == "runtime"
    assert labels[IMAGE_LABEL] == labelled and labels[PATH_LABEL] == "/opt/app"
    assert labels["labdock.test"] == "1"
    assert volume_files(client, labelled, name) == {"payload.txt", MARKER}


@pytest.mark.docker
async def test_an_interrupted_copy_is_made_again(
    client: docker.DockerClient, backend: DockerBackend, hub_id: str, labelled: str
) -> None:
    # What a hub killed during the copy leaves: the volume, part of the files, no marker;
    # and the filler container that held it.
    name = runtime_volume_name(hub_id, labelled, "/opt/app")
    client.volumes.create(name, labels={**TEST_LABELS, "labdock.hub": hub_id})
    client.containers.run(
        labelled,
        ["sh", "-c", "echo half > /v/partial"],
        entrypoint=[],
        user="0",
        network_mode="none",
        volumes={name: {"bind": "/v", "mode": "rw"}},
        labels=TEST_LABELS,
        remove=True,
    )
    client.containers.create(
        labelled,
        ["true"],
        labels={
            **TEST_LABELS,
            "labdock.hub": hub_id,
            "labdock.role": "runtime-filler",
            IMAGE_LABEL: labelled,
        },
        volumes={name: {"bind": "/opt/app", "mode": "rw"}},
    )

    await backend.prepare_runtime([labelled])

    assert backend.runtime_ready(labelled)
    assert helpers(client, hub_id) == []
    assert volume_files(client, labelled, name) == {"payload.txt", MARKER}
    spec = make_spec(labelled, hub_id)
    endpoint = await backend.start(spec, quiet)
    assert set(runtime_mounts(client, endpoint.container_id)) == {"/opt/app"}


@pytest.mark.docker
async def test_a_copy_removed_behind_the_hubs_back_is_not_mounted_and_is_made_again(
    client: docker.DockerClient,
    backend: DockerBackend,
    hub_id: str,
    labelled: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await backend.prepare_runtime([labelled])
    name = runtime_volume_name(hub_id, labelled, "/opt/app")
    client.volumes.get(name).remove()  # as `docker volume prune` would
    monkeypatch.setattr(docker_runtime, "PRESENT_FOR", 0.0)

    endpoint = await backend.start(make_spec(labelled, hub_id, server_id=1), quiet)
    assert runtime_mounts(client, endpoint.container_id) == {}, "never an empty volume"

    await backend.prepare_runtime([labelled])
    again = await backend.start(make_spec(labelled, hub_id, server_id=2), quiet)
    assert set(runtime_mounts(client, again.container_id)) == {"/opt/app"}
    assert volume_files(client, labelled, name) == {"payload.txt", MARKER}


@pytest.mark.docker
async def test_a_restarted_hub_checks_earlier_copies_and_copies_nothing_new(
    client: docker.DockerClient,
    backend: DockerBackend,
    hub_id: str,
    executor: ThreadPoolExecutor,
    labelled: str,
) -> None:
    await backend.prepare_runtime([labelled])
    await backend.close()
    never_launched = build_image(client, "/opt/app")
    again = DockerBackend(
        client, hub_id=hub_id, executor=executor, extra_labels=TEST_LABELS, runtime_volumes="on"
    )
    try:
        await again.prepare_runtime([labelled, never_launched], only_copied=True)
        assert again.runtime_ready(labelled)
        assert not again.runtime_ready(never_launched)
        role = {"label": [f"labdock.hub={hub_id}", "labdock.role=runtime"]}
        copied = {v.attrs["Labels"][IMAGE_LABEL] for v in client.volumes.list(filters=role)}
        assert copied == {labelled}
        endpoint = await again.start(make_spec(labelled, hub_id), quiet)
        assert set(runtime_mounts(client, endpoint.container_id)) == {"/opt/app"}
    finally:
        await again.close()
        remove_image(client, never_launched)


@pytest.mark.docker
async def test_copies_of_an_image_that_is_gone_are_pruned_and_those_in_use_kept(
    client: docker.DockerClient, backend: DockerBackend, hub_id: str, labelled: str
) -> None:
    doomed = build_image(client, "/opt/app")
    try:
        await backend.prepare_runtime([doomed, labelled])
        assert backend.runtime_ready(doomed) and backend.runtime_ready(labelled)
        in_use = await backend.start(make_spec(labelled, hub_id), quiet)
        assert runtime_mounts(client, in_use.container_id)
    finally:
        remove_image(client, doomed)

    await backend.prepare_runtime([])

    role = {"label": [f"labdock.hub={hub_id}", "labdock.role=runtime"]}
    left = {v.attrs["Labels"][IMAGE_LABEL] for v in client.volumes.list(filters=role)}
    assert left == {labelled}


@pytest.mark.docker
async def test_off_and_unlabelled_images_get_no_copies(
    client: docker.DockerClient,
    hub_id: str,
    executor: ThreadPoolExecutor,
    labelled: str,
) -> None:
    plain = ensure_test_image(client)
    off = DockerBackend(
        client, hub_id=hub_id, executor=executor, extra_labels=TEST_LABELS, runtime_volumes="off"
    )
    on = DockerBackend(
        client, hub_id=hub_id, executor=executor, extra_labels=TEST_LABELS, runtime_volumes="on"
    )
    try:
        await off.prepare_runtime([labelled])
        await on.prepare_runtime([plain])
        assert not off.runtime_ready(labelled) and not on.runtime_ready(plain)
        launched = await off.start(make_spec(labelled, hub_id), quiet)
        assert runtime_mounts(client, launched.container_id) == {}
        role = {"label": [f"labdock.hub={hub_id}", "labdock.role"]}
        assert client.volumes.list(filters=role) == []
        assert client.containers.list(all=True, filters=role) == []
    finally:
        await off.close()
        await on.close()


@pytest.mark.docker
async def test_auto_follows_the_engines_storage_driver(
    client: docker.DockerClient, hub_id: str, executor: ThreadPoolExecutor
) -> None:
    auto = DockerBackend(client, hub_id=hub_id, executor=executor, extra_labels=TEST_LABELS)
    try:
        driver = client.info()["Driver"]
        assert await auto._runtime.enabled() == (driver in UNSHARED_DRIVERS)
    finally:
        await auto.close()


@pytest.mark.docker
async def test_closing_during_a_copy_leaves_no_helper_container(
    client: docker.DockerClient, hub_id: str, labelled: str
) -> None:
    pool = ThreadPoolExecutor(max_workers=4)
    backend = DockerBackend(
        client, hub_id=hub_id, executor=pool, extra_labels=TEST_LABELS, runtime_volumes="on"
    )
    preparing = asyncio.create_task(backend.prepare_runtime([labelled]))
    await asyncio.sleep(0.05)  # the copy is under way on the executor
    await backend.close()
    preparing.cancel()
    await asyncio.gather(preparing, return_exceptions=True)
    await asyncio.to_thread(pool.shutdown, wait=True)  # what Hub.close does: drain
    assert helpers(client, hub_id) == []


@pytest.mark.docker
async def test_storage_meter_counts_homes_not_runtime_copies(
    client: docker.DockerClient,
    backend: DockerBackend,
    hub_id: str,
    executor: ThreadPoolExecutor,
    labelled: str,
) -> None:
    await backend.prepare_runtime([labelled])
    await backend.start(make_spec(labelled, hub_id, user_id=7), quiet)
    meter = DockerVolumeMeter(
        client,
        hub_id=hub_id,
        executor=executor,
        image=ensure_test_image(client),
        extra_labels=TEST_LABELS,
    )
    try:
        measured = await meter.measure()
    finally:
        await meter.close()
    assert [(u.name, u.user_id) for u in measured] == [(home_volume_name(hub_id, 7), 7)]


@pytest.mark.docker
async def test_a_failed_copy_gives_its_space_back_and_is_retried_only_after_a_pause(
    client: docker.DockerClient,
    backend: DockerBackend,
    hub_id: str,
    labelled: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_create = ContainerCollection.create
    failures = []

    def full_disk(self: ContainerCollection, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("mounts") and kwargs["labels"].get("labdock.role") == "runtime-filler":
            failures.append(1)
            raise docker.errors.APIError("no space left on device")
        return real_create(self, *args, **kwargs)

    monkeypatch.setattr(ContainerCollection, "create", full_disk)
    spec = make_spec(labelled, hub_id, server_id=1)
    await backend.start(spec, quiet)
    await backend.prepare_runtime([labelled])  # waits for the copy that launch began
    assert failures and not backend.runtime_ready(labelled)
    role = {"label": [f"labdock.hub={hub_id}", "labdock.role"]}
    assert client.volumes.list(filters=role) == [], "the partial copy is removed"
    assert client.containers.list(all=True, filters=role) == []

    tried = len(failures)
    await backend.stop(1, remove=True)
    await backend.start(spec, quiet)
    await asyncio.sleep(0.2)
    assert len(failures) == tried, "no new copy right after a failure"

    monkeypatch.setattr(ContainerCollection, "create", real_create)
    monkeypatch.setattr(docker_runtime, "RETRY_AFTER", 0.0)
    await backend.stop(1, remove=True)
    await backend.start(spec, quiet)  # begins the copy again
    await backend.prepare_runtime([labelled])
    assert backend.runtime_ready(labelled)


async def test_preparing_while_the_engine_is_unreachable_is_logged_not_raised(
    executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    nowhere = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    for mode in ("auto", "on"):
        backend = DockerBackend(nowhere, hub_id="tnowhere", executor=executor, runtime_volumes=mode)
        await backend.prepare_runtime(["sha256:" + "ab" * 32], only_copied=True)
        await backend.close()
    assert caplog.text.count("runtime volumes not checked") == 2
