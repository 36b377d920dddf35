"""Launch, stop and engine events of ``Workspaces``, over a real database and a fake engine.

No Docker engine is needed: `make test-fake` runs these with ``DOCKER_HOST`` pointing
at nothing. The same behaviour on the real engine is in test_servers_api.py and
test_recovery.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from hub.domain.catalog import LaunchRequest
from hub.domain.errors import BackendUnavailable, QuotaExceeded
from hub.domain.quotas import Limits
from hub.domain.resources import MiB
from hub.domain.servers import ProgressEvent, ServerState
from hub.domain.workspaces import UNKNOWN_REASON
from tests.fake_hub import HUB_ID, MEMORY, FakeHub, fake_hub, until


@pytest_asyncio.fixture
async def hub(db_url: str) -> AsyncIterator[FakeHub]:
    async with fake_hub(db_url, launch_timeout=0.5) as made:
        yield made


async def progress_of(hub: FakeHub, server_id: int) -> list[ProgressEvent]:
    return [event async for event in hub.workspaces.progress.follow(server_id)]


async def test_launch_runs_the_server_and_routes_its_prefix_to_it(hub: FakeHub) -> None:
    alice = await hub.user("alice")
    await hub.environment("plain", "labdock/python:1")

    record = await hub.launch(alice, "lab", "plain")

    assert record.state == ServerState.RUNNING and record.stopped_reason is None
    route = hub.routes.get(record.id)
    assert route is not None and route.prefix == "/user/alice/lab/"
    assert route.target == f"http://{record.host}:8080" and route.secret == record.secret
    container = hub.backend.container(record.id)
    assert container is not None and container.status == "running"
    assert container.id == record.container_id
    assert container.name == record.container_name == f"labdock-{HUB_ID}-s{record.id}"
    assert container.labels["labdock.test"] == "1"
    assert container.labels["labdock.server"] == str(record.id)
    assert container.labels["labdock.user"] == str(alice.id)
    assert f"labdock-{HUB_ID}-u{alice.id}-home" in hub.backend.volumes
    assert [(e.progress, e.message) for e in await progress_of(hub, record.id)] == [
        (0, "queued"),
        (10, "image labdock/python:1 is ready"),
        (20, "creating the container"),
        (40, "starting the container"),
        (60, "waiting for the app to answer"),
        (100, "ready"),
    ]


async def test_launching_a_running_server_again_starts_nothing_new(hub: FakeHub) -> None:
    alice = await hub.user("alice")
    await hub.environment("plain", "labdock/python:1")
    first = await hub.launch(alice, "lab", "plain")

    again, fresh = await hub.workspaces.launch(alice, "lab", LaunchRequest("plain"))

    assert not fresh and again.id == first.id
    assert hub.backend.calls == [("start", first.id)]


async def test_slow_launch_shows_progress_while_the_app_is_not_answering(db_url: str) -> None:
    async with fake_hub(db_url, launch_timeout=5.0) as hub:
        alice = await hub.user("alice")
        await hub.environment("slow", "fake/slow:0.4")
        began = time.monotonic()
        record, fresh = await hub.workspaces.launch(alice, "lab", LaunchRequest("slow"))
        assert fresh and record.state == ServerState.STARTING

        async def waiting() -> bool:
            latest = hub.workspaces.progress.latest(record.id)
            return latest is not None and latest.message == "waiting for the app to answer"

        await until(waiting)
        assert (await hub.record(record.id)).state == ServerState.STARTING
        assert hub.routes.get(record.id) is None

        done = await hub.workspaces.wait_ready(record.id, 5)
        assert done.state == ServerState.RUNNING
        assert time.monotonic() - began >= 0.4
        assert hub.routes.get(record.id) is not None


async def test_never_ready_launch_fails_at_the_launch_timeout_with_the_reason(
    hub: FakeHub,
) -> None:
    alice = await hub.user("alice")
    await hub.environment("stuck", "fake/never-ready")
    began = time.monotonic()

    record = await hub.launch(alice, "lab", "stuck")

    assert 0.5 <= time.monotonic() - began < 5
    assert record.state == ServerState.FAILED
    assert record.stopped_reason == (
        f"failed to start: server {record.id} was not ready after 0.5 s"
    )
    last = (await progress_of(hub, record.id))[-1]
    assert last.failed and "Last lines of its output:" in last.message
    assert "warming up" in last.message
    assert hub.routes.get(record.id) is None
    # Stopped but kept, so that its state and logs can be read.
    container = hub.backend.container(record.id)
    assert container is not None and container.status == "exited"


async def test_slow_past_the_launch_timeout_fails_as_never_ready(hub: FakeHub) -> None:
    alice = await hub.user("alice")
    await hub.environment("slow", "fake/slow:30")

    record = await hub.launch(alice, "lab", "slow")

    assert record.state == ServerState.FAILED
    assert record.stopped_reason == f"failed to start: server {record.id} was not ready after 0.5 s"


async def test_crashing_launch_reports_its_exit_code_and_last_lines(hub: FakeHub) -> None:
    alice = await hub.user("alice")
    await hub.environment("broken", "fake/crash:3")

    record = await hub.launch(alice, "lab", "broken")

    assert record.state == ServerState.FAILED
    assert record.stopped_reason == (
        f"failed to start: server {record.id} exited with code 3 before it was ready"
    )
    last = (await progress_of(hub, record.id))[-1]
    assert last.failed
    assert last.message.endswith(
        "Last lines of its output:\n"
        f"fake: fake/crash:3 starting as server {record.id}\n"
        "Traceback (most recent call last):\n"
        '  File "/app/start", line 1, in <module>\n'
        "SystemExit: the fake app crashed with exit code 3"
    )
    assert (await hub.backend.logs(record.id))[-1].startswith("SystemExit")


async def test_an_image_that_is_not_built_names_the_build_command(hub: FakeHub) -> None:
    alice = await hub.user("alice")
    await hub.environment("gone", "fake/gone:1")

    record = await hub.launch(alice, "lab", "gone")

    assert record.state == ServerState.FAILED
    assert record.stopped_reason == (
        "failed to start: image fake/gone:1 is not built; run `labdock images build gone`"
    )


async def test_oom_kill_marks_the_server_stopped_with_the_reason(hub: FakeHub) -> None:
    hub.follow_engine()
    alice = await hub.user("alice")
    await hub.environment("hungry", "fake/oom:0.1")
    record = await hub.launch(alice, "lab", "hungry")
    assert record.state == ServerState.RUNNING and hub.routes.get(record.id) is not None

    async def stopped() -> bool:
        return (await hub.record(record.id)).state == ServerState.STOPPED

    await until(stopped)
    after = await hub.record(record.id)
    assert after.stopped_reason == f"stopped: exceeded its {MEMORY // MiB} MiB memory limit"
    assert hub.routes.get(record.id) is None
    container = hub.backend.container(record.id)
    assert container is not None and container.oom_killed and container.exit_code == 137


async def test_a_running_server_that_exits_is_marked_stopped_with_its_exit_code(
    hub: FakeHub,
) -> None:
    hub.follow_engine()
    alice = await hub.user("alice")
    await hub.environment("plain", "labdock/python:1")
    record = await hub.launch(alice, "lab", "plain")

    hub.backend.kill(record.id, exit_code=2)

    async def stopped() -> bool:
        return (await hub.record(record.id)).state == ServerState.STOPPED

    await until(stopped)
    assert (await hub.record(record.id)).stopped_reason == "stopped: the app exited with code 2"
    assert hub.routes.get(record.id) is None


async def test_stop_keeps_the_container_and_remove_deletes_it_but_not_the_home(
    hub: FakeHub,
) -> None:
    hub.follow_engine()  # our own stop's "die" event must not change the reason
    alice = await hub.user("alice")
    await hub.environment("plain", "labdock/python:1")
    record = await hub.launch(alice, "lab", "plain")

    await hub.workspaces.stop(record.id, reason="stopped by alice")

    stopped = await hub.record(record.id)
    assert stopped.state == ServerState.STOPPED and stopped.stopped_reason == "stopped by alice"
    assert hub.routes.get(record.id) is None
    container = hub.backend.container(record.id)
    assert container is not None and container.status == "exited"

    await hub.workspaces.remove(record.id)

    assert await hub.repo.by_id(record.id) is None
    assert hub.backend.container(record.id) is None
    assert f"labdock-{HUB_ID}-u{alice.id}-home" in hub.backend.volumes
    assert hub.backend.calls == [("start", record.id), ("stop", record.id), ("remove", record.id)]


async def test_stopping_a_launch_in_flight_cancels_it(db_url: str) -> None:
    async with fake_hub(db_url, launch_timeout=30.0) as hub:
        alice = await hub.user("alice")
        await hub.environment("stuck", "fake/never-ready")
        record, _ = await hub.workspaces.launch(alice, "lab", LaunchRequest("stuck"))
        await until(lambda: _has_container(hub, record.id))

        await hub.workspaces.stop(record.id)

        assert (await hub.record(record.id)).state == ServerState.STOPPED
        last = (await progress_of(hub, record.id))[-1]
        assert last.failed and last.message == "launch cancelled"
        assert hub.workspaces.launching == 0


async def _has_container(hub: FakeHub, server_id: int) -> bool:
    return hub.backend.container(server_id) is not None


async def test_stop_with_the_engine_unreachable_says_the_state_is_unknown(hub: FakeHub) -> None:
    alice = await hub.user("alice")
    await hub.environment("plain", "labdock/python:1")
    record = await hub.launch(alice, "lab", "plain")
    hub.backend.disconnect()

    with pytest.raises(BackendUnavailable):
        await hub.workspaces.stop(record.id)

    after = await hub.record(record.id)
    assert after.state == ServerState.UNKNOWN and after.stopped_reason == UNKNOWN_REASON
    container = hub.backend.container(record.id)
    assert container is not None and container.status == "running"


async def test_launch_with_the_engine_down_fails_and_says_why(hub: FakeHub) -> None:
    alice = await hub.user("alice")
    await hub.environment("plain", "labdock/python:1")
    hub.backend.disconnect()

    record = await hub.launch(alice, "lab", "plain")

    assert record.state == ServerState.FAILED
    assert record.stopped_reason == (
        "failed to start: cannot reach the fake engine: it was disconnected"
    )


async def test_second_launch_over_the_users_quota_is_refused_with_reason(db_url: str) -> None:
    async with fake_hub(db_url, default_quota=Limits(servers=1)) as hub:
        alice = await hub.user("alice")
        await hub.environment("plain", "labdock/python:1")
        first = await hub.launch(alice, "one", "plain")

        with pytest.raises(QuotaExceeded, match="your quota"):
            await hub.workspaces.launch(alice, "two", LaunchRequest("plain"))

        assert await hub.repo.get(alice.id, "two") is None
        assert hub.backend.calls == [("start", first.id)]
        [refusal] = [e for e in await hub.audit.recent() if e.outcome == "refused"]
        assert refusal.action == "server.launch" and refusal.target == "alice/two"


async def test_launch_over_the_team_quota_names_the_team_and_the_numbers(hub: FakeHub) -> None:
    alice, bob = await hub.user("alice"), await hub.user("bob")
    await hub.teams.join(alice.id, "risk")
    await hub.teams.join(bob.id, "risk")
    team = await hub.teams.find("risk")
    await hub.quotas.set({"memory": 2 * MEMORY}, team_id=team)
    await hub.environment("plain", "labdock/python:1")
    await hub.launch(alice, "lab", "plain")
    await hub.launch(bob, "lab", "plain")

    with pytest.raises(QuotaExceeded) as refused:
        await hub.workspaces.launch(alice, "more", LaunchRequest("plain"))

    assert refused.value.message == (
        "needs 64 MiB; 0 B left in team 'risk' quota (128 MiB of 128 MiB used by 2 servers)"
    )
    assert len(hub.backend.calls) == 2
    # A stopped server frees its share: the same launch is admitted now.
    [bobs] = await hub.repo.of_user(bob.id)
    await hub.workspaces.stop(bobs.id)
    assert (await hub.launch(alice, "more", "plain")).state == ServerState.RUNNING
