"""Servers through the REST API, on the real engine with the busybox test image."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import docker
import pytest
import pytest_asyncio
from sqlalchemy import insert

from hub.db.schema import QuotaRow
from hub.domain.catalog import Environment, LaunchRequest
from hub.domain.resources import GiB, MiB, Resources
from tests.busybox_image import ensure_test_image
from tests.conftest import RunningHub

SERVE_THEN_OOM = (
    "mkdir -p /tmp/www$LABDOCK_PREFIX && echo ok > /tmp/www$LABDOCK_PREFIX/index.html && "
    "httpd -p $LABDOCK_PORT -h /tmp/www && sleep 2 && "
    "exec dd if=/dev/zero of=/dev/null bs=256M count=1"
)


def busybox_env(
    image: str, name: str = "busybox", command: tuple[str, ...] = ("/app/start",), **fields: Any
) -> Environment:
    values: dict[str, Any] = dict(
        id=0,
        name=name,
        description="test app",
        version="1",
        image=image,
        port=8080,
        command=command,
        keep_prefix=True,
        readiness_path="",
        default=Resources(cpus=0.5, memory=64 * MiB),
        maximum=Resources(cpus=2, memory=1 * GiB),
        pids_limit=64,
        shm_size=16 * MiB,
    )
    values.update(fields)
    return Environment(**values)


@pytest.fixture(scope="session")
def test_image(docker_client: docker.DockerClient) -> str:
    return ensure_test_image(docker_client)


class Api:
    """A user's view of the REST API, by token."""

    def __init__(self, hub: RunningHub, token: str) -> None:
        self.hub, self.token = hub, token

    async def call(self, method: str, path: str, body: Any = None):  # type: ignore[no-untyped-def]
        kwargs: dict[str, Any] = {
            "method": method,
            "headers": {"Authorization": f"token {self.token}"},
        }
        if body is not None or method in ("POST", "PUT"):
            kwargs["body"] = json.dumps(body or {})
        if method == "DELETE" and body is not None:
            kwargs["allow_nonstandard_methods"] = True
        return await self.hub.fetch("/hub/api" + path, request_timeout=120, **kwargs)


@pytest_asyncio.fixture
async def hub(hub_server: RunningHub, test_image: str) -> RunningHub:
    catalog = hub_server.hub.deps.catalog
    await catalog.add(busybox_env(test_image))  # type: ignore[attr-defined]
    await catalog.add(
        busybox_env(test_image, "failing", ("sh", "-c", "LABDOCK_TEST_MODE=exit exec /app/start"))
    )  # type: ignore[attr-defined]
    await catalog.add(busybox_env(test_image, "oomy", ("sh", "-c", SERVE_THEN_OOM)))  # type: ignore[attr-defined]
    await catalog.add(busybox_env(test_image, "old", retired=True))  # type: ignore[attr-defined]
    return hub_server


async def user_api(hub: RunningHub, name: str, *, admin: bool = False) -> Api:
    accounts = hub.hub.deps.accounts
    user, _ = await accounts.create_user(name, "correct horse", is_admin=admin)
    scopes = frozenset({"servers", "read:servers", "access:servers"}) | (
        frozenset({"users"}) if admin else frozenset()
    )
    return Api(hub, await accounts.create_token(user, scopes=scopes))


def containers(client: docker.DockerClient, hub_id: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"labdock.hub={hub_id}"})


async def test_launch_returns_201_when_ready_with_the_server_model(
    hub: RunningHub, docker_client: docker.DockerClient, hub_id: str
) -> None:
    alice = await user_api(hub, "alice")
    response = await alice.call(
        "POST", "/users/alice/server", {"environment": "busybox", "memory": "128M"}
    )
    assert response.code == 201, response.body
    model = json.loads(response.body)
    assert model["ready"] is True and model["state"] == "running" and model["pending"] is None
    assert model["url"] == "/user/alice/"
    assert model["environment"] == "busybox"
    assert model["resources"]["memory"] == 128 * MiB and model["resources"]["cpus"] == 0.5
    assert model["progress_url"] == "/hub/api/users/alice/server/progress"
    [container] = containers(docker_client, hub_id)
    assert "alice" not in container.name
    assert container.labels["labdock.server"] and container.labels["labdock.test"] == "1"
    route = hub.hub.routes.get(int(container.labels["labdock.server"]))
    assert route is not None and route.prefix == "/user/alice/"
    record = await hub.hub.deps.servers.by_id(int(container.labels["labdock.server"]))
    assert record is not None
    assert (record.container_id, record.container_name) == (container.id, container.name)


async def test_named_servers_run_side_by_side_and_stop_keeps_the_volume(
    hub: RunningHub, docker_client: docker.DockerClient, hub_id: str
) -> None:
    alice = await user_api(hub, "alice")
    for name in ("one", "two"):
        response = await alice.call(
            "POST", f"/users/alice/servers/{name}", {"environment": "busybox"}
        )
        assert response.code == 201, response.body
    user = json.loads((await alice.call("GET", "/users/alice")).body)
    assert sorted(user["servers"]) == ["one", "two"]
    assert len(containers(docker_client, hub_id)) == 2
    stop = await alice.call("DELETE", "/users/alice/servers/one", {"remove": True})
    assert stop.code == 204
    assert len(containers(docker_client, hub_id)) == 1
    user = json.loads((await alice.call("GET", "/users/alice")).body)
    assert "one" not in user["servers"] and user["servers"]["two"]["state"] == "running"
    stopped = await alice.call("DELETE", "/users/alice/servers/two")
    assert stopped.code == 204
    user = json.loads((await alice.call("GET", "/users/alice")).body)
    assert user["servers"]["two"]["state"] == "stopped"  # a plain stop keeps the server
    volumes = docker_client.volumes.list(filters={"label": f"labdock.hub={hub_id}"})
    assert len(volumes) == 1


async def test_double_click_gives_one_container(
    hub: RunningHub, docker_client: docker.DockerClient, hub_id: str
) -> None:
    alice = await user_api(hub, "alice")
    body = {"environment": "busybox"}
    first, second = await asyncio.gather(
        alice.call("POST", "/users/alice/servers/lab", body),
        alice.call("POST", "/users/alice/servers/lab", body),
    )
    assert {first.code, second.code} <= {201, 202}
    assert len(containers(docker_client, hub_id)) == 1


async def test_many_servers_removed_at_once_all_go_without_a_locked_database(
    hub: RunningHub, docker_client: docker.DockerClient, hub_id: str
) -> None:
    """Each removal reads its row, then deletes it: on SQLite that must take the write
    lock first, or concurrent removals fail with "database is locked" (seen in a burst)."""
    names = []
    for name in ("ann", "ben", "cat"):
        api = await user_api(hub, name)
        names += [(api, name, f"s{i}") for i in range(3)]
    busybox = {"environment": "busybox", "cpus": 0.2}  # nine fit in the 2 CPUs of the host
    launched = await asyncio.gather(
        *(u.call("POST", f"/users/{n}/servers/{s}", busybox) for u, n, s in names)
    )
    assert {r.code for r in launched} <= {201, 202}, [r.body for r in launched]
    removed = await asyncio.gather(
        *(u.call("DELETE", f"/users/{n}/servers/{s}", {"remove": True}) for u, n, s in names)
    )
    assert [r.code for r in removed] == [204] * len(names), [r.body for r in removed]
    assert containers(docker_client, hub_id) == []


async def test_launch_over_the_user_quota_is_refused_with_the_numbers(
    hub: RunningHub, db_url: str
) -> None:
    alice = await user_api(hub, "alice")
    user = await hub.hub.deps.accounts.get("alice")
    async with hub.hub.engine.begin() as conn:
        await conn.execute(insert(QuotaRow).values(user_id=user.id, servers=1, memory=256 * MiB))
    assert (
        await alice.call("POST", "/users/alice/servers/a", {"environment": "busybox"})
    ).code == 201
    refused = await alice.call("POST", "/users/alice/servers/b", {"environment": "busybox"})
    assert refused.code == 403
    assert json.loads(refused.body)["message"] == (
        "needs 1 more server; your quota allows 1 server at once and 1 is running. "
        "Stop a server first."
    )


async def test_memory_over_quota_names_what_is_left(hub: RunningHub) -> None:
    alice = await user_api(hub, "alice")
    user = await hub.hub.deps.accounts.get("alice")
    async with hub.hub.engine.begin() as conn:
        await conn.execute(insert(QuotaRow).values(user_id=user.id, memory=512 * MiB))
    ok = await alice.call(
        "POST", "/users/alice/servers/a", {"environment": "busybox", "memory": "384M"}
    )
    assert ok.code == 201
    refused = await alice.call(
        "POST", "/users/alice/servers/b", {"environment": "busybox", "memory": "256M"}
    )
    assert refused.code == 403
    assert json.loads(refused.body)["message"] == (
        "needs 256 MiB; 128 MiB left in your quota (384 MiB of 512 MiB used by 1 server)"
    )


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"environment": "nope"}, 404, "environment 'nope' is not in the catalog"),
        ({"environment": "old"}, 400, "environment 'old' is retired"),
        ({}, 400, "environment: name the environment to launch"),
        ({"environment": "busybox", "memory": "64G"}, 400, "memory: busybox takes 64 MiB to 1 GiB"),
        ({"environment": "busybox", "cpus": "lots"}, 400, "cpus: expected a number"),
        ({"environment": "busybox", "gpus": 1}, 400, "gpus: busybox cannot use GPUs"),
        ({"environment": "busybox", "image": "evil:latest"}, 400, "unknown launch field(s): image"),
    ],
)
async def test_bad_launch_requests_are_refused_with_a_reason(
    hub: RunningHub, body: dict[str, Any], code: int, message: str
) -> None:
    alice = await user_api(hub, "alice")
    response = await alice.call("POST", "/users/alice/servers/x", body)
    assert response.code == code
    assert message in json.loads(response.body)["message"]


async def test_malformed_body_and_server_names_are_refused(hub: RunningHub) -> None:
    alice = await user_api(hub, "alice")
    raw = await hub.fetch(
        "/hub/api/users/alice/server",
        method="POST",
        body="{not json",
        headers={"Authorization": f"token {alice.token}"},
    )
    assert raw.code == 400 and b"not valid JSON" in raw.body
    bad = await alice.call("POST", "/users/alice/servers/..%2f..", {"environment": "busybox"})
    assert bad.code in (400, 404)
    upper = await alice.call("POST", "/users/alice/servers/Lab", {"environment": "busybox"})
    assert upper.code == 400 and b"server name" in upper.body


async def test_nobody_launches_or_stops_another_users_server(hub: RunningHub) -> None:
    await user_api(hub, "alice")
    mallory = await user_api(hub, "mallory")
    for method, body in (("POST", {"environment": "busybox"}), ("DELETE", None), ("GET", None)):
        path = "/users/alice/server" if method != "GET" else "/users/alice"
        response = await mallory.call(method, path, body)
        assert response.code == 403, (method, response.body)
    anonymous = await hub.fetch("/hub/api/users/alice/server", method="POST", body="{}")
    assert anonymous.code in (401, 403)
    forged = await hub.fetch(
        "/hub/api/users/alice", headers={"Authorization": "token ldk_forged_token_value"}
    )
    assert forged.code == 401


async def test_admin_may_launch_for_a_user(hub: RunningHub) -> None:
    await user_api(hub, "alice")
    boss = await user_api(hub, "boss", admin=True)
    response = await boss.call("POST", "/users/alice/server", {"environment": "busybox"})
    assert response.code == 201


async def test_failed_launch_says_why_with_the_last_log_lines(hub: RunningHub) -> None:
    alice = await user_api(hub, "alice")
    response = await alice.call("POST", "/users/alice/server", {"environment": "failing"})
    assert response.code == 502
    message = json.loads(response.body)["message"]
    assert "exited with code 1" in message
    assert "line 30" in message and "line 10" not in message  # the last 20 lines
    model = json.loads((await alice.call("GET", "/users/alice")).body)["servers"][""]
    assert model["state"] == "failed" and model["stopped_reason"].startswith("failed to start")
    events = await read_progress(hub, alice, "/users/alice/server/progress")
    assert events[-1]["failed"] is True and "line 30" in events[-1]["message"]


async def read_progress(hub: RunningHub, api: Api, path: str) -> list[dict[str, Any]]:
    chunks: list[bytes] = []
    response = await hub.fetch(
        "/hub/api" + path,
        headers={"Authorization": f"token {api.token}"},
        streaming_callback=chunks.append,
        request_timeout=60,
    )
    assert response.code == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    text = b"".join(chunks).decode()
    return [
        json.loads(line[len("data: ") :]) for line in text.splitlines() if line.startswith("data: ")
    ]


async def test_progress_streams_each_step_until_ready(hub: RunningHub) -> None:
    alice = await user_api(hub, "alice")
    # The hub waits for readiness before answering; ask it not to, to watch the launch.
    web_settings = replace(hub.hub.deps.settings, launch_wait=0.0)
    object.__setattr__(hub.hub.deps, "settings", web_settings)
    response = await alice.call("POST", "/users/alice/servers/lab", {"environment": "busybox"})
    assert response.code == 202
    assert json.loads(response.body)["pending"] == "spawn"
    events = await read_progress(hub, alice, "/users/alice/servers/lab/progress")
    messages = [e["message"] for e in events]
    assert messages[0] == "queued"
    assert events[-1] == {
        "progress": 100,
        "message": "ready",
        "ready": True,
        "failed": False,
        "url": "/user/alice/lab/",
    }
    assert [e["progress"] for e in events] == sorted(e["progress"] for e in events)
    assert len(events) >= 4
    again = await read_progress(hub, alice, "/users/alice/servers/lab/progress")
    assert again[-1]["ready"] is True


async def test_oom_kill_is_recorded_in_plain_words(hub: RunningHub) -> None:
    alice = await user_api(hub, "alice")
    response = await alice.call(
        "POST", "/users/alice/server", {"environment": "oomy", "memory": "64M"}
    )
    assert response.code == 201, response.body
    for _ in range(100):
        model = json.loads((await alice.call("GET", "/users/alice")).body)["servers"][""]
        if model["state"] != "running":
            break
        await asyncio.sleep(0.1)
    assert model["state"] == "stopped"
    assert model["stopped_reason"] == "stopped: exceeded its 64 MiB memory limit"
    assert hub.hub.routes.get(1) is None
    boss = await user_api(hub, "boss", admin=True)
    seen_by_admin = json.loads((await boss.call("GET", "/users/alice")).body)["servers"][""]
    assert seen_by_admin["stopped_reason"] == "stopped: exceeded its 64 MiB memory limit"


async def test_too_many_launches_at_once_answer_429_with_retry_after(hub: RunningHub) -> None:
    alice = await user_api(hub, "alice")
    workspaces = hub.hub.workspaces
    object.__setattr__(
        workspaces,
        "_policy",
        __import__("dataclasses").replace(workspaces._policy, max_concurrent_launches=1),
    )
    web_settings = replace(hub.hub.deps.settings, launch_wait=0.0)
    object.__setattr__(hub.hub.deps, "settings", web_settings)
    first = await alice.call("POST", "/users/alice/servers/a", {"environment": "busybox"})
    second = await alice.call("POST", "/users/alice/servers/b", {"environment": "busybox"})
    assert first.code == 202
    assert second.code == 429
    assert second.headers["Retry-After"] == "2"
    assert "try again" in json.loads(second.body)["message"]


async def test_team_volume_is_shared_writable_for_writers_and_read_only_for_members(
    hub: RunningHub, docker_client: docker.DockerClient, hub_id: str
) -> None:
    from hub.db.teams import SqlTeamRepo

    alice, bob = await user_api(hub, "alice"), await user_api(hub, "bob")
    teams: SqlTeamRepo = hub.hub.deps.teams  # type: ignore[assignment]
    accounts = hub.hub.deps.accounts
    await teams.join((await accounts.get("alice")).id, "risk", role="writer")
    await teams.join((await accounts.get("bob")).id, "risk")
    for api, name in ((alice, "alice"), (bob, "bob")):
        assert (
            await api.call("POST", f"/users/{name}/server", {"environment": "busybox"})
        ).code == 201

    def container_of(user: str) -> Any:
        [found] = [
            c
            for c in containers(docker_client, hub_id)
            if c.labels["labdock.user"] == str(ids[user])
        ]
        return found

    ids = {n: (await accounts.get(n)).id for n in ("alice", "bob")}
    wrote = container_of("alice").exec_run(
        ["sh", "-c", "echo shared > /home/analyst/teams/risk/note"]
    )
    assert wrote.exit_code == 0, wrote.output
    read = container_of("bob").exec_run(["cat", "/home/analyst/teams/risk/note"])
    assert read.exit_code == 0 and read.output == b"shared\n"
    denied = container_of("bob").exec_run(["sh", "-c", "echo no > /home/analyst/teams/risk/bob"])
    assert denied.exit_code != 0 and b"Read-only file system" in denied.output
    [volume] = docker_client.volumes.list(
        filters={"label": ["labdock.team", f"labdock.hub={hub_id}"]}
    )
    assert volume.name.endswith("-shared") and "risk" not in volume.name


async def test_gpu_launch_passes_explicit_device_ids_and_gpus_are_never_shared(
    with_settings,
    test_image: str,
    docker_client: docker.DockerClient,
    hub_id: str,  # type: ignore[no-untyped-def]
) -> None:
    from hub.app import build_hub
    from hub.domain.errors import QuotaExceeded
    from hub.domain.records import Claim

    settings = with_settings(capacity={"gpus": "0,1", "cpus": 8.0}, quota={"gpus": 4, "cpus": 8.0})
    async with build_hub(settings) as built:
        env = busybox_env(
            test_image, "gpu", gpu=True, maximum=Resources(cpus=2, memory=GiB, gpus=2)
        )
        env_id = await built.deps.catalog.add(env)  # type: ignore[attr-defined]
        alice, _ = await built.deps.accounts.create_user("alice", "correct horse")
        record, _ = await built.workspaces.launch(alice, "g", LaunchRequest("gpu", gpus=1))
        record = await built.workspaces.wait_ready(record.id, 60)
        # This machine has no GPU runtime: the start fails, saying so, after creation.
        assert record.state.value == "failed"
        [container] = containers(docker_client, hub_id)
        [request] = container.attrs["HostConfig"]["DeviceRequests"]
        assert request["DeviceIDs"] == ["0"] and request["Capabilities"] == [["gpu"]]

        # Exclusivity is admission's job: two holders get different GPUs, a third is refused.
        stored = await built.deps.catalog.by_id(env_id)
        assert stored is not None
        decide = built.workspaces._decide(Resources(1, 64 * MiB, gpus=1), stored)
        held = []
        for name in ("a", "b"):
            claim = Claim(
                user_id=alice.id,
                name=name,
                environment_id=env_id,
                image_digest="x",
                resources=Resources(1, 64 * MiB, gpus=1),
                secret="s",
            )
            rec, _ = await built.deps.servers.claim(claim, decide)
            held.extend(rec.gpu_ids)
        assert sorted(held) == ["0", "1"]
        claim = Claim(
            user_id=alice.id,
            name="c",
            environment_id=env_id,
            image_digest="x",
            resources=Resources(1, 64 * MiB, gpus=1),
            secret="s",
        )
        refusal = r"needs 1 GPU; 0 left in this host's capacity \(2 of 2 used by 2 servers\)"
        with pytest.raises(QuotaExceeded, match=refusal):
            await built.deps.servers.claim(claim, decide)


async def test_restart_replaces_the_container_with_the_same_choices(
    hub: RunningHub, docker_client: docker.DockerClient, hub_id: str
) -> None:
    alice = await user_api(hub, "alice")
    body = {"environment": "busybox", "memory": "96M"}
    assert (await alice.call("POST", "/users/alice/servers/lab", body)).code == 201
    [before] = containers(docker_client, hub_id)
    restarted = await alice.call("POST", "/users/alice/servers/lab/restart", {})
    assert restarted.code == 201, restarted.body
    assert json.loads(restarted.body)["resources"]["memory"] == 96 * MiB
    [after] = containers(docker_client, hub_id)
    assert after.id != before.id and after.status == "running"
    missing = await alice.call("POST", "/users/alice/servers/nope/restart", {})
    assert missing.code == 404


async def test_quota_refusals_are_written_to_the_audit_log(hub: RunningHub) -> None:
    alice = await user_api(hub, "alice")
    user = await hub.hub.deps.accounts.get("alice")
    async with hub.hub.engine.begin() as conn:
        await conn.execute(insert(QuotaRow).values(user_id=user.id, servers=0))
    refused = await alice.call("POST", "/users/alice/servers/a", {"environment": "busybox"})
    assert refused.code == 403
    [entry] = await hub.hub.deps.audit.recent()
    assert (entry.actor, entry.action, entry.target, entry.outcome) == (
        "alice",
        "server.launch",
        "alice/a",
        "refused",
    )
    assert entry.detail["message"].startswith("needs 1 more server")


async def test_a_launch_body_refused_where_it_is_read_is_written_to_the_audit_log(
    hub: RunningHub,
) -> None:
    alice = await user_api(hub, "alice")
    refused = await alice.call(
        "POST", "/users/alice/servers/a", {"environment": "busybox", "cpus": "lots"}
    )
    assert refused.code == 400
    [entry] = await hub.hub.deps.audit.recent()
    assert (entry.actor, entry.action, entry.target, entry.outcome) == (
        "alice",
        "server.launch",
        "alice/a",
        "refused",
    )
    assert entry.detail["message"] == "cpus: expected a number, got 'lots'"


async def test_user_options_keep_the_launch_choices_as_they_were_given(hub: RunningHub) -> None:
    alice = await user_api(hub, "alice")
    body = {"environment": "busybox", "memory": "256M", "cpus": "0.5"}
    launched = await alice.call("POST", "/users/alice/servers/opts", body)
    assert launched.code == 201, launched.body
    server = json.loads(launched.body)
    assert server["user_options"] == {"memory": "256M", "cpus": "0.5"}
    assert server["resources"]["memory"] == 256 * MiB and server["resources"]["cpus"] == 0.5


async def test_a_new_user_with_a_deleted_users_name_gets_a_fresh_home(
    hub: RunningHub, docker_client: docker.DockerClient, hub_id: str
) -> None:
    from sqlalchemy import delete

    from hub.db.schema import ServerRow, UserRow

    first = await user_api(hub, "alice")
    assert (await first.call("POST", "/users/alice/server", {"environment": "busybox"})).code == 201
    [container] = containers(docker_client, hub_id)
    wrote = container.exec_run(["sh", "-c", "echo private > /home/analyst/diary"])
    assert wrote.exit_code == 0, wrote.output
    old_id = (await hub.hub.deps.accounts.get("alice")).id
    assert (await first.call("DELETE", "/users/alice/server", {"remove": True})).code == 204
    async with hub.hub.engine.begin() as conn:  # the user is deleted
        await conn.execute(delete(ServerRow).where(ServerRow.user_id == old_id))
        await conn.execute(delete(UserRow).where(UserRow.id == old_id))

    second = await user_api(hub, "alice")
    assert (
        await second.call("POST", "/users/alice/server", {"environment": "busybox"})
    ).code == 201

    [container] = containers(docker_client, hub_id)
    assert container.labels["labdock.user"] != str(old_id)
    read = container.exec_run(["ls", "-A", "/home/analyst"])
    assert read.exit_code == 0 and b"diary" not in read.output
    volumes = {
        v.attrs["Labels"]["labdock.user"]: v.name
        for v in docker_client.volumes.list(filters={"label": f"labdock.hub={hub_id}"})
    }
    # The old home is kept (only an admin deletes it), and never mounted for the newcomer.
    assert str(old_id) in volumes and len(volumes) == 2
    mounted = [m["Name"] for m in container.attrs["Mounts"] if m["Type"] == "volume"]
    assert volumes[str(old_id)] not in mounted
