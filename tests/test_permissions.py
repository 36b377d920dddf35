"""Who may call each operation of the REST API: a matrix walked over the OpenAPI spec.

Every operation in ``/hub/api/openapi.json`` must have a row in ``MATRIX``, and
every row an operation, so an endpoint added without deciding who may call it
fails here. Each row says what each caller gets:

- ``OK``: let through (any answer but 401 and 403, and never a 5xx: the bodies
  below are chosen so that an allowed call stops at validation or a missing
  thing, without launching anything);
- ``401`` / ``403``: refused with that status.

The callers act on the user ``alice`` (a plain user) wherever the path names a
user: anonymous; alice's browser session (cookie, XSRF token, Origin, as the UI
sends them); alice's default API token; another plain user, bob, with his
session; an admin's session; an admin's token holding every scope; an admin's
token holding only the default scopes. Runs on SQLite, and on PostgreSQL under
``make test``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from hub.domain.accounts import SCOPES
from hub.web.openapi import build_document
from tests.conftest import RunningHub
from tests.test_web import Browser

OK = "ok"
CALLERS = (
    "anonymous",
    "user_session",
    "user_token",
    "other_user",
    "admin_session",
    "admin_token",
    "admin_token_no_scope",
)
PASSWORD = "correct horse"

# Path parameters: the target user is alice; names that exist where that matters.
# A token id that does not exist: allowed callers get 404, and nobody's token is revoked.
PATH_VALUES = {"name": "alice", "server": "lab", "kind": "users", "token_id": "999999"}
# Bodies that an allowed caller gets past authorization with, and no further.
BODIES: dict[str, Any] = {
    "launchDefaultServer": {"environment": "no-such-environment"},
    "launchNamedServer": {"environment": "no-such-environment"},
    "restartDefaultServer": {},
    "restartNamedServer": {},
    "createEnvironment": {},
    "changeEnvironment": {},
    "addEnvironmentVersion": {},
    "createUser": {},  # alice exists: 409 for whoever may create users
    "updateUser": {"disabled": False},
    "setQuota": {"servers": 5},
    "linkOidcIdentity": {},
    "createUserToken": {"note": "matrix", "expires_in": 1},
}


def row(
    anonymous: int | str,
    user: int | str,
    other: int | str,
    admin_no_scope: int | str,
    *,
    admin: int | str = OK,
) -> dict[str, int | str]:
    """A row: alice's session and token answer alike, as do the admin's session and token."""
    return {
        "anonymous": anonymous,
        "user_session": user,
        "user_token": user,
        "other_user": other,
        "admin_session": admin,
        "admin_token": admin,
        "admin_token_no_scope": admin_no_scope,
    }


PUBLIC = row(OK, OK, OK, OK)
OWNER_OR_ADMIN = row(401, OK, 403, OK)  # one's own things; admins on anyone's
ADMIN_ONLY = row(401, 403, 403, 403)  # the admin role and the admin scope
ADMIN_ROLE = row(401, 403, 403, OK)  # the admin role, any token scope of theirs
SIGNED_IN = row(401, OK, OK, OK)
OWNER_OR_SCOPED_ADMIN = row(401, OK, 403, 403)  # an admin needs the admin:users scope

MATRIX: dict[str, dict[str, int | str]] = {
    "getVersion": PUBLIC,
    "getOpenApi": PUBLIC,
    # Plain users see themselves only; admins everyone.
    "listUsers": SIGNED_IN,
    "getUser": OWNER_OR_ADMIN,
    "createUser": ADMIN_ONLY,
    # A plain user may not change their own flags, nor anyone's.
    "updateUser": ADMIN_ONLY,
    "linkOidcIdentity": ADMIN_ONLY,
    "launchDefaultServer": OWNER_OR_ADMIN,
    "stopDefaultServer": OWNER_OR_ADMIN,
    "progressDefaultServer": OWNER_OR_ADMIN,
    "restartDefaultServer": OWNER_OR_ADMIN,
    "launchNamedServer": OWNER_OR_ADMIN,
    "stopNamedServer": OWNER_OR_ADMIN,
    "progressNamedServer": OWNER_OR_ADMIN,
    "restartNamedServer": OWNER_OR_ADMIN,
    "getDefaultServerStats": OWNER_OR_ADMIN,
    "getServerStats": OWNER_OR_ADMIN,
    "getUserStorage": OWNER_OR_ADMIN,
    "getLaunchLimits": OWNER_OR_ADMIN,
    "getAllStats": ADMIN_ROLE,
    # Everyone sees the environments offered to them.
    "listEnvironments": SIGNED_IN,
    "getEnvironment": SIGNED_IN,
    "createEnvironment": ADMIN_ONLY,
    "changeEnvironment": ADMIN_ONLY,
    "addEnvironmentVersion": ADMIN_ONLY,
    "listQuotas": ADMIN_ONLY,
    "getQuota": ADMIN_ONLY,
    "setQuota": ADMIN_ONLY,
    # One's own tokens, through any of one's credentials; admins with admin:users.
    "listUserTokens": OWNER_OR_SCOPED_ADMIN,
    "getUserToken": OWNER_OR_SCOPED_ADMIN,
    "revokeUserToken": OWNER_OR_SCOPED_ADMIN,
    # A token mints no tokens (a stolen one would leave a copy behind once revoked).
    "createUserToken": {**OWNER_OR_SCOPED_ADMIN, "user_token": 403},
}


def operations() -> list[tuple[str, str, str]]:
    """(operationId, method, path) of every operation in the spec."""
    found = []
    for path, item in build_document()["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                found.append((op["operationId"], method.upper(), path))
    return found


def test_every_operation_in_the_spec_has_a_row_and_every_row_an_operation() -> None:
    ids = [op for op, _, _ in operations()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    missing = sorted(set(ids) - set(MATRIX))
    assert not missing, f"decide who may call these, in MATRIX: {missing}"
    stale = sorted(set(MATRIX) - set(ids))
    assert not stale, f"rows for operations that no longer exist: {stale}"
    for op, answers in MATRIX.items():
        assert set(answers) == set(CALLERS), op


class Caller:
    """One kind of caller: headers for a request, as a browser or a script sends them."""

    def __init__(self, hub: RunningHub, *, token: str = "", browser: Browser | None = None):
        self.hub = hub
        self.token = token
        self.browser = browser

    def headers(self, method: str) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"token {self.token}"}
        if self.browser is None:
            return {}
        headers = self.browser._headers()
        if method not in ("GET", "HEAD"):
            headers["X-XSRFToken"] = self.browser.cookies["_xsrf"]
            headers["Origin"] = self.hub.url
        return headers


async def session_of(hub: RunningHub, name: str) -> Browser:
    browser = Browser(hub)
    response = await browser.login(name, PASSWORD)
    assert response.code == 302, response.body
    await browser.get("/hub/home")  # the page that hands the session's XSRF token over
    return browser


async def callers(hub: RunningHub) -> Mapping[str, Caller]:
    accounts = hub.hub.deps.accounts
    alice, _ = await accounts.create_user("alice", PASSWORD)
    await accounts.create_user("bob", PASSWORD)
    root, _ = await accounts.create_user("root", PASSWORD, is_admin=True)
    return {
        "anonymous": Caller(hub),
        "user_session": Caller(hub, browser=await session_of(hub, "alice")),
        "user_token": Caller(hub, token=await accounts.create_token(alice)),
        "other_user": Caller(hub, browser=await session_of(hub, "bob")),
        "admin_session": Caller(hub, browser=await session_of(hub, "root")),
        "admin_token": Caller(hub, token=await accounts.create_token(root, scopes=SCOPES)),
        "admin_token_no_scope": Caller(hub, token=await accounts.create_token(root)),
    }


async def test_each_caller_gets_what_the_matrix_says_for_every_operation(
    hub_server: RunningHub,
) -> None:
    who = await callers(hub_server)
    wrong = []
    for op, method, path in operations():
        url = "/hub/api" + path.format(**PATH_VALUES)
        body = BODIES.get(op, {} if method in ("POST", "PUT", "PATCH") else None)
        for caller, expected in MATRIX[op].items():
            response = await hub_server.fetch(
                url,
                method=method,
                headers=who[caller].headers(method),
                body=None if body is None else json.dumps(body),
                allow_nonstandard_methods=True,
                request_timeout=30,
            )
            got = response.code
            allowed = got not in (401, 403) and got < 500
            if (expected == OK and not allowed) or (expected != OK and got != expected):
                wrong.append(f"{caller} {method} {path}: expected {expected}, got {got}")
    assert not wrong, "\n".join(wrong)
    # Nothing the refused callers tried took effect: alice is still a plain user.
    alice = await hub_server.hub.deps.accounts.get("alice")
    assert not alice.is_admin and not alice.disabled


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/quotas/users/alice", {"cpus": 64}),
        ("PUT", "/quotas/users/bob", {"servers": 0}),
        ("PUT", "/quotas/teams/risk", {"servers": 100}),
        ("POST", "/users/mal2", {"password": "mal2-password", "teams": ["risk"]}),
        ("PATCH", "/users/alice", {"admin": True}),
        ("GET", "/quotas", None),
    ],
)
async def test_a_plain_users_browser_session_holds_no_admin_power(
    hub_server: RunningHub, method: str, path: str, body: Any
) -> None:
    """The red team's reproduction: session cookie and XSRF exactly as the UI sends them."""
    accounts = hub_server.hub.deps.accounts
    await accounts.create_user("alice", PASSWORD)
    await accounts.create_user("bob", PASSWORD)
    await hub_server.hub.deps.teams.ensure("risk")
    alice = Caller(hub_server, browser=await session_of(hub_server, "alice"))
    response = await hub_server.fetch(
        "/hub/api" + path,
        method=method,
        headers=alice.headers(method),
        body=None if body is None else json.dumps(body),
    )
    assert response.code == 403, response.body
    assert json.loads(response.body)["message"]
    assert [u.name for u in await accounts.all_users()] == ["admin", "alice", "bob"]
    assert not (await accounts.get("alice")).is_admin
