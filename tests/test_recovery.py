"""Restart and recovery: the hub brings rows, containers and routes back into agreement."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import docker
import pytest
import tornado.httpclient
from sqlalchemy.ext.asyncio import async_sessionmaker

from hub.app import build_hub
from hub.backends.docker_runtime import MARKER
from hub.config import Settings
from hub.db.engine import make_engine
from hub.db.environments import SqlCatalog
from hub.db.migrate import upgrade
from hub.domain.catalog import Environment, LaunchRequest
from hub.domain.errors import BackendUnavailable
from hub.domain.servers import ServerState
from hub.domain.workspaces import UNKNOWN_REASON
from hub.images.build import latest_tag
from tests.busybox_image import ensure_test_image
from tests.test_servers_api import busybox_env


async def launch(settings: Settings, image: str, names: list[str]) -> dict[str, int]:
    """Start a hub, launch busybox servers for alice, and leave them running."""
    async with build_hub(settings) as built:
        await built.deps.catalog.add(busybox_env(image))  # type: ignore[attr-defined]
        alice, _ = await built.deps.accounts.create_user("alice", "correct horse")
        ids = {}
        for name in names:
            record, _ = await built.workspaces.launch(alice, name, LaunchRequest("busybox"))
            record = await built.workspaces.wait_ready(record.id, 60)
            assert record.state == ServerState.RUNNING
            ids[name] = record.id
        return ids


@pytest.fixture(scope="module")
def image() -> str:
    return ensure_test_image(docker.from_env())


async def test_restart_adopts_running_servers_and_rebuilds_their_routes(
    settings: Settings, image: str
) -> None:
    ids = await launch(settings, image, ["a", "b"])
    async with build_hub(settings) as built:
        for name, server_id in ids.items():
            route = built.routes.get(server_id)
            assert route is not None and route.prefix == f"/user/alice/{name}/"
            record = await built.deps.servers.by_id(server_id)
            assert record is not None and record.state == ServerState.RUNNING


async def test_container_gone_while_the_hub_was_away_is_marked_stopped(
    settings: Settings, image: str, docker_client: docker.DockerClient, hub_id: str
) -> None:
    ids = await launch(settings, image, ["a"])
    [container] = docker_client.containers.list(filters={"label": f"labdock.hub={hub_id}"})
    container.remove(force=True)
    async with build_hub(settings) as built:
        record = await built.deps.servers.by_id(ids["a"])
        assert record is not None and record.state == ServerState.STOPPED
        assert record.stopped_reason == "stopped while the hub was away"
        assert built.routes.get(ids["a"]) is None


async def test_orphan_containers_of_this_hub_are_removed_at_start(
    settings: Settings, image: str, docker_client: docker.DockerClient, hub_id: str
) -> None:
    ids = await launch(settings, image, ["a"])
    [container] = docker_client.containers.list(filters={"label": f"labdock.hub={hub_id}"})
    labels = dict(container.labels, **{"labdock.server": "999"})
    orphan = docker_client.containers.run(
        image, detach=True, labels=labels, name=f"labdock-{hub_id}-s999"
    )
    async with build_hub(settings):
        pass
    names = {
        c.name
        for c in docker_client.containers.list(all=True, filters={"label": f"labdock.hub={hub_id}"})
    }
    assert orphan.name not in names
    assert container.name in names and ids


def without_engine(settings: Settings) -> Settings:
    """The same hub, pointed at an engine socket that does not exist."""
    return replace(
        settings, backend=replace(settings.backend, docker_host="unix:///nonexistent.sock")
    )


async def test_unreachable_engine_at_start_marks_nothing_stopped_and_deletes_nothing(
    settings: Settings, image: str, docker_client: docker.DockerClient, hub_id: str
) -> None:
    ids = await launch(settings, image, ["a"])
    blind = without_engine(settings)
    async with build_hub(blind) as built:
        record = await built.deps.servers.by_id(ids["a"])
        assert record is not None and record.state == ServerState.UNKNOWN
        assert record.stopped_reason == UNKNOWN_REASON
        assert (record.host, record.port) != (None, None)  # it keeps its address
        assert built.routes.get(ids["a"]) is not None  # rebuilt from the database
    async with build_hub(blind) as built:  # a second start while still blind
        assert built.routes.get(ids["a"]) is not None
    assert len(docker_client.containers.list(filters={"label": f"labdock.hub={hub_id}"})) == 1
    async with build_hub(settings) as built:  # the engine answers again: adopted
        record = await built.deps.servers.by_id(ids["a"])
        assert record is not None and record.state == ServerState.RUNNING
        assert record.stopped_reason is None
        assert built.routes.get(ids["a"]) is not None


async def test_stop_while_the_engine_is_unreachable_leaves_the_state_unknown(
    settings: Settings, image: str, docker_client: docker.DockerClient, hub_id: str
) -> None:
    ids = await launch(settings, image, ["a"])
    blind = without_engine(settings)
    async with build_hub(blind) as built:
        with pytest.raises(BackendUnavailable):
            await built.workspaces.stop(ids["a"])
        record = await built.deps.servers.by_id(ids["a"])
        assert record is not None and record.state == ServerState.UNKNOWN
        assert record.stopped_reason == UNKNOWN_REASON
    [container] = docker_client.containers.list(filters={"label": f"labdock.hub={hub_id}"})
    assert container.status == "running"  # nothing was stopped or deleted behind its back


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def this_checkout() -> dict[str, str]:
    """The environment for a ``hub.cli`` subprocess that runs this checkout's code, not
    whichever labdock the interpreter has installed (another checkout's, say)."""
    return {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}


def start_hub(
    settings: Settings, port: int, cwd: Path, *, runtime_volumes: str = "off"
) -> subprocess.Popen[bytes]:
    env = {
        **this_checkout(),
        "LABDOCK_DB_URL": settings.db_url,
        "LABDOCK_HUB_ID": settings.hub.id,
        "LABDOCK_HUB_COOKIE_SECRET": settings.hub.cookie_secret,
        "LABDOCK_HUB_LAUNCH_WAIT": "0",
        "LABDOCK_HUB_MAX_CONCURRENT_LAUNCHES": "32",
        "LABDOCK_BACKEND_LABELS": "labdock.test=1",
        "LABDOCK_BACKEND_RUNTIME_VOLUMES": runtime_volumes,
        "LABDOCK_QUOTA_SERVERS": "50",
        "LABDOCK_QUOTA_MEMORY": "100G",
        "LABDOCK_QUOTA_CPUS": "100",
        "LABDOCK_CAPACITY_OVERCOMMIT": "100",
        "LABDOCK_CAPACITY_GPUS": "",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "serve", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_up(url: str) -> None:
    client = tornado.httpclient.AsyncHTTPClient()
    for _ in range(300):
        try:
            await client.fetch(url + "/hub/api/")
            return
        except Exception:
            await asyncio.sleep(0.1)
    raise AssertionError("hub did not come up")


@dataclass(frozen=True)
class KillScenario:
    """Launches in parallel, a ``kill -9`` of the hub while they run, a restart, a clean stop."""

    environment: Environment
    launches: int
    kill_after: float
    runtime_volumes: str = "off"
    # A clean stop waits for a runtime copy under way, and for a dead hub's late helper.
    stop_within: float = 30.0


async def kill_during_launches_then_restart_and_stop(
    scenario: KillScenario,
    settings: Settings,
    docker_client: docker.DockerClient,
    hub_id: str,
    tmp_path: Path,
) -> None:
    """Run the scenario; assert that the restarted hub settled every launch and left no
    orphan, and that after its clean stop no helper and no partial runtime copy is left."""
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    await SqlCatalog(sessions).add(scenario.environment)
    await engine.dispose()
    token_out = subprocess.run(
        [
            sys.executable,
            "-m",
            "hub.cli",
            "user",
            "add",
            "alice",
            "--password-stdin",
            "--db-url",
            settings.db_url,
        ],
        input=b"correct horse\n",
        capture_output=True,
        cwd=tmp_path,
        env=this_checkout(),
    )
    assert token_out.returncode == 0, token_out.stderr
    token = subprocess.run(
        [sys.executable, "-m", "hub.cli", "token", "create", "alice", "--db-url", settings.db_url],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=this_checkout(),
    ).stdout.strip()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    hub = start_hub(settings, port, tmp_path, runtime_volumes=scenario.runtime_volumes)
    try:
        await wait_up(url)
        client = tornado.httpclient.AsyncHTTPClient()
        posts = [
            client.fetch(
                f"{url}/hub/api/users/alice/servers/s{i}",
                method="POST",
                body=json.dumps({"environment": scenario.environment.name}),
                raise_error=False,
                headers={"Authorization": f"token {token}"},
                request_timeout=30,
            )
            for i in range(scenario.launches)
        ]
        done, _ = await asyncio.wait(
            [asyncio.ensure_future(p) for p in posts], timeout=scenario.kill_after
        )
        hub.send_signal(signal.SIGKILL)
        hub.wait()
        assert len(done) < scenario.launches or any(True for _ in done)  # killed mid-flight
    finally:
        if hub.poll() is None:
            hub.kill()

    hub = start_hub(settings, port, tmp_path, runtime_volumes=scenario.runtime_volumes)
    try:
        await wait_up(url)
        deadline = time.monotonic() + 120
        while True:
            response = await tornado.httpclient.AsyncHTTPClient().fetch(
                f"{url}/hub/api/users/alice", headers={"Authorization": f"token {token}"}
            )
            servers = json.loads(response.body)["servers"]
            states = {s["state"] for s in servers.values()}
            if "starting" not in states or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert "starting" not in states, states
        assert states <= {"running", "failed"}
        running = {s["name"] for s in servers.values() if s["state"] == "running"}
        containers = [  # servers, not the hub's helpers (runtime copiers)
            c
            for c in docker_client.containers.list(
                all=True, filters={"label": f"labdock.hub={hub_id}"}, ignore_removed=True
            )
            if "labdock.role" not in c.labels
        ]
        owned = {c.labels["labdock.server"] for c in containers}
        assert len(containers) == len(owned) == len(running)
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.wait(timeout=scenario.stop_within)

    helpers = docker_client.containers.list(
        all=True, filters={"label": [f"labdock.hub={hub_id}", "labdock.role"]}
    )
    assert [(c.name, c.labels["labdock.role"], c.status) for c in helpers] == []
    copies = docker_client.volumes.list(
        filters={"label": [f"labdock.hub={hub_id}", "labdock.role=runtime"]}
    )
    partial = [v.name for v in copies if MARKER not in top_of_volume(docker_client, v.name)]
    assert partial == [], "runtime copies without their completion marker"


def top_of_volume(client: docker.DockerClient, volume: str) -> set[str]:
    """The names at the top of a volume, listed by a throwaway busybox container."""
    output = client.containers.run(
        ensure_test_image(client),
        ["ls", "-A", "/v"],
        entrypoint=[],
        network_mode="none",
        volumes={volume: {"bind": "/v", "mode": "ro"}},
        labels={"labdock.test": "1"},
        remove=True,
    )
    return set(output.decode().split())


async def test_hub_killed_during_twenty_launches_restarts_without_orphans_or_stuck_rows(
    settings: Settings, image: str, docker_client: docker.DockerClient, hub_id: str, tmp_path: Path
) -> None:
    scenario = KillScenario(busybox_env(image), launches=20, kill_after=0.6)
    await kill_during_launches_then_restart_and_stop(
        scenario, settings, docker_client, hub_id, tmp_path
    )


async def test_hub_killed_while_copying_runtime_volumes_leaves_no_helper_or_partial_copy(
    settings: Settings, docker_client: docker.DockerClient, hub_id: str, tmp_path: Path
) -> None:
    # The python environment's image lists its interpreter's trees as runtime paths: their
    # copy takes seconds, so the kill lands while the engine creates the filler. Its
    # servers run a plain HTTP server, so that twelve of them start on a busy machine.
    python = latest_tag(docker_client, "python")
    if python is None:
        pytest.fail("this test needs the python environment's image: labdock images build python")
    environment = busybox_env(
        python, name="python", command=("python3", "-m", "http.server", "8080")
    )
    scenario = KillScenario(
        environment, launches=12, kill_after=1.5, runtime_volumes="on", stop_within=180.0
    )
    await kill_during_launches_then_restart_and_stop(
        scenario, settings, docker_client, hub_id, tmp_path
    )
