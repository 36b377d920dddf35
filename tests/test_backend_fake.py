"""The fake backend keeps the ``Backend`` port's promises, as ``DockerBackend`` does."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import hub.backends.fake
from hub.backends.fake import Behaviour, FakeBackend, behaviour
from hub.domain.errors import BackendUnavailable, Conflict, InvalidInput, NotFound
from hub.domain.resources import GiB, Resources
from hub.domain.servers import EngineEvent, Mount, ProgressEvent, ServerSpec

ROOT = Path(__file__).parent.parent


def spec(server_id: int = 1, image: str = "labdock/python:1", **fields: object) -> ServerSpec:
    values: dict[str, object] = dict(
        hub_id="h1",
        user_id=7,
        server_id=server_id,
        image=image,
        command=(),
        port=8888,
        prefix="/user/alice/lab/",
        secret="s",
        resources=Resources(cpus=1, memory=GiB),
        start_timeout=1.0,
    )
    values.update(fields)
    return ServerSpec(**values)  # type: ignore[arg-type]


def quiet(event: ProgressEvent) -> None:
    pass


def test_the_image_name_chooses_the_behaviour() -> None:
    assert behaviour("labdock/python:3f2a") == Behaviour()
    assert behaviour("sha256:0123") == Behaviour()
    assert behaviour("fake/slow:2.5") == Behaviour(ready_after=2.5)
    assert behaviour("fake/never-ready") == Behaviour(ready_after=None)
    assert behaviour("fake/crash") == Behaviour(crash_code=1)
    assert behaviour("fake/crash:3") == Behaviour(crash_code=3)
    assert behaviour("fake/oom:0.5") == Behaviour(oom_after=0.5)
    assert behaviour("fake/nothing:1") == Behaviour(built=False)
    with pytest.raises(InvalidInput, match="'soon' is not a number"):
        behaviour("fake/slow:soon")


def test_the_module_example_runs_and_nothing_imports_docker() -> None:
    doc = hub.backends.fake.__doc__ or ""
    example = textwrap.dedent(doc.split("What a server does")[0].split("\n", 1)[1])
    check = "\nimport sys\nassert not [m for m in sys.modules if m.split('.')[0] == 'docker']\n"
    done = subprocess.run(
        [sys.executable, "-c", example + check],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "DOCKER_HOST": "unix:///nonexistent"},
    )
    assert done.returncode == 0, done.stderr
    assert "['start', 'oom', 'die']" in done.stdout
    assert "oom_killed=True" in done.stdout


async def test_start_adopts_a_running_server_of_the_same_spec_and_refuses_another() -> None:
    backend = FakeBackend(hub_id="h1")
    first = await backend.start(spec(), quiet)
    seen: list[str] = []

    again = await backend.start(spec(start_timeout=9.0), lambda e: seen.append(e.message))

    assert again == first and "the container is already running" in seen
    with pytest.raises(Conflict, match="already running with another configuration"):
        await backend.start(spec(image="labdock/python:2"), quiet)
    await backend.stop(1)
    replaced = await backend.start(spec(image="labdock/python:2"), quiet)  # a stopped one goes
    assert replaced.container_id != first.container_id
    await backend.close()


async def test_a_spec_of_another_hub_is_refused() -> None:
    with pytest.raises(InvalidInput, match="spec is for hub 'h2'"):
        await FakeBackend(hub_id="h1").start(spec(hub_id="h2"), quiet)


async def test_list_reports_running_stopped_and_removed_servers_as_docker_does() -> None:
    backend = FakeBackend(hub_id="h1")
    one = await backend.start(spec(1), quiet)
    await backend.start(spec(2), quiet)
    await backend.start(spec(3), quiet)
    await backend.stop(2)
    await backend.stop(3, remove=True)

    by_id = {o.server_id: o for o in await backend.list()}

    assert set(by_id) == {1, 2}
    assert by_id[1].running and by_id[1].endpoint == one and by_id[1].exit_code is None
    assert not by_id[2].running and by_id[2].endpoint is None and by_id[2].exit_code == 143
    logs = await backend.logs(2)
    assert logs[0] == "fake: labdock/python:1 starting as server 2"
    assert logs[-1] == "fake: SIGTERM received, exiting"
    with pytest.raises(NotFound):
        await backend.logs(3)
    await backend.stop(3)  # a missing container is not an error
    await backend.close()


async def test_a_disconnected_engine_refuses_every_call_and_keeps_its_containers() -> None:
    backend = FakeBackend(hub_id="h1")
    await backend.start(spec(), quiet)
    backend.disconnect()

    for call in (
        backend.ping(),
        backend.start(spec(2), quiet),
        backend.stop(1),
        backend.list(),
        backend.logs(1),
    ):
        with pytest.raises(BackendUnavailable, match="cannot reach the fake engine"):
            await call
    backend.reconnect()
    [seen] = await backend.list()
    assert seen.running
    await backend.close()


async def test_the_event_stream_breaks_when_the_engine_goes_away() -> None:
    backend = FakeBackend(hub_id="h1")
    events = backend.events()
    await backend.start(spec(), quiet)
    backend.kill(1, exit_code=2)
    assert [await anext(events), await anext(events)] == [
        EngineEvent("start", 1, (await backend.list())[0].container_id),
        EngineEvent("die", 1, (await backend.list())[0].container_id, exit_code=2),
    ]

    backend.disconnect()

    with pytest.raises(BackendUnavailable, match="reconcile with list"):
        await asyncio.wait_for(anext(events), 1)
    with pytest.raises(BackendUnavailable):  # subscribing while it is away fails at once
        await asyncio.wait_for(anext(backend.events()), 1)
    backend.reconnect()
    later = backend.events()
    await backend.close()  # a closed backend ends its streams
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(later), 1)


async def test_volumes_outlive_their_containers_until_removed_by_name() -> None:
    backend = FakeBackend(hub_id="h1")
    team = Mount(team_id=3, target="/home/analyst/teams/a")
    await backend.start(spec(mounts=(team,)), quiet)
    await backend.stop(1, remove=True)
    assert backend.volumes == {"labdock-h1-u7-home", "labdock-h1-t3-shared"}

    await backend.remove_volume(7)

    assert backend.volumes == {"labdock-h1-t3-shared"}


def port_methods(protocol: type) -> set[str]:
    return {name for name in vars(protocol) if not name.startswith("_")}


def test_the_fake_engine_implements_every_port_the_hub_asks_of_an_engine() -> None:
    from hub.backends.fake_ports import FakeImages, FakeStats, FakeVolumes
    from hub.domain.catalog import ImageStore
    from hub.domain.servers import Backend
    from hub.domain.stats import StatsReader
    from hub.domain.storage import VolumeMeter

    needed = {"ping", "start", "stop", "list", "logs", "events", "prepare_runtime", "close"}
    assert port_methods(Backend) == needed
    for port, implementation in [
        (Backend, FakeBackend),
        (StatsReader, FakeStats),
        (VolumeMeter, FakeVolumes),
        (ImageStore, FakeImages),
    ]:
        missing = port_methods(port) - set(dir(implementation))
        assert not missing, f"{implementation.__name__} lacks {missing} of {port.__name__}"


async def test_prepare_runtime_records_the_images_and_needs_the_engine() -> None:
    backend = FakeBackend(hub_id="h1")
    await backend.prepare_runtime(["labdock/python:1"], only_copied=True)
    assert backend.prepared == ["labdock/python:1"]
    backend.disconnect()
    with pytest.raises(BackendUnavailable):
        await backend.prepare_runtime(["labdock/python:2"])
