"""What a user may launch right now, through the REST API: the launch form's bounds.

    GET /hub/api/users/alice/limits
    -> {"environments": [{"name": "jupyter", "launchable": true,
                          "allowed": {"cpus": 2.0, "memory": 4294967296, "gpus": 0},
                          "limited_by": {"memory": "team 'risk' quota"},
                          "choices": {"cpus": [0.25, 0.5, 1, 2], "memory": [...], "gpus": [0]},
                          "default": {...}, ...}],
        "quota": {"user": {"cpus": {"used": 1.0, "limit": 4.0}, ...},
                  "teams": [{"name": "risk", "cpus": {...}, ...}]}}

The bounds are computed from the same limits and usage as admission (the
user's quota or the default one, each team's quota, the host's capacity and
its free GPUs), so a form that offers only them is never refused for size.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hub.domain.accounts import User
from hub.domain.catalog import Environment
from hub.domain.errors import QuotaExceeded
from hub.domain.offers import Offer, free_gpu_count, offer_for, scope_use
from hub.domain.quotas import Limits, Scope, Usage
from hub.domain.records import ACTIVE_STATES, ServerRecord
from hub.domain.resources import Resources
from hub.web.deps import WebDeps
from hub.web.openapi import errors, json_content, param, ref
from hub.web.servers_api import ApiHandler


def _usage(records: list[ServerRecord]) -> Usage:
    return Usage(
        cpus=sum(r.resources.cpus for r in records),
        memory=sum(r.resources.memory for r in records),
        gpus=sum(r.resources.gpus for r in records),
        servers=len(records),
    )


async def admission_scopes(
    deps: WebDeps, user: User
) -> tuple[Scope, list[Scope], Scope, list[tuple[str, Scope]], dict[str, int]]:
    """The user, team and host scopes as admission sees them now, and GPUs in use.

    Also returns every team (with or without a quota of its own) for display.
    """
    active = [r for r in await deps.servers.all() if r.state in ACTIVE_STATES]
    quota = deps.settings.quota
    default = Limits(cpus=quota.cpus, memory=quota.memory, gpus=quota.gpus, servers=quota.servers)
    user_limits = await deps.quotas.limits_of(user_id=user.id) or default
    mine = _usage([r for r in active if r.user_id == user.id])
    user_scope = Scope("your quota", user_limits, mine)
    teams: list[Scope] = []
    shown: list[tuple[str, Scope]] = []
    for membership in await deps.teams.memberships(user.id):
        limits = await deps.quotas.limits_of(team_id=membership.team_id)
        used = (await deps.quotas.describe(team_id=membership.team_id))["used"]
        usage = Usage(
            cpus=float(used["cpus"]),
            memory=int(used["memory"]),
            gpus=int(used["gpus"]),
            servers=int(used["servers"]),
        )
        scope = Scope(f"team '{membership.team}' quota", limits or Limits(), usage)
        shown.append((membership.team, scope))
        if limits is not None:
            teams.append(scope)
    host = Scope("this host's capacity", deps.host_capacity, _usage(active))
    gpus: Counter[str] = Counter()
    for record in active:
        gpus.update(record.gpu_ids)
    return user_scope, teams, host, shown, dict(gpus)


def _resources(r: Resources) -> dict[str, Any]:
    return {"cpus": r.cpus, "memory": r.memory, "gpus": r.gpus}


def offer_model(env: Environment, offer: Offer) -> dict[str, Any]:
    return {
        "name": env.name,
        "description": env.description,
        "version": env.version,
        "contents": env.contents,
        "gpu": env.gpu,
        "default": _resources(env.default),
        "maximum": _resources(env.maximum),
        "launchable": offer.launchable,
        "reason": offer.reason,
        "allowed": {"cpus": offer.cpus, "memory": offer.memory, "gpus": offer.gpus},
        "limited_by": offer.limited_by,
        "choices": offer.choices,
        "preset": offer.default,
    }


async def launch_limits(deps: WebDeps, user: User) -> dict[str, Any]:
    """The body of ``GET /hub/api/users/{name}/limits``."""
    user_scope, teams, host, shown, gpus_in_use = await admission_scopes(deps, user)
    storage_refusal: str | None = None
    if deps.storage is not None:
        try:
            await deps.storage.admit(user)
        except QuotaExceeded as exc:
            storage_refusal = exc.message
    team_ids = await deps.teams.team_ids_of(user.id)
    envs = [e for e in await deps.catalog.visible_to(team_ids, admin=user.is_admin) if e.launchable]
    models = []
    for env in envs:
        free = free_gpu_count(deps.gpu_inventory, gpus_in_use, shareable=env.gpu_shareable)
        offer = offer_for(env, user=user_scope, teams=teams, host=host, free_gpus=free)
        if storage_refusal is not None:
            offer = Offer(env.name, 0.0, 0, 0, False, storage_refusal, offer.limited_by)
        models.append(offer_model(env, offer))
    return {
        "environments": models,
        "quota": {
            "user": scope_use(user_scope),
            "teams": [{"name": name, **scope_use(scope)} for name, scope in shown],
        },
    }


class LimitsHandler(ApiHandler):
    """``GET /hub/api/users/{name}/limits``: the owner, or an admin."""

    async def get(self, name: str) -> None:
        owner = await self.owner(name, "read:servers")
        self.set_header("Cache-Control", "no-store")
        self.write_json(await launch_limits(self.deps, owner))


_USE = {
    "type": "object",
    "required": ["used", "limit"],
    "properties": {
        "used": {"type": "number"},
        "limit": {"type": ["number", "null"], "description": "null: no limit"},
    },
}
_QUOTA_USE: dict[str, Any] = {
    "type": "object",
    "description": "Use against each limit; memory in bytes, cpus in cores.",
    "required": ["cpus", "memory", "gpus", "servers"],
    "properties": {k: _USE for k in ("cpus", "memory", "gpus", "servers")},
}

OPENAPI_SCHEMAS: dict[str, Any] = {
    "EnvironmentOffer": {
        "type": "object",
        "description": "An environment and the most a new server of it may get right now.",
        "required": [
            "name",
            "description",
            "version",
            "contents",
            "gpu",
            "default",
            "maximum",
            "launchable",
            "reason",
            "allowed",
            "limited_by",
            "choices",
            "preset",
        ],
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "version": {"type": "string"},
            "contents": {"type": "string", "description": "What the image holds, in words."},
            "gpu": {"type": "boolean"},
            "default": ref("Resources"),
            "maximum": ref("Resources"),
            "launchable": {"type": "boolean", "description": "false: no room now; see reason"},
            "reason": {"type": ["string", "null"], "description": "Why it cannot launch now."},
            "allowed": {
                **ref("Resources"),
                "description": "The most admissible now: the environment's maximum bounded "
                "by the user's and teams' quota headroom and the host's free capacity.",
            },
            "limited_by": {
                "type": "object",
                "description": "The scope that bounds a resource, where it is tighter than "
                "the environment's maximum.",
                "additionalProperties": {"type": "string"},
            },
            "choices": {
                "type": "object",
                "description": "Values a form may offer (cpus, memory in bytes, gpus).",
                "additionalProperties": {"type": "array", "items": {"type": "number"}},
            },
            "preset": {
                "type": "object",
                "description": "The default choice, within the allowed bounds.",
            },
        },
    },
    "LaunchLimits": {
        "type": "object",
        "required": ["environments", "quota"],
        "properties": {
            "environments": {"type": "array", "items": ref("EnvironmentOffer")},
            "quota": {
                "type": "object",
                "required": ["user", "teams"],
                "properties": {
                    "user": _QUOTA_USE,
                    "teams": {
                        "type": "array",
                        "items": {
                            **_QUOTA_USE,
                            "required": ["name", *_QUOTA_USE["required"]],
                            "properties": {
                                "name": {"type": "string"},
                                **_QUOTA_USE["properties"],
                            },
                        },
                    },
                },
            },
        },
    },
}

OPENAPI_PATHS: dict[str, Any] = {
    "/users/{name}/limits": {
        "parameters": [param("UserName")],
        "get": {
            "summary": "What the user may launch right now, and their quota use",
            "operationId": "getLaunchLimits",
            "tags": ["servers"],
            "responses": {"200": json_content(ref("LaunchLimits")), **errors(401, 403, 404)},
        },
    }
}
