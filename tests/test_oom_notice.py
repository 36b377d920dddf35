"""A process the kernel OOM-kills inside a server that keeps running is told to its owner.

Only the death of a container's main process used to give a reason: a notebook kernel
(a child) killed for memory left the owner with nothing on the page.
"""

from __future__ import annotations

import asyncio
import json
import re
from html import unescape
from pathlib import Path
from typing import Any

import docker
import pytest

from hub.backends.docker_events import OomCounters, oom_kill_count
from hub.domain.clock import SystemClock
from hub.domain.resources import MiB
from hub.domain.servers import EngineEvent
from hub.domain.workspaces import oom_notice
from tests.conftest import RunningHub
from tests.test_servers_api import hub, test_image, user_api  # noqa: F401 - fixtures
from tests.test_web import Browser

PASSWORD = "correct horse"


def test_the_notice_names_the_server_and_the_limit_in_words() -> None:
    assert oom_notice("lab", 2 * 1024 * MiB) == (
        "a process in lab was killed: over the 2 GiB memory limit"
    )
    assert oom_notice("", 64 * MiB) == (
        "a process in your default server was killed: over the 64 MiB memory limit"
    )


def allocate_past_the_limit(container: Any, command: list[str]) -> int:
    """Run ``command`` inside the container (a child beside its main process)."""
    code, _ = container.exec_run(command)
    return int(code)


async def model_of(hub: RunningHub, token: str, name: str) -> dict[str, Any]:  # noqa: F811
    response = await hub.fetch(
        "/hub/api/users", headers={"Authorization": f"token {token}"}, request_timeout=30
    )
    [user] = json.loads(response.body)
    return dict(user["servers"][name])


async def test_a_child_killed_for_memory_is_shown_while_the_server_keeps_running(
    hub: RunningHub,  # noqa: F811
    docker_client: docker.DockerClient,
    hub_id: str,
) -> None:
    alice = await user_api(hub, "alice")
    launched = await alice.call(
        "POST", "/users/alice/servers/lab", {"environment": "busybox", "memory": "64M"}
    )
    assert launched.code == 201, launched.body
    assert json.loads(launched.body)["notices"] == []
    [container] = docker_client.containers.list(filters={"label": f"labdock.hub={hub_id}"})
    # dd's one 256 MiB buffer is over the 64 MiB limit: the kernel kills dd, not httpd.
    code = await asyncio.get_running_loop().run_in_executor(
        None, allocate_past_the_limit, container, ["dd", "if=/dev/zero", "of=/dev/null", "bs=256M"]
    )
    assert code == 137  # SIGKILL
    message = "a process in lab was killed: over the 64 MiB memory limit"
    for _ in range(100):
        model = await model_of(hub, alice.token, "lab")
        if model["notices"]:
            break
        await asyncio.sleep(0.1)
    assert model["notices"] == [message]
    assert model["last_oom"] and model["state"] == "running" and model["ready"] is True
    assert model["stopped_reason"] is None
    container.reload()
    assert container.status == "running"

    # The owner's home page carries it (home.js shows each notice on the server's card).
    browser = Browser(hub)
    assert (await browser.login("alice", PASSWORD)).code == 302
    page = await browser.get("/hub/home")
    assert page.code == 200
    data = re.search(
        r'<script type="application/json" id="page-data">(.*?)</script>', page.body.decode(), re.S
    )
    assert data is not None
    [server] = json.loads(unescape(data.group(1)))["servers"]
    assert server["notices"] == [message]

    # A restart starts afresh: the notice was about the old container.
    restarted = await alice.call("POST", "/users/alice/servers/lab/restart", {})
    assert restarted.code == 201, restarted.body
    assert (await model_of(hub, alice.token, "lab"))["notices"] == []


async def test_an_oom_then_the_main_process_dying_gives_the_stopped_reason_only(
    hub: RunningHub,  # noqa: F811
) -> None:
    alice = await user_api(hub, "alice")
    launched = await alice.call(
        "POST", "/users/alice/server", {"environment": "busybox", "memory": "64M"}
    )
    assert launched.code == 201, launched.body
    workspaces = hub.hub.workspaces
    [record] = await hub.hub.deps.servers.all()
    assert record.container_id
    await workspaces.on_engine_event(EngineEvent("oom", record.id, record.container_id))
    notice = workspaces.notice(record.id)
    assert notice is not None and notice.at <= SystemClock().now()
    await workspaces.on_engine_event(EngineEvent("die", record.id, record.container_id, 137))
    assert workspaces.notice(record.id) is None
    model = await model_of(hub, alice.token, "")
    assert model["state"] == "stopped" and model["notices"] == []
    assert model["stopped_reason"] == "stopped: exceeded its 64 MiB memory limit"


@pytest.fixture
def python_image(docker_client: docker.DockerClient) -> str:
    """The labdock/python environment image (built by ``labdock images build python``)."""
    tags = [t for i in docker_client.images.list("labdock/python") for t in i.tags]
    assert tags, "labdock/python is not built: run `labdock images build python`"
    return sorted(tags)[-1]


async def test_a_python_child_over_the_limit_is_reported_on_a_python_server(
    hub_server: RunningHub,
    docker_client: docker.DockerClient,
    hub_id: str,
) -> None:
    envs = await hub_server.hub.deps.catalog.visible_to(frozenset(), admin=True)
    assert any(e.name == "python" for e in envs), [e.name for e in envs]
    alice = await user_api(hub_server, "alice")
    launched = await alice.call(
        "POST", "/users/alice/servers/py", {"environment": "python", "memory": "256M"}
    )
    assert launched.code == 201, launched.body
    [container] = docker_client.containers.list(filters={"label": f"labdock.hub={hub_id}"})
    grab = "b = bytearray(600 * 2**20); b[::4096] = b'x' * len(b[::4096])"
    code = await asyncio.get_running_loop().run_in_executor(
        None, allocate_past_the_limit, container, ["python3", "-c", grab]
    )
    assert code == 137
    for _ in range(100):
        model = await model_of(hub_server, alice.token, "py")
        if model["notices"]:
            break
        await asyncio.sleep(0.1)
    assert model["notices"] == ["a process in py was killed: over the 256 MiB memory limit"]
    assert model["state"] == "running"


@pytest.mark.parametrize(
    ("relative", "text"),
    [
        ("docker/{id}/memory.events", "low 0\nhigh 0\nmax 9\noom 3\noom_kill 2\n"),
        ("system.slice/docker-{id}.scope/memory.events", "oom 2\noom_kill 2\n"),
        ("memory/docker/{id}/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
        ("memory/system.slice/docker-{id}.scope/memory.oom_control", "oom_kill 2\n"),
    ],
)
def test_the_cgroup_oom_counter_is_read_on_v1_and_v2(
    tmp_path: Path, relative: str, text: str
) -> None:
    path = tmp_path / relative.format(id="abc")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    assert oom_kill_count("abc", tmp_path) == 2
    assert oom_kill_count("other", tmp_path) is None


async def test_the_cgroup_counter_reports_a_killed_child_without_the_engines_event(
    hub: RunningHub,  # noqa: F811
    docker_client: docker.DockerClient,
    hub_id: str,
) -> None:
    alice = await user_api(hub, "alice")
    launched = await alice.call(
        "POST", "/users/alice/servers/lab", {"environment": "busybox", "memory": "64M"}
    )
    assert launched.code == 201, launched.body
    [container] = docker_client.containers.list(filters={"label": f"labdock.hub={hub_id}"})
    counters = OomCounters(docker_client, hub_id=hub_id)
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, counters.poll) == []  # the baseline
    code = await loop.run_in_executor(
        None, allocate_past_the_limit, container, ["dd", "if=/dev/zero", "of=/dev/null", "bs=256M"]
    )
    assert code == 137
    [event] = await loop.run_in_executor(None, counters.poll)
    [record] = await hub.hub.deps.servers.all()
    assert event == EngineEvent("oom", record.id, container.id)
    assert await loop.run_in_executor(None, counters.poll) == []  # told once
    await hub.hub.workspaces.on_engine_event(event)
    model = await model_of(hub, alice.token, "lab")
    assert model["notices"] == ["a process in lab was killed: over the 64 MiB memory limit"]
