"""The catalog through the REST API, on a real hub, the real engine and the busybox test image:
what each user may list and launch, admins' changes, versions pinned by digest."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import pytest
import pytest_asyncio

from hub.domain.resources import GiB, MiB
from tests.busybox_image import ensure_test_image
from tests.conftest import RunningHub

ADMIN_SCOPES = frozenset({"servers", "read:servers", "access:servers", "admin:environments"})
USER_SCOPES = frozenset({"servers", "read:servers", "access:servers"})


@pytest.fixture(scope="session")
def images(docker_client: docker.DockerClient) -> Iterator[tuple[str, str]]:
    """Two distinct local images: the busybox test image, and one made from it."""
    first = ensure_test_image(docker_client)
    dockerfile = f"FROM {first}\nLABEL labdock.test=1 labdock.test.catalog=v2\n"
    docker_client.images.build(
        fileobj=io.BytesIO(dockerfile.encode()), tag="labdock/test-busybox-v2:catalog", rm=True
    )
    try:
        yield first, "labdock/test-busybox-v2:catalog"
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):  # another run removed it first
            docker_client.images.remove("labdock/test-busybox-v2:catalog", force=True)


class Api:
    """One user's view of the REST API, by token."""

    def __init__(self, hub: RunningHub, token: str) -> None:
        self.hub, self.token = hub, token

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        kwargs: dict[str, Any] = {
            "method": method,
            "headers": {"Authorization": f"token {self.token}"},
            "request_timeout": 120,
        }
        if body is not None or method in ("POST", "PUT", "PATCH"):
            kwargs["body"] = json.dumps(body if body is not None else {})
        if method == "DELETE" and body is not None:
            kwargs["allow_nonstandard_methods"] = True
        return await self.hub.fetch("/hub/api" + path, **kwargs)

    async def ok(self, method: str, path: str, body: Any = None, code: int = 200) -> Any:
        response = await self.call(method, path, body)
        assert response.code == code, (method, path, response.code, response.body)
        return json.loads(response.body) if response.body else None


def unpin(client: docker.DockerClient, hub_id: str) -> None:
    """Remove the tags a test hub gave its versions' images (``labdock/<hub id>/...``)."""
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith(f"labdock/{hub_id}/"):
                client.images.remove(tag)


@pytest.fixture
def name(hub_id: str, docker_client: docker.DockerClient) -> Iterator[str]:
    """A fresh environment name; the tags the hub gives its versions are removed after."""
    yield f"cat-{hub_id}"
    unpin(docker_client, hub_id)


@pytest_asyncio.fixture
async def hub(hub_server: RunningHub) -> RunningHub:
    deps = hub_server.hub.deps
    for team in ("risk", "quant"):
        await deps.teams.ensure(team)  # type: ignore[attr-defined]
    return hub_server


async def login(hub: RunningHub, user: str, *, admin: bool = False, team: str = "") -> Api:
    deps = hub.hub.deps
    account, _ = await deps.accounts.create_user(user, "correct horse", is_admin=admin)
    if team:
        await deps.teams.join(account.id, team)
    scopes = ADMIN_SCOPES if admin else USER_SCOPES
    return Api(hub, await deps.accounts.create_token(account, scopes=scopes))


def definition(reference: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "image": reference,
        "description": "busybox behind the hub",
        "contents": "busybox httpd",
        "port": 8080,
        "command": ["/app/start"],
        "prefix": "keep",
        "readiness_path": "",
        "pids_limit": 64,
        "shm_size": "16M",
        "resources": {
            "default": {"cpus": 0.5, "memory": "64M"},
            "maximum": {"cpus": 1, "memory": "256M"},
        },
    }
    body.update(changes)
    return body


def image_id(client: docker.DockerClient, reference: str) -> str:
    return str(client.images.get(reference).id)


# --- admins make environments --------------------------------------------------------------


async def test_admin_creates_an_environment_from_a_local_image_and_users_launch_it(
    hub: RunningHub, images: tuple[str, str], name: str, docker_client: docker.DockerClient
) -> None:
    boss = await login(hub, "boss", admin=True)
    created = await boss.ok("POST", f"/environments/{name}", definition(images[0]), 201)
    digest = image_id(docker_client, images[0])
    label = images[0].rpartition(":")[2]
    assert (created["version"], created["image"], created["contents"]) == (
        label,
        digest,
        "busybox httpd",
    )
    assert created["enabled"] and not created["retired"] and created["source"] == "admin"
    assert created["default"] == {"cpus": 0.5, "memory": 64 * MiB, "gpus": 0}
    assert [v["version"] for v in created["versions"]] == [label]
    # The version's image is kept by a tag of its own, so `docker image prune` leaves it.
    assert image_id(docker_client, f"labdock/{hub.hub.hub_id}/{name}:{label}") == digest

    alice = await login(hub, "alice")
    listed = {e["name"]: e for e in await alice.ok("GET", "/environments")}
    assert listed[name] == {
        "name": name,
        "description": "busybox behind the hub",
        "version": label,
        "image": digest,
        "contents": "busybox httpd",
        "default": {"cpus": 0.5, "memory": 64 * MiB, "gpus": 0},
        "maximum": {"cpus": 1.0, "memory": 256 * MiB, "gpus": 0},
        "gpu": False,
    }
    server = await alice.ok("POST", "/users/alice/servers/a", {"environment": name}, 201)
    assert server["image_digest"] == digest

    [entry] = [e for e in await hub.hub.deps.audit.recent() if e.action == "environment.create"]
    assert (entry.actor, entry.target, entry.detail["digest"]) == (
        "boss",
        f"environment:{name}",
        digest,
    )


async def test_an_image_not_on_the_engine_is_refused_and_never_pulled(
    hub: RunningHub, name: str, docker_client: docker.DockerClient
) -> None:
    boss = await login(hub, "boss", admin=True)
    for image in ("busybox:latest", f"labdock/{name}-nowhere:1", "sha256:" + "0" * 64):
        response = await boss.call("POST", f"/environments/{name}", definition(image))
        assert response.code == 400, response.body
        assert "labdock never pulls" in json.loads(response.body)["message"]
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get("busybox:latest")
    assert (await boss.call("GET", f"/environments/{name}")).code == 404


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": "Not An Image!"}, "image: expected an image on the engine"),
        ({"port": 0}, "key 'port'"),
        ({"prefix": "rewrite"}, "key 'prefix'"),
        ({"command": "start"}, "key 'command'"),
        ({"resources": {"default": {"cpus": 4, "memory": "64M"}}}, "resources"),
        ({"gpus": 1}, "unknown field 'gpus'"),
        ({"upstream_base": "python:3"}, "unknown field 'upstream_base'"),
        ({"version": "../1"}, "labels are 1 to 64"),
        ({"teams": ["nobody"]}, "no team 'nobody'"),
        ({"teams": "risk"}, "teams: expected a list"),
    ],
    ids=lambda v: str(v)[:30],
)
async def test_a_bad_definition_is_refused_naming_the_field(
    hub: RunningHub, images: tuple[str, str], name: str, change: dict[str, Any], message: str
) -> None:
    boss = await login(hub, "boss", admin=True)
    response = await boss.call("POST", f"/environments/{name}", definition(images[0], **change))
    assert response.code == 400, response.body
    assert message in json.loads(response.body)["message"]


async def test_only_admins_holding_the_scope_change_the_catalog(
    hub: RunningHub, images: tuple[str, str], name: str
) -> None:
    alice = await login(hub, "alice")
    refused = await alice.call("POST", f"/environments/{name}", definition(images[0]))
    assert refused.code == 403
    # A browser session of a non-admin holds every scope, but is not an admin.
    deps = hub.hub.deps
    mallory, _ = await deps.accounts.create_user("mallory", "correct horse")
    everything = Api(hub, await deps.accounts.create_token(mallory, scopes=ADMIN_SCOPES))
    refused = await everything.call("POST", f"/environments/{name}", definition(images[0]))
    assert refused.code == 403 and b"only admins" in refused.body
    boss, _ = await deps.accounts.create_user("boss", "correct horse", is_admin=True)
    narrow = Api(hub, await deps.accounts.create_token(boss, scopes=USER_SCOPES))
    refused = await narrow.call("POST", f"/environments/{name}", definition(images[0]))
    assert refused.code == 403 and b"admin:environments" in refused.body
    assert (await alice.call("GET", f"/environments/{name}")).code == 404
    anonymous = await hub.fetch("/hub/api/environments")
    assert anonymous.code == 401


async def test_a_taken_name_or_tag_is_a_conflict(
    hub: RunningHub, images: tuple[str, str], name: str, docker_client: docker.DockerClient
) -> None:
    boss = await login(hub, "boss", admin=True)
    await boss.ok("POST", f"/environments/{name}", definition(images[0], version="1.0"), 201)
    again = await boss.call("POST", f"/environments/{name}", definition(images[0]))
    assert again.code == 409
    # Someone tagged another image with the pin tag by hand: the hub will not move it.
    docker_client.images.get(images[0]).tag(f"labdock/{hub.hub.hub_id}/{name}", "2.0")
    clash = await boss.call(
        "POST", f"/environments/{name}/versions", {"image": images[1], "version": "2.0"}
    )
    assert clash.code == 409, clash.body
    assert b"already names another image" in clash.body
    same = await boss.call("POST", f"/environments/{name}/versions", {"image": images[0]})
    assert same.code == 409 and b"as version '1.0'" in same.body, same.body
    detail = await boss.ok("GET", f"/environments/{name}")
    assert [v["version"] for v in detail["versions"]] == ["1.0"]


# --- what users may list and launch -------------------------------------------------------


async def test_users_list_and_launch_only_what_is_enabled_not_retired_and_offered_to_them(
    hub: RunningHub, images: tuple[str, str], name: str
) -> None:
    boss = await login(hub, "boss", admin=True)
    ann = await login(hub, "ann", team="risk")
    bob = await login(hub, "bob", team="quant")
    await boss.ok("POST", f"/environments/{name}", definition(images[0], teams=["risk"]), 201)

    def names(listing: list[dict[str, Any]]) -> set[str]:
        return {e["name"] for e in listing}

    assert name in names(await ann.ok("GET", "/environments"))
    assert name not in names(await bob.ok("GET", "/environments"))
    assert name in names(await boss.ok("GET", "/environments"))
    refused = await bob.call("POST", "/users/bob/servers/x", {"environment": name})
    assert refused.code == 403
    assert "offered only to certain teams" in json.loads(refused.body)["message"]
    assert (await bob.call("GET", f"/environments/{name}")).code == 404
    detail = await ann.ok("GET", f"/environments/{name}")
    assert "teams" not in detail and len(detail["versions"]) == 1

    running = await ann.ok("POST", "/users/ann/servers/keep", {"environment": name}, 201)
    assert running["ready"]

    await boss.ok("PATCH", f"/environments/{name}", {"enabled": False})
    assert name not in names(await ann.ok("GET", "/environments"))
    refused = await ann.call("POST", "/users/ann/servers/new", {"environment": name})
    assert refused.code == 400
    assert json.loads(refused.body)["message"] == (
        f"environment '{name}' is disabled and cannot be launched"
    )
    restart = await ann.call("POST", "/users/ann/servers/keep/restart", {})
    assert restart.code == 400, restart.body
    # What already runs keeps running: disabling stops launches, not servers.
    kept = await ann.ok("GET", "/users/ann")
    assert kept["servers"]["keep"]["state"] == "running"

    await boss.ok("PATCH", f"/environments/{name}", {"enabled": True, "retired": True})
    refused = await ann.call("POST", "/users/ann/servers/new", {"environment": name})
    assert refused.code == 400 and b"is retired" in refused.body
    assert (await ann.ok("GET", "/users/ann"))["servers"]["keep"]["state"] == "running"
    everything = {e["name"]: e for e in await boss.ok("GET", "/environments?all=1")}
    assert everything[name]["retired"] is True
    assert (await ann.call("GET", "/environments?all=1")).code == 403

    await boss.ok("PATCH", f"/environments/{name}", {"retired": False, "teams": []})
    assert name in names(await bob.ok("GET", "/environments"))
    actions = [e.action for e in await hub.hub.deps.audit.recent() if e.actor == "boss"]
    assert actions.count("environment.update") == 3


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"environment": "no-such-env"}, 404, "is not in the catalog"),
        ({"environment": "../busybox"}, 400, "names are 1 to 63 characters"),
        ({"environment": "x" * 10000}, 400, "names are 1 to 63 characters"),
        ({"environment": "Busybox"}, 400, "names are 1 to 63 characters"),
        ({"environment": "busybox%00"}, 400, "names are 1 to 63 characters"),
        ({"environment": {"$ne": ""}}, 400, "name the environment to launch"),
        ({"environment": None, "image": "busybox"}, 400, ""),
        ({"environment": "{env}", "version": "0.0.0"}, 404, "has no version '0.0.0'"),
        ({"environment": "{env}", "version": "sha256:" + "f" * 64}, 404, "has no version"),
        ({"environment": "{env}", "version": "{other_digest}"}, 404, "has no version"),
        ({"environment": "{env}", "version": "{other_label}"}, 404, "has no version"),
        ({"environment": "{env}", "version": ["1"]}, 400, "expected a version label"),
        ({"environment": "{env}", "image": "{image}"}, 400, "unknown launch field(s): image"),
    ],
    ids=lambda v: str(v)[:40],
)
async def test_a_launch_never_falls_back_to_an_image(
    hub: RunningHub,
    images: tuple[str, str],
    name: str,
    docker_client: docker.DockerClient,
    hub_id: str,
    body: dict[str, Any],
    code: int,
    message: str,
) -> None:
    boss = await login(hub, "boss", admin=True)
    await boss.ok("POST", f"/environments/{name}", definition(images[0], version="one"), 201)
    other = f"{name}-b"
    try:
        await boss.ok("POST", f"/environments/{other}", definition(images[1], version="two"), 201)
        fill = {
            "{env}": name,
            "{other_digest}": image_id(docker_client, images[1]),
            "{other_label}": "two",
            "{image}": images[1],
        }
        body = {k: fill.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
        alice = await login(hub, "alice")
        response = await alice.call("POST", "/users/alice/servers/x", body)
        assert response.code == code, response.body
        assert message in json.loads(response.body)["message"]
        assert len(response.body) < 600
        assert not docker_client.containers.list(
            all=True, filters={"label": f"labdock.hub={hub_id}"}
        )
    finally:
        unpin(docker_client, hub_id)


# --- versions ---------------------------------------------------------------------------------


async def test_a_team_relaunches_exactly_the_version_it_ran_before(
    hub: RunningHub, images: tuple[str, str], name: str, docker_client: docker.DockerClient
) -> None:
    one, two = image_id(docker_client, images[0]), image_id(docker_client, images[1])
    boss = await login(hub, "boss", admin=True)
    await boss.ok("POST", f"/environments/{name}", definition(images[0], version="2026.10"), 201)
    alice = await login(hub, "alice")
    first = await alice.ok("POST", "/users/alice/servers/lab", {"environment": name}, 201)
    assert first["image_digest"] == one

    added = await boss.ok(
        "POST", f"/environments/{name}/versions", {"image": images[1], "version": "2026.11"}, 201
    )
    assert added["version"] == "2026.11" and added["image"] == two
    assert [(v["version"], v["current"]) for v in added["versions"]] == [
        ("2026.11", True),
        ("2026.10", False),
    ]
    assert image_id(docker_client, f"labdock/{hub.hub.hub_id}/{name}:2026.11") == two

    # A restart keeps the digest the server ran; a new launch gets the current version.
    restarted = await alice.ok("POST", "/users/alice/servers/lab/restart", {}, 201)
    assert restarted["image_digest"] == one
    fresh = await alice.ok("POST", "/users/alice/servers/new", {"environment": name}, 201)
    assert fresh["image_digest"] == two
    await alice.ok("DELETE", "/users/alice/servers/new", {"remove": True}, 204)  # 3 at most
    # Last month's version, by label or by digest, months later.
    by_label = {"environment": name, "version": "2026.10"}
    old = await alice.ok("POST", "/users/alice/servers/old", by_label, 201)
    assert old["image_digest"] == one and old["user_options"]["version"] == "2026.10"
    by_digest = {"environment": name, "version": one[:19]}
    again = await alice.ok("POST", "/users/alice/servers/again", by_digest, 201)
    assert again["image_digest"] == one
    moved = await alice.ok("POST", "/users/alice/servers/lab/restart", {"version": "2026.11"}, 201)
    assert moved["image_digest"] == two
    containers = {
        c.labels["labdock.server"]: c.image.id
        for c in docker_client.containers.list(filters={"label": "labdock.test=1"})
        if c.labels.get("labdock.hub") == hub.hub.hub_id
    }
    assert sorted(containers.values()) == sorted([one, one, two])

    # Rolling the environment back makes the earlier version the default again.
    back = await boss.ok("PATCH", f"/environments/{name}", {"version": "2026.10"})
    assert back["version"] == "2026.10" and back["image"] == one
    listed = {e["name"]: e for e in await alice.ok("GET", "/environments")}
    assert listed[name]["version"] == "2026.10"
    missing = await boss.call("PATCH", f"/environments/{name}", {"version": "1999.1"})
    assert missing.code == 404


async def test_admins_edit_description_and_resources_and_launches_follow(
    hub: RunningHub, images: tuple[str, str], name: str
) -> None:
    boss = await login(hub, "boss", admin=True)
    await boss.ok("POST", f"/environments/{name}", definition(images[0]), 201)
    changed = await boss.ok(
        "PATCH",
        f"/environments/{name}",
        {
            "description": "smaller",
            "resources": {"default": {"memory": "96M"}, "maximum": {"memory": "128M"}},
        },
    )
    assert changed["description"] == "smaller"
    assert changed["default"]["memory"] == 96 * MiB and changed["maximum"]["memory"] == 128 * MiB
    alice = await login(hub, "alice")
    too_big = await alice.call(
        "POST", "/users/alice/servers/x", {"environment": name, "memory": "200M"}
    )
    assert too_big.code == 400 and b"64 MiB to 128 MiB" in too_big.body
    for bad, why in (
        ({"resources": {"default": {"memory": "1G"}}}, b"must not exceed"),
        ({"resources": {"maximum": {"gpus": 1}}}, b"cannot use GPUs"),
        ({"resources": {"maximum": {"memory": "9999T"}}}, b"at most 1 PiB"),
        ({"enabled": "yes"}, b"enabled: expected true or false"),
        ({"image": "x"}, b"unknown field 'image'"),
        ({"description": 7}, b"description"),
    ):
        response = await boss.call("PATCH", f"/environments/{name}", bad)
        assert response.code == 400 and why in response.body, (bad, response.body)
    assert (await boss.call("PATCH", "/environments/no-such-env", {})).code == 404
    detail = await boss.ok("GET", f"/environments/{name}")
    assert detail["maximum"]["memory"] == 128 * MiB and detail["port"] == 8080
    assert detail["maximum"]["cpus"] == 1.0 and GiB > detail["maximum"]["memory"]
