"""API tokens through the REST API: who may list, read, create and revoke whose tokens.

Over real HTTP against a real hub and database. The attack these close: a stolen
token could not be revoked but by disabling its owner, and it never expired.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hub.app import build_hub
from hub.config import Settings
from hub.domain.accounts import token_key
from tests.conftest import RunningHub, listening
from tests.test_servers_api import Api
from tests.test_web import Browser

PASSWORD = "correct horse"
USER_SCOPES = frozenset({"servers", "read:servers", "access:servers"})


class SessionApi(Browser):
    """The REST API as the browser calls it: session cookie plus the XSRF header."""

    async def call(self, method: str, path: str, body: Any = None, xsrf: bool = True):  # type: ignore[no-untyped-def]
        if "_xsrf" not in self.cookies:
            await self.get("/hub/login")
        headers = self._headers()
        if xsrf:
            headers["X-XSRFToken"] = self.cookies["_xsrf"]
            headers["Origin"] = self.hub.url  # as a browser sends it with every write
        kwargs: dict[str, Any] = {"method": method, "headers": headers}
        if body is not None or method == "POST":
            kwargs["body"] = json.dumps(body or {})
        return await self.hub.fetch("/hub/api" + path, **kwargs)


async def token_of(hub: RunningHub, name: str, **kwargs: Any) -> str:
    accounts = hub.hub.deps.accounts
    return await accounts.create_token(await accounts.get(name), **kwargs)


async def person(hub: RunningHub, name: str, *, admin: bool = False) -> tuple[SessionApi, Api]:
    """A user with a logged-in session and a default token."""
    await hub.hub.deps.accounts.create_user(name, PASSWORD, is_admin=admin)
    session = SessionApi(hub)
    assert (await session.login(name, PASSWORD)).code == 302
    return session, Api(hub, await token_of(hub, name))


def ids(response: Any) -> list[str]:
    return [t["id"] for t in json.loads(response.body)["api_tokens"]]


async def test_the_owner_lists_tokens_without_the_token_or_its_hash(
    hub_server: RunningHub,
) -> None:
    session, api = await person(hub_server, "alice")
    second = await token_of(hub_server, "alice", note="nightly job")
    for caller in (session, api):
        listed = await caller.call("GET", "/users/alice/tokens")
        assert listed.code == 200, listed.body
        body = listed.body.decode()
        for secret in (api.token, second):
            assert secret not in body and token_key(secret)[1] not in body
            assert token_key(secret)[0] not in body  # nor the lookup prefix
        tokens = json.loads(body)["api_tokens"]
        assert len(tokens) == 2
        assert set(tokens[0]) == {
            "id",
            "kind",
            "user",
            "note",
            "scopes",
            "created",
            "last_activity",
            "expires_at",
        }
        assert tokens[1]["note"] == "nightly job"
        assert tokens[1]["scopes"] == sorted(USER_SCOPES)
    # The token that listed was used: its last activity shows.
    mine = next(t for t in json.loads(listed.body)["api_tokens"] if t["last_activity"])
    one = await session.call("GET", f"/users/alice/tokens/{mine['id']}")
    assert one.code == 200 and json.loads(one.body) == mine


async def test_a_stolen_token_is_revoked_by_its_owner_and_stops_at_once(
    hub_server: RunningHub,
) -> None:
    session, stolen = await person(hub_server, "alice")
    assert (await stolen.call("GET", "/users/alice")).code == 200
    [token_id] = ids(await session.call("GET", "/users/alice/tokens"))
    revoked = await session.call("DELETE", f"/users/alice/tokens/{token_id}")
    assert revoked.code == 204
    assert (await stolen.call("GET", "/users/alice")).code == 401
    again = await session.call("DELETE", f"/users/alice/tokens/{token_id}")
    assert again.code == 404


async def test_a_token_may_revoke_itself(hub_server: RunningHub) -> None:
    _, api = await person(hub_server, "alice")
    [token_id] = ids(await api.call("GET", "/users/alice/tokens"))
    assert (await api.call("DELETE", f"/users/alice/tokens/{token_id}")).code == 204
    assert (await api.call("GET", "/users/alice/tokens")).code == 401


async def test_another_user_learns_nothing_and_can_revoke_nothing(
    hub_server: RunningHub,
) -> None:
    _, alice = await person(hub_server, "alice")
    bob_session, bob = await person(hub_server, "bob")
    [token_id] = ids(await alice.call("GET", "/users/alice/tokens"))
    for caller in (bob, bob_session):
        answers = []
        for name in ("alice", "nobody"):
            for method, path, body in (
                ("GET", f"/users/{name}/tokens", None),
                ("POST", f"/users/{name}/tokens", {"note": "mine now"}),
                ("GET", f"/users/{name}/tokens/{token_id}", None),
                ("DELETE", f"/users/{name}/tokens/{token_id}", None),
                ("DELETE", f"/users/{name}/tokens/999999", None),
            ):
                response = await caller.call(method, path, body)
                assert response.code == 403, (method, path, response.body)
                answers.append(json.loads(response.body)["message"].replace(name, "X"))
        # The same words whether or not the user or the token exists.
        assert answers[:5] == answers[5:]
    assert (await alice.call("GET", "/users/alice")).code == 200
    assert ids(await alice.call("GET", "/users/alice/tokens")) == [token_id]


async def test_anonymous_callers_are_asked_to_log_in(hub_server: RunningHub) -> None:
    await person(hub_server, "alice")
    for method, path in (
        ("GET", "/users/alice/tokens"),
        ("POST", "/users/alice/tokens"),
        ("GET", "/users/alice/tokens/1"),
        ("DELETE", "/users/alice/tokens/1"),
    ):
        kwargs: dict[str, Any] = {"method": method}
        if method == "POST":
            kwargs["body"] = "{}"
        response = await hub_server.fetch("/hub/api" + path, **kwargs)
        # No credential at all: nothing to forge, so every method is asked to log in.
        assert response.code == 401, (method, response.code)
        with_header = await hub_server.fetch(
            "/hub/api" + path, headers={"Authorization": "token ldk_bogus_bogus_bogus"}, **kwargs
        )
        assert with_header.code == 401


async def test_an_admin_revokes_anyones_token_but_only_with_admin_users(
    hub_server: RunningHub,
) -> None:
    _, alice = await person(hub_server, "alice")
    root_session, root_default = await person(hub_server, "root", admin=True)
    root_admin = Api(
        hub_server, await token_of(hub_server, "root", scopes=frozenset({"admin:users"}))
    )
    [token_id] = ids(await alice.call("GET", "/users/alice/tokens"))
    # An admin's default token speaks for the admin's own servers, not for their powers.
    assert (await root_default.call("GET", "/users/alice/tokens")).code == 403
    assert (await root_default.call("DELETE", f"/users/alice/tokens/{token_id}")).code == 403
    assert (await root_admin.call("GET", "/users/alice/tokens")).code == 200
    assert (await root_session.call("GET", f"/users/alice/tokens/{token_id}")).code == 200
    assert (await root_admin.call("GET", "/users/nobody/tokens")).code == 404
    revoked = await root_session.call("DELETE", f"/users/alice/tokens/{token_id}")
    assert revoked.code == 204
    assert (await alice.call("GET", "/users/alice")).code == 401
    [entry] = await hub_server.hub.deps.audit.page(limit=50, action="token.revoke")
    assert (entry.actor, entry.target) == ("root", "alice")


async def test_a_created_token_is_shown_once_and_works(hub_server: RunningHub) -> None:
    session, _ = await person(hub_server, "alice")
    created = await session.call(
        "POST", "/users/alice/tokens", {"note": "ci", "scopes": ["read:servers"], "expires_in": 2}
    )
    assert created.code == 201, created.body
    assert created.headers["Cache-Control"] == "no-store"
    model = json.loads(created.body)
    assert model["scopes"] == ["read:servers"] and model["note"] == "ci"
    expires = datetime.fromisoformat(model["expires_at"])
    assert abs(expires - datetime.now(UTC) - timedelta(days=2)) < timedelta(minutes=5)
    fresh = Api(hub_server, model.pop("token"))
    shown = await fresh.call("GET", f"/users/alice/tokens/{model['id']}")
    assert shown.code == 200
    assert "token" not in json.loads(shown.body)
    assert {**json.loads(shown.body), "last_activity": None} == model
    # It holds read:servers only: it may not launch.
    assert (await fresh.call("POST", "/users/alice/servers/lab", {})).code == 403


@pytest.mark.parametrize(
    "scopes",
    [
        ["admin:users"],
        ["admin:quotas"],
        ["admin:environments"],
        ["read:metrics"],
        ["users"],
        ["servers!user=bob"],
        ["read:servers", "admin:users!user=alice"],
    ],
)
async def test_a_user_cannot_mint_scopes_beyond_their_own(
    hub_server: RunningHub, scopes: list[str]
) -> None:
    session, _ = await person(hub_server, "alice")
    await hub_server.hub.deps.accounts.create_user("bob", PASSWORD)
    response = await session.call("POST", "/users/alice/tokens", {"scopes": scopes})
    assert response.code == 403, response.body
    assert "may hold only" in json.loads(response.body)["message"]
    assert len(ids(await session.call("GET", "/users/alice/tokens"))) == 1


async def test_a_stolen_token_cannot_mint_a_successor_that_outlives_its_revocation(
    hub_server: RunningHub,
) -> None:
    session, stolen = await person(hub_server, "alice")
    for body in ({}, {"scopes": ["read:servers"]}):
        minted = await stolen.call("POST", "/users/alice/tokens", body)
        assert minted.code == 403 and "cannot mint" in json.loads(minted.body)["message"]
    assert len(ids(await session.call("GET", "/users/alice/tokens"))) == 1


async def test_an_admin_token_mints_no_more_than_it_holds(hub_server: RunningHub) -> None:
    await hub_server.hub.deps.accounts.create_user("root", PASSWORD, is_admin=True)
    await hub_server.hub.deps.accounts.create_user("alice", PASSWORD)
    narrow = Api(hub_server, await token_of(hub_server, "root", scopes=frozenset({"admin:users"})))
    wider = await narrow.call("POST", "/users/root/tokens", {"scopes": ["admin:quotas"]})
    assert wider.code == 403 and "more than" in json.loads(wider.body)["message"]
    for_alice = await narrow.call("POST", "/users/alice/tokens", {})
    assert for_alice.code == 403  # the defaults hold servers, which this token lacks
    same = await narrow.call("POST", "/users/root/tokens", {"scopes": ["admin:users"]})
    assert same.code == 201


async def test_admins_mint_admin_tokens_for_themselves_and_user_tokens_for_others(
    hub_server: RunningHub,
) -> None:
    root, _ = await person(hub_server, "root", admin=True)
    await hub_server.hub.deps.accounts.create_user("alice", PASSWORD)
    mine = await root.call("POST", "/users/root/tokens", {"scopes": ["admin:users"]})
    assert mine.code == 201
    theirs = await root.call("POST", "/users/alice/tokens", {"scopes": ["admin:users"]})
    assert theirs.code == 403  # alice is no admin: her tokens hold user scopes only
    assert (await root.call("POST", "/users/alice/tokens", {})).code == 201


@pytest.mark.parametrize(
    "body",
    [
        {"expires_in": 0},
        {"expires_in": -1},
        {"expires_in": "7"},
        {"expires_in": True},
        {"expires_in": 10**9},
        {"scopes": "servers"},
        {"scopes": []},
        {"scopes": ["servers,admin:users"]},
        {"scopes": ["root"]},
        {"note": 7},
        {"note": "x" * 201},
        {"token": "ldk_mine"},
    ],
)
async def test_bad_token_requests_get_a_reason(hub_server: RunningHub, body: Any) -> None:
    session, _ = await person(hub_server, "alice")
    response = await session.call("POST", "/users/alice/tokens", body)
    assert response.code == 400, (body, response.body)
    assert json.loads(response.body)["message"]


async def test_a_change_by_cookie_without_xsrf_is_refused(hub_server: RunningHub) -> None:
    session, _ = await person(hub_server, "alice")
    [token_id] = ids(await session.call("GET", "/users/alice/tokens"))
    assert (await session.call("DELETE", f"/users/alice/tokens/{token_id}", xsrf=False)).code == 403
    assert (await session.call("POST", "/users/alice/tokens", {}, xsrf=False)).code == 403
    assert ids(await session.call("GET", "/users/alice/tokens")) == [token_id]


@pytest.mark.parametrize("raw", ["abc", "1e3", "-1", "9" * 19, "\u0661"])
async def test_odd_token_ids_are_not_found(hub_server: RunningHub, raw: str) -> None:
    session, _ = await person(hub_server, "alice")
    response = await session.call("GET", f"/users/alice/tokens/{raw}")
    assert response.code == 404


async def test_without_an_expiry_tokens_get_the_configured_default(
    with_settings: Any,
) -> None:
    settings: Settings = with_settings(hub={"token_expiry_days": 7.0})
    async with build_hub(settings) as built, listening(built) as running:
        session, api = await person(running, "alice")
        created = await session.call("POST", "/users/alice/tokens", {"note": "x"})
        for model in [
            json.loads(created.body),
            *json.loads((await api.call("GET", "/users/alice/tokens")).body)["api_tokens"],
        ]:
            left = datetime.fromisoformat(model["expires_at"]) - datetime.now(UTC)
            assert timedelta(days=7) - timedelta(minutes=5) < left <= timedelta(days=7)
    never: Settings = with_settings(hub={"token_expiry_days": 0.0})
    async with build_hub(never) as built, listening(built) as running:
        session, _ = await person(running, "bob")
        created = await session.call("POST", "/users/bob/tokens", {})
        assert json.loads(created.body)["expires_at"] is None


async def test_token_ids_beyond_what_the_database_holds_name_no_token(
    hub_server: RunningHub,
) -> None:
    """Found by schemathesis on PostgreSQL, whose integer ids stop at 2**31 - 1: a 500 before."""
    session, _ = await person(hub_server, "alice")
    for token_id in ("2147483648", "942123047093919697", "99999999999999999999"):
        for method in ("GET", "DELETE"):
            response = await session.call(method, f"/users/alice/tokens/{token_id}")
            assert response.code == 404, (method, token_id, response.body)
