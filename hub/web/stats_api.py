"""Live use of running servers through the REST API: CPU and memory against their limits.

    GET /hub/api/users/alice/servers/lab/stats
    -> {"cpu_cores": 0.42, "cpus_limit": 2.0, "memory_bytes": 1932735283,
        "memory_limit": 2147483648, "memory_fraction": 0.9, "memory_warning": true,
        "started": "2026-11-30T00:05:00Z", "uptime_s": 600.0,
        "last_activity": "2026-11-30T00:14:00Z", "idle_s": 60.0}
    GET /hub/api/stats       (admins) -> [{"user": "alice", "server": "lab", ...}, ...]

A server that is not running answers 409, so a page that polls can tell
"stopped" from "cannot say" (503: the engine is unreachable).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from hub.domain.errors import BackendUnavailable, Conflict, Forbidden
from hub.domain.records import ServerRecord
from hub.domain.servers import ServerState
from hub.domain.stats import LiveUsage, StatsReader, live_stats
from hub.web.api_base import ApiHandler
from hub.web.openapi import errors, json_content, param, ref

NOT_RUNNING = "the server is not running"


def _reader(handler: ApiHandler) -> StatsReader:
    reader = handler.deps.stats
    if reader is None:
        raise BackendUnavailable("this hub does not read live server statistics")
    return reader


async def _usage(reader: StatsReader, record: ServerRecord) -> LiveUsage:
    if record.state != ServerState.RUNNING or not record.container_id:
        raise Conflict(NOT_RUNNING)
    return await reader.read(record.container_id)


class ServerStatsHandler(ApiHandler):
    """``GET /hub/api/users/{name}/server[s/{server}]/stats``: the owner, or an admin."""

    async def get(self, name: str, server: str = "") -> None:
        owner = await self.owner(name, "read:servers")
        record = await self.owned_server(owner, server)
        self.set_header("Cache-Control", "no-store")
        usage = await _usage(_reader(self), record)
        self.write_json(live_stats(record, usage, datetime.now(UTC)))


class AllStatsHandler(ApiHandler):
    """``GET /hub/api/stats``: every running server's use, for the admin console."""

    async def get(self) -> None:
        actor = self.require("read:servers")
        if not actor.is_admin:
            raise Forbidden("only admins see every server's use")
        reader = _reader(self)
        running = [
            r
            for r in await self.deps.servers.all()
            if r.state == ServerState.RUNNING and r.container_id
        ]

        async def one(record: ServerRecord) -> dict[str, Any] | None:
            try:
                usage = await _usage(reader, record)
            except Conflict:
                return None  # stopped between the listing and the read
            return {
                "user": record.user_name,
                "server": record.name,
                "environment": record.environment,
                **live_stats(record, usage, datetime.now(UTC)),
            }

        found = await asyncio.gather(*(one(r) for r in running))
        self.set_header("Cache-Control", "no-store")
        self.write_json([s for s in found if s is not None])


_STATS_PROPERTIES: dict[str, Any] = {
    "cpu_cores": {"type": "number", "description": "CPU cores used, averaged since last read."},
    "cpus_limit": {"type": "number", "description": "CPU cores the server may use."},
    "memory_bytes": {
        "type": "integer",
        "description": "Working set: memory in use less reclaimable file cache.",
    },
    "memory_limit": {"type": "integer", "description": "Bytes; past it the OOM killer acts."},
    "memory_fraction": {"type": "number", "minimum": 0},
    "memory_warning": {"type": "boolean", "description": "memory_fraction is 0.9 or more."},
    "started": {"type": ["string", "null"], "format": "date-time"},
    "uptime_s": {"type": "number"},
    "last_activity": {"type": ["string", "null"], "format": "date-time"},
    "idle_s": {"type": ["number", "null"], "description": "Seconds since the last request."},
}

OPENAPI_SCHEMAS: dict[str, Any] = {
    "ServerStats": {
        "type": "object",
        "required": list(_STATS_PROPERTIES),
        "properties": _STATS_PROPERTIES,
    },
    "ServerStatsEntry": {
        "type": "object",
        "required": ["user", "server", "environment", *_STATS_PROPERTIES],
        "properties": {
            "user": {"type": "string"},
            "server": {"type": "string", "description": "Empty for the default server."},
            "environment": {"type": "string"},
            **_STATS_PROPERTIES,
        },
    },
}

_STATS_GET = {
    "summary": "Live CPU and memory use of a running server",
    "tags": ["servers"],
    "responses": {
        "200": json_content(ref("ServerStats")),
        "409": {
            "description": "The server is not running.",
            "content": {"application/json": {"schema": ref("Error")}},
        },
        **errors(401, 403, 404, 503),
    },
}

OPENAPI_PATHS: dict[str, Any] = {
    "/users/{name}/server/stats": {
        "parameters": [param("UserName")],
        "get": {**_STATS_GET, "operationId": "getDefaultServerStats"},
    },
    "/users/{name}/servers/{server}/stats": {
        "parameters": [param("UserName"), param("ServerName")],
        "get": {**_STATS_GET, "operationId": "getServerStats"},
    },
    "/stats": {
        "get": {
            "summary": "Live use of every running server (admins)",
            "operationId": "getAllStats",
            "tags": ["admin"],
            "responses": {
                "200": json_content({"type": "array", "items": ref("ServerStatsEntry")}),
                **errors(401, 403, 503),
            },
        }
    },
}
