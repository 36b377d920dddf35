"""Live container stats: cgroup v1 and v2 files, the engine's stats API, and a real container."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pytest

from hub.backends.docker_stats import (
    CgroupFiles,
    DockerStats,
    Sample,
    api_sample,
    cpu_rate,
    locate,
    parse_proc_cgroup,
    read_cgroup,
    working_set,
)
from hub.domain.errors import Conflict
from hub.domain.resources import MiB
from tests.busybox_image import ensure_test_image

CID = "60a682f1af7777305c144ef6f43030302d531e5811223dc475168b764e46d608"

V1_PROC = f"""12:pids:/docker/{CID}
4:memory:/docker/{CID}
2:cpu,cpuacct:/docker/{CID}
0::/docker/{CID}
"""
V2_PROC = f"0::/system.slice/docker-{CID}.scope\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def v1_tree(root: Path, pid: int) -> None:
    write(root / "proc" / str(pid) / "cgroup", V1_PROC)
    memory = root / "cg" / "memory" / "docker" / CID
    write(memory / "memory.usage_in_bytes", str(100 * MiB))
    write(memory / "memory.limit_in_bytes", str(128 * MiB))
    write(memory / "memory.stat", f"cache 30\ntotal_inactive_file {20 * MiB}\nrss {70 * MiB}\n")
    write(root / "cg" / "cpu,cpuacct" / "docker" / CID / "cpuacct.usage", "5000000000\n")


def v2_tree(root: Path, pid: int) -> None:
    write(root / "proc" / str(pid) / "cgroup", V2_PROC)
    folder = root / "cg" / "system.slice" / f"docker-{CID}.scope"
    write(folder / "memory.current", str(90 * MiB))
    write(folder / "memory.max", "max\n")
    write(folder / "memory.stat", f"anon {80 * MiB}\nfile {10 * MiB}\ninactive_file {6 * MiB}\n")
    write(folder / "cpu.stat", "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")


def test_proc_cgroup_lines_map_each_controller_and_the_unified_path() -> None:
    paths = parse_proc_cgroup(V1_PROC)
    assert paths["memory"] == paths["cpuacct"] == paths["cpu"] == f"/docker/{CID}"
    assert paths[""] == f"/docker/{CID}"


def test_cgroup_v1_figures_are_read_as_working_set_and_cpu_nanoseconds(tmp_path: Path) -> None:
    v1_tree(tmp_path, 42)
    files = locate(CID, 42, proc=tmp_path / "proc", cgroup_root=tmp_path / "cg")
    assert files is not None and files.version == 1
    sample = read_cgroup(files, now=1.0)
    assert sample == Sample(cpu_ns=5_000_000_000, memory=80 * MiB, memory_limit=128 * MiB, at=1.0)


def test_cgroup_v2_figures_are_read_from_the_unified_hierarchy(tmp_path: Path) -> None:
    v2_tree(tmp_path, 7)
    files = locate(CID, 7, proc=tmp_path / "proc", cgroup_root=tmp_path / "cg")
    assert files == CgroupFiles(
        2,
        tmp_path / "cg" / "system.slice" / f"docker-{CID}.scope",
        tmp_path / "cg" / "system.slice" / f"docker-{CID}.scope",
    )
    sample = read_cgroup(files, now=2.0)
    assert sample.cpu_ns == 2_500_000_000
    assert sample.memory == 84 * MiB and sample.memory_limit is None  # "max": no limit


def test_a_cgroup_that_does_not_name_the_container_is_not_trusted(tmp_path: Path) -> None:
    # A hub in its own PID namespace sees some other process under that pid.
    write(tmp_path / "proc" / "42" / "cgroup", "0::/user.slice/session-1.scope\n")
    assert locate(CID, 42, proc=tmp_path / "proc", cgroup_root=tmp_path / "cg") is None
    assert locate(CID, 43, proc=tmp_path / "proc", cgroup_root=tmp_path / "cg") is None


def test_stats_api_json_of_cgroup_v1_and_v2_engines() -> None:
    v1 = {
        "read": "2026-11-30T00:00:02.500000000Z",
        "preread": "2026-11-30T00:00:01.500000000Z",
        "memory_stats": {
            "usage": 100 * MiB,
            "limit": 128 * MiB,
            "stats": {"cache": 1, "total_inactive_file": 20 * MiB},
        },
        "cpu_stats": {"cpu_usage": {"total_usage": 3_000_000_000}},
        "precpu_stats": {"cpu_usage": {"total_usage": 2_500_000_000}},
    }
    now, before = api_sample(v1)
    assert now.memory == 80 * MiB and now.memory_limit == 128 * MiB
    assert before is not None and cpu_rate(before, now) == pytest.approx(0.5)
    v2 = {
        "read": "2026-11-30T00:00:02Z",
        "preread": "0001-01-01T00:00:00Z",
        "memory_stats": {"usage": 90 * MiB, "limit": 2**63, "stats": {"inactive_file": 6 * MiB}},
        "cpu_stats": {"cpu_usage": {"total_usage": 1}},
        "precpu_stats": {"cpu_usage": {"total_usage": 0}},
    }
    now, before = api_sample(v2)
    assert now.memory == 84 * MiB and now.memory_limit is None and before is None


def test_working_set_never_goes_below_zero_or_ignores_a_bogus_stat() -> None:
    assert working_set(10, {"inactive_file": 50}, v2=True) == 10
    assert working_set(10, {}, v2=False) == 10


def test_cpu_rate_needs_a_real_interval() -> None:
    a = Sample(0, 0, None, 10.0)
    assert cpu_rate(a, Sample(1_000_000_000, 0, None, 10.01)) is None
    assert cpu_rate(a, Sample(1_000_000_000, 0, None, 12.0)) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def busy_container() -> object:
    client = docker.from_env()
    image = ensure_test_image(client)
    container = client.containers.run(
        image,
        ["sh", "-c", "dd if=/dev/zero bs=24M count=1 | sleep 3600 & while :; do :; done"],
        detach=True,
        labels={"labdock.test": "1", "labdock.hub": "stats-test"},
        mem_limit=64 * MiB,
        memswap_limit=64 * MiB,
        nano_cpus=500_000_000,
    )
    time.sleep(1.0)
    yield container
    container.remove(force=True)
    client.close()


@pytest.mark.docker
async def test_a_real_container_is_read_from_its_cgroup_in_a_millisecond(
    busy_container: docker.models.containers.Container,
) -> None:
    client = docker.from_env()
    with ThreadPoolExecutor(2) as executor:
        stats = DockerStats(client, executor)
        first = await stats.read(busy_container.id)
        await asyncio.sleep(0.3)
        started = time.perf_counter()
        usage = await stats.read(busy_container.id)
        took = time.perf_counter() - started
    assert stats.uses_cgroups == {busy_container.id: True}
    assert took < 0.1, took  # the engine's stats API takes about a second
    assert usage.memory_limit == 64 * MiB
    assert 20 * MiB < usage.memory_bytes < 64 * MiB, usage
    assert 0.05 < max(first.cpu_cores, usage.cpu_cores) <= 0.6, (first, usage)


@pytest.mark.docker
async def test_without_cgroup_files_the_engine_stats_api_gives_the_same_figures(
    busy_container: docker.models.containers.Container, tmp_path: Path
) -> None:
    client = docker.from_env()
    with ThreadPoolExecutor(2) as executor:
        stats = DockerStats(client, executor, proc=tmp_path)
        usage = await stats.read(busy_container.id)
    assert stats.uses_cgroups == {busy_container.id: False}
    assert usage.memory_limit == 64 * MiB
    assert 20 * MiB < usage.memory_bytes < 64 * MiB, usage
    assert 0.05 < usage.cpu_cores <= 0.6, usage


@pytest.mark.docker
async def test_a_stopped_container_is_a_conflict(tmp_path: Path) -> None:
    client = docker.from_env()
    container = client.containers.create(
        ensure_test_image(client), ["true"], labels={"labdock.test": "1"}
    )
    try:
        with ThreadPoolExecutor(2) as executor:
            readers = (DockerStats(client, executor), DockerStats(client, executor, proc=tmp_path))
            for stats in readers:
                with pytest.raises(Conflict, match="not running"):
                    await stats.read(container.id)
            with pytest.raises(Conflict, match="not running"):
                await DockerStats(client, executor).read("0" * 64)
    finally:
        container.remove(force=True)
