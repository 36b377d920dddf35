"""Storage use through the REST API: a user's home volume against their quota.

    GET /hub/api/users/alice/storage
    -> {"used": 19327352832, "quota": 21474836480, "fraction": 0.9,
        "warning": "your home volume uses 18 GiB of your 20 GiB storage quota (90%); ...",
        "measured": "2026-11-30T00:05:00Z", "error": null, "teams": [...]}

Figures come from the last measurement (see ``hub.domain.storage``); ``measured``
says when it was taken, and ``error`` why a later attempt failed, if one did.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from hub.domain.errors import BackendUnavailable
from hub.domain.storage import Standing
from hub.web.api_base import ApiHandler
from hub.web.openapi import errors, json_content, param, ref


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at else None


def _fraction(standing: Standing) -> float | None:
    value = standing.fraction
    if value is None:
        return None
    # JSON has no infinity: a zero quota holding anything is shown as "over" by the warning.
    return round(value, 4) if math.isfinite(value) else None


def standing_model(standing: Standing) -> dict[str, Any]:
    return {
        "used": standing.used,
        "quota": standing.quota,
        "fraction": _fraction(standing),
        "warning": standing.warning,
    }


class StorageHandler(ApiHandler):
    """``GET /hub/api/users/{name}/storage``: the owner, or an admin."""

    async def get(self, name: str) -> None:
        owner = await self.owner(name, "read:servers")
        storage = self.deps.storage
        if storage is None:
            raise BackendUnavailable("this hub does not measure storage")
        report = await storage.report(owner)
        self.write_json(
            {
                **standing_model(report.user),
                "measured": _iso(report.measured),
                "error": report.error,
                "teams": [{"name": team, **standing_model(s)} for team, s in report.teams],
            }
        )


_STANDING: dict[str, Any] = {
    "used": {
        "type": ["integer", "null"],
        "description": "Bytes on disk at the last measurement; null: not measured yet.",
    },
    "quota": {"type": ["integer", "null"], "description": "Bytes; null: no limit."},
    "fraction": {"type": ["number", "null"], "description": "used / quota."},
    "warning": {
        "type": ["string", "null"],
        "description": "Set from 90% of the quota; over it, new launches are refused.",
    },
}

OPENAPI_SCHEMAS: dict[str, Any] = {
    "Storage": {
        "type": "object",
        "required": ["used", "quota", "fraction", "warning", "measured", "error", "teams"],
        "properties": {
            **_STANDING,
            "measured": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "When the figures were taken; null: never.",
            },
            "error": {
                "type": ["string", "null"],
                "description": "Why the latest measurement failed (the figures are older).",
            },
            "teams": {
                "type": "array",
                "description": "Each team's members' homes and team volumes against its quota.",
                "items": {
                    "type": "object",
                    "required": ["name", *_STANDING],
                    "properties": {"name": {"type": "string"}, **_STANDING},
                },
            },
        },
    }
}

OPENAPI_PATHS: dict[str, Any] = {
    "/users/{name}/storage": {
        "parameters": [param("UserName")],
        "get": {
            "summary": "A user's storage use against their quota (the owner, or an admin)",
            "operationId": "getUserStorage",
            "tags": ["users"],
            "responses": {
                "200": json_content(ref("Storage")),
                **errors(401, 403, 404, 503),
            },
        },
    }
}
