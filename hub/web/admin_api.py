"""Users and quotas through the REST API (admins, and holders of admin scopes).

    POST  /hub/api/users/bob        {"admin": false, "teams": ["risk"]}   -> 201
    PATCH /hub/api/users/bob        {"disabled": true}
    GET   /hub/api/quotas
    PUT   /hub/api/quotas/teams/risk {"memory": "8G", "servers": 6}

Only admins act here: a browser session carries its user's role, and a token's
admin scopes count only while its owner is an admin (``effective_scopes``). An
admin's token acts only within its scopes; one narrowed to a user
(``admin:users!user=bob``) acts on that user only and creates nobody.
Disabling a user ends their sessions and stops their servers.
"""

from __future__ import annotations

from typing import Any

from hub.domain.accounts import User, check_team_name, may_act_on
from hub.domain.errors import Forbidden, InvalidInput
from hub.domain.quota_admin import QuotaStanding, quota_kind
from hub.domain.resources import MAX_SIZE, parse_memory
from hub.web.api_base import ApiHandler
from hub.web.deps import WebDeps
from hub.web.openapi import USERNAME_PATTERN, errors, json_body, json_content, param, ref
from hub.web.servers_api import user_model

QUOTA_FIELDS = {"cpus": float, "memory": "size", "gpus": int, "servers": int, "storage": "size"}


def _flag(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise InvalidInput(f"{key}: expected true or false")


DISABLED_REASON = "stopped: the account was disabled by an admin"


async def update_user(
    deps: WebDeps, target: User, *, is_admin: bool | None = None, disabled: bool | None = None
) -> User:
    """Change a user's flags; disabling also ends their sessions and stops their servers.

    The routes go at once, so the proxy refuses new requests and closes open
    connections; the containers stop with their usual grace, volumes untouched.
    """
    updated = await deps.accounts.update(target, is_admin=is_admin, disabled=disabled)
    if disabled:
        await deps.workspaces.stop_all_of(target.id, reason=DISABLED_REASON)
    return updated


class UserHandler(ApiHandler):
    """``/hub/api/users/{name}``: read, create, and change a user."""

    async def get(self, name: str) -> None:
        owner = await self.owner(name, "read:servers")
        self.write_json(
            user_model(
                owner, await self.deps.servers.of_user(owner.id), self.deps.workspaces.notice
            )
        )

    async def post(self, name: str) -> None:
        actor = self.require("admin:users")  # a narrowed scope cannot create users
        body = self.json_body()
        unknown = set(body) - {"admin", "teams", "password"}
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
        make_admin = bool(_flag(body, "admin"))
        if make_admin and not actor.is_admin:
            raise Forbidden("only admins may create admins")
        teams = body.get("teams", [])
        if not isinstance(teams, list) or not all(isinstance(t, str) for t in teams):
            raise InvalidInput("teams: expected a list of team names")
        for team in teams:
            check_team_name(team)
        password = body.get("password")
        if password is not None and not isinstance(password, str):
            raise InvalidInput("password: expected a string")
        user, one_time = await self.deps.accounts.create_user(name, password, is_admin=make_admin)
        for team in teams:
            await self.deps.teams.join(user.id, team)
        await self.deps.audit.record(
            actor_id=actor.id,
            action="user.create",
            target=name,
            detail={"admin": make_admin, "teams": teams},
        )
        model = user_model(user, [])
        if one_time:
            model["one_time_password"] = one_time
        self.write_json(model, 201)

    async def patch(self, name: str) -> None:
        actor = self.require_any("admin:users")
        if not may_act_on(actor, self.scopes, "admin:users", name) or (
            name == actor.name and not actor.is_admin
        ):
            raise Forbidden(f"you may not change user {name!r}")
        body = self.json_body()
        unknown = set(body) - {"admin", "disabled"}
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
        admin, disabled = _flag(body, "admin"), _flag(body, "disabled")
        if admin is not None and not actor.is_admin:
            raise Forbidden("only admins may make or unmake admins")
        if disabled and name == actor.name:
            raise InvalidInput("you cannot disable yourself")
        target = await self.deps.accounts.get(name)
        updated = await update_user(self.deps, target, is_admin=admin, disabled=disabled)
        await self.deps.audit.record(
            actor_id=actor.id,
            action="user.update",
            target=name,
            detail={"admin": admin, "disabled": disabled},
        )
        notice_of = self.deps.workspaces.notice
        self.write_json(user_model(updated, await self.deps.servers.of_user(updated.id), notice_of))


def quota_limits(body: dict[str, Any]) -> dict[str, float | int | None]:
    """Validate a quota body: numbers, sizes such as ``8G``, or null to lift a limit."""
    unknown = set(body) - set(QUOTA_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown quota field(s): {', '.join(sorted(unknown))}")
    limits: dict[str, float | int | None] = {}
    for key, kind in QUOTA_FIELDS.items():
        if key not in body:
            continue
        value = body[key]
        if value is None:
            limits[key] = None
            continue
        if isinstance(value, bool):
            raise InvalidInput(f"{key}: expected a number")
        if kind == "size":
            limits[key] = parse_memory(
                value if isinstance(value, int | str) else str(value), what=key
            )
        elif kind is int:
            if not isinstance(value, int):
                raise InvalidInput(f"{key}: expected a whole number")
            limits[key] = value
        else:
            if not isinstance(value, int | float):
                raise InvalidInput(f"{key}: expected a number")
            limits[key] = float(value) if abs(value) <= MAX_SIZE else MAX_SIZE + 1
        if (limits[key] or 0) < 0:
            raise InvalidInput(f"{key}: must not be negative")
        if (limits[key] or 0) > MAX_SIZE:
            raise InvalidInput(f"{key}: {value} is more than any machine has")
    if not limits:
        raise InvalidInput(f"give at least one of {', '.join(QUOTA_FIELDS)}")
    return limits


def standing_model(standing: QuotaStanding) -> dict[str, Any]:
    """``{"limits": {...}, "used": {...}}``: null limits are none of its own."""
    return {"limits": standing.limits.as_dict(), "used": standing.used.as_dict()}


class QuotasHandler(ApiHandler):
    """``GET /hub/api/quotas``: every user's and team's quota."""

    async def get(self) -> None:
        self.require("admin:quotas")
        overview = await self.deps.quota_admin.overview()
        self.write_json(
            {
                "users": {name: standing_model(q) for name, q in overview.users.items()},
                "teams": {name: standing_model(q) for name, q in overview.teams.items()},
            }
        )


class QuotaHandler(ApiHandler):
    """``GET/PUT /hub/api/quotas/(users|teams)/{name}``."""

    async def get(self, kind: str, name: str) -> None:
        self.require("admin:quotas")
        standing = await self.deps.quota_admin.describe(quota_kind(kind), name)
        self.write_json(standing_model(standing))

    async def put(self, kind: str, name: str) -> None:
        actor = self.require("admin:quotas")
        limits = quota_limits(self.json_body())
        standing = await self.deps.quota_admin.set(actor, quota_kind(kind), name, limits)
        self.write_json(standing_model(standing))


OPENAPI_SCHEMAS: dict[str, Any] = {
    "UserCreate": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "admin": {"type": ["boolean", "null"], "description": "Only admins may set it."},
            "teams": {
                "type": "array",
                "items": {"type": "string", "pattern": USERNAME_PATTERN},
                "description": "Teams to join, created if missing.",
            },
            "password": {
                "type": ["string", "null"],
                "minLength": 8,
                "maxLength": 1024,
                "description": "Without it, a one-time password is returned once.",
            },
        },
    },
    "UserUpdate": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "admin": {"type": ["boolean", "null"], "description": "Only admins may set it."},
            "disabled": {"type": ["boolean", "null"]},
        },
    },
}

OPENAPI_PATHS: dict[str, Any] = {
    "/users/{name}": {
        "parameters": [param("UserName")],
        "get": {
            "summary": "A user and their servers",
            "operationId": "getUser",
            "tags": ["users"],
            "responses": {"200": json_content(ref("User")), **errors(401, 403, 404)},
        },
        "post": {
            "summary": "Create a user (admin:users; only admins create admins)",
            "operationId": "createUser",
            "tags": ["users"],
            "requestBody": json_body(ref("UserCreate")),
            "responses": {
                "201": json_content(ref("User"), "Created."),
                **errors(400, 401, 403, 404, 409),
            },
        },
        "patch": {
            "summary": "Disable or enable a user, or make or unmake an admin",
            "operationId": "updateUser",
            "tags": ["users"],
            "requestBody": json_body(ref("UserUpdate")),
            "responses": {"200": json_content(ref("User")), **errors(400, 401, 403, 404, 409)},
        },
    },
    "/quotas": {
        "get": {
            "summary": "Every user's and team's quota beside its use",
            "operationId": "listQuotas",
            "tags": ["quotas"],
            "responses": {"200": json_content(ref("QuotaOverview")), **errors(401, 403)},
        }
    },
    "/quotas/{kind}/{name}": {
        "parameters": [
            {
                "name": "kind",
                "in": "path",
                "required": True,
                "schema": {"enum": ["users", "teams"]},
            },
            {
                "name": "name",
                "in": "path",
                "required": True,
                "description": "A username or team name.",
                "schema": {"type": "string", "pattern": USERNAME_PATTERN},
            },
        ],
        "get": {
            "summary": "One user's or team's quota beside its use",
            "operationId": "getQuota",
            "tags": ["quotas"],
            "responses": {"200": json_content(ref("Quota")), **errors(401, 403, 404)},
        },
        "put": {
            "summary": "Change a quota (admin:quotas)",
            "operationId": "setQuota",
            "tags": ["quotas"],
            "requestBody": json_body(ref("QuotaUpdate"), required=True),
            "responses": {"200": json_content(ref("Quota")), **errors(400, 401, 403, 404)},
        },
    },
}
