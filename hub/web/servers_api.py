"""Servers through the REST API: launch, stop, progress, and the user models.

POST   /hub/api/users/alice/servers/lab   {"environment": "python", "memory": "4G"}
       -> 201 when ready, 202 while it starts, 403 over quota, 429 when busy
DELETE /hub/api/users/alice/servers/lab   {"remove": true}   -> 204
GET    /hub/api/users/alice/servers/lab/progress             -> text/event-stream
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from tornado.iostream import StreamClosedError

from hub.domain.accounts import User
from hub.domain.catalog import launch_request
from hub.domain.errors import InvalidInput, LaunchFailed
from hub.domain.records import ServerRecord
from hub.domain.servers import ProgressEvent, ServerState
from hub.domain.workspaces import Notice
from hub.web.api_base import ApiHandler
from hub.web.openapi import errors, json_body, json_content, param, ref


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at else None


NoticeOf = Callable[[int], Notice | None]


def server_model(record: ServerRecord, notice: Notice | None = None) -> dict[str, Any]:
    """A server as the API shows it (JupyterHub's shape, plus labdock's fields).

    ``notices``: what the owner of a running server should know (a process in it was
    OOM-killed while the server lives on); ``last_oom``: when that was.
    """
    api = f"/hub/api/users/{record.user_name}"
    path = f"{api}/servers/{record.name}" if record.name else f"{api}/server"
    pending = {ServerState.STARTING: "spawn", ServerState.STOPPING: "stop"}.get(record.state)
    return {
        "name": record.name,
        "ready": record.state == ServerState.RUNNING,
        "pending": pending,
        "url": record.prefix,
        "progress_url": f"{path}/progress",
        "started": _iso(record.started),
        "last_activity": _iso(record.last_activity),
        "state": record.state.value,
        "user_options": dict(record.user_options),
        "environment": record.environment,
        "resources": {
            "cpus": record.resources.cpus,
            "memory": record.resources.memory,
            "gpus": record.resources.gpus,
            "gpu_ids": list(record.gpu_ids),
        },
        "stopped_reason": record.stopped_reason,
        "notices": [notice.message] if notice else [],
        "last_oom": _iso(notice.at) if notice else None,
        # The image it runs, pinned: relaunch it with {"version": image_digest}.
        "image_digest": record.image_digest,
    }


def user_model(
    user: User, servers: list[ServerRecord], notice_of: NoticeOf | None = None
) -> dict[str, Any]:
    """A user as the API shows it, with their servers and, given ``notice_of``, each
    one's notices (without it the models leave ``notices`` out rather than claim none)."""
    servers_models = {}
    for record in servers:
        model = server_model(record, notice_of(record.id) if notice_of else None)
        if notice_of is None:
            del model["notices"], model["last_oom"]
        servers_models[record.name] = model
    return {
        "name": user.name,
        "admin": user.is_admin,
        "disabled": user.disabled,
        "servers": servers_models,
    }


class ServerHandler(ApiHandler):
    """``POST`` launches, ``DELETE`` stops: ``/users/{name}/server[s/{server}]``."""

    async def post(self, name: str, server: str = "") -> None:
        owner = await self.owner(name, "servers")
        body = self.json_body()
        try:
            request = launch_request(body)
        except InvalidInput as exc:
            await self.deps.workspaces.refused(owner, server, exc)  # audited as any refusal
            raise
        record, _fresh = await self.deps.workspaces.launch(owner, server, request)
        await respond_launch(self, record)

    async def delete(self, name: str, server: str = "") -> None:
        owner = await self.owner(name, "servers")
        remove = self.json_body().get("remove", False)
        if not isinstance(remove, bool):
            raise InvalidInput("remove: expected true or false")
        record = await self.owned_server(owner, server)
        if remove:
            await self.deps.workspaces.remove(record.id)
        else:
            await self.deps.workspaces.stop(record.id)
        self.set_status(204)
        self.finish()


class RestartHandler(ApiHandler):
    """``POST .../restart``: stop, then launch again with the same choices and image digest
    (``{"version": "<label or digest>"}`` picks another version of its environment)."""

    async def post(self, name: str, server: str = "") -> None:
        owner = await self.owner(name, "servers")
        body = self.json_body()
        if set(body) - {"version"}:
            raise InvalidInput('restart takes only {"version": "<label or digest>"}')
        version = body.get("version")
        if version is not None and not isinstance(version, str):
            raise InvalidInput("version: expected a version label or an image digest")
        record, _ = await self.deps.workspaces.restart(owner, server, version)
        await respond_launch(self, record)


async def respond_launch(handler: ApiHandler, record: ServerRecord) -> None:
    """201 once ready (waiting up to ``hub.launch_wait``), 202 while starting, 502 if it failed."""
    workspaces = handler.deps.workspaces
    if record.state == ServerState.STARTING:
        record = await workspaces.wait_ready(record.id, handler.deps.settings.launch_wait)
    if record.state == ServerState.FAILED:
        latest = workspaces.progress.latest(record.id)
        raise LaunchFailed(latest.message if latest else record.stopped_reason or "failed")
    handler.set_header("Location", record.prefix)
    handler.write_json(server_model(record), 201 if record.state == ServerState.RUNNING else 202)


class ProgressHandler(ApiHandler):
    """Server-Sent Events of a launch: ``{"progress", "message", "ready", "failed"}``."""

    async def get(self, name: str, server: str = "") -> None:
        owner = await self.owner(name, "read:servers")
        record = await self.owned_server(owner, server)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        if (
            record.state != ServerState.STARTING
            and self.deps.workspaces.progress.latest(record.id) is None
        ):
            await self._send(self._final(record))
            return
        async for event in self.deps.workspaces.progress.follow(record.id):
            if not await self._send(self._event(event, record)):
                return

    def _final(self, record: ServerRecord) -> dict[str, Any]:
        if record.state == ServerState.RUNNING:
            return {
                "progress": 100,
                "message": "ready",
                "ready": True,
                "failed": False,
                "url": record.prefix,
            }
        return {
            "progress": 100,
            "message": record.stopped_reason or f"the server is {record.state.value}",
            "ready": False,
            "failed": record.state == ServerState.FAILED,
        }

    @staticmethod
    def _event(event: ProgressEvent, record: ServerRecord) -> dict[str, Any]:
        body: dict[str, Any] = {
            "progress": event.progress,
            "message": event.message,
            "ready": event.ready,
            "failed": event.failed,
        }
        if event.ready:
            body["url"] = record.prefix
        return body

    async def _send(self, payload: dict[str, Any]) -> bool:
        try:
            self.write(f"data: {json.dumps(payload)}\n\n")
            await self.flush()
        except StreamClosedError:
            return False
        return True


class UsersHandler(ApiHandler):
    """``GET /hub/api/users``: admins see everyone; others see themselves."""

    async def get(self) -> None:
        actor = self.require("read:servers")
        records = (
            await self.deps.servers.all()
            if actor.is_admin
            else await self.deps.servers.of_user(actor.id)
        )
        by_user: dict[str, list[ServerRecord]] = {}
        for record in records:
            by_user.setdefault(record.user_name, []).append(record)
        users = [actor] if not actor.is_admin else await self.deps.accounts.all_users()
        notice_of = self.deps.workspaces.notice
        self.write_json([user_model(u, by_user.get(u.name, []), notice_of) for u in users])


def _server_paths(base: str, params: list[dict[str, str]], which: str) -> dict[str, Any]:
    launched = {
        "201": {
            **json_content(ref("Server"), "The server is ready (or was already running)."),
            "headers": {"Location": {"schema": {"type": "string"}, "description": "Its URL."}},
        },
        "202": {
            **json_content(ref("Server"), "The server is starting; follow its progress_url."),
            "headers": {"Location": {"schema": {"type": "string"}, "description": "Its URL."}},
        },
    }
    return {
        base: {
            "parameters": params,
            "post": {
                "summary": f"Launch {which}",
                "operationId": f"launch{which.title().replace(' ', '')}",
                "tags": ["servers"],
                "description": "Waits up to hub.launch_wait seconds for readiness. Over quota "
                "is a 403 whose message gives the numbers.",
                "requestBody": json_body(ref("LaunchRequest")),
                "responses": {**launched, **errors(400, 401, 403, 404, 429, 502)},
            },
            "delete": {
                "summary": f"Stop {which}",
                "operationId": f"stop{which.title().replace(' ', '')}",
                "tags": ["servers"],
                "requestBody": json_body(ref("StopRequest")),
                "responses": {
                    "204": {"description": "Stopped."},
                    **errors(400, 401, 403, 404, 503),
                },
            },
        },
        f"{base}/progress": {
            "parameters": params,
            "get": {
                "summary": f"Follow the launch of {which}",
                "operationId": f"progress{which.title().replace(' ', '')}",
                "tags": ["servers"],
                "responses": {
                    "200": {
                        "description": "Server-Sent Events until the launch ends; each "
                        "`data:` line holds a ProgressEvent as JSON.",
                        "content": {
                            "text/event-stream": {
                                "schema": ref("ProgressStreamEvent"),
                                "example": 'data: {"progress": 100, "message": "ready", '
                                '"ready": true, "failed": false, "url": "/user/alice/"}\n\n',
                            }
                        },
                    },
                    **errors(401, 403, 404),
                },
            },
        },
        f"{base}/restart": {
            "parameters": params,
            "post": {
                "summary": f"Restart {which} with the same choices",
                "operationId": f"restart{which.title().replace(' ', '')}",
                "tags": ["servers"],
                "description": "Relaunches the image digest the server last ran, unless the "
                "body names another version of its environment.",
                "requestBody": json_body(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "version": {"type": "string", "description": "A label or digest."}
                        },
                    }
                ),
                "responses": {**launched, **errors(400, 401, 403, 404, 429, 502, 503)},
            },
        },
    }


OPENAPI_PATHS: dict[str, Any] = {
    "/users": {
        "get": {
            "summary": "Users and their servers (admins see everyone, others themselves)",
            "operationId": "listUsers",
            "tags": ["users"],
            "responses": {
                "200": json_content({"type": "array", "items": ref("User")}),
                **errors(401, 403),
            },
        }
    },
    **_server_paths("/users/{name}/server", [param("UserName")], "default server"),
    **_server_paths(
        "/users/{name}/servers/{server}", [param("UserName"), param("ServerName")], "named server"
    ),
}
