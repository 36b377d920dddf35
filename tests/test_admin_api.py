"""Users and quotas through the API: who may do what, and hostile input."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hub.domain.resources import GiB
from tests.conftest import RunningHub


async def token_for(hub: RunningHub, name: str, scopes: set[str], *, admin: bool = False) -> str:
    accounts = hub.hub.deps.accounts
    try:
        user = await accounts.get(name)
    except Exception:
        user, _ = await accounts.create_user(name, "correct horse", is_admin=admin)
    return await accounts.create_token(user, scopes=frozenset(scopes))


async def call(hub: RunningHub, token: str, method: str, path: str, body: Any = None):  # type: ignore[no-untyped-def]
    kwargs: dict[str, Any] = {"method": method, "headers": {"Authorization": f"token {token}"}}
    if body is not None:
        kwargs["body"] = json.dumps(body)
    return await hub.fetch("/hub/api" + path, **kwargs)


ADMIN_SCOPES = {"admin:users", "admin:quotas", "read:servers", "users"}


async def test_admin_creates_a_user_and_sees_the_one_time_password_once(
    hub_server: RunningHub,
) -> None:
    root = await token_for(hub_server, "root", ADMIN_SCOPES, admin=True)
    response = await call(hub_server, root, "POST", "/users/bob", {"teams": ["risk"]})
    assert response.code == 201, response.body
    model = json.loads(response.body)
    assert (
        model["name"] == "bob" and model["admin"] is False and len(model["one_time_password"]) >= 12
    )
    again = await call(hub_server, root, "POST", "/users/bob", {})
    assert again.code == 409 and b"already exists" in again.body
    [entry, *_] = await hub_server.hub.deps.audit.recent()
    assert (entry.actor, entry.action, entry.target) == ("root", "user.create", "bob")


async def test_admin_scopes_on_a_non_admins_token_grant_nothing(hub_server: RunningHub) -> None:
    helper = await token_for(hub_server, "helper", {"admin:users", "admin:quotas", "users"})
    made = await call(hub_server, helper, "POST", "/users/bob", {})
    assert made.code == 403 and b"only admins may do this" in made.body
    assert (await call(hub_server, helper, "POST", "/users/eve", {"admin": True})).code == 403
    assert (await call(hub_server, helper, "PATCH", "/users/helper", {"admin": True})).code == 403
    assert (await call(hub_server, helper, "PUT", "/quotas/users/helper", {"cpus": 64})).code == 403
    assert (await call(hub_server, helper, "GET", "/quotas")).code == 403
    assert [u.name for u in await hub_server.hub.deps.accounts.all_users()] == ["admin", "helper"]


async def test_an_admins_token_loses_its_admin_scopes_when_its_owner_stops_being_admin(
    hub_server: RunningHub,
) -> None:
    root = await token_for(hub_server, "root", ADMIN_SCOPES, admin=True)
    assert (await call(hub_server, root, "POST", "/users/bob", {})).code == 201
    accounts = hub_server.hub.deps.accounts
    await accounts.update(await accounts.get("root"), is_admin=False)
    assert (await call(hub_server, root, "POST", "/users/carol", {})).code == 403
    assert (await call(hub_server, root, "GET", "/quotas")).code == 403


async def test_a_scope_narrowed_to_one_user_creates_nobody_and_touches_only_that_user(
    hub_server: RunningHub,
) -> None:
    root = await token_for(hub_server, "root", ADMIN_SCOPES, admin=True)
    for name in ("bob", "carol"):
        assert (await call(hub_server, root, "POST", f"/users/{name}", {})).code == 201
    narrow = await token_for(hub_server, "helper", {"admin:users!user=bob"}, admin=True)
    assert (await call(hub_server, narrow, "POST", "/users/dave", {})).code == 403
    assert (await call(hub_server, narrow, "PATCH", "/users/carol", {"disabled": True})).code == 403
    done = await call(hub_server, narrow, "PATCH", "/users/bob", {"disabled": True})
    assert done.code == 200 and json.loads(done.body)["disabled"] is True


async def test_disabling_a_user_ends_their_token_and_the_last_admin_stays(
    hub_server: RunningHub,
) -> None:
    root = await token_for(hub_server, "root", ADMIN_SCOPES | {"servers"}, admin=True)
    bob = await token_for(hub_server, "bob", {"read:servers"})
    assert (await call(hub_server, bob, "GET", "/users/bob")).code == 200
    assert (await call(hub_server, root, "PATCH", "/users/bob", {"disabled": True})).code == 200
    assert (await call(hub_server, bob, "GET", "/users/bob")).code == 401
    # The first admin created at start ("admin") plus root: demote one, not the last.
    assert (await call(hub_server, root, "PATCH", "/users/admin", {"admin": False})).code == 200
    last = await call(hub_server, root, "PATCH", "/users/root", {"admin": False})
    assert last.code == 409 and b"last admin" in last.body
    assert (await call(hub_server, root, "PATCH", "/users/root", {"disabled": True})).code == 400


@pytest.mark.parametrize("name", ["K%E2%84%AAate", "Alice", "..", "-rf", "a" * 33, "%00x"])
async def test_hostile_names_are_refused_by_the_api(hub_server: RunningHub, name: str) -> None:
    root = await token_for(hub_server, "root", ADMIN_SCOPES, admin=True)
    response = await call(hub_server, root, "POST", f"/users/{name}", {})
    assert response.code in (400, 404)
    if response.code == 400:
        assert b"username" in response.body


async def test_team_quota_is_set_and_shown_beside_its_use(hub_server: RunningHub) -> None:
    root = await token_for(hub_server, "root", ADMIN_SCOPES, admin=True)
    await call(hub_server, root, "POST", "/users/ann", {"teams": ["risk"]})
    put = await call(hub_server, root, "PUT", "/quotas/teams/risk", {"memory": "8G", "servers": 6})
    assert put.code == 200, put.body
    body = json.loads(put.body)
    assert body["limits"]["memory"] == 8 * GiB and body["limits"]["servers"] == 6
    # storage: bytes measured in the volumes (0), or null before the first measurement.
    assert body["used"].pop("storage") in (0, None)
    assert body["used"] == {"cpus": 0.0, "memory": 0, "gpus": 0, "servers": 0}
    overview = json.loads((await call(hub_server, root, "GET", "/quotas")).body)
    assert overview["teams"]["risk"]["limits"]["memory"] == 8 * GiB
    lifted = await call(hub_server, root, "PUT", "/quotas/teams/risk", {"memory": None})
    assert json.loads(lifted.body)["limits"]["memory"] is None
    entries = [e for e in await hub_server.hub.deps.audit.recent() if e.action == "quota.set"]
    assert entries[0].target == "team:risk"


async def test_setting_one_limit_of_a_user_keeps_the_defaults_for_the_others(
    hub_server: RunningHub,
) -> None:
    root = await token_for(hub_server, "root", ADMIN_SCOPES, admin=True)
    await call(hub_server, root, "POST", "/users/ann", {})
    put = await call(hub_server, root, "PUT", "/quotas/users/ann", {"cpus": 8})
    assert put.code == 200, put.body
    defaults = hub_server.hub.settings.quota
    limits = json.loads(put.body)["limits"]
    assert limits["cpus"] == 8
    assert (limits["memory"], limits["storage"]) == (defaults.memory, defaults.storage)
    assert limits["servers"] == defaults.servers


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"memory": "lots"}, "memory"),
        ({"servers": 1.5}, "servers: expected a whole number"),
        ({"cpus": -1}, "cpus: must not be negative"),
        ({"cpus": True}, "cpus: expected a number"),
        ({"disk": 1}, "unknown quota field(s): disk"),
        ({}, "give at least one of"),
    ],
)
async def test_bad_quota_values_are_refused(
    hub_server: RunningHub, body: dict[str, Any], message: str
) -> None:
    root = await token_for(hub_server, "root", ADMIN_SCOPES, admin=True)
    await call(hub_server, root, "POST", "/users/ann", {})
    response = await call(hub_server, root, "PUT", "/quotas/users/ann", body)
    assert response.code == 400 and message in json.loads(response.body)["message"]


async def test_quotas_need_the_admin_quotas_scope(hub_server: RunningHub) -> None:
    user = await token_for(hub_server, "ann", {"servers", "read:servers"})
    assert (await call(hub_server, user, "GET", "/quotas")).code == 403
    assert (await call(hub_server, user, "PUT", "/quotas/users/ann", {"memory": "1T"})).code == 403
    missing = await token_for(hub_server, "root", ADMIN_SCOPES, admin=True)
    assert (await call(hub_server, missing, "PUT", "/quotas/teams/ghosts", {"cpus": 1})).code == 404


async def test_cookie_api_calls_that_change_state_need_the_xsrf_token(
    hub_server: RunningHub,
) -> None:
    from tests.test_web import Browser

    await hub_server.hub.deps.accounts.create_user("root", "correct horse", is_admin=True)
    browser = Browser(hub_server)
    await browser.login("root", "correct horse")
    cookies = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    for extra in ({}, {"Sec-Fetch-Mode": "no-cors"}):
        response = await hub_server.fetch(
            "/hub/api/users/zed", method="POST", body="{}", headers={"Cookie": cookies, **extra}
        )
        assert response.code == 403
    ok = await hub_server.fetch(
        "/hub/api/users/zed",
        method="POST",
        body="{}",
        headers={
            "Cookie": cookies,
            "X-XSRFToken": browser.cookies["_xsrf"],
            "Origin": hub_server.url,
        },
    )
    assert ok.code == 201, ok.body
