"""Environment manifests, content hashes, the offline base and the python image.

The manifest and hash tests are pure and fast. The others use the real engine:
they build ``labdock/base`` and ``labdock/python`` once (minutes the first time,
then skipped by input hash), and leave the images for the next run.
"""

from __future__ import annotations

import functools
import io
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.models.containers
import pytest
from rich.console import Console

from hub.domain.errors import ConfigError, LabdockError
from hub.domain.resources import GiB, MiB, Resources
from hub.images.base import base_tag, ensure_base, find_mirror, inputs_hash
from hub.images.build import BuiltImage, build_images, content_hash, latest_tag
from hub.images.manifest import load_all, load_manifest
from tests.busybox_image import ensure_test_image

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "images"
CACHE = REPO / ".cache" / "labdock"

MINIMAL = """
description = "a test environment"
version = "1.0"
port = 8080
command = ["/start"]
prefix = "strip"
readiness_path = "health"

[resources.default]
cpus = 0.5
memory = "512M"

[resources.maximum]
cpus = 2
memory = "4G"
"""


def write_env(root: Path, name: str, manifest: str, **files: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "manifest.toml").write_text(manifest)
    for filename, text in files.items():
        (folder / filename).write_text(text)
    return folder


# --- manifests ---------------------------------------------------------------------------


def test_minimal_manifest_gets_the_documented_defaults(tmp_path: Path) -> None:
    manifest = load_manifest(write_env(tmp_path, "tiny", MINIMAL))
    assert manifest.name == "tiny"
    assert manifest.command == ("/start",)
    assert manifest.prefix == "strip"
    assert manifest.default == Resources(cpus=0.5, memory=512 * MiB)
    assert manifest.maximum == Resources(cpus=2.0, memory=4 * GiB)
    assert (manifest.gpu, manifest.gpu_shareable) == (False, False)
    assert manifest.pids_limit == 1024
    assert manifest.shm_size == 64 * MiB
    assert manifest.home == "/home/analyst"
    assert manifest.upstream_base is None
    assert manifest.build_by_default


def test_unknown_key_is_rejected_naming_the_file_and_the_key(tmp_path: Path) -> None:
    folder = write_env(tmp_path, "typo", "memroy_limit = 3\n" + MINIMAL)
    with pytest.raises(ConfigError) as caught:
        load_manifest(folder)
    assert "'memroy_limit'" in caught.value.message
    assert str(folder / "manifest.toml") in caught.value.message


def test_unknown_resource_key_is_rejected_with_its_full_name(tmp_path: Path) -> None:
    text = MINIMAL.replace('memory = "512M"', 'memory = "512M"\ndisk = "10G"')
    with pytest.raises(ConfigError, match=r"resources\.default\.disk"):
        load_manifest(write_env(tmp_path, "disk", text))


def test_bad_memory_value_is_rejected_naming_the_key(tmp_path: Path) -> None:
    text = MINIMAL.replace('memory = "512M"', 'memory = "lots"')
    with pytest.raises(ConfigError, match=r"resources\.default\.memory.*'lots'"):
        load_manifest(write_env(tmp_path, "lots", text))


def test_default_above_maximum_is_rejected(tmp_path: Path) -> None:
    text = MINIMAL.replace("cpus = 0.5", "cpus = 8")
    with pytest.raises(ConfigError, match=r"resources\.default\.cpus.*maximum"):
        load_manifest(write_env(tmp_path, "greedy", text))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ('prefix = "strip"', 'prefix = "rewrite"'),
        ("port = 8080", "port = 70000"),
        ('readiness_path = "health"', 'readiness_path = "/health"'),
        ('command = ["/start"]', "command = []"),
        ('prefix = "strip"', 'build_by_default = "no"\nprefix = "strip"'),
    ],
    ids=["prefix", "port", "readiness_path", "command", "build_by_default"],
)
def test_bad_values_are_rejected_naming_the_key(tmp_path: Path, change: str, key: str) -> None:
    name = key.split(" ")[0]
    with pytest.raises(ConfigError, match=f"'{name}'"):
        load_manifest(write_env(tmp_path, "bad", MINIMAL.replace(change, key)))


def test_gpus_need_a_gpu_environment(tmp_path: Path) -> None:
    text = MINIMAL.replace('memory = "4G"', 'memory = "4G"\ngpus = 1')
    with pytest.raises(ConfigError, match="gpu = false"):
        load_manifest(write_env(tmp_path, "nogpu", text))


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    text = MINIMAL.replace('readiness_path = "health"\n', "")
    with pytest.raises(ConfigError, match="'readiness_path': is required"):
        load_manifest(write_env(tmp_path, "noready", text))


def test_shipped_python_manifest_describes_jupyter_server() -> None:
    manifests = load_all(IMAGES)
    python = manifests["python"]
    assert (python.port, python.prefix, python.readiness_path) == (8888, "keep", "api/status")
    assert python.default == Resources(cpus=1, memory=2 * GiB)
    assert python.maximum == Resources(cpus=4, memory=16 * GiB)
    assert python.shm_size == 1 * GiB
    assert not python.gpu
    assert python.upstream_base == "python:3.11-slim-bookworm"


def test_shipped_environments_are_all_built_by_default_except_the_cuda_one() -> None:
    manifests = load_all(IMAGES)
    assert set(manifests) >= {"python", "jupyter", "tensorflow", "tensorflow-gpu", "airflow"}
    assert [n for n, m in manifests.items() if not m.build_by_default] == ["tensorflow-gpu"]
    gpu = manifests["tensorflow-gpu"]
    assert gpu.gpu and gpu.default.gpus >= 1 and gpu.maximum.gpus >= 1
    assert gpu.shm_size >= 2 * GiB
    assert gpu.upstream_base == "tensorflow/tensorflow:2.21.0-gpu"
    assert not any(m.gpu for n, m in manifests.items() if n != "tensorflow-gpu")


# --- content hashes and base inputs ------------------------------------------------------


def test_content_hash_is_stable_and_ignores_modification_times(tmp_path: Path) -> None:
    folder = write_env(tmp_path, "env", MINIMAL, Dockerfile="FROM ${BASE}\n")
    first = content_hash(folder, "labdock/base:aaa")
    os.utime(folder / "Dockerfile", (1_000_000, 1_000_000))
    assert content_hash(folder, "labdock/base:aaa") == first


def test_content_hash_changes_with_a_file_a_new_file_or_the_base(tmp_path: Path) -> None:
    folder = write_env(tmp_path, "env", MINIMAL, Dockerfile="FROM ${BASE}\n")
    first = content_hash(folder, "labdock/base:aaa")
    assert content_hash(folder, "labdock/base:bbb") != first

    (folder / "Dockerfile").write_text("FROM ${BASE}\nRUN true\n")
    second = content_hash(folder, "labdock/base:aaa")
    assert second != first

    (folder / "start.sh").write_text("#!/bin/sh\n")
    third = content_hash(folder, "labdock/base:aaa")
    assert third != second

    (folder / "start.sh").chmod(0o755)
    assert content_hash(folder, "labdock/base:aaa") != third


def test_mirror_is_read_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "security.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    assert find_mirror(tmp_path) is None
    (parts / "debian.sources").write_text(
        "# a comment\nTypes: deb deb-src\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert find_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text(
        "deb [signed-by=/k.gpg arch=amd64] https://first.example/debian bookworm main\n"
    )
    assert find_mirror(tmp_path) == "https://first.example/debian"


def test_base_tag_follows_its_inputs() -> None:
    one = inputs_hash(suite="bookworm", mirror="http://a/debian", packages=["python3"])
    assert one == inputs_hash(suite="bookworm", mirror="http://a/debian/", packages=["python3"])
    assert one != inputs_hash(suite="bookworm", mirror="http://b/debian", packages=["python3"])
    assert one != inputs_hash(suite="bookworm", mirror="http://a/debian", packages=["tini"])
    assert base_tag("http://a/debian") != base_tag("http://b/debian")


def test_unknown_environment_is_refused_listing_the_known_ones(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"'nope'.*known: .*\bpython\b"):
        build_images(
            docker_client, ["nope"], images_dir=IMAGES, cache_dir=tmp_path, console=Console()
        )


# --- the real engine ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(docker_client: docker.DockerClient) -> str:
    return ensure_base(docker_client, cache_dir=CACHE / "base", console=Console())


@pytest.fixture(scope="module")
def python_image(docker_client: docker.DockerClient, base: str) -> BuiltImage:
    [built] = build_images(
        docker_client, ["python"], images_dir=IMAGES, cache_dir=CACHE, console=Console()
    )
    return built


@pytest.fixture
def run_container(docker_client: docker.DockerClient) -> Iterator[Callable[..., Any]]:
    """Start containers labelled for this test; all of them are removed afterwards."""
    run = secrets.token_hex(6)
    labels = {"labdock.test": "1", "labdock.test.run": run}

    def start(image: str, **kwargs: Any) -> docker.models.containers.Container:
        return docker_client.containers.run(image, detach=True, labels=labels, **kwargs)

    try:
        yield start
    finally:
        leftovers = docker_client.containers.list(
            all=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]}
        )
        for container in leftovers:
            container.remove(force=True)


@pytest.mark.docker
@pytest.mark.slow
def test_base_is_tagged_by_its_inputs_and_then_skipped(
    docker_client: docker.DockerClient, base: str
) -> None:
    image = docker_client.images.get(base)
    assert base.startswith("labdock/base:")
    assert image.labels["labdock.inputs"].startswith(base.split(":")[1])

    started = time.monotonic()
    assert ensure_base(docker_client, cache_dir=CACHE / "base", console=Console()) == base
    assert time.monotonic() - started < 0.5
    assert not (CACHE / "base" / base.split(":")[1]).exists(), "the rootfs is removed after import"


@pytest.mark.docker
def test_base_build_failure_shows_debootstrap_output_and_keeps_only_the_log(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    shown = io.StringIO()
    with pytest.raises(LabdockError, match=r"debootstrap of bookworm .* failed; full log in"):
        ensure_base(
            docker_client,
            cache_dir=tmp_path,
            console=Console(file=shown, width=200),
            mirror="http://127.0.0.1:9/debian",  # nothing listens on the discard port
        )
    assert "Failed getting release file" in shown.getvalue()
    [work] = tmp_path.iterdir()
    assert [p.name for p in work.iterdir()] == ["debootstrap.log"]


@pytest.mark.docker
def test_small_environment_is_built_skipped_then_forced(
    docker_client: docker.DockerClient, base: str, tmp_path: Path
) -> None:
    write_env(
        tmp_path,
        "labdock-test-tiny",
        MINIMAL,
        Dockerfile="ARG BASE\nFROM ${BASE}\nCOPY hello.txt /hello.txt\n",
        **{"hello.txt": "hello\n"},
    )
    build = functools.partial(
        build_images,
        docker_client,
        ["labdock-test-tiny"],
        images_dir=tmp_path,
        cache_dir=CACHE,
        console=Console(file=io.StringIO()),
    )
    try:
        [first] = build()
        [second] = build()
        [forced] = build(force=True)
        assert second.skipped and (second.tag, second.image_id) == (first.tag, first.image_id)
        assert not forced.skipped and forced.tag == first.tag
        image = docker_client.images.get(first.tag)
        assert image.labels["labdock.inputs"].startswith(first.tag.split(":")[1])
        # The image the forced build replaced keeps a tag, so `docker image prune` (which
        # removes untagged images) cannot take it from catalog versions that still run it.
        assert forced.image_id != first.image_id
        kept = f"{first.tag}-{first.image_id.removeprefix('sha256:')[:8]}"
        assert docker_client.images.get(kept).id == first.image_id
    finally:
        for image in docker_client.images.list(
            filters={"label": "labdock.environment=labdock-test-tiny"}
        ):
            docker_client.images.remove(str(image.id), force=True)


@pytest.mark.docker
def test_environment_not_built_by_default_is_built_only_when_named(
    docker_client: docker.DockerClient, base: str, tmp_path: Path
) -> None:
    dockerfile = "ARG BASE\nFROM ${BASE}\nLABEL labdock.test=1\n"
    for name, extra in (
        ("labdock-test-usual", ""),
        ("labdock-test-huge", "build_by_default = false\n"),
    ):
        write_env(tmp_path, name, extra + MINIMAL, Dockerfile=dockerfile)
    shown = io.StringIO()
    build = functools.partial(
        build_images,
        docker_client,
        images_dir=tmp_path,
        cache_dir=CACHE,
        console=Console(file=shown, width=200),
    )
    try:
        assert [b.name for b in build(None)] == ["labdock-test-usual"]
        assert "labdock-test-huge: not built by default" in shown.getvalue()
        assert [b.name for b in build(["labdock-test-huge"])] == ["labdock-test-huge"]
    finally:
        for name in ("labdock-test-usual", "labdock-test-huge"):
            for image in docker_client.images.list(
                filters={"label": f"labdock.environment={name}"}
            ):
                docker_client.images.remove(str(image.id), force=True)


@pytest.mark.docker
def test_upstream_build_is_from_the_official_base_and_is_what_the_hub_finds(
    docker_client: docker.DockerClient, base: str, tmp_path: Path
) -> None:
    # The busybox test image stands in for an official base that a connected machine pulls.
    official = ensure_test_image(docker_client)
    dockerfile = "ARG BASE\nFROM ${BASE}\nLABEL labdock.test=1\n"
    folder = write_env(
        tmp_path,
        "labdock-test-upstream",
        f'upstream_base = "{official}"\n' + MINIMAL,
        Dockerfile=dockerfile,
    )
    write_env(tmp_path, "labdock-test-bare", MINIMAL, Dockerfile=dockerfile)
    build = functools.partial(
        build_images, docker_client, images_dir=tmp_path, cache_dir=CACHE, console=Console()
    )
    try:
        assert latest_tag(docker_client, "labdock-test-upstream", folder=folder) is None
        [offline] = build(["labdock-test-upstream"])
        assert latest_tag(docker_client, "labdock-test-upstream", folder=folder) == offline.tag
        [upstream] = build(["labdock-test-upstream"], upstream=True)
        assert (
            upstream.tag == f"labdock/labdock-test-upstream:{content_hash(folder, official)[:12]}"
        )
        assert upstream.tag != offline.tag
        # The newer build is what the hub seeds: here, the one FROM the official base.
        assert latest_tag(docker_client, "labdock-test-upstream", folder=folder) == upstream.tag
        assert docker_client.images.get(upstream.tag).attrs["Os"] == "linux"
        with pytest.raises(ConfigError, match="'upstream_base': is required"):
            build(["labdock-test-bare"], upstream=True)
    finally:
        for image in docker_client.images.list(
            filters={"label": "labdock.environment=labdock-test-upstream"}
        ):
            docker_client.images.remove(str(image.id), force=True)


@pytest.mark.docker
def test_failed_build_names_the_step_and_shows_its_output(
    docker_client: docker.DockerClient, base: str, tmp_path: Path
) -> None:
    write_env(
        tmp_path,
        "labdock-test-broken",
        MINIMAL,
        Dockerfile="ARG BASE\nFROM ${BASE}\nRUN echo the-last-words && false\n",
    )
    shown = io.StringIO()
    with pytest.raises(LabdockError, match=r"Step 3/\d+ : RUN echo the-last-words"):
        build_images(
            docker_client,
            ["labdock-test-broken"],
            images_dir=tmp_path,
            cache_dir=CACHE,
            console=Console(file=shown, width=200),
        )
    assert "the-last-words" in shown.getvalue().split("failed at")[1]


@pytest.mark.docker
@pytest.mark.slow
def test_python_image_is_built_once_then_skipped(
    docker_client: docker.DockerClient, python_image: BuiltImage
) -> None:
    assert python_image.tag.startswith("labdock/python:")
    assert python_image.image_id.startswith("sha256:")
    image = docker_client.images.get(python_image.tag)
    assert image.labels["labdock.environment"] == "python"

    [again] = build_images(
        docker_client, ["python"], images_dir=IMAGES, cache_dir=CACHE, console=Console()
    )
    assert again.skipped
    assert (again.tag, again.image_id) == (python_image.tag, python_image.image_id)
    assert latest_tag(docker_client, "python", folder=IMAGES / "python") == python_image.tag


@pytest.mark.docker
@pytest.mark.slow
def test_python_image_leaves_no_build_ca_behind(
    python_image: BuiltImage, run_container: Callable[..., Any]
) -> None:
    container = run_container(
        python_image.tag,
        command=["sh", "-c", "id -u; find / -xdev -name 'labdock-build-ca*' 2>/dev/null; true"],
    )
    assert container.wait(timeout=60)["StatusCode"] == 0
    assert container.logs().decode().split() == ["1000"]


@pytest.mark.docker
@pytest.mark.slow
def test_python_server_answers_status_only_with_its_token(
    docker_client: docker.DockerClient,
    python_image: BuiltImage,
    run_container: Callable[..., Any],
) -> None:
    secret = secrets.token_urlsafe(24)
    container = run_container(
        python_image.tag,
        environment={"LABDOCK_PREFIX": "/user/t/x/", "LABDOCK_SERVER_SECRET": secret},
    )
    container.reload()
    url = f"http://{container.attrs['NetworkSettings']['IPAddress']}:8888/user/t/x/api/status"

    deadline = time.monotonic() + 60
    status = None
    while status is None and time.monotonic() < deadline:
        container.reload()
        if container.status != "running":
            pytest.fail(f"the server exited:\n{container.logs().decode()[-3000:]}")
        status = http_status(url)
        if status is None:
            time.sleep(0.5)
    assert status is not None, f"no answer in 60 s:\n{container.logs().decode()[-3000:]}"

    assert http_status(url, token=secret) == 200
    assert http_status(url) in (401, 403)
    assert http_status(url, token="wrong-" + secret) in (401, 403)


@pytest.mark.docker
@pytest.mark.slow
def test_python_server_refuses_to_start_without_a_secret(
    python_image: BuiltImage, run_container: Callable[..., Any]
) -> None:
    container = run_container(python_image.tag, environment={"LABDOCK_PREFIX": "/user/t/x/"})
    assert container.wait(timeout=60)["StatusCode"] != 0
    assert "LABDOCK_SERVER_SECRET" in container.logs().decode()


def http_status(url: str, *, token: str | None = None) -> int | None:
    """The HTTP status of a GET, or None while nothing listens yet."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"token {token}")
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no *_proxy here
    try:
        with direct.open(request, timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
