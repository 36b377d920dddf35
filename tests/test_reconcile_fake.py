"""``Workspaces.reconcile`` at a hub's start, over a real database and a fake engine.

Each test runs one hub, changes the engine behind its back, and starts a second
hub over the same database and engine (``FakeHub.restart``), as a restarted
process would. test_recovery.py checks the same on the real engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest_asyncio

from hub.domain.catalog import LaunchRequest
from hub.domain.resources import MiB
from hub.domain.servers import ProgressEvent, ServerState
from hub.domain.workspaces import UNKNOWN_REASON
from tests.fake_hub import MEMORY, FakeHub, fake_hub, until


@pytest_asyncio.fixture
async def hub(db_url: str) -> AsyncIterator[FakeHub]:
    async with fake_hub(db_url) as made:
        await made.user("alice")
        await made.environment("plain", "labdock/python:1")
        yield made


async def launched(hub: FakeHub, *names: str, environment: str = "plain") -> list[int]:
    alice = await hub.accounts.user_by_name("alice")
    assert alice is not None
    ids = []
    for name in names:
        record = await hub.launch(alice, name, environment)
        assert record.state == ServerState.RUNNING
        ids.append(record.id)
    return ids


async def plant_orphan(hub: FakeHub, server_id: int, like: int) -> None:
    """A container of this hub that no row claims (left by a crash between two steps)."""
    record = await hub.record(like)
    env = await hub.catalog.by_id(record.environment_id or 0)
    assert env is not None
    spec = dataclasses.replace(hub.workspaces.spec(record, env), server_id=server_id)

    def ignore(event: ProgressEvent) -> None:
        pass

    await hub.backend.start(spec, ignore)


async def test_restart_adopts_running_servers_and_rebuilds_their_routes(hub: FakeHub) -> None:
    ids = await launched(hub, "a", "b")
    asked = len(hub.backend.calls)

    later = hub.restart()
    await later.workspaces.reconcile()

    for name, server_id in zip(("a", "b"), ids, strict=True):
        route = later.routes.get(server_id)
        assert route is not None and route.prefix == f"/user/alice/{name}/"
        assert (await later.record(server_id)).state == ServerState.RUNNING
    assert hub.backend.calls[asked:] == []  # nothing stopped, started or removed


async def test_container_gone_while_the_hub_was_away_is_marked_stopped(hub: FakeHub) -> None:
    [server_id] = await launched(hub, "a")
    await hub.backend.stop(server_id, remove=True)  # someone removed it by hand

    later = hub.restart()
    await later.workspaces.reconcile()

    record = await later.record(server_id)
    assert record.state == ServerState.STOPPED
    assert record.stopped_reason == "stopped while the hub was away"
    assert later.routes.get(server_id) is None


async def test_server_killed_for_memory_while_the_hub_was_away_says_so(hub: FakeHub) -> None:
    [server_id] = await launched(hub, "a")
    hub.backend.kill(server_id, oom=True)  # nobody follows the events: the hub is "away"

    later = hub.restart()
    await later.workspaces.reconcile()

    record = await later.record(server_id)
    assert record.state == ServerState.STOPPED
    assert record.stopped_reason == f"stopped: exceeded its {MEMORY // MiB} MiB memory limit"


async def test_server_that_exited_while_the_hub_was_away_gives_its_exit_code(
    hub: FakeHub,
) -> None:
    [server_id] = await launched(hub, "a")
    hub.backend.kill(server_id, exit_code=3)

    later = hub.restart()
    await later.workspaces.reconcile()

    record = await later.record(server_id)
    assert record.stopped_reason == "stopped while the hub was away (exit code 3)"


async def test_orphan_containers_of_this_hub_are_removed_at_start(hub: FakeHub) -> None:
    [server_id] = await launched(hub, "a")
    await plant_orphan(hub, 999, like=server_id)

    later = hub.restart()
    await later.workspaces.reconcile()

    assert hub.backend.container(999) is None
    assert ("remove", 999) in hub.backend.calls
    container = hub.backend.container(server_id)
    assert container is not None and container.status == "running"


async def test_unreachable_engine_at_start_marks_nothing_stopped_and_deletes_nothing(
    hub: FakeHub,
) -> None:
    [server_id] = await launched(hub, "a")
    await plant_orphan(hub, 999, like=server_id)
    running = await hub.record(server_id)
    hub.backend.disconnect()
    asked = len(hub.backend.calls)

    blind = hub.restart()
    await blind.workspaces.reconcile()

    record = await blind.record(server_id)
    assert record.state == ServerState.UNKNOWN and record.stopped_reason == UNKNOWN_REASON
    assert (record.host, record.port) == (running.host, running.port)  # it keeps its address
    assert blind.routes.get(server_id) is not None  # rebuilt from the database
    again = hub.restart()  # a second start while still blind
    await again.workspaces.reconcile()
    assert again.routes.get(server_id) is not None
    assert hub.backend.calls[asked:] == []
    assert hub.backend.container(999) is not None

    hub.backend.reconnect()  # the engine answers again: adopted, and the orphan goes
    seeing = hub.restart()
    await seeing.workspaces.reconcile()

    record = await seeing.record(server_id)
    assert record.state == ServerState.RUNNING and record.stopped_reason is None
    assert seeing.routes.get(server_id) is not None
    assert hub.backend.container(999) is None


async def test_launch_interrupted_by_a_restart_is_resumed_and_adopts_its_container(
    db_url: str,
) -> None:
    async with fake_hub(db_url) as hub:
        alice = await hub.user("alice")
        await hub.environment("slow", "fake/slow:0.3")
        record, _ = await hub.workspaces.launch(alice, "lab", LaunchRequest("slow"))

        async def created() -> bool:
            return hub.backend.container(record.id) is not None

        await until(created)
        await hub.workspaces.close()  # the hub stops mid-launch; the container runs on
        assert (await hub.record(record.id)).state == ServerState.STARTING

        later = hub.restart()
        await later.workspaces.reconcile()
        resumed = await later.workspaces.wait_ready(record.id, 5)

        assert resumed.state == ServerState.RUNNING
        assert later.routes.get(record.id) is not None
        assert hub.backend.calls == [("start", record.id), ("start", record.id)]
        messages = [e.message async for e in later.workspaces.progress.follow(record.id)]
        assert "the container is already running" in messages


async def test_stopping_and_stopped_rows_have_their_containers_stopped_at_start(
    hub: FakeHub,
) -> None:
    stopping, stopped = await launched(hub, "a", "b")
    await hub.repo.mark(stopping, ServerState.STOPPING)  # the hub died mid-stop
    await hub.repo.mark(stopped, ServerState.STOPPED)  # ... or after the row, before the engine

    later = hub.restart()
    await later.workspaces.reconcile()

    assert (await later.record(stopping)).state == ServerState.STOPPED
    for server_id in (stopping, stopped):
        container = hub.backend.container(server_id)
        assert container is not None and container.status == "exited"
        assert later.routes.get(server_id) is None
