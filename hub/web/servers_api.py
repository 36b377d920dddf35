"""Servers through the REST API: launch, stop, progress, and the user models.

POST   /hub/api/users/alice/servers/lab   {"environment": "python", "memory": "4G"}
       -> 201 when ready, 202 while it starts, 403 over quota, 429 when busy
DELETE /hub/api/users/alice/servers/lab   {"remove": true}   -> 204
GET    /hub/api/users/alice/servers/lab/progress             -> text/event-stream
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from tornado.iostream import StreamClosedError

from hub.domain.accounts import User, may_act_on
from hub.domain.catalog import Environment
from hub.domain.errors import Forbidden, InvalidInput, LaunchFailed, NotFound
from hub.domain.records import ServerRecord
from hub.domain.servers import ProgressEvent, ServerState
from hub.web.base import BaseHandler


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at else None


def server_model(record: ServerRecord) -> dict[str, Any]:
    """A server as the API shows it (JupyterHub's shape, plus labdock's fields)."""
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
    }


def user_model(user: User, servers: list[ServerRecord]) -> dict[str, Any]:
    return {
        "name": user.name,
        "admin": user.is_admin,
        "disabled": user.disabled,
        "servers": {s.name: server_model(s) for s in servers},
    }


def environment_model(env: Environment) -> dict[str, Any]:
    def res(r: Any) -> dict[str, Any]:
        return {"cpus": r.cpus, "memory": r.memory, "gpus": r.gpus}

    return {
        "name": env.name,
        "description": env.description,
        "version": env.version,
        "image": env.image,
        "default": res(env.default),
        "maximum": res(env.maximum),
        "gpu": env.gpu,
    }


class ApiHandler(BaseHandler):
    """Shared helpers of the JSON API."""

    def json_body(self) -> dict[str, Any]:
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise InvalidInput("the request body must be a JSON object")
        return body

    async def owner(self, name: str, scope: str) -> User:
        """The user named in the path, if the caller may act for them with ``scope``."""
        actor = self.require_any(scope)
        if not may_act_on(actor, self.scopes, scope, name):
            # The same answer whether or not the user exists: names are not to be probed.
            raise Forbidden(f"you may not use {scope!r} on {name!r}")
        return actor if name == actor.name else await self.deps.accounts.get(name)


class ServerHandler(ApiHandler):
    """``POST`` launches, ``DELETE`` stops: ``/users/{name}/server[s/{server}]``."""

    async def post(self, name: str, server: str = "") -> None:
        owner = await self.owner(name, "servers")
        record, _fresh = await self.deps.workspaces.launch(owner, server, self.json_body())
        await respond_launch(self, record)

    async def delete(self, name: str, server: str = "") -> None:
        owner = await self.owner(name, "servers")
        remove = self.json_body().get("remove", False)
        if not isinstance(remove, bool):
            raise InvalidInput("remove: expected true or false")
        record = await self.deps.servers.get(owner.id, server)
        if record is None:
            raise NotFound(
                f"{owner.name} has no server {server!r}" if server else "no default server"
            )
        await self.deps.workspaces.stop(record.id, remove=remove)
        self.set_status(204)
        self.finish()


class RestartHandler(ApiHandler):
    """``POST .../restart``: stop, then launch again with the same choices."""

    async def post(self, name: str, server: str = "") -> None:
        owner = await self.owner(name, "servers")
        record, _ = await self.deps.workspaces.restart(owner, server)
        await respond_launch(self, record)


async def respond_launch(handler: ApiHandler, record: ServerRecord) -> None:
    """201 once ready (waiting up to ``hub.launch_wait``), 202 while starting, 502 if it failed."""
    workspaces = handler.deps.workspaces
    if record.state == ServerState.STARTING:
        record = await workspaces.wait_ready(record.id, handler.deps.settings.hub.launch_wait)
    if record.state == ServerState.FAILED:
        latest = workspaces.progress.latest(record.id)
        raise LaunchFailed(latest.message if latest else record.stopped_reason or "failed")
    handler.set_header("Location", record.prefix)
    handler.write_json(server_model(record), 201 if record.state == ServerState.RUNNING else 202)


class ProgressHandler(ApiHandler):
    """Server-Sent Events of a launch: ``{"progress", "message", "ready", "failed"}``."""

    async def get(self, name: str, server: str = "") -> None:
        owner = await self.owner(name, "read:servers")
        record = await self.deps.servers.get(owner.id, server)
        if record is None:
            raise NotFound(
                f"{owner.name} has no server {server!r}" if server else "no default server"
            )
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
        self.write_json([user_model(u, by_user.get(u.name, [])) for u in users])


class EnvironmentsHandler(ApiHandler):
    """``GET /hub/api/environments``: what this user may launch."""

    async def get(self) -> None:
        actor = self.require("read:servers")
        teams = await self.deps.teams.team_ids_of(actor.id)
        envs = await self.deps.catalog.visible_to(teams)
        self.write_json([environment_model(e) for e in envs])
