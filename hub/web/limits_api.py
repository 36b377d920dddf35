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

from typing import Any

from hub.domain.launch_limits import LaunchLimitsReport
from hub.domain.offers import scope_use
from hub.domain.resources import Resources
from hub.web.api_base import ApiHandler
from hub.web.openapi import errors, json_content, param, ref


def _resources(r: Resources) -> dict[str, Any]:
    return {"cpus": r.cpus, "memory": r.memory, "gpus": r.gpus}


def limits_model(report: LaunchLimitsReport) -> dict[str, Any]:
    """The body of ``GET /hub/api/users/{name}/limits``, from the domain's report."""
    environments = []
    for item in report.offers:
        env, offer = item.environment, item.offer
        environments.append(
            {
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
        )
    return {
        "environments": environments,
        "quota": {
            "user": scope_use(report.user),
            "teams": [{"name": name, **scope_use(scope)} for name, scope in report.teams],
        },
    }


class LimitsHandler(ApiHandler):
    """``GET /hub/api/users/{name}/limits``: the owner, or an admin."""

    async def get(self, name: str) -> None:
        owner = await self.owner(name, "read:servers")
        self.set_header("Cache-Control", "no-store")
        self.write_json(limits_model(await self.deps.launch_limits.for_user(owner)))


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
